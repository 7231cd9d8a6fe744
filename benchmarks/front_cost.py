"""What sharing the teacher's outputs saves when a run distils many students: 8 students, live teacher vs shared cache.

The same 8 students of the CIFAR ResNet space (from 1-1-1 at widths 8/16/32 to 3-3-5 at 16/32/64), the same KD
recipe (find's: SGD, batch 64, T = 4), the same ResNet-56-type teacher trained on the same CIFAR-10 JPEGs (the one
benchmarks/search_e2e.py trains and caches), one after the other in one process:

* live: every student runs the teacher at every step (``share_teacher_outputs=False``);
* shared: the teacher's logits for every epoch's views are computed once (the fill is timed and counted) and
  every student reads them (``kdsearch.teacher.teacher_outputs``).

Reported: wall time of each half, ``speedup_vs_live_teacher``, and each student's accuracy both ways (same seed:
the difference is the fp16 rounding of the stored logits, plus float noise). Records the load it ran under.

    .venv/bin/python benchmarks/front_cost.py                 # the issue's setting: 15 epochs (~45 min on 2 cores)
    .venv/bin/python benchmarks/front_cost.py --epochs 5      # what docs/benchmarks.md reports (~15 min)
    .venv/bin/python benchmarks/front_cost.py --epochs 5 --seed-reference 1   # seed noise of the live half (~9 min)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".data" / "search_e2e"  # the teacher search_e2e trained (cached by content hash)
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from _smoke import add_smoke, smoke_dir  # noqa: E402

BASE = {"family": "resnet_cifar"}
STUDENTS = [  # (depths, widths): 8 sizes, ~20 k to ~0.4 M parameters
    ((1, 1, 1), (8, 16, 32)), ((1, 1, 1), (16, 32, 64)), ((2, 2, 2), (8, 16, 32)), ((2, 2, 2), (16, 32, 64)),
    ((3, 3, 3), (8, 16, 32)), ((3, 3, 3), (16, 32, 64)), ((1, 3, 5), (8, 16, 32)), ((3, 3, 5), (16, 32, 64)),
]


def student_configs() -> list[dict]:
    return [{**BASE, "depth1": d[0], "depth2": d[1], "depth3": d[2], "width1": w[0], "width2": w[1], "width3": w[2]}
            for d, w in STUDENTS]


def run_half(shared: bool, teacher, task, recipe, outputs_root: Path) -> dict:
    from kdsearch.distill import distill
    from kdsearch.spaces import create_model
    from kdsearch.teacher.outputs import teacher_outputs

    started = time.perf_counter()
    fill_seconds = None
    if shared:  # the fill is part of the shared half's cost
        shutil.rmtree(outputs_root, ignore_errors=True)
        teacher_outputs(teacher, task, recipe, root=outputs_root)
        fill_seconds = time.perf_counter() - started
    students = []
    for config in student_configs():
        torch.manual_seed(recipe.seed)
        model = create_model(config, num_classes=task.num_classes, in_chans=task.in_chans)
        result = distill(model, teacher, task, recipe, "kd", share_teacher_outputs=shared, outputs_root=outputs_root)
        params = sum(p.numel() for p in model.parameters())
        students.append({"config": config, "params": params, "accuracy": result.accuracy, "seconds": result.seconds,
                         "teacher_source": result.teacher_source})
        print(f"  {'shared' if shared else 'live  '} {params:>8,} params: acc {result.accuracy:.4f} "
              f"in {result.seconds:.0f} s ({result.teacher_source})", flush=True)
    return {"seconds": time.perf_counter() - started, "fill_seconds": fill_seconds, "students": students}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--per-class", type=int, default=500, help="training JPEGs per class (the teacher's data)")
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS / "front_cost.json")
    parser.add_argument("--seed-reference", type=int, metavar="SEED",
                        help="instead: the live half again with another seed, against the committed live half (how far "
                             "two seeds of the same student differ: the noise the live-vs-shared differences compare to)")
    add_smoke(parser, "1 epoch, 20 images per class, a 1-epoch teacher")
    args = parser.parse_args()
    global WORK
    if args.smoke:
        WORK = smoke_dir("front_cost")
        args.epochs, args.per_class, args.teacher_epochs, args.out = 1, 20, 1, WORK / "front_cost.json"
    os.environ.setdefault("KDSEARCH_CACHE_DIR", str(WORK / "cache"))

    from proxy_rank import cifar_folder

    from kdsearch._util import atomic_write_json
    from kdsearch.data import DataSpec, load_task
    from kdsearch.teacher import load_teacher
    from kdsearch.training import Recipe

    task = load_task(DataSpec(data=str(cifar_folder(args.per_class)), seed=0))
    teacher = load_teacher("search_e2e:resnet56", task, epochs=args.teacher_epochs, measure=False, progress=True).model.eval()
    recipe = Recipe(epochs=args.epochs, batch_size=64, lr=0.1, weight_decay=5e-4)
    load_before = os.getloadavg()
    if args.seed_reference is not None:
        return seed_reference(args, teacher, task, recipe)
    print(f"{len(STUDENTS)} students, {len(task.train_labels)} images, {args.epochs} epochs, {torch.get_num_threads()} threads")
    live = run_half(False, teacher, task, recipe, WORK / "front_cost_outputs")
    shared = run_half(True, teacher, task, recipe, WORK / "front_cost_outputs")
    diffs = [abs(a["accuracy"] - b["accuracy"]) for a, b in zip(live["students"], shared["students"])]
    result = {
        "students": len(STUDENTS), "train_images": len(task.train_labels), "val_images": len(task.val_labels),
        "epochs": args.epochs, "recipe": recipe.to_dict(), "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "load_before": load_before, "load_after": os.getloadavg(),
        "live_seconds": live["seconds"], "shared_seconds": shared["seconds"], "fill_seconds": shared["fill_seconds"],
        "speedup_vs_live_teacher": live["seconds"] / shared["seconds"],
        "max_accuracy_difference": max(diffs), "mean_accuracy_difference": sum(diffs) / len(diffs),
        "per_student": [{"config": a["config"], "params": a["params"], "accuracy_live": a["accuracy"],
                         "accuracy_shared": b["accuracy"], "seconds_live": a["seconds"], "seconds_shared": b["seconds"]}
                        for a, b in zip(live["students"], shared["students"])],
    }
    print(f"live {live['seconds']:.0f} s, shared {shared['seconds']:.0f} s (fill {shared['fill_seconds']:.0f} s): "
          f"{result['speedup_vs_live_teacher']:.2f}x; accuracy differs by at most {max(diffs):.4f}")
    atomic_write_json(args.out, result)


def seed_reference(args, teacher, task, recipe) -> None:
    """Live students with another seed vs the committed live half: the seed-to-seed spread of the same student."""
    import json
    from dataclasses import replace

    from kdsearch._util import atomic_write_json

    committed = json.loads(args.out.read_text())
    other = run_half(False, teacher, task, replace(recipe, seed=args.seed_reference), WORK / "front_cost_outputs")
    diffs = [abs(a["accuracy_live"] - b["accuracy"]) for a, b in zip(committed["per_student"], other["students"])]
    result = {"seed": args.seed_reference, "against": str(args.out.name), "epochs": args.epochs,
              "max_accuracy_difference": max(diffs), "mean_accuracy_difference": sum(diffs) / len(diffs),
              "per_student": [{"params": a["params"], "accuracy_seed0": a["accuracy_live"], "accuracy_other_seed": b["accuracy"]}
                              for a, b in zip(committed["per_student"], other["students"])]}
    print(f"seed {args.seed_reference} vs the committed live half: accuracy differs by {result['mean_accuracy_difference']:.4f} "
          f"on average, {max(diffs):.4f} at most")
    atomic_write_json(args.out.with_name("front_cost_seed_reference.json"), result)


if __name__ == "__main__":
    main()
