"""Transformer students (issue 31): does the SuperLM rank ViT students better than parameter count?

The setting is supernet_rank.py's, so its cached teacher is reused:

1. Data: 500 training JPEGs per class of ../shared/data/cifar10-jpeg.tar.gz (5,000) and 300 test JPEGs per class
   (3,000), 32 px. The supernet is scored on its own hold-out slice of the training images, never on the test images.
2. Teacher: search_e2e's ResNet-56-type network trained on those JPEGs (cached). A CNN teacher: the SuperLM learns
   its logits (the relation objective and the start from the teacher's weights need a ViT teacher: not measured yet).
3. Students: ``--students`` vit_cifar candidates drawn seeded from the whole space (one subspace, K = 1), each
   distilled alone with find's recipe for the family (KD; AdamW, the vit family's optimiser) for ``--epochs``; the
   truth is its test accuracy.
4. Rankers: ``supernet`` (hold-out accuracy with inherited weights) and ``supernet_kd`` (minus the KD loss there)
   from a supernet over the space trained ``--supernet-epochs`` with the sandwich rule, for each depth rule (even:
   AutoDistil's spread layers; first: AutoFormer's); ``params``; ``halving_rung1``: the student's accuracy after the
   first epoch of its own run (halving's snapshot design: a rung of 1 epoch at no extra cost).
5. Reported: Kendall τ of each against the truth (``supernet_tau`` is the even rule's), the paired bootstrap of
   τ(supernet) − τ(params), ``supernet_cost_ratio`` (the supernet's training over one median student's full
   distillation) and ``slice_max_abs_diff`` (the largest |path through the supernet − extracted subnet| over the
   students, on real test images).

    .venv/bin/python benchmarks/transformer_students.py                 # ~30 min on 2 cores (20 students)
    .venv/bin/python benchmarks/transformer_students.py --smoke         # a tiny space, 3 students, 1 epoch

Students are trained two at a time, one thread each, and resume from benchmarks/.data/transformer_students/; the
result goes to benchmarks/results/transformer_students.json. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".data" / "transformer_students"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from _smoke import add_smoke, smoke_dir  # noqa: E402
from supernet_rank import TEACHER_EPOCHS, bootstrap_difference, kendall, setting  # noqa: E402

SMOKE_SPACE = {"depth": [1, 2], "embed_dim": [32, 48], "num_heads": [1, 2], "mlp_ratio": [2.0]}
_WORKER: dict = {}


def vit_recipe(epochs: int, seed: int):
    from kdsearch.spaces.families import family_recipe
    from kdsearch.training import STUDENT_RECIPE, Recipe

    return Recipe(epochs=epochs, batch_size=64, seed=seed, **{**STUDENT_RECIPE, **family_recipe("vit")})


def the_space(smoke: bool, rule: str = "even"):
    """vit_cifar at 32 px (the smoke run: an 8-student corner of it), its depth shared by ``rule``."""
    from kdsearch.spaces import load_space

    space = load_space("vit_cifar").for_input(32)
    if smoke:
        space = replace(space, choices=SMOKE_SPACE, fixed={**space.fixed, "head_dim": 16})
    return replace(space, fixed={**space.fixed, "depth_rule": rule})


def _init(per_class: int, teacher_epochs: int, work: Path) -> None:
    torch.set_num_threads(1)
    _WORKER["setting"], _WORKER["work"] = setting(per_class, teacher_epochs), work


def distil_job(job: tuple) -> dict:
    """One student distilled alone (resumes from its folder): its accuracy after each epoch and its seconds."""
    candidate_id, config, epochs = job
    from kdsearch.pipeline.student import distill_student

    task, teacher = _WORKER["setting"]
    record = distill_student(config, teacher.model, task, _WORKER["work"] / "students" / f"{candidate_id}-e{epochs}",
                             vit_recipe(epochs, 0), loss="kd")
    return {"candidate_id": candidate_id, "accuracy": float(record["val_accuracy"]), "seconds": float(record["seconds"]),
            "curve": [float(h["val_accuracy"]) for h in record["history"]]}


def supernet_scores(space, task, teacher, students: list[dict], epochs: int, work: Path) -> dict:
    """A supernet over the whole space (one band), its training time, each student's inherited-weight scores, and
    the largest difference between a student's path through it and the student extracted."""
    from kdsearch.cost import LATENCY_SEARCH
    from kdsearch.supernet import SandwichRule, prepare_supernets

    torch.set_num_threads(2)
    ranker = prepare_supernets(space, task, teacher.model, bands=1, limit_ms=None, recipe=vit_recipe(epochs, 0),
                               rule=SandwichRule(), latency={"batch_size": 1, "threads": 1, **LATENCY_SEARCH},
                               root=work / "supernets", seed=0, progress=True)
    supernet = ranker.supernets[min(ranker.supernets)].eval()
    x = torch.cat([x for x, _ in task.batches("val", 64)][:2])[:64]
    scores, diff = {}, 0.0
    for s in students:
        config = {**s["config"], "depth_rule": space.fixed["depth_rule"]}
        scores[s["candidate_id"]] = ranker.evaluate(config, 0.0)
        with torch.no_grad():
            diff = max(diff, float((supernet(config, x) - supernet.extract(config).eval()(x)).abs().max()))
    train_seconds = sum(h["seconds"] for history in ranker.histories.values() for h in history)
    return {"scores": scores, "train_seconds": train_seconds, "slice_max_abs_diff": diff,
            "holdout_images": len(ranker.task.val_labels)}


def main() -> None:
    from kdsearch._util import atomic_write_json, configure_logging
    from kdsearch.spaces import candidate_id, create_model

    configure_logging()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3, help="each student's distillation epochs")
    parser.add_argument("--supernet-epochs", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="students trained at once, one thread each")
    add_smoke(parser, "an 8-student corner of vit_cifar, 3 students, 1 epoch, 20 images per class, 1-epoch teacher")
    args = parser.parse_args()
    global WORK, RESULTS
    teacher_epochs = TEACHER_EPOCHS
    if args.smoke:
        WORK = RESULTS = smoke_dir("transformer_students")
        args.students, args.epochs, args.supernet_epochs, args.per_class, args.workers = 3, 1, 1, 20, 1
        teacher_epochs = 1
    started, load1 = time.perf_counter(), os.getloadavg()[0]
    task, teacher = setting(args.per_class, teacher_epochs)
    space = the_space(args.smoke)
    students = []
    for config in space.sample(args.students, seed=0):
        config = {k: v for k, v in config.items() if k != "depth_rule"}  # the architecture: the same for both rules
        students.append({"candidate_id": candidate_id(config), "config": config,
                         "params": sum(p.numel() for p in create_model(config, num_classes=10).parameters())})
    print(f"{len(students)} vit students; teacher {teacher.accuracy:.4f}", flush=True)

    from kdsearch.teacher.outputs import teacher_outputs

    teacher_outputs(teacher.model, task, vit_recipe(args.epochs, 0))  # filled once here, not by two workers at once
    truth, rung1, seconds = {}, {}, []
    jobs = [(s["candidate_id"], s["config"], args.epochs) for s in students]
    with multiprocessing.get_context("spawn").Pool(args.workers, _init, (args.per_class, teacher_epochs, WORK)) as pool:
        for i, done in enumerate(pool.imap_unordered(distil_job, jobs), 1):
            truth[done["candidate_id"]], rung1[done["candidate_id"]] = done["accuracy"], done["curve"][0]
            seconds.append(done["seconds"])
            print(f"[{i}/{len(jobs)}] {done['candidate_id']}: {done['accuracy']:.4f} ({done['seconds']:.0f} s)", flush=True)

    by_rule = {rule: supernet_scores(the_space(args.smoke, rule), task, teacher, students, args.supernet_epochs, WORK)
               for rule in ("even", "first")}
    ids = [s["candidate_id"] for s in students]
    target = [truth[c] for c in ids]
    rankers = {"params": [s["params"] for s in students], "halving_rung1": [rung1[c] for c in ids]}
    for rule, result in by_rule.items():
        rankers[f"supernet_{rule}"] = [result["scores"][c]["accuracy"] for c in ids]
        rankers[f"supernet_kd_{rule}"] = [-result["scores"][c]["kd_loss"] for c in ids]
    taus = {name: kendall(values, target) for name, values in rankers.items()}
    full_student = statistics.median(seconds)  # one student's whole distillation (--epochs)
    record = {
        "teacher": "search_e2e ResNet-56 (CNN): the SuperLM learns its logits", "teacher_accuracy": teacher.accuracy,
        "space": space.name + (" (smoke corner)" if args.smoke else ""), "n_students": len(students),
        "student_epochs": args.epochs, "supernet_epochs": args.supernet_epochs, "recipe": vit_recipe(args.epochs, 0).to_dict(),
        "train_images": len(task.train_labels), "test_images": len(task.val_labels),
        "supernet_tau": taus["supernet_even"]["tau"], "params_tau": taus["params"]["tau"],
        "halving_rung1_tau": taus["halving_rung1"]["tau"], "tau": taus,
        "depth_rule": {rule: taus[f"supernet_{rule}"]["tau"] for rule in by_rule},
        "supernet_minus_params": bootstrap_difference(rankers["supernet_even"], rankers["params"], target),
        "supernet_cost_ratio": by_rule["even"]["train_seconds"] / full_student,
        "supernet_train_seconds": {rule: r["train_seconds"] for rule, r in by_rule.items()},
        "student_seconds_median": full_student,
        "slice_max_abs_diff": max(r["slice_max_abs_diff"] for r in by_rule.values()),
        "target": "supernet_tau >= params_tau + 0.10", "target_met": taus["supernet_even"]["tau"] >= taus["params"]["tau"] + 0.10,
        "not_measured_yet": ["a ViT teacher (relations objective, start from its weights)", "minilm_gain_points", "cross_family"],
        "rows": [{**s, "accuracy": truth[s["candidate_id"]], "rung1": rung1[s["candidate_id"]],
                  **{f"score_{n}": rankers[n][i] for n in rankers}} for i, s in enumerate(students)],
        "wall_seconds": time.perf_counter() - started, "load1_at_start": load1, "torch": torch.__version__,
        "python": platform.python_version(), "cpus": os.cpu_count(),
    }
    atomic_write_json(RESULTS / "transformer_students.json", record)
    for name, t in taus.items():
        print(f"  τ {name:<18} {t['tau']:+.3f} (p = {t['p']:.3f})")
    print(json.dumps({k: record[k] for k in ("supernet_tau", "params_tau", "halving_rung1_tau", "depth_rule",
                                              "supernet_cost_ratio", "slice_max_abs_diff", "target_met")}, indent=1))


if __name__ == "__main__":
    main()
