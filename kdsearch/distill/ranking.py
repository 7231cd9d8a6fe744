"""Which distilled student is best: one rule for ``find``, ``report`` and ``export``.

Accuracy on ``n`` validation images is a binomial estimate: two students closer than the noise of their difference
cannot be told apart on that set, and ranking them by the third decimal picks by luck. So the best student is the
fastest of those whose accuracy ties with the most accurate one (within ``NOISE_Z`` standard errors of the
difference); the rest follow by the same rule.
"""

from __future__ import annotations

import math

import pandas as pd

NOISE_Z = 1.0  # accuracies closer than this many standard errors of their difference tie


def difference_se(a: float, b: float, n: int) -> float:
    """Standard error of the difference of two accuracies measured on ``n`` images each (binomial)."""
    n = max(int(n), 1)
    return math.sqrt((a * (1 - a) + b * (1 - b)) / n)


def ties(leader: float, other: float, n: int) -> bool:
    return leader - other <= NOISE_Z * difference_se(leader, other, n)


def best_first(students: pd.DataFrame, n_val: int | None, *, accuracy: str = "distilled_accuracy",
               latency: str = "latency_p50_ms") -> pd.DataFrame:
    """``students`` best first: repeatedly, of the students left, the fastest of those that tie with the most accurate
    (``n_val`` validation images; unknown: ties only on equal accuracy), then by accuracy, then by row order."""
    if students.empty:
        return students
    left = students.assign(_order=range(len(students)))
    order = []
    while not left.empty:
        leader = float(left[accuracy].max())
        tied = left[[ties(leader, float(a), n_val) if n_val else a == leader for a in left[accuracy]]]
        pick = tied.sort_values([latency, accuracy, "_order"], ascending=[True, False, True]).index[0]
        order.append(pick)
        left = left.drop(index=pick)
    return students.loc[order]


__all__ = ["NOISE_Z", "best_first", "difference_se", "ties"]
