"""How fast does the ``supernet`` proxy score a candidate? (issue target: ≤ 0.5 s, ≥ 2 candidates/s on 2 CPU cores)

Uses the supernet that ``search_e2e.py --budget-ms 2.37 --proxy supernet`` trained (its run folder and cache in
benchmarks/.data/search_e2e/; run that first) and the candidates its search scored within the trained band.
Interleaved, per candidate: the current scorer (hold-out batches of 128 in channels_last on a CPU at 32 px) and the
anchor (the first version: batches of 256, default layout); extraction + BatchNorm recalibration (256 images) +
500 hold-out images each time. Writes benchmarks/results/supernet_scoring.json.

    .venv/bin/python benchmarks/supernet_scoring.py          # ~1 min, nothing else running
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _smoke import add_smoke, smoke_dir, thread_count  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".data" / "search_e2e"
RUN = WORK / "run-2.37ms_supernet"


def smoke_run(work: Path) -> Path:
    """A small run with the supernet proxy on the digits (a 1-epoch test_resnet teacher, 1-epoch supernets of DisWOT's
    64-student space: the full resnet_cifar's largest subnet made this smoke run take 100 s)."""
    from kdsearch.pipeline import find

    result = find(teacher="test_resnet", teacher_epochs=1, budget="0.3Mparams", data="digits", proxy="supernet", space="resnet_cifar_s1",
                  subspaces=2, supernet_epochs=1, trials=12, top_k=1, front=0, controls=0, epochs=1, out=work / "run", quiet=True,
                  train_samples=300, val_samples=200)  # the smoke run checks the code path, not the figures
    return result.run_dir


def main(candidates: int = 30) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_smoke(parser, "a small supernet run on the digits made first, 4 candidates")
    args = parser.parse_args()
    global RUN
    results = ROOT / "benchmarks" / "results"
    if args.smoke:
        results = smoke_dir("supernet_scoring")
        RUN, candidates = smoke_run(results), 4
    os.environ.setdefault("KDSEARCH_CACHE_DIR", str(WORK / "cache"))
    import pandas as pd

    from kdsearch._util import atomic_write_json
    from kdsearch.data import load_task
    from kdsearch.pipeline import run_supernets
    from kdsearch.run import RunFolder
    from kdsearch.teacher import load_teacher

    run = RunFolder.open(RUN, need_candidates=True)
    settings = run.settings()
    task = load_task(settings.data)
    teacher = load_teacher(settings.teacher, task, epochs=settings.teacher_epochs, measure=False)
    ranker = run_supernets(settings, task, teacher.model)  # cached by find: trains nothing
    table = run.candidates()
    rows = table[table["latency_p50_ms"] <= ranker.bands.span(max(ranker.supernets))[1]].head(candidates)
    torch.set_num_threads(thread_count(2))
    variants = {"current": (128, "auto"), "anchor": (256, "off")}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    agree = []
    for _, row in rows.iterrows():
        config, latency = json.loads(row["config"]), float(row["latency_p50_ms"])
        scores = {}
        for name, (batch, layout) in variants.items():
            ranker.eval_batch_size, ranker.channels_last, ranker._calibration = batch, layout, None
            started = time.perf_counter()
            scores[name] = ranker.evaluate(config, latency)
            seconds[name].append(time.perf_counter() - started)
        agree.append(abs(scores["current"]["accuracy"] - scores["anchor"]["accuracy"]))
    stats = {name: {"median_s": statistics.median(v), "p90_s": sorted(v)[int(0.9 * (len(v) - 1))],
                    "candidates_per_s": 1 / statistics.median(v)} for name, v in seconds.items()}
    record = {"candidates": len(rows), "variants": {k: {"eval_batch_size": b, "channels_last": c} for k, (b, c) in variants.items()},
              "stats": stats, "speedup_vs_anchor": stats["anchor"]["median_s"] / stats["current"]["median_s"],
              "max_accuracy_difference": max(agree), "holdout_images": len(ranker.task.val_labels),
              "load1": os.getloadavg()[0], "torch": torch.__version__, "python": platform.python_version(),
              "mean_params": float(pd.to_numeric(rows["params"]).mean())}
    atomic_write_json(results / "supernet_scoring.json", record)
    print(pd.DataFrame(stats).T.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"speedup vs anchor {record['speedup_vs_anchor']:.2f}x; max accuracy difference {max(agree):.4f}")


if __name__ == "__main__":
    main()
