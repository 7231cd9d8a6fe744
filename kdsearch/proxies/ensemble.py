"""Rank-aggregation ensembles of proxies: ``"params+diswot_semantic"`` or weighted ``"2*params+synflow"``.

Proxies live on incomparable scales (SynFlow spans 30 orders of magnitude; DisWOT's relation term is
~1e-4), so an ensemble adds *ranks*, not raw values: each component's score is turned into its
percentile within a reference population of the same space (a seeded random sample, scored once per
run), and the ensemble is the weighted mean of those percentiles — Borda counting against a fixed
population, which gives every candidate a score of its own (Optuna needs one per trial).

The weights of the default ensemble are not chosen by taste: benchmarks/proxy_rank.py picks them out
of sample on distilled ground truth (see DEFAULT_PROXY and docs/how-it-works.md, "Proxies").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from kdsearch.exceptions import ProxyError

# Chosen by benchmarks/proxy_rank.py (benchmarks/results/proxy_rank.json, "default_proxy").
DEFAULT_PROXY = "params"
REFERENCE_SIZE = 24

_TERM = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*\*\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*$")


@dataclass(frozen=True)
class Ensemble:
    name: str
    weights: dict[str, float]


def is_ensemble(name: str) -> bool:
    return "+" in name


def parse_ensemble(name: str, known: list[str]) -> Ensemble:
    weights: dict[str, float] = {}
    for term in name.split("+"):
        match = _TERM.match(term)
        if not match:
            raise ProxyError(f"Cannot read {term.strip()!r} in ensemble {name!r}; write terms as NAME or WEIGHT*NAME joined by '+'.")
        weight, proxy = float(match.group(1) or 1.0), match.group(2)
        if proxy not in known:
            from kdsearch._util import suggest

            raise ProxyError(f"Unknown proxy {proxy!r} in ensemble {name!r};{suggest(proxy, known)} available: {', '.join(known)}.")
        if weight <= 0:
            raise ProxyError(f"Ensemble weights must be positive (got {weight} for {proxy}).")
        weights[proxy] = weights.get(proxy, 0.0) + weight
    return Ensemble(name, weights)


def percentile(value: float, reference: torch.Tensor) -> float:
    """Mid-rank percentile of ``value`` among ``reference`` scores (ties count half)."""
    below = (reference < value).sum()
    ties = (reference == value).sum()
    return float((below + 0.5 * ties) / len(reference))


def rank_scores(scores: dict[str, list[float]], weights: dict[str, float]) -> list[float]:
    """Weighted mean rank of each item across proxies, within the given population (used by the benchmark)."""
    from scipy.stats import rankdata

    total = sum(weights.values())
    n = len(next(iter(scores.values())))
    out = [0.0] * n
    for proxy, w in weights.items():
        ranks = rankdata(scores[proxy]) / n
        for i in range(n):
            out[i] += w * ranks[i] / total
    return out
