"""End to end on CIFAR-10 JPEGs: at ResNet-20's latency, does ``find`` pick the constrained optimum, and does
its pick distil better than ResNet-20?

1. Data: the first 500 training JPEGs per class of ../shared/data/cifar10-jpeg.tar.gz (5,000 images) and 300
   test JPEGs per class (3,000: the accuracy's standard error is ~0.8 %).
2. Teacher: a ResNet-56-type network (resnet_cifar 9-9-9, 16/32/64) trained on those JPEGs by find's teacher stage
   (``--teacher-epochs``; cached in benchmarks/.data/search_e2e/cache, so a re-run does not train it again).
3. Budget: ResNet-20's latency (resnet_cifar 3-3-3, 16/32/64) on this CPU, batch 1, one thread — the median
   of three measurements with the finalists' settings.
4. ``find --space resnet_cifar --proxy params --trials 200 --top-k 1`` (default sampler): its pick is its top-1
   by the proxy among candidates whose re-measured latency fits.
5. The exhaustive optimum: the largest parameter count among all 4,096 candidates whose latency in the
   measured ground truth (benchmarks/results/search_regret_resnet_cifar.csv.gz) fits the same budget.
6. The pick and ResNet-20 distilled with find's recipe (KD, SGD, ``--epochs``) for seeds 0 and 1.
7. ResNet-20, the pick and the exhaustive optimum timed again side by side, interleaved (5 rounds), since
   figures this machine gives minutes apart do not compare.

    .venv/bin/python benchmarks/search_e2e.py                  # ~40 min on 2 cores -> results/search_e2e_<budget>ms.json
    .venv/bin/python benchmarks/search_e2e.py --budget-ms 2.37  # a given budget (ResNet-20 and the teacher are reused)
    .venv/bin/python benchmarks/search_e2e.py --budget-ms 2.37 --proxy supernet   # rank with the supernets instead
        # (-> results/search_e2e_2.37ms_supernet.json; its pick is also distilled warm-started from inherited weights)

Resumable: the run folder, the teacher and every student live in benchmarks/.data/search_e2e/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".data" / "search_e2e"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from _smoke import add_smoke, smoke_dir  # noqa: E402
from proxy_rank import TEACHER, cifar_folder  # noqa: E402
from search_regret import load_ground_truth, percentile_among  # noqa: E402

from kdsearch._util import atomic_write_json  # noqa: E402
from kdsearch.cost import measure_latency  # noqa: E402
from kdsearch.spaces import candidate_id, create_model  # noqa: E402

RESNET20 = {"family": "resnet_cifar", "depth1": 3, "depth2": 3, "depth3": 3, "width1": 16, "width2": 32, "width3": 64}
INPUT = (3, 32, 32)


def resnet56(num_classes: int = 10) -> torch.nn.Module:
    """The teacher, as a callable ``find`` builds: ``--teacher search_e2e:resnet56``."""
    return create_model(TEACHER, num_classes=num_classes)


def resnet20_budget() -> dict:
    """ResNet-20's latency with the finalists' settings, three times; the median is the budget (kept, so a
    resumed run keeps its budget)."""
    from kdsearch.run.settings import LATENCY_FINAL

    path = WORK / "budget.json"
    if path.exists():
        return json.loads(path.read_text())
    model = create_model(RESNET20, num_classes=10)
    readings = [measure_latency(model, INPUT, batch_size=1, threads=1, **LATENCY_FINAL).p50_ms for _ in range(3)]
    record = {"readings_ms": readings, "budget_ms": round(statistics.median(readings), 3), "load1": os.getloadavg()[0]}
    atomic_write_json(path, record)
    return record


def exhaustive(budget_ms: float, pick: dict) -> dict:
    """The constrained optimum by parameters over every candidate's measured latency (the regret ground truth)."""
    table = load_ground_truth("resnet_cifar").set_index("candidate_id")
    feasible = table[table["latency_p50_ms"] <= budget_ms]
    best_id = feasible["params"].idxmax()
    values = np.sort(feasible["params"].to_numpy())
    pick_id = candidate_id(pick["config"])
    resnet20_id = candidate_id(RESNET20)
    return {
        "feasible": len(feasible), "optimum": {"candidate_id": best_id, "config": json.loads(table.at[best_id, "config"]),
                                               "params": int(table.at[best_id, "params"]),
                                               "latency_ms": float(table.at[best_id, "latency_p50_ms"])},
        "pick_ground_truth_latency_ms": float(table.at[pick_id, "latency_p50_ms"]),
        "pick_percentile": percentile_among(values, pick["params"]),
        "pick_params_vs_optimum": float(pick["params"] / table.at[best_id, "params"]),
        "resnet20_ground_truth_latency_ms": float(table.at[resnet20_id, "latency_p50_ms"]),
    }


def side_by_side(configs: dict[str, dict], rounds: int = 5) -> dict:
    """The latencies that matter measured together, interleaved (this machine drifts by tens of percent between
    minutes, so figures taken at different times do not compare): median and range over ``rounds``."""
    from kdsearch.run.settings import LATENCY_FINAL

    models = {name: create_model(config, num_classes=10) for name, config in configs.items()}
    readings: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            readings[name].append(measure_latency(model, INPUT, batch_size=1, threads=1, **LATENCY_FINAL).p50_ms)
    return {name: {"median_ms": statistics.median(r), "min_ms": min(r), "max_ms": max(r)} for name, r in readings.items()}


def distil(config: dict, name: str, seed: int, teacher, task, recipe) -> float:
    from kdsearch.pipeline.student import distill_student

    record = distill_student(config, teacher, task, WORK / "students" / f"{name}-seed{seed}", replace(recipe, seed=seed),
                             loss="kd", progress=True, desc=f"{name} seed {seed}")
    return float(record["val_accuracy"])


def warm_started(run, settings, pick: dict, teacher, task, recipe, seeds) -> dict:
    """The pick distilled again from its subnet's inherited weights (BN recalibrated), same recipe and seeds."""
    from kdsearch.pipeline import run_supernets
    from kdsearch.pipeline.student import distill_student

    ranker = run_supernets(settings, task, teacher)  # cached by find: trains nothing
    out = {}
    for seed in seeds:
        record = distill_student(pick["config"], teacher, task, WORK / "students" / f"pick-{pick['candidate_id']}-warm-seed{seed}",
                                 replace(recipe, seed=seed), loss="kd", progress=True, desc=f"warm pick seed {seed}",
                                 initial=ranker.subnet(pick["config"], pick["latency_p50_ms"]))
        out[seed] = {"final": float(record["val_accuracy"]), "per_epoch": [h["val_accuracy"] for h in record["history"]]}
    return out


def supernet_cost(run, pick: dict) -> dict:
    """Supernet wall time against distilling the pick for the same number of epochs (the issue's cost ratio), and
    the supernet proxy's scoring time per candidate."""
    import pandas as pd

    record = run.supernets()
    seconds = sum(h["seconds"] for history in record["histories"].values() for h in history)
    epochs = max(len(h) for h in record["histories"].values())
    student = run.student(pick["candidate_id"]).result()
    per_epoch = student["seconds"] / student["epochs"]
    scoring = pd.read_csv(run.path / "candidates.csv")["proxy_supernet_ms"]
    return {"bands": record["bands"], "trained_bands": record["bands"].get("trained"), "seconds": seconds,
            "epochs": epochs, "student_seconds_per_epoch": per_epoch, "cost_ratio": seconds / (per_epoch * epochs),
            "scoring_ms_median": float(scoring.median()), "scoring_ms_p90": float(scoring.quantile(0.9)),
            "curves": record["histories"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--teacher-only", action="store_true", help="train and cache the teacher, then stop")
    parser.add_argument("--budget-ms", type=float, help="the budget in ms instead of ResNet-20's latency measured now")
    parser.add_argument("--proxy", default="params", help="find's ranking proxy (params, or supernet)")
    parser.add_argument("--supernet-epochs", type=int, default=5)
    parser.add_argument("--subspaces", type=int, default=3)
    add_smoke(parser, "12 trials, 1 epoch, one seed, 20 images per class, a 1-epoch teacher")
    args = parser.parse_args()
    global WORK, RESULTS
    if args.smoke:
        WORK = RESULTS = smoke_dir("search_e2e")
        args.per_class, args.trials, args.epochs, args.teacher_epochs, args.seeds = 20, 12, 1, 1, [0]
    os.environ.setdefault("KDSEARCH_CACHE_DIR", str(WORK / "cache"))
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    from kdsearch.pipeline import find
    from kdsearch.run import RunFolder
    from kdsearch.teacher import load_teacher

    folder = cifar_folder(args.per_class)
    if args.teacher_only:  # what find's teacher stage does (same data, recipe and cache key), ahead of time
        from kdsearch.data import DataSpec, load_task

        task = load_task(DataSpec(data=str(folder), seed=args.seeds[0]))
        teacher = load_teacher("search_e2e:resnet56", task, epochs=args.teacher_epochs, measure=False, progress=True)
        print(f"teacher: val accuracy {teacher.accuracy:.4f} ({teacher.source})")
        return
    budget = {"budget_ms": args.budget_ms, "source": "--budget-ms"} if args.budget_ms else resnet20_budget()
    if args.smoke and not args.budget_ms:  # 12 random trials must meet one candidate that fits, however the timings fall
        budget = {**budget, "budget_ms": round(1.5 * budget["budget_ms"], 2), "source": "1.5 x ResNet-20 (--smoke)"}
    tag = f"{budget['budget_ms']}ms" + ("" if args.proxy == "params" else f"_{args.proxy}")
    print(f"budget: {budget['budget_ms']} ms ({budget.get('readings_ms', budget.get('source'))})", flush=True)
    supernet = {"subspaces": args.subspaces, "supernet_epochs": args.supernet_epochs} if args.proxy == "supernet" else {}
    # front and controls off: this benchmark distils only the proxy's pick (the front has its own, front_cost.py;
    # successive halving, find's default selection, has teacher_decides.py)
    result = find(teacher="search_e2e:resnet56", budget=f"{budget['budget_ms']}ms", data=str(folder), space="resnet_cifar",
                  proxy=args.proxy, select="proxy", trials=args.trials, top_k=1, front=0, controls=0, teacher_epochs=args.teacher_epochs,
                  epochs=args.epochs, batch_size=64, threads=1, seed=args.seeds[0], out=WORK / f"run-{tag}", **supernet)
    find_seconds = time.perf_counter() - started
    run = RunFolder.open(result.run_dir)
    settings = run.settings()
    finalists = run.finalists()
    pick = max((f for f in finalists.values() if f["within_budget"] and f.get("role", "top") == "top"),
               key=lambda f: f[settings.ranking_proxy])
    truth = exhaustive(budget["budget_ms"], pick)

    from kdsearch.data import load_task

    task = load_task(settings.data)
    teacher = load_teacher(settings.teacher, task, epochs=settings.teacher_epochs, measure=False)
    recipe = settings.recipe()
    accuracy = {"pick": {}, "resnet20": {}}
    for seed in args.seeds:
        found = run.student(pick["candidate_id"]).result() if seed == settings.seed else None  # find distilled it
        accuracy["pick"][seed] = float(found["val_accuracy"]) if found else distil(
            pick["config"], f"pick-{pick['candidate_id']}", seed, teacher.model, task, recipe)
        accuracy["resnet20"][seed] = distil(RESNET20, "resnet20", seed, teacher.model, task, recipe)
    if args.proxy == "supernet":
        accuracy["pick_warm_start"] = warm_started(run, settings, pick, teacher.model, task, recipe, args.seeds)
    studied = len(result.candidates)
    latency_now = side_by_side({"resnet20": RESNET20, "pick": pick["config"], "optimum": truth["optimum"]["config"]})
    record = {
        "budget": budget, "train_images": len(task.train_labels), "val_images": len(task.val_labels),
        "teacher": {"config": TEACHER, "val_accuracy": teacher.accuracy, "epochs": settings.teacher_epochs},
        "find": {"trials": args.trials, "proxy": args.proxy, "candidates_scored": studied, "pick": {k: pick.get(k) for k in
                 ("candidate_id", "config", "params", "flops", "latency_p50_ms", "latency_iqr_ms", args.proxy)},
                 "finalists_remeasured": len(finalists), "finalists_over_budget": sum(not f["within_budget"] for f in finalists.values()),
                 "seconds_to_pick_and_distil_seed0": find_seconds},
        "exhaustive": truth,
        "latency_side_by_side": latency_now,
        "recipe": recipe.to_dict(), "loss": "kd",
        "distilled_accuracy": accuracy,
        "mean_accuracy": {k: statistics.mean(a["final"] if isinstance(a, dict) else a for a in v.values()) for k, v in accuracy.items()},
        "resnet20_params": int(sum(p.numel() for p in create_model(RESNET20, num_classes=10).parameters())),
        "seconds": time.perf_counter() - started, "python": platform.python_version(), "torch": torch.__version__,
        "threads_training": torch.get_num_threads(),
        **({"supernet": supernet_cost(run, pick)} if args.proxy == "supernet" else {}),
    }
    atomic_write_json(RESULTS / f"search_e2e_{tag}.json", record)
    print(json.dumps({k: record[k] for k in ("budget", "exhaustive", "latency_side_by_side", "mean_accuracy", "distilled_accuracy")},
                     indent=1, default=str))
    print(f"pick {pick['config']} {pick['params']:,} params at {pick['latency_p50_ms']:.3f} ms; "
          f"optimum {truth['optimum']['params']:,}; ResNet-20 {record['resnet20_params']:,}")


if __name__ == "__main__":
    main()
