"""How the students that get the full recipe are chosen: one small interface, one class per strategy, registered by
the name ``--select`` takes (``settings.selection["select"]``) — as losses and proxies are.

A strategy gets the candidates that fit the budget, best by the ranking proxy first, and a ``Chooser`` that
re-measures them; it marks its picks ``top`` (``chooser.take(TOP, ordered, k)``) and returns them, best first. The bands of the front and the
controls are added after it by ``choose_finalists``. A new strategy: a class here with ``choose``, its name in
``kdsearch.run.settings.SELECT_CHOICES`` and its options in ``check_selection``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

from kdsearch.exceptions import KdsearchError
from kdsearch.pipeline.finalists import Chooser
from kdsearch.pipeline.halving import HalvingState, finish_epochs, run_halving
from kdsearch.pipeline.records import POOL, TOP, Finalist, RunContext, write_finalists
from kdsearch.pipeline.students import student_job
from kdsearch.registry import Registry

logger = logging.getLogger(__name__)


class Selection(ABC):
    """Chooses the run's top picks among ``feasible`` (fitting candidates, the ranking proxy's order)."""

    @abstractmethod
    def choose(self, run: RunContext, feasible: list[dict], chooser: Chooser) -> list[Finalist]:
        """The top picks, best first, each a finalist of role ``top`` that fits."""


SELECTIONS: Registry[type[Selection]] = Registry("selection", KdsearchError, hint=" See kdsearch find --help (--select).")


@SELECTIONS.register("proxy")
class ProxyTopK(Selection):
    """The ranking proxy's ``--top-k`` that still fit when re-measured."""

    def choose(self, run: RunContext, feasible: list[dict], chooser: Chooser) -> list[Finalist]:
        return chooser.take(TOP, feasible, run.settings.top_k)


@SELECTIONS.register("halving")
class SuccessiveHalving(Selection):
    """The proxy's top ``--pool`` (re-measured) distilled in rungs (``kdsearch.pipeline.halving``); the survivors become
    the top picks, the others stay ``pool`` with the rung that cut them."""

    def choose(self, run: RunContext, feasible: list[dict], chooser: Chooser) -> list[Finalist]:
        settings, folder, finalists, proxy = run.settings, run.folder, chooser.finalists, run.settings.ranking_proxy
        state = HalvingState.read(folder)
        if state is None:
            pool = [f.candidate_id for f in sorted(chooser.take(POOL, feasible, settings.selection["pool"]),
                                                   key=lambda f: (-f[proxy], f.candidate_id))]
        else:  # resumed: the pool the stage started with (its survivors may already be 'top')
            pool = state.pool
        sel = settings.selection
        logger.info(f"halving: pool of {len(pool)} (the top by {proxy} within the budget), eta {sel['eta']}, first rung "
                    f"{sel['first_rung']} epoch(s), design {sel['rung_design']}, signal {sel['rung_signal']}, survivors to "
                    f"epoch {finish_epochs(settings)}")
        run.queue.set_phase("distilling")
        state = run_halving(settings, run.task, folder, run.queue, student_job(run), pool,
                            {c: float(finalists[c][proxy]) for c in pool})
        reached = {cid: (r["index"], r["until_epoch"]) for r in state.rungs for cid in r["members"]}
        for cid in pool:
            final = finalists[cid]
            final.rung, final.stopped_at_epoch = reached[cid]
            if final.role in (POOL, TOP):  # a cut member promoted to a band or control keeps that role (resume)
                final.role = TOP if cid in state.survivors else POOL
        write_finalists(folder, finalists)
        return [finalists[c] for c in state.survivors if finalists[c].role == TOP]


def create_selection(name: str) -> Selection:
    """The strategy registered as ``name`` (an unknown name: one sentence listing the known ones)."""
    return SELECTIONS.get(name)()


__all__ = ["SELECTIONS", "ProxyTopK", "Selection", "SuccessiveHalving", "create_selection"]
