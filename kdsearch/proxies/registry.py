from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from kdsearch._util import suggest
from kdsearch.exceptions import ProxyError


@dataclass
class ProxyContext:
    """What a proxy may look at besides the student: the teacher, a real data batch and cached facts."""

    teacher: object | None  # kdsearch.teacher.Teacher (or anything with .taps(x))
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    cache: dict = field(default_factory=dict)  # per-batch teacher features, computed once

    def teacher_taps(self):
        if "teacher_taps" not in self.cache:
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
    if name not in _PROXIES:
        raise ProxyError(
            f"Unknown proxy {name!r};{suggest(name, _PROXIES)} available: {', '.join(list_proxies())}."
        )
    return _PROXIES[name]


def parse_proxies(text: str | list[str]) -> list[str]:
    """'diswot,params' → ['diswot', 'params'] (validated; the first one ranks the search)."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise ProxyError(f"No proxy given; pass --proxy with one of: {', '.join(list_proxies())}.")
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
