"""The selection strategies' registry and the finalists' roles (kdsearch.pipeline.selection / records)."""

import pytest

from kdsearch.exceptions import KdsearchError
from kdsearch.pipeline.records import CONTROL, POOL, TOP, Role
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
        assert Role.of({"role": text}) == role and str(role) == text
    assert Role.of({}) == TOP  # finalists written before roles were recorded
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


def test_the_proxy_strategy_takes_the_top_k_in_the_proxy_order_as_top_picks():
    class Run:
        class settings:
            top_k = 2

    chooser = _Recorder()
    ProxyTopK().choose(Run, [{"candidate_id": c} for c in ("b", "a", "c")], chooser)
    assert chooser.calls == [(TOP, ["b", "a", "c"], 2)]
