"""Proxies read from a trained supernet (``kdsearch.supernet``): the candidate's subnet with inherited weights.

``supernet``: its accuracy on a hold-out slice of the training images after BatchNorm recalibration;
``supernet_kd``: minus its KD loss to the teacher there (higher = closer to the teacher). Both need the
search's ProxyContext to carry a ranker (``find --proxy supernet`` trains one before the search) and the
candidate's config and latency in ``metrics`` (the search evaluator passes them).
"""

from __future__ import annotations

from kdsearch.exceptions import ProxyError
from kdsearch.proxies.registry import ProxyContext, register_proxy

SUPERNET_PROXIES = ("supernet", "supernet_kd")


def needs_supernet(names: list[str]) -> bool:
    """Whether any of the proxies (ensembles included) reads a trained supernet."""
    from kdsearch.proxies.registry import ensemble_components

    return bool((set(names) | set(ensemble_components(names))) & set(SUPERNET_PROXIES))


def _evaluation(model, ctx: ProxyContext, metrics: dict) -> dict:
    if ctx.supernet is None:
        raise ProxyError("The supernet proxies score candidates with a trained supernet; run find with --proxy supernet "
                         "(it trains one first), or build the ProxyContext with supernet=kdsearch.supernet.prepare_supernets(...).")
    if "config" not in metrics or "latency_p50_ms" not in metrics:
        raise ProxyError("The supernet proxies need the candidate's config and measured latency in metrics "
                         "(kdsearch.search.CandidateEvaluator passes both).")
    return ctx.memo(model, "supernet", lambda: ctx.supernet.evaluate(metrics["config"], float(metrics["latency_p50_ms"])))


@register_proxy("supernet")
def supernet(model, ctx: ProxyContext, metrics: dict) -> float:
    return float(_evaluation(model, ctx, metrics)["accuracy"])


@register_proxy("supernet_kd")
def supernet_kd(model, ctx: ProxyContext, metrics: dict) -> float:
    return -float(_evaluation(model, ctx, metrics)["kd_loss"])
