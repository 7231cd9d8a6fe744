"""Benchmarks that a fresh clone must be able to re-run (their heavy parts are run by hand, see README)."""

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
