"""The finalists: the students to distil, chosen from the scored candidates that fit the budget and re-measured with
the finalists' latency settings (each kept only if it still fits). The selection strategy picks the top ones
(``kdsearch.pipeline.selection``); then the best of each latency band of the front and ``--controls`` drawn at random.
Resumes from finalists.json."""

from __future__ import annotations

import logging

import numpy as np
import torch

from kdsearch.cost import Budget, measure_against_reference
from kdsearch.pipeline.records import (
    CONTROL,
    POOL,
    TOP,
    Finalist,
    Role,
    RunContext,
    metrics_of,
    read_finalists,
    write_finalists,
)
from kdsearch.run import RunSettings
from kdsearch.search import latency_columns, measure_candidate
from kdsearch.spaces import create_model
from kdsearch.spaces.union import is_union

logger = logging.getLogger(__name__)


def band_edges(rows: dict[str, dict], settings: RunSettings) -> list[float]:
    """``front + 1`` edges, evenly spaced on a log scale, from the fastest scored candidate to the budget (by the
    budget's metric: latency, FLOPs or parameters; a relative budget's latency per the reference timed beside it)."""
    budget, limit = settings.budget, settings.budget.limit
    low = min(budget.comparable(r) for r in rows.values())
    if settings.front < 1 or low >= limit:
        return []
    return [low * (limit / low) ** (i / settings.front) for i in range(settings.front + 1)]


def band_of(value: float, edges: list[float]) -> int | None:
    """1 = the fastest band, len(edges) - 1 = the one just under the budget; None outside them."""
    for i in range(1, len(edges)):
        if value <= edges[i] * (1 + 1e-9):
            return i if value >= edges[i - 1] * (1 - 1e-9) else None
    return None


def band_covered(finalists: dict[str, Finalist], band: int, edges: list[float], budget: Budget) -> bool:
    """Does a fitting finalist already stand for ``band``? Its own band pick, or a top pick or control that lies in
    it — not another band's pick that re-measured into it (it keeps its band; counting it here too left the demo's
    front without its fastest band), nor a pool member that successive halving cut."""
    for f in finalists.values():
        if f.within_budget and (f.role == Role("band", band) or
                                (f.role in (TOP, CONTROL) and band_of(budget.comparable(f), edges) == band)):
            return True
    return False


class Chooser:
    """Re-measures candidates for one role until it holds ``count`` that fit (skipping any already chosen)."""

    def __init__(self, run: RunContext, finalists: dict[str, Finalist]):
        self.settings, self.task, self.folder, self.finalists = run.settings, run.task, run.folder, finalists
        self.reference = run.reference

    def measure(self, model: torch.nn.Module) -> dict:
        """A finalist's latency columns (with a relative budget, the reference's latency timed in alternation)."""
        device, latency = torch.device(self.settings.device), self.settings.latency("final")
        if self.reference is None:
            return measure_candidate(model, self.task, device, latency)
        # three rounds of a third of the finalists' time each, so that the pair costs what one finalist did before
        settings = {**latency, "max_time_s": latency["max_time_s"] / 3}
        ours, reference = measure_against_reference(model, self.reference, self.task.input_shape, device=device, **settings)
        return {**latency_columns(ours), "reference_p50_ms": reference.p50_ms}

    def holding(self, role: Role) -> list[Finalist]:
        """The finalists that hold ``role`` and fit, in the order they were taken."""
        return [f for f in self.finalists.values() if f.role == role and f.within_budget]

    def take(self, role: Role, ordered: list[dict], count: int) -> list[Finalist]:
        """Re-measure ``ordered`` (search rows, best first) until ``count`` finalists that fit hold ``role``; returns them."""
        budget = self.settings.budget
        accepted = len(self.holding(role))
        for row in ordered:
            if accepted >= count:
                break
            cid = row["candidate_id"]
            if cid in self.finalists:
                final = self.finalists[cid]
                if role != POOL and final.role == POOL and final.within_budget:
                    # cut by successive halving: it still stands for its band (or as a control), distilled on to the
                    # end from its rung checkpoint (else a pool covering the budget left no front and no control)
                    final.role = role
                    accepted += 1
                    write_finalists(self.folder, self.finalists)
                continue
            model = create_model(row["config"], num_classes=self.task.num_classes, in_chans=self.task.in_chans)
            metrics = metrics_of({**row, **self.measure(model)})
            final = Finalist(cid, row["config"], role, within_budget=budget.fits(metrics), metrics=metrics)
            self.finalists[cid] = final
            if final.within_budget:
                accepted += 1
            else:
                logger.info(f"finalist {cid} ({role}): {budget.describe(final[budget.metric])} on re-measurement exceeds "
                            f"{budget.text}; taking the next one")
            write_finalists(self.folder, self.finalists)
        return self.holding(role)


def _each_family_in_each_band(finalists: dict[str, Finalist], feasible: list[dict], edges: list[float], budget: Budget,
                              chooser: Chooser) -> None:
    """A union of spaces: each family's best in each band too, so that the front says which family wins where (the
    proxy's scores are not comparable across families: a ViT holds far more parameters per millisecond)."""
    families = dict.fromkeys(r["config"]["family"] for r in feasible)
    for band in range(len(edges) - 1, 0, -1):
        for family in families:
            mine = {cid: f for cid, f in finalists.items() if f.family == family}
            if band_covered(mine, band, edges, budget):
                continue
            role = Role("band", band)
            chooser.take(role, [r for r in feasible if r["config"]["family"] == family
                                and band_of(budget.comparable(r), edges) == band], len(chooser.holding(role)) + 1)


def choose_finalists(run: RunContext, rows: dict[str, dict], selection) -> dict[str, Finalist]:
    """The students to distil: ``selection``'s top picks among the candidates that fit (best by the ranking proxy
    first), the best of each latency band of the front not yet covered, and ``controls`` drawn at random among those
    that fit (seeded). Each finalist records its role; resumes from finalists.json."""
    settings = run.settings
    budget, proxy = settings.budget, settings.ranking_proxy
    finalists = read_finalists(run.folder)
    feasible = sorted((r for r in rows.values() if budget.fits(r)), key=lambda r: r[proxy], reverse=True)
    chooser = Chooser(run, finalists)
    top = selection.choose(run, feasible, chooser)
    logger.info(f"top picks (--select {settings.selection['select']}): {', '.join(f.candidate_id for f in top) or 'none'}")
    edges = band_edges(rows, settings)
    for band in range(len(edges) - 1, 0, -1):  # from the budget down to the fastest
        if not band_covered(finalists, band, edges, budget):
            chooser.take(Role("band", band), [r for r in feasible if band_of(budget.comparable(r), edges) == band], 1)
    if is_union(settings.space):
        _each_family_in_each_band(finalists, feasible, edges, budget, chooser)
    if settings.controls:
        order = np.random.default_rng(settings.seed).permutation(len(feasible))
        chooser.take(CONTROL, [feasible[i] for i in order], settings.controls)
    for final in finalists.values():  # a band's pick stays in the band it was chosen for (by its search reading)
        value = budget.comparable(final)
        if final.within_budget and edges:  # fits beside its reference: at most the budget's edge
            value = min(value, edges[-1])
        final.band = final.role.band if final.role.kind == "band" else band_of(value, edges)
    write_finalists(run.folder, finalists)
    return finalists
