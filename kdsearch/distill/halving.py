"""Successive halving's rules: the rungs of a pool and how a rung orders its students.

The stage itself (students as trials in the run's storage, workers, resume) is ``kdsearch.pipeline.halving``; what
is here is pure, so the benchmark and the tests can replay recorded learning curves through the same code.

A rung distils every member for a few more epochs and keeps the best ``1/eta`` of them; the last rung brings the
survivors (``top_k`` of them) to the full recipe. Two designs of what a rung measures:

- ``restart`` (the default): each rung is a short complete schedule (warm-up, then decay to zero at the rung's end),
  and the next rung continues from that checkpoint with a restarted schedule (SGDR).
- ``snapshot``: the full recipe's schedule, stopped at the rung's end; survivors continue it exactly.

Measured (benchmarks/teacher_decides.py, docs/benchmarks.md: CIFAR-10 JPEGs, ResNet-56 teacher, 20 students at ResNet-20's
latency, 6 epochs, resnet_cifar and nasbench201): a complete 1-epoch schedule ranks the final accuracy at Kendall tau
0.24 / 0.38 (its KD loss 0.46 / 0.50), the epoch-1 snapshot at 0.43 / -0.19 — and the snapshot's 0.43 is flattered,
being the first epoch of the very seed-0 run it is scored against. On a seed no rung saw, the restart stage's pick on
resnet_cifar distilled to 60.0 %, the snapshot stage's to 59.1 %, parameter count's to 58.6 %. Two cells: within noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kdsearch.distill.ranking import NOISE_Z, ties

RUNG_DESIGNS = ("restart", "snapshot")
RUNG_SIGNALS = ("accuracy", "accuracy+proxy", "kd_loss", "extrapolated", "rank_blend")
# where the survivors are distilled to: find's --epochs, or --target-epochs (the recipe the student ships with)
FINISH_CHOICES = ("epochs", "target")


@dataclass(frozen=True)
class Rung:
    index: int
    members: int  # students distilled in this rung
    until_epoch: int  # the epoch (of the student's whole training) this rung ends at


def plan_rungs(pool: int, top_k: int, eta: int, first_rung: int, epochs: int, final_epochs: int | None = None) -> list[Rung]:
    """Rung r holds max(top_k, ceil(pool / eta^r)) students trained to min(epochs, first_rung * eta^r) epochs; once only
    ``top_k`` are left they go straight to ``epochs``. E.g. pool 27, top-k 3, eta 3, first 1, epochs 15: 27 students to
    epoch 1, 9 to epoch 3, 3 to epoch 15 (81 student-epochs, against 45 for the top 3 in full). ``final_epochs`` (at
    least ``epochs``): where the last rung ends instead (``--finish target``: the survivors distilled to the target
    recipe, their final order made there); the rungs before it are those of ``epochs``."""
    rungs, count, until = [], pool, min(first_rung, epochs)
    while True:
        if count <= top_k:
            until = epochs
        if until >= epochs:
            rungs.append(Rung(len(rungs), count, max(epochs, final_epochs or epochs)))
            return rungs
        rungs.append(Rung(len(rungs), count, until))
        count, until = max(top_k, math.ceil(count / eta)), min(epochs, until * eta)


def restarts_for(rungs: list[Rung], design: str) -> tuple[int, ...]:
    """The epochs where the recipe's schedule starts again: every rung's end but the last (design 'restart')."""
    return tuple(r.until_epoch for r in rungs[:-1]) if design == "restart" else ()


def student_epochs(rungs: list[Rung]) -> int:
    """What the rungs cost, in epochs of one student."""
    spent, before = 0, 0
    for rung in rungs:
        spent += rung.members * (rung.until_epoch - before)
        before = rung.until_epoch
    return spent


def _extrapolate(history: list[dict], start_epoch: int, epochs: int) -> float:
    """Accuracy at ``epochs`` from a + b log(epoch) fitted to the rung's own epochs (its last accuracy with one point)."""
    points = [(h["epoch"], h["val_accuracy"]) for h in history if h["epoch"] > start_epoch]
    if len(points) < 2:
        return float(history[-1]["val_accuracy"])
    x = np.log([p[0] for p in points])
    y = np.array([p[1] for p in points])
    b, a = np.polyfit(x, y, 1)
    return float(min(1.0, max(0.0, a + b * math.log(epochs))))


def rung_score(history: list[dict], signal: str, *, start_epoch: int = 0, epochs: int | None = None) -> float:
    """What ranks a student at the end of a rung (higher is better): its last validation accuracy, minus its last
    validation KD loss, or its accuracy extrapolated to the full recipe. ``accuracy+proxy`` scores by accuracy; the
    proxy then orders the students whose accuracies tie within the noise (:func:`order_members`)."""
    if not history:
        raise ValueError("a rung score needs at least one epoch")
    last = history[-1]
    if signal in ("accuracy", "accuracy+proxy", "rank_blend"):
        return float(last["val_accuracy"])
    if signal == "kd_loss":
        if "val_kd_loss" not in last:
            raise ValueError("the rung's history has no val_kd_loss (it is recorded when the teacher's validation logits are given)")
        return -float(last["val_kd_loss"])
    if signal == "extrapolated":
        return _extrapolate(history, start_epoch, epochs or int(last["epoch"]))
    raise ValueError(f"unknown rung signal {signal!r}; one of {', '.join(RUNG_SIGNALS)}")


def order_members(scores: dict[str, float], proxy: dict[str, float], signal: str, n_val: int) -> list[str]:
    """The members best first: by score, ties by the proxy, then by id (deterministic). With ``accuracy+proxy``, students
    whose accuracies lie within NOISE_Z standard errors of the leader of their group (binomial, ``n_val`` images) form
    a group that the proxy orders: the rung decides only where it can tell students apart. With ``rank_blend``, by the
    mean of each student's rank by score and by proxy (the proxy's order and the rung's count alike)."""
    ranked = sorted(scores, key=lambda c: (-scores[c], -proxy.get(c, 0.0), c))
    if signal == "rank_blend":
        by_score = _ranks([-scores[c] for c in ranked])
        by_proxy = _ranks([-proxy.get(c, 0.0) for c in ranked])
        blend = {c: by_score[i] + by_proxy[i] for i, c in enumerate(ranked)}
        return sorted(ranked, key=lambda c: (blend[c], -scores[c], -proxy.get(c, 0.0), c))
    if signal != "accuracy+proxy":
        return ranked
    ordered: list[str] = []
    while ranked:
        leader = scores[ranked[0]]
        group = [c for c in ranked if ties(leader, scores[c], n_val)]
        ordered += sorted(group, key=lambda c: (-proxy.get(c, 0.0), -scores[c], c))
        ranked = [c for c in ranked if c not in group]
    return ordered


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, lowest value first, tied values sharing their mean rank."""
    from scipy.stats import rankdata

    return [float(r) for r in rankdata(values)]


def cut_in_noise(order: list[str], scores: dict[str, float], keep: int, n_val: int) -> list[str]:
    """The members a rung cut (below position ``keep`` of ``order``) whose score ties, within the validation noise,
    with the last member it kept: the cut between them was not the rung's to make. Scores are accuracies (those of
    the kd_loss signal are not in [0, 1]: nothing is said of them)."""
    if keep >= len(order) or keep <= 0:
        return []
    last = scores[order[keep - 1]]
    if not all(0.0 <= scores[c] <= 1.0 for c in order):
        return []
    return [c for c in order[keep:] if ties(max(last, scores[c]), min(last, scores[c]), n_val)]


__all__ = ["FINISH_CHOICES", "NOISE_Z", "RUNG_DESIGNS", "RUNG_SIGNALS", "Rung", "cut_in_noise", "order_members", "plan_rungs", "restarts_for", "rung_score",
           "student_epochs"]
