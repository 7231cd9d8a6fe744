"""Does the teacher decide better than parameter count? Successive halving on short distillations vs the proxy's pick.

The setting is supernet_rank.py's (its cached teacher and data are reused):

1. Data: the first 500 training JPEGs per class of ../shared/data/cifar10-jpeg.tar.gz (5,000) and 300 test JPEGs per
   class (3,000; the accuracy's standard error is ~0.9 points).
2. Teacher: the ResNet-56-type network of search_e2e.py (30 epochs on those JPEGs, cached).
3. A cell = a space and a latency budget (``--budget-factor`` x ResNet-20's latency in the regret ground truth,
   benchmarks/results/search_regret_<space>.csv.gz, batch 1, one thread). Its pool: the top ``--pool`` candidates by
   parameter count whose measured latency fits — what ``find --select halving`` starts from after an exhaustive search.
4. Ground truth: every pool member distilled with find's recipe (KD, SGD, ``--epochs``, seed 0), its validation
   accuracy and validation KD loss recorded after every epoch; and, for each ``--first-rungs`` length r, distilled
   for a complete r-epoch schedule (warm-up and cosine to zero within r epochs: the 'restart' design's first rung).
5. Rung designs, ranked against the final accuracy over the pool (Kendall tau), beside params: the snapshot of the
   full schedule at epoch r (accuracy, KD loss, log-curve extrapolation to the last epoch, accuracy+params) and the
   complete r-epoch schedule (accuracy, accuracy+params).
6. Halving's stage run for real (find's code: plan_rungs, halving_recipe, distill_student to each rung's end,
   order_members) with the defaults; its pick and params' pick (the pool's top-1) distilled with the full recipe for
   seeds 0 and 1. ASHA vs synchronous rungs replayed on the recorded snapshot curves at equal eta and first rung:
   Optuna's own SuccessiveHalvingPruner taking the pool in the proxy's order (one process), and synchronous rungs.
7. Cost: the stage's student-epochs and seconds against distilling the top-3 in full (--epochs each).
8. With ``--warm-start``: the first rung started from each member's subnet weights in find's supernets (AutoDistil),
   ranked against the same truth (designs "…, warm start").

    .venv/bin/python benchmarks/teacher_decides.py --space resnet_cifar --budget-factor 1.0   # ~45 min on 2 cores
    .venv/bin/python benchmarks/teacher_decides.py --smoke                                    # a minute, results to /tmp

Students train two at a time, one thread each, resumable (benchmarks/.data/teacher_decides/); each cell is merged
into benchmarks/results/teacher_decides.json. Run it with nothing else on the machine.
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
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from _smoke import add_smoke, smoke_dir  # noqa: E402

from kdsearch._util import atomic_write_json  # noqa: E402
from kdsearch.distill.halving import order_members, plan_rungs, restarts_for, rung_score, student_epochs  # noqa: E402

RESNET20 = {"family": "resnet_cifar", "depth1": 3, "depth2": 3, "depth3": 3, "width1": 16, "width2": 32, "width3": 64}
WORK = ROOT / "benchmarks" / ".data" / "teacher_decides"
_WORKER: dict = {}


def recipe(epochs: int, seed: int, restarts=()):
    from kdsearch.training import STUDENT_RECIPE, Recipe

    return Recipe(epochs=epochs, batch_size=64, seed=seed, restarts=tuple(restarts), **STUDENT_RECIPE)


def _setting(smoke: bool):
    """(task, teacher, teacher's validation logits): supernet_rank's CIFAR setting, or digits for --smoke."""
    from kdsearch.training import validation_logits

    if smoke:
        from kdsearch.data import DataSpec, load_task

        task = load_task(DataSpec(data="digits", val_samples=200, train_samples=600, seed=0))
        teacher = _smoke_teacher(task)
    else:
        from supernet_rank import setting

        task, teacher = setting(500)
    return task, teacher, validation_logits(teacher.model, task)


def _smoke_teacher(task):
    """A small resnet_cifar teacher trained 2 epochs on digits (the smoke run needs no cache)."""
    from types import SimpleNamespace

    from kdsearch.spaces import create_model
    from kdsearch.training import Recipe, fit

    torch.manual_seed(0)
    model = create_model({**RESNET20, "depth1": 1, "depth2": 1, "depth3": 1}, num_classes=task.num_classes,
                         in_chans=task.in_chans)
    fit(model, task, Recipe(epochs=2, batch_size=64))
    return SimpleNamespace(model=model.eval())


def _init(smoke: bool) -> None:
    torch.set_num_threads(1)
    _WORKER["setting"] = _setting(smoke)
    _WORKER["smoke"] = smoke


def job(spec: dict) -> dict:
    """One distillation (resumable in its folder): the full recipe, a complete short schedule, or a halving rung."""
    from kdsearch.pipeline.student import distill_student

    task, teacher, val_logits = _WORKER["setting"]
    spec = dict(spec)
    initial = spec.pop("initial", None)  # a warm start: the subnet's inherited weights
    if initial is not None:
        from kdsearch.spaces import create_model

        model = create_model(spec["config"], num_classes=task.num_classes, in_chans=task.in_chans)
        model.load_state_dict(initial)
        initial = model
    record = distill_student(spec["config"], teacher.model, task, Path(spec["folder"]),
                             recipe(spec["epochs"], spec["seed"], spec.get("restarts", ())), loss="kd",
                             until_epoch=spec.get("until_epoch"), val_teacher_logits=val_logits, initial=initial)
    return {**spec, "history": record["history"], "accuracy": float(record["val_accuracy"]),
            "seconds": float(sum(h["seconds"] for h in record["history"]))}


def kendall(a, b) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b)[0])


def pool_for(space: str, factor: float, size: int) -> tuple[list[dict], float, float]:
    """The pool of a cell from the regret ground truth: the top ``size`` by params within factor x ResNet-20's latency."""
    from search_regret import load_ground_truth

    table = load_ground_truth(space)
    r20 = load_ground_truth("resnet_cifar")
    from kdsearch.spaces import candidate_id

    reference_ms = float(r20.set_index("candidate_id").loc[candidate_id(RESNET20), "latency_p50_ms"])
    budget = factor * reference_ms
    inside = table[table["latency_p50_ms"] <= budget].sort_values(["params", "candidate_id"], ascending=[False, True])
    if space == "nasbench201":
        from proxy_rank import _nb201_connected

        inside = inside[[_nb201_connected(json.loads(c)) for c in inside["config"]]]
    pool = [{"candidate_id": r.candidate_id, "config": json.loads(r.config), "params": int(r.params),
             "latency_ms": float(r.latency_p50_ms)} for r in inside.head(size).itertuples()]
    return pool, budget, reference_ms


def replay_sync(curves: dict[str, list[dict]], proxy: dict[str, float], plan, signal: str, n_val: int, epochs: int) -> str:
    """Synchronous rungs on recorded snapshot curves (exact for the snapshot design): the final order's first."""
    members = list(curves)
    for rung in plan:
        before = plan[rung.index - 1].until_epoch if rung.index else 0
        scores = {c: rung_score(curves[c][: rung.until_epoch], signal, start_epoch=before, epochs=epochs) for c in members}
        order = order_members(scores, proxy, signal, n_val)
        members = order if rung.index == len(plan) - 1 else order[: plan[rung.index + 1].members]
    return members[0]


def replay_asha(curves: dict[str, list[dict]], order: list[str], eta: int, first: int, epochs: int) -> tuple[str, int]:
    """Optuna's SuccessiveHalvingPruner (ASHA) over the recorded curves, students taken one after the other in the
    proxy's order (one process): the best of those that reached the last epoch, and the epochs it spent."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.SuccessiveHalvingPruner(
        min_resource=first, reduction_factor=eta, min_early_stopping_rate=0))
    spent, finished = 0, {}
    for cid in order:
        trial = study.ask()
        for h in curves[cid]:
            spent += 1
            trial.report(h["val_accuracy"], h["epoch"])
            if h["epoch"] < epochs and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, curves[cid][-1]["val_accuracy"])
            finished[cid] = curves[cid][-1]["val_accuracy"]
    return max(finished, key=lambda c: (finished[c], -order.index(c))), spent


_POOL: list = []  # one pool of worker processes for the whole cell: each loads the JPEGs and the teacher once (~80 s)


def warm_designs(args, pool: list[dict], truth: list[float], folder: Path, budget_ms: float) -> list[dict]:
    """AutoDistil's warm start (find --warm-start): each pool member's first rung (a complete ``--first-rung``-epoch
    schedule) starts from its subnet's weights in find's supernets (supernet_rank.py's: 3 latency bands, those below the budget trained, 5
    epochs); ranked against the same cold-start truth as the other designs."""
    from supernet_rank import prepare

    task, teacher, _ = _WORKER.get("setting") or _setting(args.smoke)
    threads = torch.get_num_threads()
    ranker = prepare(args.space, task, teacher, 3, None if args.smoke else budget_ms, 1 if args.smoke else 5)
    torch.set_num_threads(threads)
    specs, rungs = [], [args.first_rung]
    for r in rungs:
        for p in pool:
            weights = {k: v.detach().cpu() for k, v in ranker.subnet(p["config"], p["latency_ms"]).state_dict().items()}
            specs.append({"key": f"warm{r}/{p['candidate_id']}", "config": p["config"], "epochs": r, "seed": 0,
                          "initial": weights, "folder": str(folder / f"warm{r}" / p["candidate_id"])})
    done = run_pool(specs, args.workers, args.smoke)
    designs = []
    for r in rungs:
        last = [done[f"warm{r}/{p['candidate_id']}"]["history"][-1] for p in pool]
        for name, values in (("restart accuracy, warm start", [h["val_accuracy"] for h in last]),
                             ("restart kd_loss, warm start", [-h["val_kd_loss"] for h in last])):
            designs.append({"design": name, "first_rung_epochs": r, "tau": kendall(values, truth), "n": len(pool)})
    return designs


def run_pool(specs: list[dict], workers: int, smoke: bool) -> dict:
    if workers <= 1:
        if "setting" not in _WORKER:
            _init(smoke)
        return {s["key"]: job(s) for s in specs}
    if not _POOL:
        _POOL.append(multiprocessing.get_context("spawn").Pool(workers, _init, (smoke,)))
    return {r["key"]: r for r in _POOL[0].imap_unordered(job, specs)}


def cell(args, work: Path) -> dict:
    started = time.perf_counter()
    if args.smoke:
        from kdsearch.spaces import load_space

        space = load_space("resnet_cifar_s1")
        configs = sorted(space.sample(args.pool, seed=0), key=lambda c: -sum(v for k, v in c.items() if k.startswith("width")))
        from kdsearch.cost import count_params
        from kdsearch.spaces import candidate_id, create_model

        pool = sorted(({"candidate_id": candidate_id(c), "config": c, "params": count_params(create_model(c, num_classes=10)),
                        "latency_ms": 0.0} for c in configs), key=lambda r: (-r["params"], r["candidate_id"]))
        budget_ms, reference_ms = float("nan"), float("nan")
    else:
        pool, budget_ms, reference_ms = pool_for(args.space, args.budget_factor, args.pool)
    ids = [p["candidate_id"] for p in pool]
    proxy = {p["candidate_id"]: float(p["params"]) for p in pool}
    epochs, tag = args.epochs, f"{args.space}-{args.budget_factor:g}x-p{args.pool}-e{args.epochs}"
    folder = work / tag
    # ground truth: full curves (seed 0) and complete short schedules
    specs = [{"key": f"full/{p['candidate_id']}/0", "config": p["config"], "epochs": epochs, "seed": 0,
              "folder": str(folder / "full" / f"{p['candidate_id']}-seed0")} for p in pool]
    specs += [{"key": f"short{r}/{p['candidate_id']}", "config": p["config"], "epochs": r, "seed": 0,
               "folder": str(folder / f"short{r}" / p["candidate_id"])} for r in args.first_rungs for p in pool]
    done = run_pool(specs, args.workers, args.smoke)
    curves = {c: done[f"full/{c}/0"]["history"] for c in ids}
    final = {c: curves[c][-1]["val_accuracy"] for c in ids}
    truth = [final[c] for c in ids]
    n_val = 200 if args.smoke else 3000
    designs = [{"design": "params", "first_rung_epochs": None, "tau": kendall([proxy[c] for c in ids], truth), "n": len(ids)}]
    for r in args.first_rungs:
        snap = {c: curves[c][r - 1] for c in ids}
        short = {c: done[f"short{r}/{c}"]["history"][-1] for c in ids}
        for name, values in (
            ("snapshot accuracy", [snap[c]["val_accuracy"] for c in ids]),
            ("snapshot kd_loss", [-snap[c]["val_kd_loss"] for c in ids]),
            ("snapshot extrapolated", [rung_score(curves[c][:r], "extrapolated", epochs=epochs) for c in ids]),
            ("restart accuracy", [short[c]["val_accuracy"] for c in ids]),
            ("restart kd_loss", [-short[c]["val_kd_loss"] for c in ids]),
        ):
            designs.append({"design": name, "first_rung_epochs": r, "tau": kendall(values, truth), "n": len(ids)})
        for name, source in (("snapshot accuracy+params", snap), ("restart accuracy+params", short)):
            order = order_members({c: source[c]["val_accuracy"] for c in ids}, proxy, "accuracy+proxy", n_val)
            designs.append({"design": name, "first_rung_epochs": r, "tau": kendall([-order.index(c) for c in ids], truth),
                            "n": len(ids)})
    if args.warm_start:
        designs += warm_designs(args, pool, truth, folder, budget_ms)
    # the stage with both designs: 'restart' run for real (find's code path: distill_student to each rung's end with the
    # halving recipe), 'snapshot' replayed on the full curves (exact: a snapshot rung continued equals the same student
    # trained straight through, tests/test_halving.py); then ASHA replayed through Optuna's pruner
    plan = plan_rungs(len(ids), args.top_k, args.eta, args.first_rung, epochs)
    members, restart_seconds, rungs = list(ids), 0.0, []
    for rung in plan:
        rung_specs = [{"key": f"stage/{c}/{rung.index}", "config": next(p["config"] for p in pool if p["candidate_id"] == c),
                       "epochs": epochs, "seed": 0, "restarts": restarts_for(plan, "restart"), "until_epoch": rung.until_epoch,
                       "folder": str(folder / "stage" / c)} for c in members]
        out = run_pool(rung_specs, args.workers, args.smoke)
        before = plan[rung.index - 1].until_epoch if rung.index else 0
        # a resumed student's history can run past this rung (a survivor's reaches the last epoch): cut it at the rung
        histories = {c: out[f"stage/{c}/{rung.index}"]["history"][: rung.until_epoch] for c in members}
        scores = {c: rung_score(histories[c], "accuracy") for c in members}
        restart_seconds += sum(sum(h["seconds"] for h in histories[c][before:]) for c in members)
        order = order_members(scores, proxy, "accuracy", n_val)
        rungs.append({"index": rung.index, "until_epoch": rung.until_epoch, "scores": scores})
        members = order if rung.index == len(plan) - 1 else order[: plan[rung.index + 1].members]
    stage_picks = {"restart": members[0], "snapshot": replay_sync(curves, proxy, plan, "accuracy", n_val, epochs)}
    full_epoch_s = statistics.median(sum(h["seconds"] for h in curves[c]) for c in ids) / epochs
    snapshot_seconds = student_epochs(plan) * full_epoch_s  # the same epochs of the same recipe as the ground truth
    halving_pick, params_pick = stage_picks[args.rung_design], ids[0]
    sync_snapshot = stage_picks["snapshot"]
    asha_pick, asha_epochs = replay_asha(curves, ids, args.eta, args.first_rung, epochs)
    # the picks (and ResNet-20 at its own latency) with the full recipe, seeds 0 and 1
    named = {"params": params_pick, "halving": halving_pick, **{f"halving_{d}": c for d, c in stage_picks.items()}}
    configs = {p["candidate_id"]: p["config"] for p in pool}
    if args.budget_factor == 1.0 and not args.smoke and args.space == "resnet_cifar":
        configs["resnet20"] = {**RESNET20, "shortcut": "identity"}  # He et al.'s, zero-padded shortcuts
        named["resnet20"] = "resnet20"
    pick_specs = [{"key": f"full/{c}/{s}", "config": configs[c], "epochs": epochs, "seed": s,
                   "folder": str(folder / "full" / f"{c}-seed{s}")} for c in sorted(set(named.values())) for s in (0, 1)]
    picks = run_pool(pick_specs, args.workers, args.smoke)
    acc = {name: statistics.mean(picks[f"full/{c}/{s}"]["accuracy"] for s in (0, 1)) for name, c in named.items()}
    # seed 1 is a training no rung saw: the snapshot design's rungs are the first epochs of the seed-0 runs themselves
    seed1 = {name: picks[f"full/{c}/1"]["accuracy"] for name, c in named.items()}
    top3 = args.top_k * epochs
    first = next(d for d in designs if d["design"] == "restart accuracy" and d["first_rung_epochs"] == args.first_rung)
    return {
        "space": args.space, "budget": f"{args.budget_factor:g}x ResNet-20", "budget_ms": budget_ms,
        "resnet20_ms": reference_ms, "pool": ids, "epochs": epochs, "eta": args.eta, "first_rung": args.first_rung,
        "acc_params_pick": acc["params"], "acc_halving_pick": acc["halving"], "acc_reference": acc.get("resnet20"),
        "params_pick": params_pick, "halving_pick": halving_pick, "halving_pick_truth_rank": sorted(ids, key=lambda c: -final[c]).index(halving_pick) + 1,
        "best_in_pool": max(ids, key=lambda c: final[c]), "best_in_pool_acc_seed0": max(truth),
        "tau_rung1": first["tau"], "tau_params": designs[0]["tau"],
        "cost_student_epochs": student_epochs(plan), "cost_ratio": student_epochs(plan) / top3,
        "cost_seconds": {"restart": restart_seconds, "snapshot": snapshot_seconds}[args.rung_design],
        "top3_full_seconds_est": full_epoch_s * top3, "rung_design": args.rung_design,
        "acc_seed1": seed1,
        "designs_picks": {d: {"pick": c, "acc_2_seeds": acc[f"halving_{d}"], "acc_seed1": seed1[f"halving_{d}"],
                              "truth_rank_seed0": sorted(ids, key=lambda x: -final[x]).index(c) + 1}
                          for d, c in stage_picks.items()},
        "asha_vs_sync": {"sync_snapshot_pick": sync_snapshot, "sync_snapshot_acc_seed0": final[sync_snapshot],
                         "sync_epochs": student_epochs(plan), "asha_pick": asha_pick, "asha_acc_seed0": final[asha_pick],
                         "asha_epochs": asha_epochs},
        "rungs": rungs, "rung_designs": designs, "final_seed0": final, "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="resnet_cifar", choices=["resnet_cifar", "nasbench201"])
    parser.add_argument("--budget-factor", type=float, default=1.0, help="the budget: this many times ResNet-20's latency")
    parser.add_argument("--pool", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6, help="the full recipe (supernet_rank's 6 epochs)")
    parser.add_argument("--first-rungs", default="1,2", help="first-rung lengths whose designs are measured")
    parser.add_argument("--first-rung", type=int, default=1, help="the stage's first rung (find's default)")
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--rung-design", default="restart", choices=["restart", "snapshot"],
                        help="the design whose pick is 'halving's pick' (both are measured)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warm-start", action="store_true", help="also rank first rungs started from supernet weights "
                        "(trains find's supernets for the cell: ~10 min more)")
    add_smoke(parser, "digits, 6 students, 3 epochs")
    args = parser.parse_args()
    args.first_rungs = [int(r) for r in args.first_rungs.split(",")]
    if args.smoke:
        args.pool, args.epochs, args.first_rungs, args.workers, args.top_k = 6, 3, [1], 1, 2
    tmp = smoke_dir("teacher_decides") if args.smoke else None
    work, results = (tmp, tmp) if tmp else (WORK, RESULTS)
    load = os.getloadavg()[0]
    try:
        row = cell(args, work)
    finally:
        for procs in _POOL:
            procs.close()
    path = results / "teacher_decides.json"
    data = json.loads(path.read_text()) if path.exists() else {"cells": []}
    data["cells"] = [c for c in data["cells"] if (c["space"], c["budget"]) != (row["space"], row["budget"])] + [row]
    cells = data["cells"]
    data.update({
        "mean_gain_vs_params": float(np.mean([c["acc_halving_pick"] - c["acc_params_pick"] for c in cells])) * 100,
        "rung_designs": [{**d, "space": c["space"], "budget": c["budget"]} for c in cells for d in c["rung_designs"]],
        "target": "halving's pick >= params' pick + 0.5 points on average; >= ResNet-20 + 1.0 at its latency; cost <= 3x top-3",
        "setting": "5,000 CIFAR-10 train JPEGs, 3,000 test, ResNet-56 teacher (supernet_rank.py), KD, SGD",
        "load1_at_start": load, "python": platform.python_version(), "torch": torch.__version__,
    })
    atomic_write_json(path, data)
    print(f"{row['space']} at {row['budget']} ({row['budget_ms']:.3g} ms), pool {len(row['pool'])}, {row['epochs']} epochs:")
    print(f"  params' pick {row['acc_params_pick']:.4f}   halving's pick {row['acc_halving_pick']:.4f}"
          + (f"   ResNet-20 {row['acc_reference']:.4f}" if row["acc_reference"] is not None else "")
          + f"   (mean of seeds 0 and 1; halving's pick is #{row['halving_pick_truth_rank']} of the pool by seed-0 truth)")
    print("  seed 1 alone (no rung saw it): " + ", ".join(f"{k} {v:.4f}" for k, v in row["acc_seed1"].items()))
    print(f"  stage cost {row['cost_student_epochs']} student-epochs = {row['cost_ratio']:.2f}x the top-3 in full")
    print(f"  ASHA (Optuna, one process, proxy order): pick {row['asha_vs_sync']['asha_acc_seed0']:.4f} for "
          f"{row['asha_vs_sync']['asha_epochs']} epochs; sync rungs (snapshot): {row['asha_vs_sync']['sync_snapshot_acc_seed0']:.4f} "
          f"for {row['asha_vs_sync']['sync_epochs']}")
    print(f"  {'design':28s} {'first rung':>10s} {'tau':>6s}")
    for d in row["rung_designs"]:
        print(f"  {d['design']:28s} {str(d['first_rung_epochs'] or '-'):>10s} {d['tau']:+.2f}")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
