"""How repeatable is a latency figure? kdsearch's measure_latency against the naive anchor.

The anchor is what many NAS scripts do: one warm-up call, then the mean of 10 timed calls. Both
methods measure the same three CIFAR ResNets (ResNet-8-ish, ResNet-20, a wide ResNet-32) ``--rounds``
times, interleaved so both see the same machine noise. Reported per model: the median figure, its
spread across rounds as a coefficient of variation (std / mean) and max/min ratio, and the time
each method spent. Lower spread = a budget check that gives the same answer twice.

    .venv/bin/python benchmarks/latency_stability.py            # writes benchmarks/results/latency_stability.{csv,json}
    python3 benchmarks/latency_stability.py --device cuda       # (benchmarks/gpu.sh) latency_stability_gpu.{csv,json}

On CUDA the naive anchor times the host (perf_counter, no synchronisation: it measures kernel launches,
not the GPU), kdsearch times the device with CUDA events.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _smoke import add_smoke, smoke_dir  # noqa: E402

from kdsearch.cost import measure_latency
from kdsearch.cost.latency import pinned_threads
from kdsearch.spaces import create_model

MODELS = {
    "resnet_cifar 1-1-1 w8": dict(depth1=1, depth2=1, depth3=1, width1=8, width2=16, width3=32),
    "resnet20": dict(depth1=3, depth2=3, depth3=3, width1=16, width2=32, width3=64),
    "resnet32 w2x": dict(depth1=5, depth2=5, depth3=5, width1=32, width2=64, width3=128),
}


@torch.inference_mode()
def naive_latency(model, shape, threads=1, device="cpu") -> float:
    model.eval()
    x = torch.zeros(1, *shape, device=device)
    with pinned_threads(threads if device == "cpu" else None):
        model(x)
        start = time.perf_counter()
        for _ in range(10):
            model(x)
        return (time.perf_counter() - start) / 10 * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_smoke(parser, "2 rounds")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.out = 2, str(smoke_dir("latency_stability"))
    rows = []
    for name, cfg in MODELS.items():
        model = create_model({"family": "resnet_cifar", **cfg}, num_classes=10).eval().to(args.device)
        ours, naive, t_ours, t_naive = [], [], 0.0, 0.0
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            ours.append(measure_latency(model, (3, 32, 32), threads=1, device=args.device).p50_ms)
            t1 = time.perf_counter()
            naive.append(naive_latency(model, (3, 32, 32), device=args.device))
            t2 = time.perf_counter()
            t_ours += t1 - t0
            t_naive += t2 - t1
        for method, values, spent in (("kdsearch p50", ours, t_ours), ("naive mean of 10", naive, t_naive)):
            arr = np.asarray(values)
            rows.append({
                "model": name, "method": method, "median_ms": float(np.median(arr)),
                "cv": float(arr.std() / arr.mean()), "max_over_min": float(arr.max() / arr.min()),
                "seconds_per_measurement": spent / args.rounds,
            })
    df = pd.DataFrame(rows)
    ratio = {
        m: float(df[(df.model == m) & (df.method == "naive mean of 10")].cv.iloc[0] / max(df[(df.model == m) & (df.method == "kdsearch p50")].cv.iloc[0], 1e-12))
        for m in MODELS
    }
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print("spread ratio (naive CV / kdsearch CV):", {k: round(v, 2) for k, v in ratio.items()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "latency_stability" if args.device == "cpu" else "latency_stability_gpu"
    df.to_csv(out / f"{stem}.csv", index=False)
    record = {"device": args.device if args.device == "cpu" else torch.cuda.get_device_name(), "rounds": args.rounds, "rows": rows,
              "cv_ratio_naive_over_kdsearch": ratio}
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
