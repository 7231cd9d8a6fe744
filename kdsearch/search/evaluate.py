"""What the search does to one candidate: build it, count parameters and FLOPs, time it, score its proxies."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from kdsearch.cost import (
    Budget,
    LatencyModel,
    LatencyStats,
    count_flops,
    count_params,
    measure_against_reference,
    measure_latency,
)
from kdsearch.data import Task
from kdsearch.proxies import ProxyContext, score
from kdsearch.spaces import SearchSpace, create_model


def measure_candidate(model: nn.Module, task: Task, device: torch.device, latency: dict[str, Any]) -> dict[str, Any]:
    """The latency columns of a candidate row (the same names in the study, finalists.json and candidates.csv)."""
    return latency_columns(measure_latency(model, task.input_shape, device=device, **latency))


def latency_columns(lat: LatencyStats) -> dict[str, Any]:
    return {
        "latency_p50_ms": lat.p50_ms, "latency_p90_ms": lat.p90_ms, "latency_iqr_ms": lat.iqr_ms,
        "latency_repeats": lat.repeats, "latency_key": lat.key, "latency_source": "measured",
    }


def predicted_candidate(config: dict, predictor: LatencyModel) -> dict[str, Any]:
    """The latency columns of a candidate screened by the latency model (no spread: nothing was timed)."""
    ms = predictor.predict_one(config)
    return {"latency_p50_ms": ms, "latency_p90_ms": ms, "latency_iqr_ms": 0.0, "latency_repeats": 0,
            "latency_key": f"model:{predictor.chosen}", "latency_source": "model", "latency_predicted_ms": ms}


# A relative budget's reference is timed again during the search once its last reading is this old: the machine's
# speed drifts by tens of percent from minute to minute; a reading costs what timing one candidate does.
REFERENCE_RETIME_S = 20.0

# Proxies that need no data and no forward pass: the search may compute them exactly for any candidate.
CHEAP_PROXIES = ("params", "flops")
# How many candidates per round the constrained sampler may score exactly, by proxy. SynFlow needs no data but one
# forward/backward pass (~50 ms on this CPU): exact for the trees' 256 most promising candidates per round lifted
# nasbench201 at the 10th latency percentile from 98.4 to the top 1 % (docs/benchmarks.md).
EXACT_PER_ROUND = {"params": 4096, "flops": 4096, "synflow": 256}


@dataclass(frozen=True)
class ExactScore:
    """``config -> value`` of the ranking proxy, exact (the number the evaluator records for that candidate), and
    how many candidates per round the sampler may spend it on."""

    fn: Callable[[dict], float]
    per_round: int

    def __call__(self, config: dict) -> float:
        return self.fn(config)


def count_exactly(name: str, task: Task) -> Callable[[dict], float]:
    """``config -> params or FLOPs``, remembered per candidate (the constrained sampler asks again every round).
    Parameters come from the family's formula where it has one (nothing is built: resnet_cifar, vit); otherwise, and
    for FLOPs, the model is built and counted. Building costs ~10 ms per resnet_cifar candidate, the formula ~0.003 ms
    (benchmarks/exact_counts.py)."""
    from kdsearch.spaces import candidate_id
    from kdsearch.spaces.families import family_spec

    known: dict[str, float] = {}

    def value(config: dict) -> float:
        key = candidate_id(config)
        if key not in known:
            formula = family_spec(config["family"]).params if name == "params" else None
            if formula is not None:
                known[key] = float(formula(config, task.num_classes, task.in_chans))
            else:
                model = create_model(config, num_classes=task.num_classes, in_chans=task.in_chans)
                known[key] = float(count_params(model) if name == "params" else count_flops(model, task.input_shape))
        return known[key]

    return value


def exact_proxy(name: str, task: Task, ctx: ProxyContext | None = None, device: torch.device | str = "cpu",
                seed: int = 0) -> ExactScore | None:
    """The ranking proxy's exact value for any config, when the search can afford it (``EXACT_PER_ROUND``), else None.

    Parameters and FLOPs: :func:`count_exactly`; a data-free proxy (SynFlow) is built exactly as
    :class:`CandidateEvaluator` builds it (same seed, same device, same context), so both record the same number."""
    if name not in EXACT_PER_ROUND:
        return None
    if name in CHEAP_PROXIES:
        value = count_exactly(name, task)
    else:
        if ctx is None:
            raise ValueError(f"exact_proxy({name!r}) needs the search's ProxyContext: it runs the model.")

        def value(config: dict) -> float:
            torch.manual_seed(seed)
            model = create_model(config, num_classes=task.num_classes, in_chans=task.in_chans).to(device)
            return float(score([name], model, ctx, {})[name])

    return ExactScore(value, EXACT_PER_ROUND[name])


class CandidateEvaluator:
    """``evaluate(config) -> metrics``: the callable :func:`kdsearch.search.run_search` scores trials with.

    With a latency ``budget`` and ``recheck`` settings (the finalists' stricter ones), a candidate is measured
    again before it is counted in or out when its median lies within the noise of the limit (3 % of it, or half
    its interquartile range if that is wider), and when it would fit and beat every candidate counted in so far
    by the ranking proxy (the first of ``proxies``). The second case guards against the winner's curse: on a
    shared machine one quick reading can be tens of percent low, and a lucky reading that becomes the search's
    best makes every later proposal chase a bar nothing truly under the budget can clear. Both figures are
    recorded (``latency_first_p50_ms``).

    With a ``predictor`` (a :class:`~kdsearch.cost.LatencyModel` fitted on the device) candidates are not timed:
    their latency is predicted, and the same two cases — predicted within the model's error of the limit (its 90th
    percentile relative error on held-out candidates), or a new best that fits — are measured for real.

    With a relative budget and its ``reference`` network, a timed candidate records the reference's latency
    (``reference_p50_ms``): timed again whenever the last reading is ``REFERENCE_RETIME_S`` old, and timed in
    alternation with the candidate for a re-check. Each candidate is so held to the reference as the machine ran
    around it, not to one reading taken when the run started (on a machine whose speed drifts by tens of percent,
    one slow start reading set the search's limit 1.6x too high)."""

    def __init__(self, task: Task, ctx: ProxyContext, proxies: list[str], device: torch.device, latency: dict[str, Any],
                 seed: int = 0, budget: Budget | None = None, recheck: dict[str, Any] | None = None,
                 predictor: LatencyModel | None = None, reference: nn.Module | None = None):
        self.task, self.ctx, self.proxies, self.device, self.latency, self.seed = task, ctx, proxies, device, latency, seed
        self.budget, self.recheck, self.predictor = budget, recheck, predictor
        self.reference = reference if budget is not None and budget.factor is not None else None
        self._reference_reading: tuple[float, float] | None = None  # (time.monotonic() of the reading, p50 ms)
        self.best_fitting: float | None = None  # the ranking proxy's best value among candidates counted in

    def __call__(self, config: dict) -> dict[str, Any]:
        torch.manual_seed(self.seed)  # proxies on random-init students are seeded per candidate
        model = create_model(config, num_classes=self.task.num_classes, in_chans=self.task.in_chans).to(self.device)
        metrics: dict[str, Any] = {"params": count_params(model), "flops": count_flops(model, self.task.input_shape)}
        if self.predictor is not None:
            metrics.update(predicted_candidate(config, self.predictor))
        else:
            metrics.update(measure_candidate(model, self.task, self.device, self.latency))
            if self.reference is not None:
                metrics["reference_p50_ms"] = self._reference_ms()
        metrics.update(score(self.proxies, model, self.ctx, {**metrics, "config": config}))
        if self._needs_recheck(metrics):
            first = metrics["latency_p50_ms"]
            metrics.update(self._measure_again(model))
            metrics["latency_first_p50_ms"] = first
            if self.predictor is not None:
                self.predictor.observe(config, metrics["latency_p50_ms"])
        if self.budget is not None and self.proxies and self.budget.fits(metrics):
            value = float(metrics[self.proxies[0]])
            self.best_fitting = value if self.best_fitting is None else max(self.best_fitting, value)
        return metrics

    def _reference_ms(self) -> float:
        """The reference's p50 latency, timed again once the last reading is REFERENCE_RETIME_S old."""
        now = time.monotonic()
        if self._reference_reading is None or now - self._reference_reading[0] > REFERENCE_RETIME_S:
            stats = measure_latency(self.reference, self.task.input_shape, device=self.device, **self.latency)
            self._reference_reading = (now, stats.p50_ms)
        return self._reference_reading[1]

    def _measure_again(self, model: nn.Module) -> dict[str, Any]:
        """A re-check with the stricter settings; with a relative budget, timed in alternation with the reference."""
        settings = self.recheck or self.latency
        if self.reference is None:
            return measure_candidate(model, self.task, self.device, settings)
        # three rounds of a third of the time each, so that the pair costs what one re-check did before
        ours, reference = measure_against_reference(model, self.reference, self.task.input_shape, device=self.device,
                                                    **{**settings, "max_time_s": settings["max_time_s"] / 3})
        return {**latency_columns(ours), "reference_p50_ms": reference.p50_ms}

    def _needs_recheck(self, metrics: dict) -> bool:
        if self.budget is None or self.budget.latency_limit_ms is None or (self.recheck is None and self.predictor is None):
            return False
        limit = self.budget.limit_for(metrics)
        noise = max(0.03 * limit, 0.5 * metrics["latency_iqr_ms"])
        if self.predictor is not None:
            noise = max(noise, self.predictor.rel_error * limit)
        if abs(metrics["latency_p50_ms"] - limit) <= noise:
            return True
        if not self.proxies or metrics["latency_p50_ms"] > limit:
            return False
        return self.best_fitting is None or float(metrics[self.proxies[0]]) > self.best_fitting  # a new best


def reference_models(space: SearchSpace, task: Task, device: torch.device, size: int, seed: int) -> list[nn.Module]:
    """The seeded random population that ensemble proxies rank candidates within."""
    models = []
    for i, config in enumerate(space.sample(size, seed=seed)):
        torch.manual_seed(seed + i)
        models.append(create_model(config, num_classes=task.num_classes, in_chans=task.in_chans).to(device))
    return models
