"""Do training-free proxies predict the distilled student? Ground truth from real distillation, then Kendall τ.

Ground truth: students spread over two spaces — ``search_spaces/resnet_cifar.yaml`` (depths *and*
widths, where parameter count is not the whole story) and NAS-Bench-201 cells (block types: five
ops on six edges) — each distilled twice (KD, T = 4; seeds 0 and 1) and trained once without KD
(cross-entropy) from one ResNet-56-type teacher trained once on 20,000 real CIFAR-10 JPEGs
(../shared/data). One fixed short recipe sized for 2 CPU cores; the target is the KD accuracy averaged
over the two seeds, and the seed-to-seed Kendall τ is reported, so the proxies' τ can be read against
the noise floor.
Everything is resumable: each student's result lives in benchmarks/.data/proxy_rank/ (re-running
picks up where a killed run stopped, mid-epoch included).

Then every registered proxy scores every student (several proxy batches, 2 seeds) and the script
prints τ and ρ of every proxy, params and FLOPs against distilled and against no-KD accuracy, picks
the rank-aggregation ensemble out of sample (leave-one-space-out and repeated 2-fold), and writes
``benchmarks/results/proxy_rank.json`` (+ ``proxy_rank_students.csv`` with per-student accuracies).

    .venv/bin/python benchmarks/proxy_rank.py            # ~1 h on 2 cores (ground truth, then proxies)
    .venv/bin/python benchmarks/proxy_rank.py --reuse    # proxies only, over the committed ground truth
                                                         # (a fresh clone first re-trains the teacher, ~15 min)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _smoke import add_smoke, smoke_dir, thread_count  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / ".data" / "proxy_rank"
TEACHER = {"family": "resnet_cifar", "depth1": 9, "depth2": 9, "depth3": 9, "width1": 16, "width2": 32, "width3": 64}
# NAS-Bench-201 cells in a 1-cell-per-stage skeleton: the same 15,625 cells, 5× cheaper to train on 2 cores.
NB201_SKELETON = {"channels": 16, "cells_per_stage": 1}


def cifar_folder(per_class_train: int = 500) -> Path:
    """First ``per_class_train`` training images per class of the shared archive (so a larger cut contains
    a smaller one) and always the same 3,000 test images, which keep the accuracy's error ~0.9 %. A cut of fewer
    than 100 training images per class is a smoke run's: it keeps 20 test images per class (scoring 3,000 images
    was most of the smoke runs' time, and their accuracies mean nothing)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import _extract_subset

    per_class_test = 300 if per_class_train >= 100 else 20
    dest = ROOT / "benchmarks" / ".data" / f"cifar10-proxy-rank-{per_class_train}-{per_class_test}"
    if not (dest / "test").exists():
        _extract_subset(dest, per_class_train=per_class_train, per_class_test=per_class_test)
    return dest


def _nb201_connected(config: dict) -> bool:
    """Does any non-'none' path lead from the cell input to its output? (Disconnected cells are chance-level.)"""
    reach = {0}
    for to in (1, 2, 3):
        if any(src in reach and config[f"edge_{to}_{src}"] != "none" for src in range(to)):
            reach.add(to)
    return 3 in reach


def sample_students(n_resnet: int, n_nb201: int, seed: int = 0) -> list[dict]:
    """A fixed, seeded spread of students, the two spaces interleaved (a partial run stays balanced)."""
    from kdsearch.spaces import load_space

    rng = random.Random(seed)
    resnet = load_space("search_spaces/resnet_cifar.yaml")
    nb201 = load_space("search_spaces/nasbench201.yaml")
    picked_r: list[dict] = []
    while len(picked_r) < n_resnet:
        config = {"family": "resnet_cifar", **{k: rng.choice(v) for k, v in resnet.choices.items()}}
        if config not in picked_r:
            picked_r.append(config)
    picked_n: list[dict] = []
    while len(picked_n) < n_nb201:
        config = {"family": "nasbench201", **{k: rng.choice(v) for k, v in nb201.choices.items()}, **NB201_SKELETON}
        if config not in picked_n and _nb201_connected(config):
            picked_n.append(config)
    out, queue_r, queue_n = [], list(picked_r), list(picked_n)
    while queue_r or queue_n:
        for queue, k in ((queue_r, 2), (queue_n, 1)):
            for _ in range(k):
                if queue:
                    out.append(queue.pop(0))
    return out


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def load_or_train_teacher(epochs: int, per_class: int, log=print):
    """The ground truth's teacher: read from benchmarks/.data, or trained there (seeded) when it is missing.

    A fresh clone has no benchmarks/.data (git-ignored), so ``--reuse`` rebuilds the teacher the first time
    (~15 min on 2 cores for the default 8 epochs on 20,000 images) and says so.
    Returns (teacher in eval mode, its record, the teacher's task).
    """
    from safetensors.torch import load_model, save_model

    from kdsearch._util import atomic_path, atomic_write_json
    from kdsearch.data import load_task
    from kdsearch.spaces import create_model
    from kdsearch.training import Recipe, evaluate, fit

    task = load_task(str(cifar_folder(per_class)))
    WORK.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    teacher = create_model(TEACHER, num_classes=10)
    teacher_tag = f"t{epochs}ep{len(task.train_labels)}"  # KD results depend on the teacher; no-KD ones do not
    teacher_file = WORK / f"teacher_{teacher_tag}.safetensors"
    teacher_meta = WORK / f"teacher_{teacher_tag}.json"
    teacher_partial = WORK / f"teacher_{teacher_tag}.partial.pt"  # fit resumes from it if interrupted
    if teacher_file.exists():
        load_model(teacher, str(teacher_file))
        t_info = json.loads(teacher_meta.read_text())
    else:
        log(f"teacher weights {_shown(teacher_file)} not found: training the teacher ({epochs} epochs on "
            f"{len(task.train_labels):,} images, seeded) and keeping it there for later runs")
        result = fit(teacher, task, Recipe(epochs=epochs, lr=0.1, batch_size=64), checkpoint=teacher_partial, progress=True,
                     desc="teacher")
        with atomic_path(teacher_file) as tmp:
            save_model(teacher, str(tmp))
        t_info = {"arch": TEACHER, "epochs": epochs, "train_images": len(task.train_labels),
                  "val_accuracy": result.accuracy, "seconds": result.seconds}
        atomic_write_json(teacher_meta, t_info)
        teacher_partial.unlink(missing_ok=True)
    teacher.eval()
    # accuracy on this task's validation images (the cached teacher may have been scored on another split)
    t_info = {**t_info, "tag": teacher_tag, "val_accuracy": evaluate(teacher, task), "val_images": len(task.val_labels)}
    return teacher, t_info, task


def build_ground_truth(args) -> dict:
    from scipy.stats import kendalltau

    from kdsearch._util import atomic_write_json
    from kdsearch.cost import count_flops, count_params
    from kdsearch.data import load_task
    from kdsearch.pipeline import distill_student
    from kdsearch.spaces import candidate_id, create_model
    from kdsearch.training import Recipe

    teacher, t_info, task = load_or_train_teacher(args.teacher_epochs, args.teacher_per_class)
    print(f"teacher: {t_info['val_accuracy']:.4f} after {t_info['epochs']} epochs", flush=True)
    if args.teacher_only:  # train it once with all threads before starting --shard workers
        sys.exit(0)

    recipe = dict(epochs=args.epochs, lr=0.05, batch_size=64, augment=False)  # no augmentation: teacher logits cached once
    students = sample_students(args.resnet, args.nb201)
    # students train on a class-balanced subset of the teacher's training images
    student_task = load_task(str(cifar_folder()), train_samples=args.train_samples, val_samples=args.val_samples)
    runs_dir = WORK / f"students_n{len(student_task.train_labels)}_e{args.epochs}"
    rows = []
    started = time.perf_counter()
    shard, shards = (int(v) for v in args.shard.split("/"))
    for i, config in enumerate(students):
        if i % shards != shard:
            continue
        sid = candidate_id(config)
        model = create_model(config, num_classes=10)
        row = {"id": sid, "space": config["family"], "config": config, "params": count_params(model),
               "flops": count_flops(model, task.input_shape)}
        runs = [("kd", 0), ("ce", 0)] + ([("kd", 1)] if i < args.seed_students else [])
        for loss, seed in runs:
            run_name = f"kd_{t_info['tag']}_s{seed}" if loss == "kd" else f"{loss}_s{seed}"
            record = distill_student(config, teacher, student_task, runs_dir / sid / run_name, Recipe(**recipe, seed=seed),
                                     loss=loss, progress=False)
            row[f"acc_{loss}_s{seed}"] = record["val_accuracy"]
            row[f"seconds_{loss}_s{seed}"] = record["seconds"]
        rows.append(row)
        print(f"[{i + 1}/{len(students)}] {config['family']:<12} {sid} params {row['params'] / 1e6:5.2f}M "
              f"KD {row['acc_kd_s0']:.4f} no-KD {row['acc_ce_s0']:.4f}  ({time.perf_counter() - started:.0f} s)", flush=True)
    if shards > 1:
        print(f"shard {shard}/{shards} done; run without --shard to gather (finished students are read, not retrained)")
        sys.exit(0)
    paired = [r for r in rows if "acc_kd_s1" in r]
    seed_tau = float(kendalltau([r["acc_kd_s0"] for r in paired], [r["acc_kd_s1"] for r in paired]).statistic)
    for r in rows:  # the target: KD accuracy averaged over the seeds trained (halves the seed noise's variance)
        r["acc_kd"] = statistics.mean(r[k] for k in ("acc_kd_s0", "acc_kd_s1") if k in r)
    record = {
        "data": student_task.description, "train_images": len(student_task.train_labels),
        "val_images": len(student_task.val_labels), "teacher": t_info, "teacher_train_images": len(task.train_labels), "recipe": recipe, "loss": "kd (T=4, CE 0.1 / KD 0.9) and ce (no KD)",
        "nb201_skeleton": NB201_SKELETON, "n_students": len(rows), "seed_tau_students": len(paired),
        "ground_truth_seed_tau": seed_tau, "students": rows,
    }
    atomic_write_json(args.results / "proxy_rank_ground_truth.json", record)
    print(f"ground truth: {len(rows)} students, seed-to-seed τ {seed_tau:.3f} over {len(paired)} students", flush=True)
    return record


def scorable_proxies(names: list[str]) -> tuple[list[str], list[str]]:
    """(the proxies this benchmark can score without a supernet, the ones it leaves out)."""
    from kdsearch.proxies import needs_supernet

    return [n for n in names if not needs_supernet([n])], [n for n in names if needs_supernet([n])]


def score_students(ground_truth: dict, names: list[str], batch_seeds: list[int], batch_size: int = 64) -> list[dict]:
    """Every proxy on every student, averaged over proxy batches/init seeds (cost in ms kept per proxy)."""
    from kdsearch.data import load_task
    from kdsearch.proxies import ProxyContext, score
    from kdsearch.spaces import create_model

    task = load_task(str(cifar_folder()))
    t = ground_truth["teacher"]
    wrapped, _, _ = load_or_train_teacher(t["epochs"], ground_truth["teacher_train_images"] // 10)
    contexts = []
    for seed in batch_seeds:
        x, y = task.sample_batch(batch_size, seed=seed)
        contexts.append(ProxyContext(teacher=wrapped, images=x, labels=y, num_classes=10, input_shape=task.input_shape))
    rows = []
    for i, student in enumerate(ground_truth["students"]):
        per_seed = []
        for seed, ctx in zip(batch_seeds, contexts):
            torch.manual_seed(seed)
            model = create_model(student["config"], num_classes=10)
            per_seed.append(score(names, model, ctx, {"params": student["params"], "flops": student["flops"]}))
        row = {"id": student["id"]}
        for name in names:
            row[name] = sum(s[name] for s in per_seed) / len(per_seed)
            row[f"{name}_ms"] = sum(s[f"{name}_ms"] for s in per_seed) / len(per_seed)
            row[f"{name}_seeds"] = [s[name] for s in per_seed]
        rows.append(row)
        print(f"  proxies {i + 1}/{len(ground_truth['students'])}", end="\r", flush=True)
    print()
    return rows


def _tau(a, b) -> float:
    from scipy.stats import kendalltau

    value = kendalltau(a, b).statistic
    return 0.0 if value != value else float(value)  # NaN (a constant proxy) counts as no information


def _rho(a, b) -> float:
    from scipy.stats import spearmanr

    value = spearmanr(a, b).statistic
    return 0.0 if value != value else float(value)


def ensemble_candidates(names: list[str]) -> list[dict[str, float]]:
    """Every single proxy, and every pair and triple with weights in {1, 2} — the evidence picks among these."""
    import itertools

    out = [{n: 1.0} for n in names]
    for a, b in itertools.combinations(names, 2):
        out += [{a: 1.0, b: 1.0}, {a: 2.0, b: 1.0}, {a: 1.0, b: 2.0}]
    for combo in itertools.combinations(names, 3):
        out.append(dict.fromkeys(combo, 1.0))
    return out


def ensemble_name(weights: dict[str, float]) -> str:
    return "+".join(name if w == 1 else f"{w:g}*{name}" for name, w in weights.items())


def _ensemble_tau(weights, scores, accuracy, idx) -> float:
    from kdsearch.proxies.ensemble import rank_scores

    sub = {n: [scores[n][i] for i in idx] for n in weights}
    return _tau(rank_scores(sub, weights), [accuracy[i] for i in idx])


def select_default(scores: dict[str, list[float]], accuracy: list[float], spaces: list[str], repeats: int = 30) -> dict:
    """Choose the default out of sample: pick by τ on one half of the students, judge on the other half.

    Picking the best of ~1,100 candidates on 30 noisy students overfits (the full-data winner's τ is
    optimistic), so the default is the candidate picked most often across the 2 × ``repeats`` training
    halves (stability selection; ties → higher full-data τ), and the procedure's τ on the held-out
    halves is reported next to params' and FLOPs' on the same halves. That pick becomes the default
    only if the procedure beats params on the held-out halves; otherwise the default is params.
    """
    import numpy as np

    names = list(scores)
    candidates = ensemble_candidates(names)
    n = len(accuracy)
    everyone = list(range(n))
    full = [_ensemble_tau(w, scores, accuracy, everyone) for w in candidates]
    best_full = candidates[int(np.argmax(full))]
    rng = np.random.default_rng(0)
    held_out, params_held_out, flops_held_out, picks = [], [], [], {}
    for _ in range(repeats):
        fold_a, fold_b = [], []
        for space in sorted(set(spaces)):  # stratified by space
            members = [i for i in everyone if spaces[i] == space]
            rng.shuffle(members)
            fold_a += members[: len(members) // 2]
            fold_b += members[len(members) // 2:]
        for train, test in ((fold_a, fold_b), (fold_b, fold_a)):
            taus = [_ensemble_tau(w, scores, accuracy, train) for w in candidates]
            pick = candidates[int(np.argmax(taus))]
            picks[ensemble_name(pick)] = picks.get(ensemble_name(pick), 0) + 1
            held_out.append(_ensemble_tau(pick, scores, accuracy, test))
            params_held_out.append(_ensemble_tau({"params": 1.0}, scores, accuracy, test))
            flops_held_out.append(_ensemble_tau({"flops": 1.0}, scores, accuracy, test))
    cross_space = {}
    for space in sorted(set(spaces)):
        train = [i for i in everyone if spaces[i] == space]
        test = [i for i in everyone if spaces[i] != space]
        if len(train) >= 4 and len(test) >= 4:
            taus = [_ensemble_tau(w, scores, accuracy, train) for w in candidates]
            pick = candidates[int(np.argmax(taus))]
            cross_space[f"chosen_on_{space}"] = {
                "pick": ensemble_name(pick), "tau_on_other_space": _ensemble_tau(pick, scores, accuracy, test),
                "params_tau_on_other_space": _ensemble_tau({"params": 1.0}, scores, accuracy, test),
            }
    full_by_name = {ensemble_name(w): t for w, t in zip(candidates, full)}
    stable_pick = max(picks, key=lambda name: (picks[name], full_by_name[name]))
    # Selecting among ~1,100 candidates is itself a model; it earns the default only if, judged on
    # held-out halves, it beats the plain size term it would replace.
    selection_validated = float(np.mean(held_out)) > float(np.mean(params_held_out))
    default = stable_pick if selection_validated else "params"
    return {
        "default_proxy": default,
        "stable_pick": stable_pick,
        "selection_beats_params_held_out": selection_validated,
        "default_tau_full": full_by_name[default],
        "default_picked_in": f"{picks.get(default, 0)} of {2 * repeats} training halves",
        "best_full_data_candidate": ensemble_name(best_full),
        "best_full_data_tau": max(full),
        "candidates_considered": len(candidates),
        "two_fold_repeats": repeats,
        "held_out_tau_mean": float(np.mean(held_out)),
        "held_out_tau_std": float(np.std(held_out)),
        "params_held_out_tau_mean": float(np.mean(params_held_out)),
        "flops_held_out_tau_mean": float(np.mean(flops_held_out)),
        "held_out_picks": dict(sorted(picks.items(), key=lambda kv: -kv[1])[:10]),
        "leave_one_space_out": cross_space,
    }


def evaluate(ground_truth: dict, args) -> None:
    import csv

    from kdsearch._util import atomic_write_json
    from kdsearch.proxies import list_proxies

    students = ground_truth["students"]
    names, left_out = scorable_proxies(list_proxies())
    if left_out:
        print(f"left out: {', '.join(left_out)} (they score with a trained supernet of the candidate's space, and this "
              "ground truth mixes two spaces; benchmarks/supernet_rank.py measures them on its own)")
    started = time.perf_counter()
    rows = score_students(ground_truth, names, batch_seeds=[0, 1], batch_size=args.proxy_batch)
    scoring_seconds = time.perf_counter() - started
    kd = [s.get("acc_kd", s["acc_kd_s0"]) for s in students]
    no_kd = [s["acc_ce_s0"] for s in students]
    spaces = [s["space"] for s in students]
    scores = {n: [r[n] for r in rows] for n in names}
    table = {}
    for n in names:
        per_space = {}
        for space in sorted(set(spaces)):
            idx = [i for i, sp in enumerate(spaces) if sp == space]
            per_space[space] = _tau([scores[n][i] for i in idx], [kd[i] for i in idx])
        table[n] = {
            "tau_kd": _tau(scores[n], kd), "rho_kd": _rho(scores[n], kd), "tau_no_kd": _tau(scores[n], no_kd),
            "rho_no_kd": _rho(scores[n], no_kd), "tau_kd_by_space": per_space,
            "seed_tau": _tau([r[f"{n}_seeds"][0] for r in rows], [r[f"{n}_seeds"][1] for r in rows]),
            "ms_per_candidate": sum(r[f"{n}_ms"] for r in rows) / len(rows),
        }
    selection = select_default(scores, kd, spaces, repeats=3 if args.smoke else 30)  # 30 repeats: 30 s of a smoke run
    default = selection["default_proxy"]
    from kdsearch.proxies.ensemble import rank_scores

    weights = {}
    for term in default.split("+"):
        w, _, name = term.rpartition("*")
        weights[name] = float(w or 1)
    default_scores = rank_scores(scores, weights)
    table[f"default: {default}"] = {
        "tau_kd": _tau(default_scores, kd), "rho_kd": _rho(default_scores, kd), "tau_no_kd": _tau(default_scores, no_kd),
        "rho_no_kd": _rho(default_scores, no_kd),
        "tau_kd_by_space": {sp: _tau([default_scores[i] for i, s in enumerate(spaces) if s == sp],
                                     [kd[i] for i, s in enumerate(spaces) if s == sp]) for sp in sorted(set(spaces))},
        "ms_per_candidate": sum(table[n]["ms_per_candidate"] for n in weights),
    }
    tau_default = table[f"default: {default}"]["tau_kd"]
    targets = {
        "default_beats_params_by_0.05": tau_default >= table["params"]["tau_kd"] + 0.05,
        "default_beats_flops_by_0.05": tau_default >= table["flops"]["tau_kd"] + 0.05,
        "held_out_beats_params_by_0.05": selection["held_out_tau_mean"] >= selection["params_held_out_tau_mean"] + 0.05,
    }
    ordered = sorted(table.items(), key=lambda kv: -kv[1]["tau_kd"])
    print(f"\n{len(students)} students; ground truth seed-to-seed τ {ground_truth['ground_truth_seed_tau']:.3f} "
          f"({ground_truth['seed_tau_students']} students)")
    print("| proxy | τ vs KD acc | ρ vs KD acc | τ vs no-KD acc | τ resnet_cifar | τ nasbench201 | proxy seed τ | ms / candidate |")
    print("|---|---|---|---|---|---|---|---|")
    for name, t in ordered:
        by_space = t["tau_kd_by_space"]
        print(f"| {name} | {t['tau_kd']:.3f} | {t['rho_kd']:.3f} | {t['tau_no_kd']:.3f} | {by_space.get('resnet_cifar', 0):.3f} | "
              f"{by_space.get('nasbench201', 0):.3f} | {t.get('seed_tau', 1.0):.3f} | {t['ms_per_candidate']:.1f} |")
    print(json.dumps(selection, indent=2))
    print(targets)
    record = {
        "n_students": len(students),
        "ground_truth_seed_tau": ground_truth["ground_truth_seed_tau"],
        "kendall_tau": {n: t["tau_kd"] for n, t in table.items()},
        "spearman": {n: t["rho_kd"] for n, t in table.items()},
        "kendall_tau_no_kd": {n: t["tau_no_kd"] for n, t in table.items()},
        "spearman_no_kd": {n: t["rho_no_kd"] for n, t in table.items()},
        "default_proxy": default,
        "selection": selection,
        "targets": targets,
        "table": table,
        "kd_vs_no_kd_tau": _tau(kd, no_kd),
        "target": "KD accuracy on 3,000 test images, mean over the seeds each student was trained with",
        "teacher": ground_truth["teacher"],
        "recipe": ground_truth["recipe"],
        "scoring_seconds": scoring_seconds,
        "proxy_batch": args.proxy_batch,
    }
    out = args.results
    atomic_write_json(out / "proxy_rank.json", record)
    with open(out / "proxy_rank_students.csv.tmp", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "space", "params", "flops", "acc_kd", "acc_no_kd", "acc_kd_seed0", "acc_kd_seed1", *names])
        for s, r, acc_kd in zip(students, rows, kd):
            writer.writerow([s["id"], s["space"], s["params"], s["flops"], acc_kd, s["acc_ce_s0"],
                             s["acc_kd_s0"], s.get("acc_kd_s1", ""), *[r[n] for n in names]])
    (out / "proxy_rank_students.csv.tmp").replace(out / "proxy_rank_students.csv")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reuse", action="store_true", help="recompute only the proxies over the stored ground truth")
    parser.add_argument("--ground-truth-only", action="store_true")
    parser.add_argument("--teacher-only", action="store_true", help="train (or load) the teacher, then stop")
    parser.add_argument("--resnet", type=int, default=20, help="students from resnet_cifar.yaml")
    parser.add_argument("--nb201", type=int, default=10, help="students from nasbench201.yaml")
    parser.add_argument("--seed-students", type=int, default=30,
                        help="students trained with a 2nd seed: their seed-to-seed τ is the noise floor, and the "
                        "target is the seeds' mean (8 were too few: 3 epochs of KD differ by ~2 points between seeds)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=5000, help="students' training images (of the 5,000)")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--teacher-per-class", type=int, default=2000,
                        help="teacher's training images per class (a teacher clearly above its students is what KD needs)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--shard", default="0/1", help="K/N: train only students i with i %% N == K (run N at once, "
                        "e.g. with --threads 1 each on a 2-core machine), then once without --shard to gather")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--proxy-batch", type=int, default=64, help="images per proxy batch (find's default)")
    add_smoke(parser, "5 students (2 with a second seed), 1 epoch on 200 images, a 1-epoch teacher on 20 images per "
              "class, proxies on batches of 16, 3 two-fold repeats")
    args = parser.parse_args()
    global WORK
    if args.smoke:
        WORK = args.results = smoke_dir("proxy_rank")
        args.resnet, args.nb201, args.seed_students, args.epochs, args.train_samples = 3, 2, 2, 1, 200
        args.teacher_epochs, args.teacher_per_class, args.reuse, args.shard = 1, 20, False, "0/1"
        args.proxy_batch = 16  # the proxies' cost grows with the batch: most of a smoke run's time at 64
    args.val_samples = 200 if args.smoke else None  # the smoke run's students are scored on 200 test images
    args.results.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(thread_count(args.threads))
    if args.reuse:
        ground_truth = json.loads((args.results / "proxy_rank_ground_truth.json").read_text())
    else:
        ground_truth = build_ground_truth(args)
    if args.ground_truth_only:
        return
    evaluate(ground_truth, args)


if __name__ == "__main__":
    main()
