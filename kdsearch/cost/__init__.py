"""Cost model: parameters, FLOPs (torch.utils.flop_counter) and measured latency, plus the budget parser."""

from kdsearch.cost.budget import Budget, parse_budget
from kdsearch.cost.latency import LATENCY_FINAL, LATENCY_SEARCH, LatencyStats, measure_latency
from kdsearch.cost.static import count_flops, count_params

__all__ = ["LATENCY_FINAL", "LATENCY_SEARCH", "Budget", "LatencyStats", "count_flops", "count_params", "measure_latency", "parse_budget"]
