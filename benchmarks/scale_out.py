"""Workers on one study: scoring throughput and Optuna's bookkeeping per trial with 1, 2 and 4 worker processes,
on SQLite (the run folder's default) and on PostgreSQL (a throwaway server on loopback: tests/postgres.py).

Each worker is a process running ``kdsearch.search.run_search`` on the same study of 500 trials of the
``resnet_cifar`` space (4,096 candidates) under a 0.3 M-parameter budget, with Optuna's random sampler (what
the storage and the slots cost) and with find's default, the constrained sampler (ranking by the exact parameter
count; each worker fits its own model of the space). A candidate's "scoring" is a fixed 50 ms wait that returns its real
parameter count: on 2 cores, real latency measurements would disturb each other, and the point here is the
coordination — does every slot get filled exactly once, is any candidate measured twice, what does a trial cost
beyond its own work. Bookkeeping per trial = (the time a worker spent in run_search − its 50 ms waits) / its
trials: the sampler, the storage's writes, the heartbeat, the duplicate check. (Before workers, find's SQLite/WAL
bookkeeping was measured at 19 ms per trial: docs/benchmarks.md.)

    .venv/bin/python benchmarks/scale_out.py        # ~6 min on 2 cores, nothing else running -> results/scale_out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _smoke import add_smoke, smoke_dir  # noqa: E402

TRIALS, EVAL_S, BUDGET = 500, 0.05, "0.3Mparams"


def _child(url: str, worker: int, n_trials: int, out: str, sampler: str) -> None:
    """One worker: run_search until no slot is free (the first also waits for the others' slots)."""
    import optuna

    from kdsearch.cost import parse_budget
    from kdsearch.data import load_task
    from kdsearch.search import exact_proxy, run_search
    from kdsearch.spaces import load_space

    space, task = load_space("resnet_cifar"), load_task("digits")
    cheap = exact_proxy("params", task)
    from kdsearch.spaces import candidate_id

    spent = {"eval": 0.0, "measured": []}

    def evaluate(config):
        started = time.perf_counter()
        time.sleep(EVAL_S)
        params = cheap(config)
        spent["eval"] += time.perf_counter() - started
        spent["measured"].append(candidate_id(config))
        return {"params": params, "flops": 0.0}

    started = time.perf_counter()
    study = run_search(space, evaluate, budget=parse_budget(BUDGET), objective="params", storage=url, study_name="kdsearch",
                       n_trials=n_trials, seed=0, cheap_score=cheap, top_k=3, worker=worker, wait=worker == 0, sampler=sampler)
    wall = time.perf_counter() - started
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == worker
            and t.state == optuna.trial.TrialState.COMPLETE]
    Path(out).write_text(json.dumps({"worker": worker, "wall_s": wall, "eval_s": spent["eval"], "measured": spent["measured"],
                                     "trials": len(mine)}))


def _case(storage: str, workers: int, pg, trials: int = TRIALS, sampler: str = "random") -> dict:
    import optuna

    from kdsearch.search import filled_slots, make_storage, trial_slots

    tmp = Path(tempfile.mkdtemp(prefix="scale-out-"))
    url = pg.new_database(f"scale_{sampler}_{workers}") if storage == "postgresql" else f"sqlite:///{tmp / 'study.db'}"
    make_storage(url)  # the tables exist before the workers race to create them
    optuna.create_study(study_name="kdsearch", storage=make_storage(url), direction="maximize", load_if_exists=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--child", url, str(i), str(trials), str(tmp / f"w{i}.json"), sampler], env=env)
             for i in range(workers)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - started
    if any(codes):
        raise SystemExit(f"a worker failed: exit codes {codes}")
    records = [json.loads((tmp / f"w{i}.json").read_text()) for i in range(workers)]
    study = optuna.load_study(study_name="kdsearch", storage=make_storage(url))
    all_trials = study.get_trials(deepcopy=False)
    slots = trial_slots(all_trials)
    scored = [t for t in all_trials if t.state == optuna.trial.TrialState.COMPLETE and 0 <= slots[t.number] < trials]
    measured = [cid for r in records for cid in r["measured"]]  # every evaluate() call of every worker
    starts = min(t.datetime_start for t in scored)
    ends = max(t.datetime_complete for t in scored)
    overhead = [(r["wall_s"] - r["eval_s"]) / max(1, r["trials"]) * 1000 for r in records if r["trials"]]
    return {
        "storage": storage, "sampler": sampler, "workers": workers, "filled_slots": filled_slots(all_trials, trials), "trials_created": len(all_trials),
        "surplus": sum(1 for t in all_trials if t.user_attrs.get("surplus")), "measured": len(measured),
        "measured_twice": len(measured) - len(set(measured)),
        "served": sum(1 for t in scored if t.user_attrs.get("served")),
        "served_from_a_twin": sum(1 for t in scored if "served_from" in t.user_attrs),
        "scoring_s": (ends - starts).total_seconds(), "wall_s": wall,
        "trials_per_s": len(scored) / (ends - starts).total_seconds(),
        "trials_per_worker": [r["trials"] for r in records],
        "bookkeeping_ms_per_trial": sum(overhead) / len(overhead),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--samplers", default="random,constrained",
                        help="random: the storage's bookkeeping alone; constrained: find's default sampler (it fits "
                             "its model of the space in every worker)")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale_out.json"))
    add_smoke(parser, "random sampler, 1 and 2 workers, 16 trials")
    args = parser.parse_args()
    if args.smoke:
        args.samplers, args.workers, args.trials = "random", "1,2", 16
        args.out = str(smoke_dir("scale_out") / "scale_out.json")
    if args.child:
        url, worker, n, out, sampler = args.child
        return _child(url, int(worker), int(n), out, sampler)
    from tests.postgres import PostgresServer, unavailable_reason

    reason = unavailable_reason()
    pg = None if reason else PostgresServer().init()
    rows = []
    try:
        for sampler in args.samplers.split(","):
            for storage in ("sqlite", "postgresql"):
                if storage == "postgresql" and pg is None:
                    print(f"postgresql: skipped ({reason})")
                    continue
                for workers in map(int, args.workers.split(",")):
                    rows.append(_case(storage, workers, pg, args.trials, sampler))
                    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    finally:
        if pg is not None:
            pg.destroy()
    import pandas as pd

    table = pd.DataFrame(rows)
    for _, part in table.groupby(["sampler", "storage"]):
        base = part.loc[part["workers"] == part["workers"].min(), "trials_per_s"].iloc[0]
        table.loc[part.index, "throughput_ratio"] = part["trials_per_s"] / base
    shown = ["sampler", "storage", "workers", "filled_slots", "measured", "measured_twice", "served", "served_from_a_twin", "surplus", "trials_per_s",
             "throughput_ratio", "bookkeeping_ms_per_trial"]
    print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    load = os.getloadavg()
    record = {"trials": args.trials, "eval_s": EVAL_S, "budget": BUDGET, "space": "resnet_cifar",
              "cpu_count": os.cpu_count(), "load_avg_at_end": load, "python": platform.python_version(),
              "rows": json.loads(table.to_json(orient="records"))}
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
