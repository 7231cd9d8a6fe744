"""The selection strategies' registry and the finalists' roles (kdsearch.pipeline.selection / records)."""

import pytest

from kdsearch.exceptions import KdsearchError
from kdsearch.pipeline.records import CONTROL, POOL, TOP, Finalist, Role, read_finalists, write_finalists
from kdsearch.pipeline.selection import SELECTIONS, ProxyTopK, SuccessiveHalving, create_selection
from kdsearch.run.settings import SELECT_CHOICES


def test_every_select_choice_but_auto_is_a_registered_strategy_and_nothing_else_is():
    assert set(SELECTIONS.names()) == set(SELECT_CHOICES) - {"auto"}
    assert isinstance(create_selection("proxy"), ProxyTopK) and isinstance(create_selection("halving"), SuccessiveHalving)


def test_an_unknown_strategy_is_one_sentence_naming_the_known_ones():
    with pytest.raises(KdsearchError, match=r"Unknown selection 'halvign'; Did you mean 'halving'\? available: halving, proxy"):
        create_selection("halvign")


def test_a_role_reads_and_writes_the_text_finalists_json_holds():
    for text, role in (("top", TOP), ("control", CONTROL), ("pool", POOL), ("band 3", Role("band", 3))):
        assert Role.parse(text) == role and str(role) == text
    assert Role.parse(None) == TOP  # finalists written before roles were recorded
    assert Role("band", 1) != Role("band", 2)
    for kind, band in (("band", None), ("top", 1), ("rung", None)):
        with pytest.raises(ValueError):
            Role(kind, band)


class _Recorder:
    """A Chooser stand-in that records what a strategy asked for."""

    def __init__(self):
        self.calls, self.finalists = [], {}

    def take(self, role, ordered, count):
        self.calls.append((role, [r["candidate_id"] for r in ordered], count))
        return [Finalist(r["candidate_id"], {}, role, True) for r in ordered[:count]]


def test_the_proxy_strategy_takes_the_top_k_in_the_proxy_order_as_top_picks():
    class Run:
        class settings:
            top_k = 2

    chooser = _Recorder()
    top = ProxyTopK().choose(Run, [{"candidate_id": c} for c in ("b", "a", "c")], chooser)
    assert chooser.calls == [(TOP, ["b", "a", "c"], 2)]
    assert [f.candidate_id for f in top] == ["b", "a"]


def test_a_finalist_round_trips_through_the_flat_record_finalists_json_holds(tmp_path):
    from kdsearch.run import RunFolder

    record = {"candidate_id": "abc", "config": {"family": "resnet_cifar", "depth": 20}, "trial": 3, "params": 1e5,
              "latency_p50_ms": 2.5, "reference_p50_ms": 5.0, "role": "band 2", "within_budget": True, "band": 2,
              "rung": None, "stopped_at_epoch": None, "synflow": 1.5}
    final = Finalist.from_record(record)
    assert final.role == Role("band", 2) and final.band == 2 and final.family == "resnet_cifar"
    assert final.latency_ms == 2.5 and final["synflow"] == 1.5 and final.get("missing") is None
    assert "role" not in final.metrics and "config" not in final.metrics
    assert final.to_record() == record
    assert final.accepted and not Finalist("x", {}, POOL, True).accepted and not Finalist("y", {}, TOP, False).accepted
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir(parents=True)
    write_finalists(folder, {"abc": final})
    assert read_finalists(folder) == {"abc": final}
    old = {k: v for k, v in record.items() if k not in ("role", "band", "rung", "stopped_at_epoch")}
    assert Finalist.from_record(old).role == TOP  # written before roles were recorded
