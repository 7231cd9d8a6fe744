"""NNI model spaces (the optional nni extra): choices, frozen candidates, and find end to end on one."""

import sys

import pandas as pd
import pytest
import torch

from kdsearch.cli import main
from kdsearch.exceptions import SpaceError
from kdsearch.spaces import create_model, load_space

TEACHER = "tests.test_teacher:tiny_teacher"


def test_without_nni_the_space_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nni", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "nni.nas.hub.pytorch", None)
    with pytest.raises(SpaceError, match=r"pip install 'kdsearch\[nni\]'"):
        load_space("nni:NasBench201")
    code = main(["find", "--teacher", TEACHER, "--budget", "10ms", "--space", "nni:NasBench201", "--out", "unused"])
    err = capsys.readouterr().err
    assert code == 2 and "kdsearch[nni]" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_nni_hub_space_becomes_a_kdsearch_space():
    pytest.importorskip("nni")
    space = load_space("nni:NasBench201")
    assert space.family == "nni" and space.size == 5 ** 6 and len(space.choices) == 6
    config = space.sample(1, seed=3)[0]
    model = create_model(config, num_classes=7, in_chans=1)  # 1-channel images are repeated to NNI's 3
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    with pytest.raises(SpaceError, match="no hub space 'NasBench2001'.*NasBench201"):
        load_space("nni:NasBench2001")


def test_find_runs_end_to_end_on_an_nni_model_space(tmp_path, capsys):
    pytest.importorskip("nni")
    out = tmp_path / "nni-run"
    code = main(["find", "--teacher", TEACHER, "--budget", "50ms", "--space", "nni:tests.nni_tiny:TinySpace",
                 "--data", "digits", "--trials", "6", "--top-k", "2", "--front", "0", "--controls", "0", "--epochs", "6", "--select", "proxy",
                 "--teacher-epochs", "8", "--val-samples", "200", "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(out / "candidates.csv")
    assert len(table) == 6  # the whole space: 3 blocks x 2 downsamplings
    distilled = table[table["distilled_accuracy"].notna()]
    assert len(distilled) == 2 and (distilled["distilled_accuracy"] > 0.2).all()  # learnt beyond chance (0.1)
    assert main(["export", str(out), "--format", "onnx"]) == 0
    assert (out / "export" / "student.onnx").stat().st_size > 1000
