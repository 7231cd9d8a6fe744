"""Transformer students (issue 31): does the SuperLM rank ViT students better than parameter count? Does MiniLM's
relation loss help a ViT student of a ViT teacher? Which family wins at a given latency?

The setting is supernet_rank.py's, so its cached teacher is reused:

1. Data: 500 training JPEGs per class of ../shared/data/cifar10-jpeg.tar.gz (5,000) and 300 test JPEGs per class
   (3,000), 32 px. The supernet is scored on its own hold-out slice of the training images, never on the test images.
2. Teachers: search_e2e's ResNet-56-type network trained on those JPEGs (cached; part ``cnn``), and a ViT trained on
   them (``VIT_TEACHER``: depth 4, hidden 128, 4 heads of 32, MLP ratio 3, patch 4; ``--vit-teacher-epochs``, with the
   teacher recipe of find; part ``vit``).
3. Part ``cnn``: ``--students`` vit_cifar candidates drawn seeded from the whole space (one subspace, K = 1), each
   distilled alone from the ResNet-56 with find's recipe for the family (KD; AdamW, the vit family's optimiser) for
   ``--epochs``; the truth is its test accuracy. Rankers: ``supernet`` (hold-out accuracy with inherited weights) and
   ``supernet_kd`` (minus the KD loss there) from a supernet over the space trained ``--supernet-epochs`` with the
   sandwich rule, for each depth rule (even: AutoDistil's spread layers; first: AutoFormer's); ``params``;
   ``halving_rung1``: the student's accuracy after the first epoch of its own run (halving's snapshot design).
4. Part ``vit``: the same ranking on the corner of vit_cifar the ViT teacher covers (``VIT_SUBSPACE``, 54 students),
   students distilled from the ViT teacher; here the SuperLM starts from the teacher's own weights, sliced, and learns
   its last-layer Q/K/V relations beside its logits (``SandwichRule`` objective ``auto`` → ``relations+kd``).
   ``minilm_gain_points``: ``--minilm-students`` of those students distilled with ``--loss minilm`` (relations + KD)
   and with KD alone, seeds 0 and 1: the mean difference in test accuracy, in points. Part ``agnostic``: the same
   students ranked by AutoDistil's task-agnostic SuperLM (``--supernet-objective relations``: the relations alone,
   then one shared epoch of logit KD), against part ``vit``'s relations + KD supernet.
5. Part ``cross``: ``cross_family`` — 20 resnet_cifar students (seeded, from the regret table, within the ViT pool's
   latency range) distilled from the ResNet-56 with the CNN recipe beside the 20 ViT students of part ``cnn``; every
   one timed now (1 thread, batch 1); at 3 budgets (the pooled latencies' 30/60/90 % quantiles) the best distilled CNN
   and ViT within each, and what ``kdsearch find --space resnet_cifar,vit_cifar`` picks there (params proxy, the
   proxy's top 2 plus each family's best in one band, the same epochs and batch size).
6. Reported: Kendall τ of each ranker against the truth (``supernet_tau`` is the even rule's, part ``cnn``), the
   paired bootstrap of τ(supernet) − τ(params), ``supernet_cost_ratio`` (the supernet's training over one median
   student's full distillation) and ``slice_max_abs_diff`` (the largest |path through the supernet − extracted
   subnet| over the students, on real test images).

    .venv/bin/python benchmarks/transformer_students.py                 # all parts, ~80 min on 2 cores
    .venv/bin/python benchmarks/transformer_students.py --parts vit     # one part; the others' figures are kept
    .venv/bin/python benchmarks/transformer_students.py --smoke         # tiny spaces, a few students, 1 epoch

Students are trained two at a time, one thread each, and resume from benchmarks/.data/transformer_students/; the
result goes to benchmarks/results/transformer_students.json (a part run alone updates its keys). Run it with
nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".data" / "transformer_students"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from _smoke import add_smoke, smoke_dir, thread_count  # noqa: E402
from supernet_rank import TEACHER_EPOCHS, bootstrap_difference, kendall, setting  # noqa: E402

PARTS = ("cnn", "vit", "agnostic", "cross")
SMOKE_SPACE = {"depth": [1, 2], "embed_dim": [32, 48], "num_heads": [1, 2], "mlp_ratio": [2.0]}
VIT_TEACHER = {"family": "vit", "depth": 4, "embed_dim": 128, "num_heads": 4, "mlp_ratio": 3.0, "patch_size": 4,
               "head_dim": 32, "img_size": 32}
VIT_SUBSPACE = {"depth": [2, 3, 4], "embed_dim": [64, 96, 128], "num_heads": [2, 3, 4], "mlp_ratio": [2.0, 3.0]}
SMOKE_VIT_TEACHER = {**VIT_TEACHER, "depth": 2, "embed_dim": 48, "num_heads": 2, "mlp_ratio": 2.0, "head_dim": 16}
VIT_TEACHER_EPOCHS = 15
_WORKER: dict = {}


def family_recipe(epochs: int, seed: int, family: str = "vit"):
    """find's student recipe for the family (vit: AdamW), batch 64."""
    from kdsearch.spaces.families import family_recipe as recipe_of
    from kdsearch.training import STUDENT_RECIPE, Recipe

    return Recipe(epochs=epochs, batch_size=64, seed=seed, **{**STUDENT_RECIPE, **recipe_of(family)})


def the_space(smoke: bool, rule: str = "even", corner: dict | None = None):
    """vit_cifar at 32 px (or ``corner`` of it; the smoke run: an 8-student corner), its depth shared by ``rule``."""
    from kdsearch.spaces import load_space

    space = load_space("vit_cifar").for_input(32)
    if smoke:
        space = replace(space, choices=SMOKE_SPACE, fixed={**space.fixed, "head_dim": 16})
    elif corner:
        space = replace(space, choices=corner, name="vit_cifar corner")
    return replace(space, fixed={**space.fixed, "depth_rule": rule})


def vit_teacher(task, smoke: bool, epochs: int):
    """A ViT trained on the task with find's teacher recipe (cached by its config)."""
    from kdsearch.teacher import load_teacher

    return load_teacher(json.dumps(SMOKE_VIT_TEACHER if smoke else VIT_TEACHER), task, epochs=epochs, measure=False)


def _init(per_class: int, teacher_epochs: int, work: Path, vit: tuple | None) -> None:
    torch.set_num_threads(1)
    if "setting" not in _WORKER:  # (run in-process, the smoke run calls this once per part)
        _WORKER["setting"], _WORKER["work"] = setting(per_class, teacher_epochs), work
    if vit is not None and "vit" not in _WORKER:
        _WORKER["vit"] = vit_teacher(_WORKER["setting"][0], *vit)


def distil_job(job: tuple) -> dict:
    """One student distilled alone (resumes from its folder): its accuracy after each epoch and its seconds."""
    candidate_id, config, epochs, seed, loss, teacher_name = job
    from kdsearch.pipeline.student import distill_student

    task, resnet = _WORKER["setting"]
    teacher = resnet if teacher_name == "resnet56" else _WORKER["vit"]
    folder = (f"{candidate_id}-e{epochs}" if (teacher_name, loss, seed) == ("resnet56", "kd", 0)  # the first runs' names
              else f"{teacher_name}-{loss}-{candidate_id}-e{epochs}-s{seed}")
    record = distill_student(config, teacher.model, task, _WORKER["work"] / "students" / folder,
                             family_recipe(epochs, seed, config["family"]), loss=loss)
    return {"key": (candidate_id, epochs, seed, loss, teacher_name), "accuracy": float(record["val_accuracy"]), "seconds": float(record["seconds"]),
            "curve": [float(h["val_accuracy"]) for h in record["history"]]}


def distil_all(jobs: list[tuple], args, vit: tuple | None = None) -> dict[tuple, dict]:
    """Every job in a pool of ``args.workers`` one-thread processes: {job: its result}."""
    done, setup = {}, (args.per_class, args.teacher_epochs, WORK, vit)
    if args.workers == 1:  # in this process (the smoke run): no worker to start, the data loaded once
        threads = torch.get_num_threads()
        _init(*setup)
        results = map(distil_job, jobs)
    else:
        pool = multiprocessing.get_context("spawn").Pool(args.workers, _init, setup)
        results = pool.imap_unordered(distil_job, jobs)
    try:
        for i, result in enumerate(results, 1):
            key = result["key"]  # (candidate_id, epochs, seed, loss, teacher)
            done[key] = result
            print(f"[{i}/{len(jobs)}] {key[3]} from {key[4]} seed {key[2]} {key[0]}: {result['accuracy']:.4f} "
                  f"({result['seconds']:.0f} s)", flush=True)
    finally:
        if args.workers == 1:
            torch.set_num_threads(threads)
        else:
            pool.close()
            pool.join()
    return done


def supernet_scores(space, task, teacher, students: list[dict], epochs: int, work: Path, rule=None) -> dict:
    """A supernet over the whole space (one band), its training time, each student's inherited-weight scores, and
    the largest difference between a student's path through it and the student extracted."""
    from kdsearch.cost import LATENCY_SEARCH
    from kdsearch.supernet import SandwichRule, prepare_supernets, resolve_rule

    torch.set_num_threads(thread_count(2))
    rule = rule or SandwichRule()
    ranker = prepare_supernets(space, task, teacher.model, bands=1, limit_ms=None, recipe=family_recipe(epochs, 0),
                               rule=rule, latency={"batch_size": 1, "threads": 1, **LATENCY_SEARCH},
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
            "holdout_images": len(ranker.task.val_labels), "objective": resolve_rule(rule, space, task, teacher.model).objective,
            "started_from_teacher": _starts_from_teacher(space, task, teacher.model)}


def _starts_from_teacher(space, task, teacher) -> bool:
    from kdsearch.supernet import Supernet

    return bool(Supernet(space, task.num_classes, task.in_chans).start_from(teacher))


def depth_rules(args) -> tuple[str, ...]:
    """Both ways of sharing depth (the smoke run: AutoDistil's alone)."""
    return ("even",) if args.smoke else ("even", "first")


def draw_students(space, count: int) -> list[dict]:
    from kdsearch.spaces import candidate_id, create_model

    students = []
    for config in space.sample(count, seed=0):
        config = {k: v for k, v in config.items() if k != "depth_rule"}  # the architecture: the same for both rules
        students.append({"candidate_id": candidate_id(config), "config": config,
                         "params": sum(p.numel() for p in create_model(config, num_classes=10).parameters())})
    return students


def ranking(students, truth, rung1, by_rule, seconds, space, teacher, args) -> dict:
    """τ of every ranker against the truth, the bootstrap against params, the cost and the slice check."""
    ids = [s["candidate_id"] for s in students]
    target = [truth[c] for c in ids]
    rankers = {"params": [s["params"] for s in students], "halving_rung1": [rung1[c] for c in ids]}
    for rule, result in by_rule.items():
        rankers[f"supernet_{rule}"] = [result["scores"][c]["accuracy"] for c in ids]
        rankers[f"supernet_kd_{rule}"] = [-result["scores"][c]["kd_loss"] for c in ids]
    taus = {name: kendall(values, target) for name, values in rankers.items()}
    full_student = statistics.median(seconds)  # one student's whole distillation (--epochs)
    for name, t in taus.items():
        print(f"  τ {name:<18} {t['tau']:+.3f} (p = {t['p']:.3f})")
    return {
        "teacher_accuracy": teacher.accuracy, "space": space.name + (" (smoke corner)" if args.smoke else ""),
        "space_choices": space.choices, "n_students": len(students), "student_epochs": args.epochs,
        "supernet_epochs": args.supernet_epochs, "supernet_tau": taus["supernet_even"]["tau"],
        "params_tau": taus["params"]["tau"], "halving_rung1_tau": taus["halving_rung1"]["tau"], "tau": taus,
        "depth_rule": {rule: taus[f"supernet_{rule}"]["tau"] for rule in by_rule},
        "supernet_minus_params": bootstrap_difference(rankers["supernet_even"], rankers["params"], target),
        "supernet_cost_ratio": by_rule["even"]["train_seconds"] / full_student,
        "supernet_train_seconds": {rule: r["train_seconds"] for rule, r in by_rule.items()},
        "supernet_objective": by_rule["even"]["objective"], "supernet_started_from_teacher": by_rule["even"]["started_from_teacher"],
        "student_seconds_median": full_student, "slice_max_abs_diff": max(r["slice_max_abs_diff"] for r in by_rule.values()),
        "target": "supernet_tau >= params_tau + 0.10", "target_met": taus["supernet_even"]["tau"] >= taus["params"]["tau"] + 0.10,
        "rows": [{**s, "accuracy": truth[s["candidate_id"]], "rung1": rung1[s["candidate_id"]],
                  **{f"score_{n}": rankers[n][i] for n in rankers}} for i, s in enumerate(students)],
    }


def part_cnn(task, teacher, args) -> dict:
    """The SuperLM's ranking of vit_cifar students distilled from the ResNet-56 (the SuperLM learns its logits)."""
    space = the_space(args.smoke)
    students = draw_students(space, args.students)
    print(f"part cnn: {len(students)} vit students; teacher {teacher.accuracy:.4f}", flush=True)
    done = distil_all([(s["candidate_id"], s["config"], args.epochs, 0, "kd", "resnet56") for s in students], args)
    truth = {job[0]: r["accuracy"] for job, r in done.items()}
    rung1 = {job[0]: r["curve"][0] for job, r in done.items()}
    by_rule = {rule: supernet_scores(the_space(args.smoke, rule), task, teacher, students, args.supernet_epochs, WORK)
               for rule in depth_rules(args)}
    record = ranking(students, truth, rung1, by_rule, [r["seconds"] for r in done.values()], space, teacher, args)
    return {**record, "teacher": "search_e2e ResNet-56 (CNN): the SuperLM learns its logits"}


def part_vit(task, args) -> dict:
    """The same ranking with a ViT teacher (relations + KD, started from its weights), and MiniLM's gain over KD."""
    vit = (args.smoke, args.vit_teacher_epochs)
    teacher = vit_teacher(task, *vit)
    space = the_space(args.smoke, corner=VIT_SUBSPACE)
    students = draw_students(space, args.students)
    print(f"part vit: {len(students)} vit students; ViT teacher {teacher.accuracy:.4f}", flush=True)
    gain_students = students[:args.minilm_students]
    jobs = [(s["candidate_id"], s["config"], args.epochs, 0, "kd", "vit") for s in students]
    jobs += [(s["candidate_id"], s["config"], args.epochs, seed, loss, "vit") for s in gain_students
             for loss, seed in (("kd", 1), ("minilm", 0), ("minilm", 1))]
    done = distil_all(jobs, args, vit)
    truth = {job[0]: r["accuracy"] for job, r in done.items() if job[2:4] == (0, "kd")}
    rung1 = {job[0]: r["curve"][0] for job, r in done.items() if job[2:4] == (0, "kd")}
    by_rule = {rule: supernet_scores(the_space(args.smoke, rule, VIT_SUBSPACE), task, teacher, students,
                                     args.supernet_epochs, WORK / "vit-teacher") for rule in depth_rules(args)}
    record = ranking(students, truth, rung1, by_rule, [r["seconds"] for job, r in done.items() if job[2:4] == (0, "kd")],
                     space, teacher, args)
    accuracy = {(job[0], job[2], job[3]): r["accuracy"] for job, r in done.items()}
    per_student = [{"candidate_id": s["candidate_id"], "config": s["config"],
                    **{f"{loss}_seed{seed}": accuracy[s["candidate_id"], seed, loss] for loss in ("kd", "minilm") for seed in (0, 1)}}
                   for s in gain_students]
    gains = [100 * (r[f"minilm_seed{seed}"] - r[f"kd_seed{seed}"]) for r in per_student for seed in (0, 1)]
    minilm_seconds = [r["seconds"] for job, r in done.items() if job[3] == "minilm"]
    kd_seconds = [r["seconds"] for job, r in done.items() if job[3] == "kd" and job[0] in {s["candidate_id"] for s in gain_students}]
    print(f"  minilm + KD vs KD: {statistics.mean(gains):+.2f} points (each: {', '.join(f'{g:+.1f}' for g in gains)})")
    return {**record, "teacher": f"ViT {json.dumps(SMOKE_VIT_TEACHER if args.smoke else VIT_TEACHER)} trained "
                                 f"{args.vit_teacher_epochs} epochs on the task",
            "minilm_gain_points": statistics.mean(gains), "minilm_gains_each": gains,
            "minilm_gain_std": statistics.stdev(gains) if len(gains) > 1 else 0.0, "minilm_students": per_student,
            "minilm_seconds_over_kd": statistics.median(minilm_seconds) / statistics.median(kd_seconds)}


def part_agnostic(task, args, vit_record: dict) -> dict:
    """AutoDistil's task-agnostic SuperLM (the relations alone, then one shared epoch of logit KD) on part vit's
    students and teacher, against part vit's relations + KD supernet."""
    from kdsearch.supernet import SandwichRule

    teacher = vit_teacher(task, args.smoke, args.vit_teacher_epochs)
    rows = vit_record["rows"]
    students = [{k: r[k] for k in ("candidate_id", "config", "params")} for r in rows]
    scored = supernet_scores(the_space(args.smoke, "even", VIT_SUBSPACE), task, teacher, students, args.supernet_epochs,
                             WORK / "vit-teacher", rule=SandwichRule(objective="relations", finetune_epochs=1))
    truth = [r["accuracy"] for r in rows]
    accuracy = [scored["scores"][s["candidate_id"]]["accuracy"] for s in students]
    kd = [-scored["scores"][s["candidate_id"]]["kd_loss"] for s in students]
    result = {"objective": "relations, then 1 shared epoch of logit KD", "supernet_tau": kendall(accuracy, truth),
              "supernet_kd_tau": kendall(kd, truth), "against_relations_kd": vit_record["tau"]["supernet_even"],
              "params_tau": vit_record["tau"]["params"], "train_seconds": scored["train_seconds"],
              "supernet_cost_ratio": scored["train_seconds"] / vit_record["student_seconds_median"],
              "minus_relations_kd": bootstrap_difference(accuracy, [r["score_supernet_even"] for r in rows], truth)}
    print(f"  task-agnostic SuperLM: τ {result['supernet_tau']['tau']:+.3f} (KD score {result['supernet_kd_tau']['tau']:+.3f}) "
          f"against relations + KD {result['against_relations_kd']['tau']:+.3f}", flush=True)
    return result


def cnn_pool(count: int, upper_ms: float, lower_ms: float, smoke: bool) -> list[dict]:
    """resnet_cifar students of the regret table within the ViT pool's latency range (seeded)."""
    from kdsearch.spaces import candidate_id, load_space

    if smoke:
        return [{"candidate_id": candidate_id(c), "config": c} for c in load_space("resnet_cifar_s1").sample(count, seed=0)]
    from search_regret import load_ground_truth

    table = load_ground_truth("resnet_cifar")
    inside = table[(table["latency_p50_ms"] <= upper_ms) & (table["latency_p50_ms"] >= lower_ms)]
    return [{"candidate_id": row.candidate_id, "config": json.loads(row.config)}
            for row in inside.sample(n=min(count, len(inside)), random_state=0).itertuples()]


def timed(configs: list[dict]) -> list[float]:
    """Each config's p50 latency now, 1 thread, batch 1 (find's --threads 1 search settings)."""
    from kdsearch.cost import LATENCY_SEARCH, measure_latency
    from kdsearch.spaces import create_model

    torch.set_num_threads(1)
    out = []
    for config in configs:
        model = create_model(config, num_classes=10).eval()
        out.append(measure_latency(model, (3, 32, 32), device="cpu", batch_size=1, threads=1, **LATENCY_SEARCH).p50_ms)
    torch.set_num_threads(thread_count(2))
    return out


def find_pick(budget_ms: float, args) -> dict:
    """What ``kdsearch find --space resnet_cifar,vit_cifar`` distils and picks within ``budget_ms``."""
    import pandas as pd
    from proxy_rank import cifar_folder

    from kdsearch.cli import main as kdsearch

    out = WORK / f"find-{budget_ms:.3f}ms"
    spaces = "resnet_cifar_s1,vit_cifar" if args.smoke else "resnet_cifar,vit_cifar"
    argv = ["find", "--teacher", "search_e2e:resnet56", "--teacher-epochs", str(args.teacher_epochs), "--data",
            str(cifar_folder(args.per_class)), "--space", spaces, "--budget", f"{budget_ms:.3f}ms", "--trials",
            str(6 if args.smoke else 40), "--select", "proxy", "--top-k", "2", "--front", "1", "--controls", "0",
            "--epochs", str(args.epochs), "--batch-size", "64", "--threads", "1", "--out", str(out), "-q"]
    command = "kdsearch " + " ".join(argv).replace(str(ROOT) + "/", "")
    if not (out / "report.html").exists():  # a finished run is read again; an interrupted one starts over
        shutil.rmtree(out, ignore_errors=True)
        torch.set_num_threads(thread_count(2))
        code = kdsearch(argv)
        if code != 0:
            return {"command": command, "exit_code": code, "family": None}
    df = pd.read_csv(out / "candidates.csv")
    df["family"] = df["config"].map(lambda c: json.loads(c)["family"])
    done = df[df["distilled_accuracy"].notna() & df["within_budget"]]
    best = done.loc[done["distilled_accuracy"].idxmax()] if len(done) else None
    return {"command": command, "distilled": len(done), "families_distilled": sorted(done["family"].unique()),
            **({"family": best["family"], "accuracy": float(best["distilled_accuracy"]),
                "latency_ms": float(best["latency_p50_ms"]), "config": json.loads(best["config"])}
               if best is not None else {"family": None})}


def part_cross(args, vit_rows: list[dict]) -> dict:
    """The best distilled CNN and ViT at 3 budgets, and find's pick over both families there."""
    vit_pool = [{"candidate_id": r["candidate_id"], "config": r["config"], "accuracy": r["accuracy"]} for r in vit_rows]
    vit_ms = timed([r["config"] for r in vit_pool])
    cnns = cnn_pool(len(vit_pool), max(vit_ms), min(vit_ms), args.smoke)
    done = distil_all([(c["candidate_id"], c["config"], args.epochs, 0, "kd", "resnet56") for c in cnns], args)
    accuracy = {job[0]: r["accuracy"] for job, r in done.items()}
    cnn_ms = timed([c["config"] for c in cnns])
    pool = [{**v, "family": "vit", "latency_ms": ms} for v, ms in zip(vit_pool, vit_ms)]
    pool += [{**c, "family": "resnet_cifar", "accuracy": accuracy[c["candidate_id"]], "latency_ms": ms} for c, ms in zip(cnns, cnn_ms)]
    budgets = [float(np.quantile([p["latency_ms"] for p in pool], q)) for q in ((0.6,) if args.smoke else (0.3, 0.6, 0.9))]
    rows = []
    for budget in budgets:
        row = {"budget_ms": budget}
        for family in ("resnet_cifar", "vit"):
            inside = [p for p in pool if p["family"] == family and p["latency_ms"] <= budget]
            best = max(inside, key=lambda p: p["accuracy"]) if inside else None
            row[f"best_{family}"] = ({"accuracy": best["accuracy"], "latency_ms": best["latency_ms"], "config": best["config"],
                                      "of": len(inside)} if best else None)
        row["find"] = find_pick(budget, args)
        rows.append(row)
        print(f"  budget {budget:.2f} ms: best CNN {_fmt(row['best_resnet_cifar'])}, best ViT {_fmt(row['best_vit'])}, "
              f"find picks {row['find'].get('family')} {row['find'].get('accuracy', float('nan')):.4f}", flush=True)
    return {"budgets": rows, "pool": pool, "timing": "p50, 1 thread, batch 1, this run",
            "recipe": {"resnet_cifar": family_recipe(args.epochs, 0, "resnet_cifar").to_dict(),
                       "vit": family_recipe(args.epochs, 0, "vit").to_dict()}}


def _fmt(best: dict | None) -> str:
    return "none" if best is None else f"{best['accuracy']:.4f} at {best['latency_ms']:.2f} ms"


def main() -> None:
    from kdsearch._util import atomic_write_json, configure_logging

    configure_logging()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--students", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3, help="each student's distillation epochs")
    parser.add_argument("--supernet-epochs", type=int, default=3)
    parser.add_argument("--vit-teacher-epochs", type=int, default=VIT_TEACHER_EPOCHS)
    parser.add_argument("--minilm-students", type=int, default=4, help="students distilled with minilm and KD, 2 seeds each")
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="students trained at once, one thread each")
    add_smoke(parser, "8-student corners, 3 students, 1 epoch, 20 images per class, 1-epoch teachers")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",")]
    if not set(parts) <= set(PARTS):
        parser.error(f"--parts takes {', '.join(PARTS)}")
    global WORK, RESULTS
    args.teacher_epochs = TEACHER_EPOCHS
    if args.smoke:
        WORK = RESULTS = smoke_dir("transformer_students")
        args.students, args.epochs, args.supernet_epochs, args.per_class, args.workers = 3, 1, 1, 20, 1
        args.teacher_epochs = args.vit_teacher_epochs = args.minilm_students = 1
    started, load1 = time.perf_counter(), os.getloadavg()[0]
    task, teacher = setting(args.per_class, args.teacher_epochs)
    from kdsearch.teacher.outputs import teacher_outputs

    teacher_outputs(teacher.model, task, family_recipe(args.epochs, 0))  # filled once here, not by two workers at once
    path = RESULTS / "transformer_students.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    record.pop("not_measured_yet", None)
    if "cnn" in parts:
        record.update(part_cnn(task, teacher, args))
    if "vit" in parts:
        record["vit_teacher"] = part_vit(task, args)
        record["minilm_gain_points"] = record["vit_teacher"]["minilm_gain_points"]
    if "agnostic" in parts:
        record["vit_teacher"]["task_agnostic"] = part_agnostic(task, args, record["vit_teacher"])
    if "cross" in parts:
        record["cross_family"] = part_cross(args, record["rows"])
    record.update({
        "recipe": family_recipe(args.epochs, 0).to_dict(), "train_images": len(task.train_labels),
        "test_images": len(task.val_labels), "parts_run": parts, "wall_seconds": time.perf_counter() - started,
        "load1_at_start": load1, "torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
    })
    atomic_write_json(path, record)
    keys = ("supernet_tau", "params_tau", "halving_rung1_tau", "depth_rule", "supernet_cost_ratio", "slice_max_abs_diff",
            "target_met", "minilm_gain_points")
    print(json.dumps({k: record.get(k) for k in keys}, indent=1))
    if "vit_teacher" in record:
        print("vit teacher:", json.dumps({k: record["vit_teacher"].get(k) for k in keys}, indent=1))


if __name__ == "__main__":
    main()
