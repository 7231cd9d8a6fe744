from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from kdsearch._util import suggest
from kdsearch.exceptions import ProxyError
from kdsearch.proxies.ensemble import DEFAULT_PROXY, Ensemble, is_ensemble, parse_ensemble, percentile


@dataclass
class ProxyContext:
    """What a proxy may look at besides the student: the teacher, a real data batch and cached facts."""

    teacher: object | None  # kdsearch.teacher.Teacher, anything with .taps(x) and .model, or a plain nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    cache: dict = field(default_factory=dict)  # per-batch teacher features, computed once
    # Ensembles rank a candidate within a reference population of its space: a callable returning
    # freshly built (seeded) models, scored once per component proxy and cached.
    reference_models: Callable[[], list[nn.Module]] | None = None

    def reference_scores(self, name: str) -> torch.Tensor:
        key = ("reference", name)
        if key not in self.cache:
            if self.reference_models is None:
                raise ProxyError(
                    f"Proxy ensembles rank candidates within a reference population; build the ProxyContext with "
                    f"reference_models=... (find does this from the search space) to use {name!r} in one."
                )
            fn = get_proxy(name)  # models are rebuilt per component rather than all held in memory
            self.cache[key] = torch.tensor([float(fn(m, self, {})) for m in self.reference_models()], dtype=torch.float64)
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
_PROXIES: dict[str, ProxyFn] = {}


def register_proxy(name: str):
    def wrap(fn: ProxyFn) -> ProxyFn:
        _PROXIES[name] = fn
        return fn

    return wrap


def list_proxies() -> list[str]:
    return sorted(_PROXIES)


def get_proxy(name: str) -> ProxyFn:
    if is_ensemble(name):
        return _ensemble_fn(parse_ensemble(name, list_proxies()))
    if name not in _PROXIES:
        raise ProxyError(
            f"Unknown proxy {name!r};{suggest(name, _PROXIES)} available: {', '.join(list_proxies())}."
        )
    return _PROXIES[name]


def _ensemble_fn(ensemble: Ensemble) -> ProxyFn:
    def fn(model: nn.Module, ctx: ProxyContext, metrics: dict) -> float:
        total = sum(ensemble.weights.values())
        value = 0.0
        for name, weight in ensemble.weights.items():
            component = metrics.get(f"_score_{name}")
            if component is None:
                component = metrics[f"_score_{name}"] = float(_PROXIES[name](model, ctx, metrics))
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
    for name in names:
        start = time.perf_counter()
        out[name] = float(get_proxy(name)(model, ctx, metrics))
        out[f"{name}_ms"] = (time.perf_counter() - start) * 1e3
    return out


# Importing the definitions registers them.
from kdsearch.proxies import diswot as _diswot  # noqa: E402,F401
from kdsearch.proxies import size as _size  # noqa: E402,F401
from kdsearch.proxies import teacher_aware as _teacher_aware  # noqa: E402,F401
from kdsearch.proxies import zoo as _zoo  # noqa: E402,F401
