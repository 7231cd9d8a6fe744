"""Benchmarks that a fresh clone must be able to re-run (their heavy parts are run by hand, see docs/benchmarks.md)."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_proxy_rank_reuse_rebuilds_a_missing_teacher(cifar_folder, tmp_path, monkeypatch):
    """`proxy_rank.py --reuse` from a fresh clone: the teacher lives in git-ignored benchmarks/.data, so it
    must be trained there when missing (it raised FileNotFoundError), then read back by the next run."""
    bench = _load("proxy_rank")
    monkeypatch.setattr(bench, "WORK", tmp_path / "proxy_rank")
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setattr(bench, "cifar_folder", lambda per_class=500: cifar_folder)
    said = []
    teacher, info, task = bench.load_or_train_teacher(1, 40, log=said.append)
    assert said and "not found: training the teacher" in said[0]
    assert info["tag"] == f"t1ep{len(task.train_labels)}" and 0.0 <= info["val_accuracy"] <= 1.0
    assert (tmp_path / "proxy_rank" / f"teacher_{info['tag']}.safetensors").exists()

    def no_training(*args, **kwargs):
        raise AssertionError("the stored teacher must be read, not trained again")

    import kdsearch.training

    monkeypatch.setattr(kdsearch.training, "fit", no_training)
    said.clear()
    again, info2, _ = bench.load_or_train_teacher(1, 40, log=said.append)
    assert said == [] and info2["val_accuracy"] == pytest.approx(info["val_accuracy"])


def test_supernet_rank_draws_students_from_the_band_and_compares_rankers_by_bootstrap():
    """supernet_rank.py's pure parts: students come from the regret table below the band's edge, distinct and
    seeded; the paired bootstrap says a perfect ranker beats a reversed one, and by how much."""
    import numpy as np

    bench = _load("supernet_rank")
    students = bench.sample_students("resnet_cifar", 30, upper_ms=3.0, seed=0)
    assert len(students) == 30 and len({s["candidate_id"] for s in students}) == 30
    assert all(s["latency_ms"] <= 3.0 and s["params"] > 0 for s in students)
    assert students == bench.sample_students("resnet_cifar", 30, upper_ms=3.0, seed=0)
    truth = np.arange(20.0)
    noisy = truth + np.random.default_rng(0).normal(0, 3, 20)
    better = bench.bootstrap_difference(truth, noisy, truth, repeats=300)
    assert better["p05"] > 0 and better["share_positive"] > 0.95
    worse = bench.bootstrap_difference(-truth, noisy, truth, repeats=300)
    assert worse["p95"] < 0 and worse["median"] < -1.0
    # the per-key diagnosis: a score that rises with depth where the truth falls with it shows opposite signs
    truth_by_depth = [-s["config"]["depth1"] for s in students]
    taus = bench.key_taus(students, truth_by_depth, [s["config"]["depth1"] for s in students])
    assert taus["depth1"]["truth"] == pytest.approx(-1.0) and taus["depth1"]["supernet"] == pytest.approx(1.0)
    assert set(taus) == {"depth1", "depth2", "depth3", "width1", "width2", "width3"}  # numeric keys only


def test_proxy_rank_scores_only_the_proxies_that_need_no_supernet():
    """`proxy_rank.py --reuse` crashed once the supernet proxies were registered: it handed them a context without one."""
    from kdsearch.proxies import list_proxies
    from kdsearch.proxies.supernet import SUPERNET_PROXIES

    bench = _load("proxy_rank")
    names, left_out = bench.scorable_proxies(list_proxies())
    assert set(left_out) == set(SUPERNET_PROXIES) and not set(names) & set(SUPERNET_PROXIES)
    assert {"params", "flops", "synflow"} <= set(names) and len(names) + len(left_out) == len(list_proxies())


def test_teacher_decides_replays_asha_and_synchronous_rungs_on_recorded_curves():
    """teacher_decides.py's replays: Optuna's SuccessiveHalvingPruner on recorded curves in the proxy's order lets the
    first students run to the end (nothing to compare them with yet); synchronous rungs keep the best by the rung."""
    from kdsearch.distill.halving import plan_rungs

    bench = _load("teacher_decides")
    # students whose order at epoch 1 is their final order; the proxy lists the worst first
    curves = {f"s{i}": [{"epoch": e, "val_accuracy": 0.1 * i + 0.01 * e} for e in range(1, 7)] for i in range(9)}
    order = [f"s{i}" for i in range(9)]
    proxy = {c: float(9 - i) for i, c in enumerate(order)}
    plan = plan_rungs(9, 1, 3, 1, 6)
    assert bench.replay_sync(curves, proxy, plan, "accuracy", 3000, 6) == "s8"
    pick, spent = bench.replay_asha(curves, order, 3, 1, 6)
    assert pick == "s8"
    assert spent > 9 + 3 * 2 + 1 * 3  # ASHA promoted the early students it could not compare yet: more epochs


def test_teacher_decides_keeps_every_finished_job_so_a_cell_resumes_without_its_checkpoints(tmp_path):
    """The job store (committed beside the results): a job finished once is served from it, never distilled again."""
    bench = _load("teacher_decides")
    store = bench.JobStore(tmp_path / "jobs" / "cell.json.gz")
    record = {"key": "full/a/0", "epochs": 6, "seed": 0, "history": [{"epoch": 1, "val_accuracy": 0.5}], "accuracy": 0.5,
              "seconds": 1.0, "config": {"family": "resnet_cifar"}}
    store.put("full/a/0", record)
    again = bench.JobStore(tmp_path / "jobs" / "cell.json.gz")  # a fresh checkout: the file alone
    assert again.records["full/a/0"]["accuracy"] == 0.5 and "config" not in again.records["full/a/0"]
    served = bench.run_pool([{"key": "full/a/0", "config": {}, "epochs": 6, "seed": 0, "folder": str(tmp_path / "x")}],
                            workers=2, smoke=True, store=again)  # nothing to distil: no worker is started
    assert served["full/a/0"]["history"] == record["history"] and not bench._POOL and not (tmp_path / "x").exists()


SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.stem.startswith("_"))


def _results_state() -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in (BENCHMARKS / "results").iterdir()}


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_runs_its_smoke_mode_to_the_end_without_touching_the_results(script):
    """Each script's --smoke (a few candidates or images, results in a temporary folder) runs to its end: a
    benchmark that stopped working fails here, not in the hands of the next person who runs it."""
    import os
    import subprocess

    before = _results_state()
    env = {**os.environ, "PYTHONUNBUFFERED": "1",  # temp folders in the system's: scale_out's PostgreSQL runs as its own user
           "KDSEARCH_SMOKE_CACHE": os.environ["KDSEARCH_CACHE_DIR"]}  # the session's cache: one teacher serves every run
    proc = subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), "--smoke"], cwd=BENCHMARKS.parent, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("SKIP: ")]
    if proc.returncode == 0 and skipped:
        pytest.skip(skipped[0][len("SKIP: "):])
    assert proc.returncode == 0 and "Traceback" not in out, out[-4000:]
    assert "smoke run: results in" in proc.stdout
    assert _results_state() == before, "a smoke run wrote into benchmarks/results/"
