"""Does the literature's ordering hold on our data? no-KD vs KD vs DKD, ResNet-56-type → ResNet-20-type.

CIFAR-10 JPEGs from ../shared/data (a class-balanced subset sized for 2 CPU cores), one teacher
trained once with cross-entropy, then for each of 3 seeds the same student trained with the same
recipe and epochs under three losses: ``ce`` (no KD), ``kd`` (Hinton, T = 4, CE 0.1 / KD 0.9) and
``dkd`` (α = 1, β = 8, T = 4; the paper's 20-of-240-epoch warm-up scaled to the run's length).

    .venv/bin/python benchmarks/kd_sanity.py                 # ~40 min on 2 cores; writes benchmarks/results/kd_sanity.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _smoke import add_smoke, smoke_dir, thread_count  # noqa: E402
from trainer_speed import STUDENT, TEACHER, cifar_folder  # noqa: E402

from kdsearch.data import load_task  # noqa: E402
from kdsearch.distill import distill  # noqa: E402
from kdsearch.spaces import create_model  # noqa: E402
from kdsearch.training import Recipe, fit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-samples", type=int, default=2560)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--teacher-epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    add_smoke(parser, "200 images, 1 epoch, a 1-epoch teacher, one seed")
    args = parser.parse_args()
    if args.smoke:
        args.train_samples, args.epochs, args.teacher_epochs, args.seeds = 200, 1, 1, [0]
        args.out = str(smoke_dir("kd_sanity"))
    torch.set_num_threads(thread_count(2))
    task = load_task(str(cifar_folder()), train_samples=args.train_samples)
    started = time.perf_counter()
    torch.manual_seed(0)
    teacher = create_model(TEACHER, num_classes=10)
    t_result = fit(teacher, task, Recipe(epochs=args.teacher_epochs, lr=0.1, batch_size=64), progress=True, desc="teacher")
    teacher.eval()
    print(f"teacher (ResNet-56-type): {t_result.accuracy:.4f}", flush=True)
    warmup = max(1, round(args.epochs * 20 / 240))
    methods = {"no-KD": ("ce", {}), "KD": ("kd", {}), "DKD": ("dkd", {"warmup": warmup})}
    accuracies: dict[str, list[float]] = {m: [] for m in methods}
    for seed in args.seeds:
        for method, (loss, options) in methods.items():
            torch.manual_seed(seed)
            student = create_model(STUDENT, num_classes=10)
            result = distill(student, teacher, task, Recipe(epochs=args.epochs, lr=0.1, batch_size=64, seed=seed), loss,
                             loss_options=options, progress=True, desc=f"{method} seed {seed}")
            accuracies[method].append(result.accuracy)
            print(f"seed {seed} {method}: {result.accuracy:.4f}", flush=True)
    summary = {m: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "runs": v} for m, v in accuracies.items()}
    ordering = {
        "KD > no-KD": summary["KD"]["mean"] > summary["no-KD"]["mean"],
        "DKD >= KD": summary["DKD"]["mean"] >= summary["KD"]["mean"],
    }
    record = {
        "data": task.description, "train_images": len(task.train_labels), "val_images": len(task.val_labels),
        "teacher": {"arch": TEACHER, "epochs": args.teacher_epochs, "val_accuracy": t_result.accuracy},
        "student": STUDENT, "epochs": args.epochs, "dkd_warmup": warmup, "seeds": args.seeds,
        "accuracy": summary, "ordering_holds": ordering, "seconds": time.perf_counter() - started,
    }
    print("\n| method | mean ± std | runs |\n|---|---|---|")
    for m, s in summary.items():
        print(f"| {m} | {s['mean']:.4f} ± {s['std']:.4f} | {', '.join(f'{v:.4f}' for v in s['runs'])} |")
    print(ordering)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kd_sanity.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
