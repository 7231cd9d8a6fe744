"""What counting a candidate's parameters exactly costs the constrained sampler (it counts up to 4,096 per round).

Side by side, per candidate, one thread, the same seeded candidates of each space:
- ``formula``: the family's own parameter count from its config (``FamilySpec.params``; resnet_cifar and vit), as
  ``kdsearch.search.evaluate.count_exactly`` uses it — nothing is built;
- ``build``: the model built and its parameters counted (what count_exactly does for the other families, and for
  FLOPs);
- ``swap`` (the anchor: what the search did until 2026-12-07): the model built with ``torch.nn.init``'s functions
  swapped for no-ops during the build — a process-wide patch, unsafe with threads, which issue 32 removed.
Also checked: the formula's count equals the built model's for every candidate timed.

    .venv/bin/python benchmarks/exact_counts.py            # ~1 min; writes benchmarks/results/exact_counts.json
    .venv/bin/python benchmarks/exact_counts.py --smoke    # 20 candidates per space
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from _smoke import add_smoke, smoke_dir  # noqa: E402

SPACES = {"resnet_cifar": 32, "vit_cifar": 32, "nasbench201": 32, "mobilenetv3": 224}
_INITS = ("kaiming_normal_", "kaiming_uniform_", "normal_", "uniform_", "constant_", "zeros_", "ones_", "trunc_normal_",
          "xavier_uniform_", "xavier_normal_", "orthogonal_")


@contextlib.contextmanager
def swapped_inits():
    """The old search's build: torch.nn.init's functions replaced by no-ops for the duration (the anchor only)."""
    saved = {name: getattr(torch.nn.init, name) for name in _INITS if hasattr(torch.nn.init, name)}
    for name in saved:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def per_candidate_ms(fn, configs: list[dict]) -> float:
    started = time.perf_counter()
    for config in configs:
        fn(config)
    return 1000 * (time.perf_counter() - started) / len(configs)


def main() -> None:
    from kdsearch._util import atomic_write_json
    from kdsearch.spaces import create_model, load_space
    from kdsearch.spaces.families import family_spec

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=200)
    add_smoke(parser, "20 candidates per space")
    args = parser.parse_args()
    results = RESULTS
    if args.smoke:
        results, args.candidates = smoke_dir("exact_counts"), 20
    torch.set_num_threads(1)
    load1 = os.getloadavg()[0]

    def built(config):
        return sum(p.numel() for p in create_model(config, num_classes=10).parameters())

    def swap(config):
        with swapped_inits():
            return built(config)

    rows = []
    for name, size in SPACES.items():
        space = load_space(name).for_input(size)
        configs = space.sample(args.candidates, seed=0)
        formula = family_spec(space.family).params
        built(configs[0])  # imports and first-call costs out of the timing
        row = {"space": name, "candidates": len(configs), "build_ms": per_candidate_ms(built, configs),
               "swap_ms": per_candidate_ms(swap, configs)}
        if formula is not None:
            row["formula_ms"] = per_candidate_ms(lambda c, f=formula: f(c, 10, 3), configs)
            row["formula_equals_built"] = all(formula(c, 10, 3) == built(c) for c in configs)
        row["used_ms"] = row.get("formula_ms", row["build_ms"])  # what count_exactly now spends on parameters
        row["used_over_swap"] = row["used_ms"] / row["swap_ms"]
        rows.append(row)
        print(f"{name:<13} build {row['build_ms']:7.2f} ms  swap {row['swap_ms']:7.2f} ms  formula "
              f"{row.get('formula_ms', float('nan')):7.3f} ms  now/swap {row['used_over_swap']:.3f}", flush=True)
    record = {"rows": rows, "median_used_over_swap": statistics.median(r["used_over_swap"] for r in rows),
              "threads": 1, "load1_at_start": load1, "torch": torch.__version__, "python": platform.python_version()}
    atomic_write_json(results / "exact_counts.json", record)


if __name__ == "__main__":
    main()
