"""Several spaces searched as one (--space a,b): a conditional search space, fronts that mix CNNs and transformers."""

import json

import optuna
import pandas as pd
import pytest

from kdsearch.cli import main
from kdsearch.exceptions import SpaceError
from kdsearch.run import RunSettings
from kdsearch.spaces import UnionSpace, candidate_id, load_spaces

TEACHER = '{"family": "resnet_cifar", "depth1": 2, "depth2": 2, "depth3": 2}'


def test_a_union_holds_every_candidate_of_its_spaces_once_and_draws_from_both():
    union = load_spaces("resnet_cifar_s1,vit_cifar")
    assert isinstance(union, UnionSpace) and union.size == 64 + 144 and union.name == "resnet_cifar_s1,vit_cifar"
    assert len({candidate_id(c) for c in union.enumerate()}) == union.size
    drawn = union.sample(40, seed=0)
    assert len({candidate_id(c) for c in drawn}) == 40 and {c["family"] for c in drawn} == {"resnet_cifar", "vit"}
    assert drawn == union.sample(40, seed=0) and union.part_of(drawn[0]).family == drawn[0]["family"]
    assert all(p.fixed["img_size"] == 28 for p in union.for_input(28).parts if p.family == "vit")
    with pytest.raises(SpaceError, match="empty name"):
        load_spaces("resnet_cifar,")
    with pytest.raises(SpaceError, match="two or more different spaces"):
        load_spaces("vit_cifar,vit_cifar")


def test_the_space_is_the_first_choice_of_a_conditional_search_space():
    union = load_spaces("resnet_cifar_s1,vit_cifar")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = []
    for _ in range(30):
        trial = study.ask()
        configs.append(union.suggest(trial))
        study.tell(trial, 0.0)
        assert set(trial.params) == {"space"} | {f"{trial.params['space']}.{k}" for k in union.part_of(configs[-1]).choices}
    assert {c["family"] for c in configs} == {"resnet_cifar", "vit"}


def test_a_union_run_records_its_spaces_and_reads_them_back(tmp_path):
    settings = RunSettings.create(TEACHER, "0.8Mparams", space="resnet_cifar_s1,vit_cifar", out=tmp_path / "run")
    again = RunSettings.from_config(settings.to_config(), tmp_path / "run")
    assert isinstance(again.space, UnionSpace) and [p.name for p in again.space.parts] == ["resnet_cifar_s1", "vit_cifar"]
    assert again.to_config()["space_sha"] == settings.to_config()["space_sha"]


def test_a_space_that_declares_subspaces_is_their_union_and_takes_the_supernet_proxy(tmp_path):
    """autodistil.yaml declares AutoDistil's K = 3 subspaces: one space of one family, a supernet per subspace."""
    settings = RunSettings.create(TEACHER, "0.8Mparams", space="autodistil", proxy="supernet", out=tmp_path / "run")
    space = settings.space
    assert isinstance(space, UnionSpace) and space.name == "autodistil" and space.families == ["vit"]
    assert [p.name for p in space.parts] == ["autodistil.tiny", "autodistil.small", "autodistil.base"]
    again = RunSettings.from_config(settings.to_config(), tmp_path / "run")
    assert again.space.name == "autodistil" and again.to_config()["space_sha"] == settings.to_config()["space_sha"]
    with_cnn = load_spaces("autodistil,resnet_cifar_s1")  # a subspaced file among others contributes its parts
    assert [p.name for p in with_cnn.parts] == ["autodistil.tiny", "autodistil.small", "autodistil.base", "resnet_cifar_s1"]


def _find(out, *extra):
    return main([str(a) for a in ["find", "--teacher", TEACHER, "--teacher-epochs", 2, "--space", "resnet_cifar_s1,vit_cifar",
                                  "--budget", "0.8Mparams", "--trials", 20, "--top-k", 1, "--front", 2, "--controls", 0,
                                  "--epochs", 1, "--select", "proxy", "--val-samples", 200, "--out", out, "-q", *extra]])


@pytest.mark.parametrize("extra, message", [
    (["--sampler", "constrained"], "--sampler constrained searches one space"),
    (["--latency-model", "on", "--budget", "2ms"], "--latency-model on models one space's latency"),
    (["--proxy", "supernet"], "A supernet proxy shares weights within one family"),
])
def test_what_needs_one_space_is_refused_for_a_union_in_one_line(tmp_path, capsys, extra, message):
    assert _find(tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_union_front_has_each_family_s_best_in_each_band_and_the_report_says_which_wins(tmp_path, capsys):
    assert _find(tmp_path / "run") == 0
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "run" / "candidates.csv")
    done = table[table["distilled_accuracy"].notna()].assign(family=lambda t: t["config"].map(lambda c: json.loads(c)["family"]))
    assert set(done["family"]) == {"resnet_cifar", "vit"}
    # params rank ViTs first at any budget (more parameters per ms): without a pick per family, no CNN would be distilled
    assert all(rows["family"].nunique() == 2 for _, rows in done.groupby("band"))
    assert "families (a union of spaces)" in out and out.count("wins by") == done["band"].nunique()
    html = (tmp_path / "run" / "report.html").read_text()
    assert "vit: " in html and "resnet_cifar: " in html  # the front's legend, by family
