"""Cost model: parameters, FLOPs (torch.utils.flop_counter), latency measured in a deployment runtime, a latency
model fitted on the device, and the budget parser."""

from kdsearch.cost.budget import Budget, parse_budget
from kdsearch.cost.latency import (
    LATENCY_FINAL,
    LATENCY_SEARCH,
    LatencyStats,
    LatencyTimer,
    measure_against_reference,
    measure_latency,
)
from kdsearch.cost.latency_model import (
    LATENCY_MODEL_CHOICES,
    LatencyModel,
    MeasureSettings,
    fit_latency_model,
    use_latency_model,
)
from kdsearch.cost.runtime import RUNTIMES, Runtime, get_runtime, list_runtimes
from kdsearch.cost.static import count_flops, count_params

__all__ = [
    "LATENCY_FINAL", "LATENCY_MODEL_CHOICES", "LATENCY_SEARCH", "RUNTIMES", "Budget", "LatencyModel", "LatencyStats",
    "LatencyTimer", "MeasureSettings", "Runtime", "count_flops", "count_params", "fit_latency_model", "get_runtime", "list_runtimes",
    "measure_against_reference", "measure_latency", "parse_budget", "use_latency_model",
]
