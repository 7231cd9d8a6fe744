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
_RELATIVE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*x\s*:\s*(.+?)\s*$", re.IGNORECASE)
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-zµ]+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """The one place that says what fits: every stage asks ``budget.fits(row)`` of a candidate row."""

    metric: str  # latency_p50_ms | flops | params
    limit: float  # in ms, FLOPs or parameters (a relative budget: factor × the reference's latency, once measured)
    text: str
    factor: float | None = None  # a relative budget ('0.8x:resnet20.json'): at most factor × the reference's latency
    reference: str | None = None  # the network the user ships: a timm name, candidate JSON, module:callable or file

    def limit_for(self, metrics: dict) -> float:
        """The limit this candidate is held to: a relative budget's factor × the reference's latency timed beside it
        (``reference_p50_ms``) where the row has one, else the run's limit."""
        if self.factor is not None and metrics.get("reference_p50_ms") is not None:
            return self.factor * float(metrics["reference_p50_ms"])
        return self.limit

    def excess(self, metrics: dict) -> float:
        """≤ 0 when the candidate fits (Optuna's constraint convention), against :meth:`limit_for`."""
        return float(metrics[self.metric]) - self.limit_for(metrics)

    def comparable(self, metrics: dict) -> float:
        """The candidate's metric on the scale of ``limit``: with a reference timed beside it, its latency as a
        ratio to that reference × the run's limit — so candidates timed while the machine ran fast or slow compare
        with one another and with one limit (the search's models of what fits use this)."""
        value = float(metrics[self.metric])
        return value * self.limit / self.limit_for(metrics) if self.resolved else value

    @property
    def resolved(self) -> bool:
        return self.factor is None or self.limit == self.limit  # a relative budget's limit is NaN until measured

    def with_reference(self, reference_ms: float) -> Budget:
        """This relative budget, its limit set from the reference's measured latency."""
        return Budget(self.metric, self.factor * reference_ms, self.text, self.factor, self.reference)

    def fits(self, metrics: dict) -> bool:
        return self.excess(metrics) <= 0

    @property
    def latency_limit_ms(self) -> float | None:
        """The limit in ms for a latency budget (the report draws it), else None."""
        return self.limit if self.metric == LATENCY else None

    def met_at(self, latency_ms: float | None) -> bool:
        """Does a network of ``latency_ms`` (p50) meet this latency budget? False for other metrics, for an unknown
        latency and for a relative budget not measured yet (its limit is NaN)."""
        limit = self.latency_limit_ms
        return latency_ms is not None and limit is not None and latency_ms <= limit

    def describe(self, value: float) -> str:
        if self.metric == LATENCY:
            return f"{value:.3g} ms"
        if self.metric == "flops":
            return f"{value / 1e6:.4g} MFLOPs"
        return f"{value / 1e6:.4g} M params"


def parse_budget(text: str) -> Budget:
    """'10ms', '500us', '300MFLOPs', '5Mparams', or '0.8x:<network>' (relative to a shipped network) → Budget."""
    relative = _RELATIVE.match(str(text))
    if relative:
        factor = float(relative.group(1))
        if factor <= 0:
            raise BudgetError(f"The budget {text!r} has a factor of zero; give a positive factor, e.g. 0.8x:resnet20.json.")
        return Budget(metric=LATENCY, limit=float("nan"), text=str(text).strip(), factor=factor, reference=relative.group(2))
    match = _PATTERN.match(str(text))
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise BudgetError(
            f"Could not read the budget {text!r}; give a number and a unit, e.g. 10ms, 500us, 300MFLOPs or 5Mparams, or "
            "a factor of a network you ship, e.g. 0.8x:resnet18 (a timm name, candidate JSON, module:callable or model file)."
        )
    value = float(match.group(1))
    if value <= 0:
        raise BudgetError(f"The budget {text!r} is not positive; give a limit above zero, e.g. 10ms.")
    metric, scale = _UNITS[unit]
    return Budget(metric=metric, limit=value * scale, text=str(text).strip())
