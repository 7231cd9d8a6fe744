"""The same students in every runtime: does the runtime change the latency, and the order?

20 candidates of a space (seeded), each prepared once in every runtime (eager torch, TorchScript trace+freeze,
torch.compile, ONNX Runtime), then timed ``--rounds`` times, interleaved — round by round, student by student,
runtime by runtime — so that machine noise falls on every runtime alike. Reported: each runtime's latency as a
ratio of eager's (median and range over the students), Kendall tau of its order against eager's, and whether the
fastest / the slowest student stays so — what a budget copied from eager PyTorch gets wrong when the student
ships in another runtime.

    .venv/bin/python benchmarks/latency_runtimes.py       # writes benchmarks/results/latency_runtimes.{json,csv}
    python3 benchmarks/latency_runtimes.py --device cuda --spaces resnet_cifar   # (benchmarks/gpu.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _smoke import add_smoke, smoke_dir  # noqa: E402

SPACES = {"resnet_cifar": 32, "mobilenetv3": 224}
SETTINGS = {"max_time_s": 0.5, "rel_precision": 0.02, "min_repeats": 20, "warmup_s": 0.05}


def run_space(name: str, size: int, args) -> tuple[list[dict], dict]:
    from kdsearch.cost import LatencyTimer, list_runtimes
    from kdsearch.exceptions import RuntimeUnavailable
    from kdsearch.spaces import candidate_id, create_model, load_space

    space, device = load_space(name), torch.device(args.device)
    runtimes = [r for r in list_runtimes() if r not in args.skip.split(",")]
    configs = space.sample(args.students, seed=args.seed)
    readings: dict[tuple[str, int], list[float]] = {}
    prepare_s: dict[str, list[float]] = {r: [] for r in runtimes}
    for i, config in enumerate(configs):
        # One student at a time, every runtime prepared, then timed in turn round after round: the noise of the
        # moment falls on all runtimes alike (and torch.compile's caches, reset for each new network, stay valid).
        timers = {}
        for runtime in list(runtimes):
            torch.manual_seed(0)
            started = time.perf_counter()
            try:
                timers[runtime] = LatencyTimer(create_model(config, num_classes=10), (3, size, size), device, 1, 1, runtime)
            except RuntimeUnavailable as exc:
                print(f"{name}: {runtime} left out: {exc}")
                runtimes.remove(runtime)
                continue
            prepare_s[runtime].append(time.perf_counter() - started)
        for _ in range(args.rounds):
            for runtime, timer in timers.items():
                readings.setdefault((runtime, i), []).append(timer.time(**SETTINGS).p50_ms)
        print(f"{name}: student {i + 1}/{len(configs)}: " + ", ".join(
            f"{r} {np.median(readings[r, i]):.3f} ms" for r in timers))
    prepare_s = {r: float(np.mean(v)) for r, v in prepare_s.items() if v}
    rows = [{"space": name, "student": candidate_id(configs[i]), "runtime": r, "p50_ms": float(np.median(v)),
             "round_cv": float(np.std(v) / np.mean(v))} for (r, i), v in readings.items()]
    return rows, {"prepare_s_per_student": prepare_s}


def summarise(rows: list[dict]) -> list[dict]:
    from scipy.stats import kendalltau

    table = pd.DataFrame(rows).pivot_table(index=["space", "student"], columns="runtime", values="p50_ms")
    out = []
    for space, part in table.groupby(level="space"):
        eager = part["torch"]
        for runtime in part.columns:
            ratio = part[runtime] / eager
            out.append({
                "space": space, "runtime": runtime, "students": int(part[runtime].notna().sum()),
                "median_ms": float(part[runtime].median()), "ratio_to_eager_median": float(ratio.median()),
                "ratio_min": float(ratio.min()), "ratio_max": float(ratio.max()),
                "kendall_tau_vs_eager": float(kendalltau(eager, part[runtime]).statistic),
                "fastest_same_as_eager": bool(part[runtime].idxmin() == eager.idxmin()),
                "slowest_same_as_eager": bool(part[runtime].idxmax() == eager.idxmax()),
            })
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spaces", default=",".join(SPACES))
    parser.add_argument("--students", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", default="", help="runtimes to leave out, comma-separated (e.g. compile)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    add_smoke(parser, "resnet_cifar, 2 students, 1 round, no torch.compile")
    args = parser.parse_args()
    if args.smoke:
        args.spaces, args.students, args.rounds, args.skip = "resnet_cifar", 2, 1, "compile"
        args.out = str(smoke_dir("latency_runtimes"))
    torch.set_num_threads(1)
    load_before, rows, prep = os.getloadavg(), [], {}
    for name in args.spaces.split(","):
        space_rows, info = run_space(name, SPACES[name], args)
        rows += space_rows
        prep[name] = info
    summary = summarise(rows)
    suffix = "" if args.device == "cpu" else "_gpu"
    out = Path(args.out)
    pd.DataFrame(rows).to_csv(out / f"latency_runtimes{suffix}.csv", index=False)
    record = {"summary": summary, "prepare": prep, "rounds": args.rounds, "students": args.students, "device": args.device,
              "threads": 1, "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M")}
    (out / f"latency_runtimes{suffix}.json").write_text(json.dumps(record, indent=1))
    print(pd.DataFrame(summary).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
