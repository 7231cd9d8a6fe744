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
