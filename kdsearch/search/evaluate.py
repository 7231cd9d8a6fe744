"""What the search does to one candidate: build it, count parameters and FLOPs, time it, score its proxies."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from kdsearch.cost import count_flops, count_params, measure_latency
from kdsearch.data import Task
from kdsearch.proxies import ProxyContext, score
from kdsearch.spaces import SearchSpace, create_model


def measure_candidate(model: nn.Module, task: Task, device: torch.device, latency: dict[str, Any]) -> dict[str, Any]:
    """The latency columns of a candidate row (the same names in the study, finalists.json and candidates.csv)."""
    lat = measure_latency(model, task.input_shape, device=device, **latency)
    return {
        "latency_p50_ms": lat.p50_ms, "latency_p90_ms": lat.p90_ms, "latency_iqr_ms": lat.iqr_ms,
        "latency_repeats": lat.repeats, "latency_key": lat.key,
    }


class CandidateEvaluator:
    """``evaluate(config) -> metrics``: the callable :func:`kdsearch.search.run_search` scores trials with."""

    def __init__(self, task: Task, ctx: ProxyContext, proxies: list[str], device: torch.device, latency: dict[str, Any],
                 seed: int = 0):
        self.task, self.ctx, self.proxies, self.device, self.latency, self.seed = task, ctx, proxies, device, latency, seed

    def __call__(self, config: dict) -> dict[str, Any]:
        torch.manual_seed(self.seed)  # proxies on random-init students are seeded per candidate
        model = create_model(config, num_classes=self.task.num_classes, in_chans=self.task.in_chans).to(self.device)
        metrics: dict[str, Any] = {"params": count_params(model), "flops": count_flops(model, self.task.input_shape)}
        metrics.update(measure_candidate(model, self.task, self.device, self.latency))
        metrics.update(score(self.proxies, model, self.ctx, metrics))
        return metrics


def reference_models(space: SearchSpace, task: Task, device: torch.device, size: int, seed: int) -> list[nn.Module]:
    """The seeded random population that ensemble proxies rank candidates within."""
    models = []
    for i, config in enumerate(space.sample(size, seed=seed)):
        torch.manual_seed(seed + i)
        models.append(create_model(config, num_classes=task.num_classes, in_chans=task.in_chans).to(device))
    return models
