from __future__ import annotations

import re
from dataclasses import dataclass

from kdsearch.exceptions import BudgetError

LATENCY = "latency_p50_ms"
_UNITS = {
    # unit → (metric, multiplier into the metric's base unit: ms, FLOPs, params). The metric is the name of
    # the column that holds it in every candidate row (study, finalists, candidates.csv).
    "s": (LATENCY, 1e3),
    "ms": (LATENCY, 1.0),
    "us": (LATENCY, 1e-3),
    "µs": (LATENCY, 1e-3),
    "flops": ("flops", 1.0),
    "kflops": ("flops", 1e3),
    "mflops": ("flops", 1e6),
    "gflops": ("flops", 1e9),
    "params": ("params", 1.0),
    "kparams": ("params", 1e3),
    "mparams": ("params", 1e6),
    "gparams": ("params", 1e9),
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-zµ]+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """The one place that says what fits: every stage asks ``budget.fits(row)`` of a candidate row."""

    metric: str  # latency_p50_ms | flops | params
    limit: float  # in ms, FLOPs or parameters
    text: str

    def excess(self, metrics: dict) -> float:
        """≤ 0 when the candidate fits (Optuna's constraint convention)."""
        return float(metrics[self.metric]) - self.limit

    def fits(self, metrics: dict) -> bool:
        return self.excess(metrics) <= 0

    @property
    def latency_limit_ms(self) -> float | None:
        """The limit in ms for a latency budget (the report draws it), else None."""
        return self.limit if self.metric == LATENCY else None

    def describe(self, value: float) -> str:
        if self.metric == LATENCY:
            return f"{value:.3g} ms"
        if self.metric == "flops":
            return f"{value / 1e6:.4g} MFLOPs"
        return f"{value / 1e6:.4g} M params"


def parse_budget(text: str) -> Budget:
    """'10ms', '500us', '300MFLOPs', '5Mparams' → Budget."""
    match = _PATTERN.match(str(text))
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise BudgetError(
            f"Could not read the budget {text!r}; give a number and a unit, e.g. 10ms, 500us, 300MFLOPs or 5Mparams."
        )
    value = float(match.group(1))
    if value <= 0:
        raise BudgetError(f"The budget {text!r} is not positive; give a limit above zero, e.g. 10ms.")
    metric, scale = _UNITS[unit]
    return Budget(metric=metric, limit=value * scale, text=str(text).strip())
