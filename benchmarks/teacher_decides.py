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
import gzip
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
from _smoke import add_smoke, smoke_dir, thread_count  # noqa: E402

from kdsearch._util import atomic_write_json  # noqa: E402
from kdsearch.distill.halving import cut_in_noise, order_members, plan_rungs, restarts_for, rung_score, student_epochs  # noqa: E402

RESNET20 = {"family": "resnet_cifar", "depth1": 3, "depth2": 3, "depth3": 3, "width1": 16, "width2": 32, "width3": 64}
WORK = ROOT / "benchmarks" / ".data" / "teacher_decides"
# the selection whose pick is reported as the default's (acc_long_default_pick): what `find` does with no --select
DEFAULT_SELECTION = "proxy_top_k"  # find's default for a target longer than --epochs (--select auto)
# selections whose choice read a long run of seed 0 (the pick's own or one with its initialisation): judged on seed 1
CHOSEN_ON_SEED0_LONG = ("halving_final_at_target", "proxy_top_k_at_target", "halving_finish_target")
SIGNALS = ("accuracy", "accuracy+proxy", "kd_loss", "extrapolated", "rank_blend")
_WORKER: dict = {}


def recipe(epochs: int, seed: int, restarts=()):
    from kdsearch.training import STUDENT_RECIPE, Recipe

    return Recipe(epochs=epochs, batch_size=64, seed=seed, restarts=tuple(restarts), **STUDENT_RECIPE)


def _setting(smoke: bool):
    """(task, teacher, teacher's validation logits): supernet_rank's CIFAR setting, or digits for --smoke."""
    from kdsearch.training import validation_logits

    if smoke:
        from kdsearch.data import DataSpec, load_task

        # 16 px: a quarter of the 32 px convolutions (the smoke run checks the code path, not the figures)
        task = load_task(DataSpec(data="digits", val_samples=200, train_samples=300, input_size=16, seed=0))
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
    torch.set_num_threads(thread_count(threads))
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


class JobStore:
    """Every finished distillation's record (curve, accuracy, seconds) by job key, in one gzipped JSON per cell under
    benchmarks/results/teacher_decides_jobs/: committed, so a cell resumes on another machine (or a fresh checkout)
    without its checkpoints; only a job in progress is lost. Written after each job (temporary file, then rename)."""

    def __init__(self, path: Path):
        self.path = path
        self.records = json.loads(gzip.decompress(path.read_bytes())) if path.exists() else {}

    def put(self, key: str, record: dict) -> None:
        self.records[key] = {k: record[k] for k in ("epochs", "seed", "history", "accuracy", "seconds")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(gzip.compress(json.dumps(self.records, sort_keys=True).encode(), mtime=0))
        os.replace(tmp, self.path)


def run_pool(specs: list[dict], workers: int, smoke: bool, store: JobStore | None = None) -> dict:
    """Each spec's result by key: from the store where it finished before, else distilled (and stored)."""
    known = {s["key"]: store.records[s["key"]] for s in specs if store is not None and s["key"] in store.records}
    todo = [s for s in specs if s["key"] not in known]
    if not todo:
        return known
    if workers <= 1:
        if "setting" not in _WORKER:
            _init(smoke)
        results = (job(s) for s in todo)
    else:
        if not _POOL:
            _POOL.append(multiprocessing.get_context("spawn").Pool(workers, _init, (smoke,)))
        results = _POOL[0].imap_unordered(job, todo)
    for r in results:
        known[r["key"]] = r
        if store is not None:
            store.put(r["key"], r)
    return known


def _pool_of_cell(args) -> tuple[list[dict], float, float]:
    if not args.smoke:
        return pool_for(args.space, args.budget_factor, args.pool)
    from kdsearch.cost import count_params
    from kdsearch.spaces import candidate_id, create_model, load_space

    space = load_space("resnet_cifar_s1")
    configs = sorted(space.sample(args.pool, seed=0), key=lambda c: -sum(v for k, v in c.items() if k.startswith("width")))
    pool = sorted(({"candidate_id": candidate_id(c), "config": c, "params": count_params(create_model(c, num_classes=10)),
                    "latency_ms": float(count_params(create_model(c, num_classes=10))) / 1e5} for c in configs),
                  key=lambda r: (-r["params"], r["candidate_id"]))
    return pool, float("nan"), float("nan")


def _spec(key: str, config: dict, epochs: int, seed: int, folder: Path, **extra) -> dict:
    return {"key": key, "config": config, "epochs": epochs, "seed": seed, "folder": str(folder), **extra}


def run_stage(args, ctx: dict, signal: str) -> dict:
    """Halving's stage for real with the restart design (find's code path: distill_student to each rung's end with the
    halving recipe) and one rung signal. Every signal's stage shares the students' folders: a member's training does
    not depend on the signal that kept it, so a second signal pays only for the members the first did not keep."""
    ids, proxy, pool, folder, epochs = ctx["ids"], ctx["proxy"], ctx["pool"], ctx["folder"], args.epochs
    configs = {p["candidate_id"]: p["config"] for p in pool}
    plan = plan_rungs(len(ids), args.top_k, args.eta, args.first_rung, epochs)
    members, seconds, rungs = list(ids), 0.0, []
    for rung in plan:
        specs = [_spec(f"stage/{c}/{rung.index}", configs[c], epochs, 0, folder / "stage" / c,
                       restarts=restarts_for(plan, "restart"), until_epoch=rung.until_epoch) for c in members]
        out = run_pool(specs, args.workers, args.smoke, ctx["store"])
        before = plan[rung.index - 1].until_epoch if rung.index else 0
        # a resumed student's history can run past this rung (a survivor's reaches the last epoch): cut it at the rung
        histories = {c: out[f"stage/{c}/{rung.index}"]["history"][: rung.until_epoch] for c in members}
        scores = {c: rung_score(histories[c], signal, start_epoch=before, epochs=args.long_epochs) for c in members}
        seconds += sum(sum(h["seconds"] for h in histories[c][before:]) for c in members)
        order = order_members(scores, proxy, signal, ctx["n_val"])
        last = rung.index == len(plan) - 1
        keep = len(order) if last else plan[rung.index + 1].members
        rungs.append({"index": rung.index, "until_epoch": rung.until_epoch, "scores": scores, "order": order,
                      "cut_in_noise": cut_in_noise(order, {c: histories[c][-1]["val_accuracy"] for c in members},
                                                   keep, ctx["n_val"])})
        members = order[:keep]
    return {"pick": members[0], "survivors": members, "rungs": rungs, "seconds": seconds}


def finish_stage(args, ctx: dict, survivors: list[str]) -> dict:
    """The survivors of the default stage distilled to ``--long-epochs`` with the rungs' schedule (find --finish
    target's last rung); the pick is the first of their order there (accuracy, ties within the noise by params)."""
    configs = {p["candidate_id"]: p["config"] for p in ctx["pool"]}
    plan = plan_rungs(len(ctx["ids"]), args.top_k, args.eta, args.first_rung, args.epochs, args.long_epochs)
    specs = [_spec(f"finish/{c}/0", configs[c], args.long_epochs, 0, ctx["folder"] / "finish" / c,
                   restarts=restarts_for(plan, "restart")) for c in survivors]
    out = run_pool(specs, args.workers, args.smoke, ctx["store"])
    accuracy = {c: out[f"finish/{c}/0"]["accuracy"] for c in survivors}
    order = order_members(accuracy, ctx["proxy"], "accuracy", ctx["n_val"])
    return {"pick": order[0], "order": order, "accuracy_seed0": accuracy,
            "student_epochs": student_epochs(plan), "seconds": sum(out[f"finish/{c}/0"]["seconds"] for c in survivors)}


def _designs(args, ctx: dict, done: dict, truths: dict[str, list[float]]) -> list[dict]:
    """Kendall tau of each rung design and signal with both ground truths (find's --epochs and the long recipe)."""
    ids, proxy, curves, n_val = ctx["ids"], ctx["proxy"], ctx["curves"], ctx["n_val"]
    rows = [("params", None, [proxy[c] for c in ids])]
    for r in args.first_rungs:
        snap = {c: curves[c][r - 1] for c in ids}
        short = {c: done[f"short{r}/{c}"]["history"][-1] for c in ids}
        short_curves = {c: done[f"short{r}/{c}"]["history"] for c in ids}
        rows += [
            ("snapshot accuracy", r, [snap[c]["val_accuracy"] for c in ids]),
            ("snapshot kd_loss", r, [-snap[c]["val_kd_loss"] for c in ids]),
            ("snapshot extrapolated", r, [rung_score(curves[c][:r], "extrapolated", epochs=args.epochs) for c in ids]),
            ("snapshot extrapolated to the long recipe", r,
             [rung_score(curves[c][:r], "extrapolated", epochs=args.long_epochs) for c in ids]),
            ("restart accuracy", r, [short[c]["val_accuracy"] for c in ids]),
            ("restart kd_loss", r, [-short[c]["val_kd_loss"] for c in ids]),
            ("restart extrapolated to the long recipe", r,
             [rung_score(short_curves[c], "extrapolated", epochs=args.long_epochs) for c in ids]),
        ]
        for signal in ("accuracy+proxy", "rank_blend"):
            for name, source in (("snapshot", snap), ("restart", short)):
                order = order_members({c: source[c]["val_accuracy"] for c in ids}, proxy, signal, n_val)
                rows.append((f"{name} {signal.replace('proxy', 'params')}", r, [-order.index(c) for c in ids]))
    final = [curves[c][-1]["val_accuracy"] for c in ids]
    rows.append((f"find's final order at --epochs {args.epochs}", args.epochs, final))
    order = order_members(dict(zip(ids, final)), proxy, "accuracy+proxy", n_val)
    rows.append((f"find's final order at --epochs {args.epochs}, ties by params", args.epochs, [-order.index(c) for c in ids]))
    return [{"design": name, "first_rung_epochs": r, "n": len(ids),
             **{key: kendall(values, truth) for key, truth in truths.items()}} for name, r, values in rows]


def cell(args, work: Path) -> dict:
    started = time.perf_counter()
    pool, budget_ms, reference_ms = _pool_of_cell(args)
    ids = [p["candidate_id"] for p in pool]
    proxy = {p["candidate_id"]: float(p["params"]) for p in pool}
    latency = {p["candidate_id"]: p["latency_ms"] for p in pool}
    configs = {p["candidate_id"]: p["config"] for p in pool}
    epochs, long_epochs, tag = args.epochs, args.long_epochs, f"{args.space}-{args.budget_factor:g}x-p{args.pool}-e{args.epochs}"
    folder = work / tag
    store = JobStore(work / "teacher_decides_jobs" / f"{tag}.json.gz") if args.smoke else JobStore(RESULTS / "teacher_decides_jobs" / f"{tag}.json.gz")
    n_val = 200 if args.smoke else 3000
    # ground truths: every member with find's recipe (seed 0, curve recorded), complete short schedules, and the long
    # recipe the user ships with (seed 0)
    specs = [_spec(f"full/{c}/0", configs[c], epochs, 0, folder / "full" / f"{c}-seed0") for c in ids]
    specs += [_spec(f"short{r}/{c}", configs[c], r, 0, folder / f"short{r}" / c) for r in args.first_rungs for c in ids]
    specs += [_spec(f"long/{c}/0", configs[c], long_epochs, 0, folder / "long" / f"{c}-seed0") for c in ids]
    done = run_pool(specs, args.workers, args.smoke, store)
    curves = {c: done[f"full/{c}/0"]["history"] for c in ids}
    final = {c: curves[c][-1]["val_accuracy"] for c in ids}
    final_long = {c: done[f"long/{c}/0"]["accuracy"] for c in ids}
    ctx = {"ids": ids, "proxy": proxy, "pool": pool, "folder": folder, "store": store, "n_val": n_val, "curves": curves}
    designs = _designs(args, ctx, done, {"tau": [final[c] for c in ids], "tau_long": [final_long[c] for c in ids]})
    if args.warm_start:
        designs += warm_designs(args, pool, [final[c] for c in ids], folder, budget_ms)
    plan = plan_rungs(len(ids), args.top_k, args.eta, args.first_rung, epochs)
    stages = {signal: run_stage(args, ctx, signal) for signal in args.signals}
    # the selections a user could run, each with the one student it ships (the first of its final order)
    by_params = ids[:args.top_k]
    top_k_order = order_members({c: final[c] for c in by_params}, proxy, "accuracy", n_val)
    named = {"params": ids[0], "proxy_top_k": top_k_order[0],
             "halving_snapshot": replay_sync(curves, proxy, plan, "accuracy", n_val, epochs),
             **{f"halving_{signal}": stages[signal]["pick"] for signal in args.signals}}
    # the survivors of halving's default stage finished at the long recipe instead of --epochs: judged on seed 1 only
    # (their order is made on the seed-0 long runs)
    survivors = stages["accuracy"]["survivors"]
    named["halving_final_at_target"] = max(survivors, key=lambda c: (final_long[c], proxy[c]))
    named["proxy_top_k_at_target"] = max(by_params, key=lambda c: (final_long[c], proxy[c]))  # the same, for the proxy's top-k
    # find --finish target for real: the default stage's last rung taken to the long recipe (the rungs' restarts, seed 0,
    # from scratch: the same steps as continuing from the rung checkpoint, each schedule segment being its own)
    finish = finish_stage(args, ctx, survivors)
    named["halving_finish_target"] = finish["pick"]
    if args.budget_factor == 1.0 and not args.smoke and args.space == "resnet_cifar":
        configs["resnet20"] = {**RESNET20, "shortcut": "identity"}  # He et al.'s, zero-padded shortcuts
        named["resnet20"] = "resnet20"
    picks = sorted(set(named.values()))
    short_picks = sorted({named[k] for k in ("params", "halving_accuracy", "halving_snapshot")} | ({"resnet20"} & set(picks)))
    pick_specs = [_spec(f"full/{c}/{s}", configs[c], epochs, s, folder / "full" / f"{c}-seed{s}") for c in short_picks for s in (0, 1)]
    pick_specs += [_spec(f"long/{c}/{s}", configs[c], long_epochs, s, folder / "long" / f"{c}-seed{s}") for c in picks for s in (0, 1)]
    got = run_pool(pick_specs, args.workers, args.smoke, store)
    if args.third_seed:  # the selections judged on seed 1 alone get a second unbiased seed, beside their anchors
        third = sorted({named[k] for k in ("params", "proxy_top_k", *CHOSEN_ON_SEED0_LONG) if k in named})
        got.update(run_pool([_spec(f"long/{c}/2", configs[c], long_epochs, 2, folder / "long" / f"{c}-seed2") for c in third],
                            args.workers, args.smoke, store))
    acc_short = {name: statistics.mean(got[f"full/{c}/{s}"]["accuracy"] for s in (0, 1))
                 for name, c in named.items() if c in short_picks}
    acc_long = {name: {"pick": c, "acc_2_seeds": statistics.mean(got[f"long/{c}/{s}"]["accuracy"] for s in (0, 1)),
                       "acc_seed1": got[f"long/{c}/1"]["accuracy"], "latency_ms": latency.get(c),
                       "acc_seed2": got[f"long/{c}/2"]["accuracy"] if f"long/{c}/2" in got else None,
                       "truth_rank_long_seed0": sorted(ids, key=lambda x: -final_long[x]).index(c) + 1 if c in final_long else None,
                       "truth_rank_seed0": sorted(ids, key=lambda x: -final[x]).index(c) + 1 if c in final else None}
                for name, c in named.items()}
    seed1 = {name: got[f"full/{c}/1"]["accuracy"] for name, c in named.items() if c in short_picks}
    default = DEFAULT_SELECTION
    full_epoch_s = statistics.median(sum(h["seconds"] for h in curves[c]) for c in ids) / epochs
    first = next(d for d in designs if d["design"] == "restart accuracy" and d["first_rung_epochs"] == args.first_rung)
    asha_pick, asha_epochs = replay_asha(curves, ids, args.eta, args.first_rung, epochs)
    halving_pick = named["halving_accuracy"]
    return {
        "space": args.space, "budget": f"{args.budget_factor:g}x ResNet-20", "budget_ms": budget_ms,
        "resnet20_ms": reference_ms, "pool": ids, "epochs": epochs, "long_epochs": long_epochs, "eta": args.eta,
        "first_rung": args.first_rung,
        "acc_params_pick": acc_short["params"], "acc_halving_pick": acc_short["halving_accuracy"],
        "acc_reference": acc_short.get("resnet20"),
        "acc_long_params_pick": acc_long["params"]["acc_2_seeds"],
        "acc_long_halving_pick": acc_long["halving_accuracy"]["acc_2_seeds"],
        "acc_long_default_pick": acc_long[default]["acc_2_seeds"], "default_selection": default,
        "acc_long_reference": acc_long["resnet20"]["acc_2_seeds"] if "resnet20" in acc_long else None,
        "long_picks": acc_long,
        "params_pick": ids[0], "halving_pick": halving_pick,
        "halving_pick_truth_rank": sorted(ids, key=lambda c: -final[c]).index(halving_pick) + 1,
        "best_in_pool": max(ids, key=lambda c: final[c]), "best_in_pool_acc_seed0": max(final.values()),
        "best_in_pool_long": max(ids, key=lambda c: final_long[c]), "best_in_pool_long_acc_seed0": max(final_long.values()),
        "tau_rung1": first["tau"], "tau_rung1_long": first["tau_long"], "tau_params": designs[0]["tau"],
        "tau_params_long": designs[0]["tau_long"],
        "cost_student_epochs": student_epochs(plan), "cost_ratio": student_epochs(plan) / (args.top_k * epochs),
        "cost_seconds": stages["accuracy"]["seconds"], "top3_full_seconds_est": full_epoch_s * args.top_k * epochs,
        "long_truth_seconds": sum(done[f"long/{c}/0"]["seconds"] for c in ids),
        "rung_design": "restart", "acc_seed1": seed1,
        "stages": {signal: {k: v for k, v in st.items() if k != "seconds"} for signal, st in stages.items()},
        "finish_target_stage": finish,
        "asha_vs_sync": {"sync_snapshot_pick": named["halving_snapshot"], "sync_snapshot_acc_seed0": final[named["halving_snapshot"]],
                         "sync_epochs": student_epochs(plan), "asha_pick": asha_pick, "asha_acc_seed0": final[asha_pick],
                         "asha_epochs": asha_epochs},
        "rung_designs": designs, "final_seed0": final, "final_long_seed0": final_long,
        "seconds": time.perf_counter() - started,
    }


TEACHER_KEPT = RESULTS / "teacher_decides_teacher"  # the teacher the stored jobs were distilled from (3.5 MB)


def _restore_teacher(cache: Path) -> None:
    """Put the committed teacher where load_teacher's cache finds it (its file name is the hash of the spec, the data's
    content and the recipe): a resumed cell's new jobs learn from the same teacher as its stored ones. A teacher
    retrained elsewhere differs in its last digits, and the stored and new runs would no longer compare."""
    import shutil

    for path in TEACHER_KEPT.glob("*"):
        if not (cache / path.name).exists():
            cache.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, cache / path.name)


def _gains(long_cells: list[dict], anchor: str) -> dict:
    """Each selection's long-recipe gain over ``anchor``'s pick (points): mean and worst cell, on both seeds and seed 1."""
    gains = {}
    for name in sorted({n for c in long_cells for n in c["long_picks"]} - {"resnet20", anchor}):
        cells = [c["long_picks"] for c in long_cells if name in c["long_picks"]]
        both = [100 * (p[name]["acc_2_seeds"] - p[anchor]["acc_2_seeds"]) for p in cells]
        seed1 = [100 * (p[name]["acc_seed1"] - p[anchor]["acc_seed1"]) for p in cells]
        third = all(p[name].get("acc_seed2") is not None and p[anchor].get("acc_seed2") is not None for p in cells)
        if third:
            seed1 = [100 * ((p[name]["acc_seed1"] + p[name]["acc_seed2"]) - (p[anchor]["acc_seed1"] + p[anchor]["acc_seed2"])) / 2
                     for p in cells]  # --third-seed: seeds 1 and 2, both unbiased for a choice made on seed 0
        gains[name] = {"mean_gain_points": float(np.mean(both)), "worst_cell_points": float(min(both)),
                       "per_cell_points": both, "mean_gain_points_seed1": float(np.mean(seed1)),
                       "worst_cell_points_seed1": float(min(seed1)), "per_cell_points_seed1": seed1, "cells": len(both),
                       "seeds_1_and_2": third}
    return gains


def _rule(gains: dict) -> dict:
    """Issue 30's rule: a selection earns the default if its pick beats the anchor's by >= +0.3 points on the long recipe
    (mean over cells) with no cell below -0.5; one whose choice read a seed-0 long run is judged on seed 1 alone."""
    rule = {}
    for name, g in gains.items():
        seed1_only = name in CHOSEN_ON_SEED0_LONG
        key = "_seed1" if seed1_only else ""
        mean, worst = g[f"mean_gain_points{key}"], g[f"worst_cell_points{key}"]
        judged = ("seeds 1 and 2" if g.get("seeds_1_and_2") else "seed 1") if seed1_only else "seeds 0 and 1"
        rule[name] = {"judged_on": judged, "mean_gain_points": mean,
                      "worst_cell_points": worst, "per_cell_points": g[f"per_cell_points{key}"], "cells": g["cells"],
                      "passes": mean >= 0.3 and worst >= -0.5}
    return rule


def summary(cells: list[dict]) -> dict:
    """Across cells: each selection's long-recipe gain over params' pick (the issue's anchor) and over the proxy's
    top-k (find's default for a longer target), the rule applied to both, and find's short-recipe figures."""
    long_cells = [c for c in cells if "long_picks" in c]
    gains = _gains(long_cells, "params")
    tau_long: dict[str, list[float]] = {}
    for c in long_cells:
        for d in c["rung_designs"]:
            if "tau_long" in d:
                tau_long.setdefault(f"{d['design']} @ {d['first_rung_epochs'] or '-'}", []).append(d["tau_long"])
    # a cell whose pool ties on parameters (nasbench201 at 0.7x: every member parameter-free) has no params' pick, only
    # a tie broken by id: the rule is also given without such cells
    informative = [c for c in long_cells if c.get("tau_params") is not None and np.isfinite(c["tau_params"])]
    return {
        "mean_gain_vs_params": float(np.mean([c["acc_halving_pick"] - c["acc_params_pick"] for c in cells])) * 100,
        "mean_gain_long_vs_params": gains.get("halving_accuracy", {}).get("mean_gain_points"),
        "long_gains_vs_params": gains,
        "default_rule": _rule(gains),
        "default_rule_vs_proxy_top_k": _rule(_gains(long_cells, "proxy_top_k")),
        "informative_cells": [f"{c['space']} {c['budget']}" for c in informative],
        "default_rule_informative": _rule(_gains(informative, "params")),
        "default_rule_vs_proxy_top_k_informative": _rule(_gains(informative, "proxy_top_k")),
        "tau_long_mean": {k: float(np.nanmean(v)) for k, v in tau_long.items()},  # nan: a cell whose pool ties on params
        "long_cells": len(long_cells),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="resnet_cifar", choices=["resnet_cifar", "nasbench201"])
    parser.add_argument("--budget-factor", type=float, default=1.0, help="the budget: this many times ResNet-20's latency")
    parser.add_argument("--pool", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6, help="find's recipe (supernet_rank's 6 epochs)")
    parser.add_argument("--long-epochs", type=int, default=15, help="the recipe the user trains the shipped student with")
    parser.add_argument("--first-rungs", default="1,2", help="first-rung lengths whose designs are measured")
    parser.add_argument("--first-rung", type=int, default=1, help="the stage's first rung (find's default)")
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--signals", default=",".join(SIGNALS), help="rung signals whose stage is run for real")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--third-seed", action="store_true", help="also distil the picks chosen on seed 0's long runs "
                        "(and params' and the proxy's) with seed 2: they are then judged on seeds 1 and 2")
    parser.add_argument("--warm-start", action="store_true", help="also rank first rungs started from supernet weights "
                        "(trains find's supernets for the cell: ~10 min more)")
    add_smoke(parser, "digits, 4 students, 2 and 3 epochs")
    args = parser.parse_args()
    args.first_rungs = [int(r) for r in args.first_rungs.split(",")]
    args.signals = [s for s in args.signals.split(",") if s]
    if "accuracy" not in args.signals:
        args.signals.insert(0, "accuracy")  # the default's stage: its survivors are finished at the long recipe
    if args.smoke:
        args.pool, args.epochs, args.long_epochs, args.first_rungs, args.workers, args.top_k = 4, 2, 3, [1], 1, 2
        args.signals = ["accuracy", "rank_blend"]
    tmp = smoke_dir("teacher_decides") if args.smoke else None
    work, results = (tmp, tmp) if tmp else (WORK, RESULTS)
    load = os.getloadavg()[0]
    if not args.smoke:  # the teacher trained (or read from its cache) once, here, before the workers each load it
        from supernet_rank import E2E_CACHE, setting

        _restore_teacher(E2E_CACHE / "teachers")
        setting(500)
    try:
        row = cell(args, work)
    finally:
        for procs in _POOL:
            procs.close()
    path = results / "teacher_decides.json"
    data = json.loads(path.read_text()) if path.exists() else {"cells": []}
    data["cells"] = [c for c in data["cells"] if (c["space"], c["budget"]) != (row["space"], row["budget"])] + [row]
    cells = data["cells"]
    data.update(summary(cells))
    data.update({
        "rung_designs": [{**d, "space": c["space"], "budget": c["budget"]} for c in cells for d in c["rung_designs"]],
        "long_recipe": {"epochs": row["long_epochs"], "seeds": [0, 1], "truth_seeds": [0]},
        "target": "halving's pick >= params' pick + 0.5 points on average; >= ResNet-20 + 1.0 at its latency; cost <= 3x top-3",
        "target_long": "a selection's pick >= params' pick + 0.3 points on the long recipe (mean over cells), no cell below -0.5",
        "setting": "5,000 CIFAR-10 train JPEGs, 3,000 test, ResNet-56 teacher (supernet_rank.py), KD, SGD",
        "load1_at_start": load, "python": platform.python_version(), "torch": torch.__version__,
    })
    atomic_write_json(path, data)
    _print(row, data, path)


def _print(row: dict, data: dict, path: Path) -> None:
    print(f"{row['space']} at {row['budget']} ({row['budget_ms']:.3g} ms), pool {len(row['pool'])}, "
          f"{row['epochs']} epochs (long recipe {row['long_epochs']}):")
    print(f"  at {row['epochs']} epochs: params' pick {row['acc_params_pick']:.4f}   halving's pick {row['acc_halving_pick']:.4f}"
          + (f"   ResNet-20 {row['acc_reference']:.4f}" if row["acc_reference"] is not None else "")
          + f"   (mean of seeds 0 and 1; halving's pick is #{row['halving_pick_truth_rank']} of the pool by seed-0 truth)")
    print(f"  at {row['long_epochs']} epochs (mean of seeds 0 and 1 / seed 1 alone; rank in the pool by the seed-0 long truth):")
    for name, p in sorted(row["long_picks"].items(), key=lambda kv: -kv[1]["acc_2_seeds"]):
        print(f"    {name:28s} {p['pick']:>14s}  {p['acc_2_seeds']:.4f} / {p['acc_seed1']:.4f}"
              + (f"  #{p['truth_rank_long_seed0']}" if p["truth_rank_long_seed0"] else ""))
    print(f"  stage cost {row['cost_student_epochs']} student-epochs = {row['cost_ratio']:.2f}x the top-3 in full; "
          f"the long truth {row['long_truth_seconds']:.0f} s of one worker")
    print(f"  {'design':52s} {'rung':>4s} {'tau':>6s} {'tau_long':>8s}")
    for d in row["rung_designs"]:
        print(f"  {d['design']:52s} {str(d['first_rung_epochs'] or '-'):>4s} {d['tau']:+.2f}"
              + (f" {d['tau_long']:+8.2f}" if "tau_long" in d else ""))
    print(f"  over {data['long_cells']} cell(s), long-recipe gain over params' pick (points, mean / worst cell):")
    print(f"  (the *_informative rules leave out cells whose pool ties on params; informative: "
          f"{', '.join(data['informative_cells'])})")
    for anchor in ("default_rule", "default_rule_vs_proxy_top_k", "default_rule_informative",
                   "default_rule_vs_proxy_top_k_informative"):
        print(f"  {anchor}:")
        for name, g in data[anchor].items():
            print(f"    {name:28s} {g['mean_gain_points']:+.2f} / {g['worst_cell_points']:+.2f}  ({g['judged_on']}"
                  f"{'; meets the rule' if g['passes'] else ''})")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
