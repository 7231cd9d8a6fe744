"""Does the supernet rank students better than parameter count? Kendall τ against stand-alone distilled accuracy.

The setting is search_e2e.py's, so its cached teacher, teacher outputs and supernets are reused:

1. Data: the first 500 training JPEGs per class of ../shared/data/cifar10-jpeg.tar.gz (5,000) and 300 test JPEGs
   per class (3,000) — the students' accuracy is measured there; the supernet is scored on its own hold-out slice
   of the *training* images (500), never on those test images.
2. Teacher: search_e2e's ResNet-56-type network trained on those JPEGs (``--teacher-epochs`` 30, cached).
3. Students: ``--students`` seeded random candidates of the family whose latency in the regret ground truth
   (benchmarks/results/search_regret_<family>.csv.gz, 1 thread) lies in the supernets' first band — the band a
   ResNet-20-sized budget falls in, where the ranking decides the pick. Each is distilled with find's recipe (KD,
   SGD, ``--epochs``) for every seed of ``--seeds``; its ground truth is the mean accuracy over the seeds.
4. Rankers: ``supernet`` (hold-out accuracy with inherited weights after BN recalibration) and ``supernet_kd``
   (minus the KL divergence to the teacher there) from find's K = ``--subspaces`` supernets, and with ``--k1`` the
   same from one supernet over the whole space (K = 1, AutoDistil's open question); beside them ``params``,
   ``flops`` and ``synflow`` (the regret table's values).
5. Reported: τ of each vs the mean accuracy with its p-value, a paired bootstrap (students resampled) of
   τ(supernet) − τ(params), and the seeds' τ with each other (the ground truth's own repeatability: no ranker can
   be expected to agree with the mean much better than one seed agrees with another); the supernets' wall time
   against one median student distilled for the supernets' epochs (the issue's cost ratio).

    .venv/bin/python benchmarks/supernet_rank.py --family resnet_cifar          # ~70 min on 2 cores (60 students)
    .venv/bin/python benchmarks/supernet_rank.py --family resnet_cifar --supernet-epochs 20   # students reused; ~15 min
    .venv/bin/python benchmarks/supernet_rank.py --family resnet_cifar --k1     # + the K = 1 supernet
    .venv/bin/python benchmarks/supernet_rank.py --family resnet_cifar --supernet-epochs 20 --anchors span   # sandwich variants

Students are trained two at a time, one thread each, and are resumable (benchmarks/.data/supernet_rank/); the
result goes to benchmarks/results/supernet_rank_<family>.json. Run it with nothing else on the machine.
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
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".data" / "supernet_rank"
E2E_CACHE = ROOT / "benchmarks" / ".data" / "search_e2e" / "cache"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from _smoke import add_smoke, smoke_dir, thread_count  # noqa: E402

TEACHER_EPOCHS = 30  # search_e2e's default: the same cache key, so its teacher is reused
SUPERNET_EPOCHS = 5  # find's default --supernet-epochs


def setting(per_class: int, teacher_epochs: int = TEACHER_EPOCHS):
    """The task and teacher of search_e2e (cached there), and find's supernet recipe and latency settings."""
    os.environ.setdefault("KDSEARCH_CACHE_DIR", str(E2E_CACHE))
    from proxy_rank import cifar_folder

    from kdsearch.data import DataSpec, load_task
    from kdsearch.teacher import load_teacher

    task = load_task(DataSpec(data=str(cifar_folder(per_class)), seed=0))
    teacher = load_teacher("search_e2e:resnet56", task, epochs=teacher_epochs, measure=False)
    return task, teacher


def student_recipe(epochs: int, seed: int):
    from kdsearch.training import STUDENT_RECIPE, Recipe

    return Recipe(epochs=epochs, batch_size=64, seed=seed, **STUDENT_RECIPE)


def sample_students(family: str, count: int, upper_ms: float, seed: int = 0) -> list[dict]:
    """Seeded candidates of the regret table whose measured latency is at most ``upper_ms`` (the first band)."""
    from search_regret import load_ground_truth

    table = load_ground_truth(family)
    inside = table[table["latency_p50_ms"] <= upper_ms]
    if family == "nasbench201":  # as proxy_rank.py: cells with no path from input to output are chance-level for all
        from proxy_rank import _nb201_connected

        inside = inside[[_nb201_connected(json.loads(c)) for c in inside["config"]]]
    picked = inside.sample(n=min(count, len(inside)), random_state=seed)
    return [{"candidate_id": row.candidate_id, "config": json.loads(row.config), "params": int(row.params),
             "flops": int(row.flops), "synflow": float(row.synflow), "latency_ms": float(row.latency_p50_ms)}
            for row in picked.itertuples()]


_WORKER: dict = {}


def _worker_setting(per_class: int, teacher_epochs: int = TEACHER_EPOCHS, work: Path = WORK) -> None:
    """Each worker loads the JPEGs and the teacher once (per job it cost ~80 s of a ~115 s student)."""
    torch.set_num_threads(1)
    _WORKER["setting"] = setting(per_class, teacher_epochs)
    _WORKER["work"] = work


def distil_job(job: tuple) -> dict:
    """One (student, seed) distillation in a worker process of one thread (resumes from its folder)."""
    candidate_id, config, seed, epochs, per_class = job
    from kdsearch.pipeline.student import distill_student

    task, teacher = _WORKER["setting"]
    record = distill_student(config, teacher.model, task, _WORKER["work"] / "students" / f"{candidate_id}-e{epochs}-seed{seed}",
                             student_recipe(epochs, seed), loss="kd")
    return {"candidate_id": candidate_id, "seed": seed, "accuracy": float(record["val_accuracy"]),
            "seconds": float(record["seconds"])}


def prepare(family: str, task, teacher, subspaces: int, limit_ms: float | None, epochs: int, anchors: str = "latency",
            threads: int = 2):
    """find's supernets of ``subspaces`` latency bands (trained, or read from the cache) for the bands within ``limit_ms``."""
    from kdsearch.cost import LATENCY_SEARCH
    from kdsearch.spaces import load_space
    from kdsearch.supernet import SandwichRule, prepare_supernets

    torch.set_num_threads(thread_count(threads))
    return prepare_supernets(load_space(family), task, teacher.model, bands=subspaces, limit_ms=limit_ms,
                             recipe=student_recipe(epochs, 0), rule=SandwichRule.with_anchors(anchors),
                             latency={"batch_size": 1, "threads": 1, **LATENCY_SEARCH}, seed=0, progress=True)


def score(ranker, students: list[dict]) -> dict:
    """Every student's hold-out accuracy and KD loss with inherited weights, and what the supernets cost."""
    scores, timings = {}, []
    for s in students:
        started = time.perf_counter()
        scores[s["candidate_id"]] = ranker.evaluate(s["config"], s["latency_ms"])
        timings.append(time.perf_counter() - started)
    return {"scores": scores, "bands": ranker.record(), "scoring_s_median": statistics.median(timings),
            "train_seconds": sum(h["seconds"] for history in ranker.histories.values() for h in history)}


def kendall(a, b) -> dict:
    from scipy.stats import kendalltau

    result = kendalltau(a, b)
    return {"tau": float(result.statistic), "p": float(result.pvalue)}


def bootstrap_difference(a, b, truth, repeats: int = 2000, seed: int = 0) -> dict:
    """τ(a) − τ(b) against ``truth`` over students resampled with replacement: median and 90 % interval."""
    from scipy.stats import kendalltau

    rng = np.random.default_rng(seed)
    a, b, truth = map(np.asarray, (a, b, truth))
    diffs = []
    for _ in range(repeats):
        idx = rng.integers(0, len(truth), len(truth))
        ta, tb = kendalltau(a[idx], truth[idx]).statistic, kendalltau(b[idx], truth[idx]).statistic
        if ta == ta and tb == tb:
            diffs.append(ta - tb)
    if not diffs:  # every resample tied (a handful of students, as in --smoke): no interval to give
        return {"median": float("nan"), "p05": float("nan"), "p95": float("nan"), "share_positive": float("nan")}
    q = np.quantile(diffs, [0.05, 0.5, 0.95])
    return {"median": float(q[1]), "p05": float(q[0]), "p95": float(q[2]), "share_positive": float(np.mean(np.array(diffs) > 0))}


def key_taus(students: list[dict], truth, supernet) -> dict:
    """Where the supernet's order departs from the truth: τ of each numeric key of the config with the distilled
    accuracy and with the supernet's score (a key whose two signs differ is a bias of the weight sharing)."""
    out = {}
    for key, value in students[0]["config"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [s["config"][key] for s in students]
            out[key] = {"truth": kendall(values, truth)["tau"], "supernet": kendall(values, supernet)["tau"]}
    return out


def main() -> None:
    from kdsearch._util import configure_logging

    configure_logging()  # the library's progress lines, as the CLI shows them
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="resnet_cifar", choices=["resnet_cifar", "nasbench201"])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=6, help="each student's distillation epochs")
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--subspaces", type=int, default=3)
    parser.add_argument("--k1", action="store_true", help="also one supernet over the whole space (K = 1)")
    parser.add_argument("--workers", type=int, default=2, help="students trained at once, one thread each")
    parser.add_argument("--supernet-epochs", type=int, default=SUPERNET_EPOCHS, help="find's --supernet-epochs")
    parser.add_argument("--supernet-threads", type=int, default=2,
                        help="torch threads of the supernet training (1: two variants can run side by side, as students do)")
    parser.add_argument("--anchors", default="latency", choices=["latency", "span", "uniform"],
                        help="the sandwich's anchors (SandwichRule.anchors); uniform runs 4 random members instead")
    add_smoke(parser, "4 students, one seed, 1 epoch, 20 images per class, a 1-epoch teacher and supernet")
    args = parser.parse_args()
    global WORK, RESULTS
    args.teacher_epochs = TEACHER_EPOCHS
    if args.smoke:
        WORK = RESULTS = smoke_dir("supernet_rank")
        args.students, args.seeds, args.epochs, args.per_class, args.teacher_epochs = 4, [0], 1, 20, 1
        args.supernet_epochs, args.workers = 1, 1
    started = time.perf_counter()
    load1 = os.getloadavg()[0]
    task, teacher = setting(args.per_class, args.teacher_epochs)

    # the K-band supernets first, only the first band (limit 0 ms): its upper edge decides which students are drawn
    ranker = prepare(args.family, task, teacher, args.subspaces, limit_ms=0.0, epochs=args.supernet_epochs, anchors=args.anchors,
                     threads=args.supernet_threads)
    upper = ranker.bands.span(0)[1]
    students = sample_students(args.family, args.students, upper)
    print(f"{len(students)} students of {args.family} at <= {upper:.2f} ms (band 1 of {args.subspaces})", flush=True)

    from kdsearch.teacher.outputs import teacher_outputs

    for seed in args.seeds:  # filled once here, not by two workers at the same time
        teacher_outputs(teacher.model, task, student_recipe(args.epochs, seed))
    jobs = [(s["candidate_id"], s["config"], seed, args.epochs, args.per_class) for seed in args.seeds for s in students]
    accuracy: dict[str, dict[int, float]] = {}
    student_seconds = []
    with multiprocessing.get_context("spawn").Pool(args.workers, _worker_setting, (args.per_class, args.teacher_epochs, WORK)) as pool:
        for i, done in enumerate(pool.imap_unordered(distil_job, jobs), 1):
            accuracy.setdefault(done["candidate_id"], {})[done["seed"]] = done["accuracy"]
            student_seconds.append(done["seconds"])
            print(f"[{i}/{len(jobs)}] {done['candidate_id']} seed {done['seed']}: {done['accuracy']:.4f} "
                  f"({done['seconds']:.0f} s)", flush=True)

    k = score(ranker, students)
    k1 = score(prepare(args.family, task, teacher, 1, limit_ms=None, epochs=args.supernet_epochs, anchors=args.anchors,
                     threads=args.supernet_threads),
               students) if args.k1 else None

    ids = [s["candidate_id"] for s in students]
    truth = [statistics.mean(accuracy[c].values()) for c in ids]
    rankers = {
        "params": [s["params"] for s in students], "flops": [s["flops"] for s in students],
        "synflow": [s["synflow"] for s in students],
        "supernet": [k["scores"][c]["accuracy"] for c in ids], "supernet_kd": [-k["scores"][c]["kd_loss"] for c in ids],
    }
    if k1:
        rankers["supernet_k1"] = [k1["scores"][c]["accuracy"] for c in ids]
        rankers["supernet_kd_k1"] = [-k1["scores"][c]["kd_loss"] for c in ids]
    taus = {name: kendall(values, truth) for name, values in rankers.items()}
    seed_tau = kendall([accuracy[c][args.seeds[0]] for c in ids], [accuracy[c][args.seeds[1]] for c in ids]) if len(args.seeds) > 1 else None
    # the issue's cost ratio: the supernets' training against one median student distilled for the same epochs
    per_epoch = statistics.median(student_seconds) / args.epochs
    cost = {name: {"train_seconds": r["train_seconds"], "ratio": r["train_seconds"] / (per_epoch * args.supernet_epochs),
                   "scoring_s_median": r["scoring_s_median"]} for name, r in (("k", k), ("k1", k1)) if r}
    record = {
        "family": args.family, "students": len(students), "seeds": args.seeds, "student_epochs": args.epochs,
        "supernet_epochs": args.supernet_epochs, "subspaces": args.subspaces, "anchors": args.anchors,
        "supernet_threads": args.supernet_threads, "band_upper_ms": upper,
        "train_images": len(task.train_labels), "test_images": len(task.val_labels), "teacher_accuracy": teacher.accuracy,
        "tau": taus, "tau_supernet": taus["supernet"]["tau"], "tau_params": taus["params"]["tau"],
        "tau_supernet_k1": taus["supernet_k1"]["tau"] if k1 else None,
        "supernet_minus_params": bootstrap_difference(rankers["supernet"], rankers["params"], truth),
        "seed_tau": seed_tau, "key_tau": key_taus(students, truth, rankers["supernet"]), "cost": cost, "cost_ratio": cost["k"]["ratio"],
        "student_seconds_median": statistics.median(student_seconds),
        "target": "tau_supernet >= tau_params + 0.10 (resnet_cifar); tau_supernet >= 0.60 (nasbench201)",
        "target_met": (taus["supernet"]["tau"] >= taus["params"]["tau"] + 0.10) if args.family == "resnet_cifar"
        else taus["supernet"]["tau"] >= 0.60,
        "rows": [{**s, "accuracy": accuracy[s["candidate_id"]], "accuracy_mean": t,
                  **{f"score_{name}": rankers[name][i] for name in rankers}} for i, (s, t) in enumerate(zip(students, truth))],
        "supernet_bands": k["bands"], "supernet_bands_k1": k1["bands"] if k1 else None,
        "seconds": time.perf_counter() - started, "load1_at_start": load1, "python": platform.python_version(),
        "torch": torch.__version__,
    }
    from kdsearch._util import atomic_write_json

    tag = ("" if args.supernet_epochs == SUPERNET_EPOCHS else f"_sn{args.supernet_epochs}ep") + \
        ("" if args.anchors == "latency" else f"_{args.anchors}")
    out = RESULTS / f"supernet_rank_{args.family}{tag}.json"
    atomic_write_json(out, record)
    print(f"\n{args.family}: {len(students)} students, {len(args.seeds)} seeds x {args.epochs} epochs; "
          f"seeds agree at tau {seed_tau['tau']:.2f}" if seed_tau else "")
    print("| ranker | Kendall tau vs distilled accuracy | p |\n|---|---|---|")
    for name, t in taus.items():
        print(f"| {name} | {t['tau']:+.3f} | {t['p']:.3f} |")
    d = record["supernet_minus_params"]
    print(f"tau(supernet) - tau(params): {d['median']:+.3f} (90 % {d['p05']:+.3f}..{d['p95']:+.3f}); "
          f"cost ratio {record['cost_ratio']:.2f}; -> {out}")


if __name__ == "__main__":
    main()
