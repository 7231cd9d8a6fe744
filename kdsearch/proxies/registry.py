from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from kdsearch._util import exact_fp32
from kdsearch.exceptions import ProxyError
from kdsearch.proxies.ensemble import DEFAULT_PROXY, Ensemble, is_ensemble, parse_ensemble, percentile
from kdsearch.registry import Registry


@dataclass
class ProxyContext:
    """What a proxy may look at besides the student: the teacher, a real data batch and cached facts."""

    teacher: object | None  # kdsearch.teacher.Teacher, anything with .taps(x) and .model, or a plain nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    cache: dict = field(default_factory=dict)  # per-batch teacher features, computed once
    # Per-candidate intermediate results that several proxies share (DisWOT's two terms, ensemble components);
    # keyed by the model's identity and cleared by ``score`` so they never leak into the candidate's metrics.
    _memo: dict = field(default_factory=dict, repr=False)
    # Ensembles rank a candidate within a reference population of its space: a callable returning
    # freshly built (seeded) models, scored once per component proxy and cached.
    reference_models: Callable[[], list[nn.Module]] | None = None
    # A trained supernet ranker (kdsearch.supernet.SupernetRanker: ``evaluate(config, latency_ms) -> dict``) for the
    # ``supernet`` proxies; duck-typed so that proxies need not import the supernet stage.
    supernet: object | None = None

    def memo(self, model: nn.Module, key: str, compute: Callable[[], object]):
        """``compute()`` once per (model, key) until the next ``clear_memo``."""
        slot = (id(model), key)
        if slot not in self._memo:
            self._memo[slot] = compute()
        return self._memo[slot]

    def clear_memo(self) -> None:
        self._memo.clear()

    def reference_scores(self, name: str) -> torch.Tensor:
        key = ("reference", name)
        if key not in self.cache:
            if self.reference_models is None:
                raise ProxyError(
                    f"Proxy ensembles rank candidates within a reference population; build the ProxyContext with "
                    f"reference_models=... (find does this from the search space) to use {name!r} in one."
                )
            fn = get_proxy(name)  # models are rebuilt per component rather than all held in memory
            scores = []
            for model in self.reference_models():
                scores.append(float(fn(model, self, {})))
                self.clear_memo()
            self.cache[key] = torch.tensor(scores, dtype=torch.float64)
        return self.cache[key]

    @property
    def teacher_module(self) -> nn.Module:
        return self.teacher if isinstance(self.teacher, nn.Module) else self.teacher.model

    def teacher_taps(self):
        if "teacher_taps" not in self.cache:
            if isinstance(self.teacher, nn.Module):
                from kdsearch.taps import forward_taps

                with torch.no_grad():
                    self.cache["teacher_taps"] = forward_taps(self.teacher.eval(), self.images)
            else:
                self.cache["teacher_taps"] = self.teacher.taps(self.images)
        return self.cache["teacher_taps"]


ProxyFn = Callable[[nn.Module, ProxyContext, dict], float]
PROXIES: Registry[ProxyFn] = Registry("proxy", ProxyError)
_ENSEMBLES: dict[str, ProxyFn] = {}  # parsed once per name, not once per candidate


def register_proxy(name: str):
    return PROXIES.register(name)


def list_proxies() -> list[str]:
    return PROXIES.names()


def get_proxy(name: str) -> ProxyFn:
    if is_ensemble(name):
        if name not in _ENSEMBLES:
            _ENSEMBLES[name] = _ensemble_fn(parse_ensemble(name, list_proxies()))
        return _ENSEMBLES[name]
    return PROXIES.get(name)


def ensemble_components(names: list[str]) -> list[str]:
    """The single proxies that the ensembles among ``names`` combine (their reference scores are needed)."""
    return sorted({c for n in names if is_ensemble(n) for c in parse_ensemble(n, list_proxies()).weights})


def _ensemble_fn(ensemble: Ensemble) -> ProxyFn:
    total = sum(ensemble.weights.values())

    def fn(model: nn.Module, ctx: ProxyContext, metrics: dict) -> float:
        value = 0.0
        for name, weight in ensemble.weights.items():
            component = ctx.memo(model, f"score:{name}", lambda name=name: float(PROXIES.get(name)(model, ctx, metrics)))
            value += weight * percentile(component, ctx.reference_scores(name)) / total
        return value

    return fn


def parse_proxies(text: str | list[str]) -> list[str]:
    """'diswot,params' → ['diswot', 'params'] (validated; the first one ranks the search).

    A name with '+' is a rank-aggregation ensemble, e.g. 'params+diswot_semantic' or '2*params+synflow';
    'default' is what benchmarks/proxy_rank.py chose on distilled ground truth.
    """
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise ProxyError(f"No proxy given; pass --proxy with one of: {', '.join(list_proxies())}.")
    names = [DEFAULT_PROXY if n == "default" else n for n in names]
    for name in names:
        get_proxy(name)
    return names


def score(names: list[str], model: nn.Module, ctx: ProxyContext, metrics: dict) -> dict[str, float]:
    """Every named proxy's score plus its cost in ms (``<name>_ms``); metrics holds params/FLOPs already known."""
    out: dict[str, float] = {}
    ctx.clear_memo()
    try:
        with exact_fp32():
            for name in names:
                start = time.perf_counter()
                out[name] = float(get_proxy(name)(model, ctx, metrics))
                out[f"{name}_ms"] = (time.perf_counter() - start) * 1e3
    finally:
        ctx.clear_memo()
    return out
