"""Latency on the target device: warm-up, repeat until the median is stable, robust statistics.

A shared machine can time the same forward pass at 2 ms or at 20 ms, so a single timing means
nothing. We report the median (p50) with p90 and the interquartile range, and stop repeating once
the median's standard error is within ``rel_precision`` of it (or the time allowance is spent).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn

from kdsearch.cost.runtime import get_runtime

# The search screens thousands of candidates: a short warm-up (the FLOPs pass has already run the model
# once) and a 3 % target; every finalist is re-measured with the finalists' settings before it is distilled.
LATENCY_SEARCH = {"max_time_s": 0.5, "rel_precision": 0.03, "min_repeats": 10, "warmup_s": 0.02}
LATENCY_FINAL = {"max_time_s": 3.0, "rel_precision": 0.01, "min_repeats": 50, "max_repeats": 2000}


@dataclass
class LatencyStats:
    p50_ms: float
    p90_ms: float
    iqr_ms: float
    mean_ms: float
    min_ms: float
    repeats: int
    stable: bool  # the median's standard error reached rel_precision
    device: str
    threads: int
    batch_size: int
    input_shape: tuple[int, ...]
    timer: str = "perf_counter"  # perf_counter on CPU; cuda_events on a GPU (device time, not host time)
    runtime: str = "torch"  # the deployment runtime it ran in (kdsearch.cost.runtime)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @property
    def key(self) -> str:
        """What a cached figure is only valid for."""
        runtime = "" if self.runtime == "torch" else f"|{self.runtime}"  # eager keys stay as runs before runtimes wrote them
        return f"{self.device}|t{self.threads}|b{self.batch_size}|{'x'.join(map(str, self.input_shape))}{runtime}"


@contextlib.contextmanager
def pinned_threads(threads: int | None):
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"


class LatencyTimer:
    """One network prepared in a runtime on a device, ready to be timed any number of times (a relative budget
    alternates two of them without compiling either again)."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], device: torch.device, batch_size: int,
                 threads: int, runtime: str):
        self.device, self.runtime, self.input_shape, self.batch_size = device, runtime, tuple(input_shape), batch_size
        self.cuda = device.type == "cuda"
        # CUDA events time the device's own work for eager PyTorch; another runtime's kernels are not on torch's
        # stream, so there the host clock times the call up to a device synchronisation.
        self.events = self.cuda and runtime == "torch"
        self.threads = threads
        x = torch.zeros(batch_size, *input_shape, device=device)
        self.context = get_runtime(runtime).context
        self.run = get_runtime(runtime).compile(model.to(device).eval(), x, threads)

    def _once(self) -> float:
        if self.events:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            self.run()
            end.record()
            end.synchronize()
            return begin.elapsed_time(end)
        t0 = time.perf_counter()
        self.run()
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return (time.perf_counter() - t0) * 1e3

    def time(self, **settings) -> LatencyStats:
        """Warm up, then repeat until the median is stable (see :func:`measure_latency` for ``settings``)."""
        with self.context():
            return self._time(**settings)

    def _time(self, *, warmup_s: float = 0.05, min_repeats: int = 15, max_repeats: int = 400, max_time_s: float = 0.6,
              rel_precision: float = 0.02) -> LatencyStats:
        # Warm-up: first calls allocate, pick kernels and fill caches.
        start = time.perf_counter()
        for i in range(1000):
            self._once()
            if i >= 3 and time.perf_counter() - start >= warmup_s:
                break
        samples: list[float] = []
        start = time.perf_counter()
        stable = False
        while len(samples) < max_repeats:
            samples.append(self._once())
            if len(samples) >= min_repeats and len(samples) % 5 == 0:
                arr = np.asarray(samples)
                median = float(np.median(arr))
                # standard error of the median from the MAD (robust to the outliers a busy machine causes)
                mad = float(np.median(np.abs(arr - median))) * 1.4826
                se = 1.2533 * mad / np.sqrt(len(arr))
                if se <= rel_precision * median:
                    stable = True
                    break
                if time.perf_counter() - start > max_time_s:
                    break
        return self._stats(np.asarray(samples), stable)

    def _stats(self, arr: np.ndarray, stable: bool) -> LatencyStats:
        q25, q50, q75, q90 = np.percentile(arr, [25, 50, 75, 90])
        return LatencyStats(
            p50_ms=float(q50), p90_ms=float(q90), iqr_ms=float(q75 - q25), mean_ms=float(arr.mean()), min_ms=float(arr.min()),
            repeats=len(arr), stable=stable, device=_device_name(self.device), threads=self.threads,
            batch_size=self.batch_size, input_shape=self.input_shape,
            timer="cuda_events" if self.events else ("perf_counter+sync" if self.cuda else "perf_counter"), runtime=self.runtime,
        )


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    threads: int | None = 1,
    runtime: str = "torch",
    **settings,
) -> LatencyStats:
    """Time ``model`` in ``runtime`` on a zero batch of ``input_shape`` (latency does not depend on pixel values).

    ``settings``: ``warmup_s`` (0.05), ``min_repeats`` (15), ``max_repeats`` (400), ``max_time_s`` (0.6),
    ``rel_precision`` (0.02): repeat until the median's standard error is within ``rel_precision`` of it."""
    device = torch.device(device)
    with pinned_threads(threads if device.type != "cuda" else None) as used_threads:
        return LatencyTimer(model, input_shape, device, batch_size, int(used_threads), runtime).time(**settings)


def measure_against_reference(
    model: nn.Module,
    reference: nn.Module,
    input_shape: tuple[int, ...],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    threads: int | None = 1,
    runtime: str = "torch",
    rounds: int = 3,
    **settings,
) -> tuple[LatencyStats, LatencyStats]:
    """(model's, reference's) latency, timed in alternation — reference, model, reference, … — so that a load that
    comes and goes during the measurement weighs on both alike; each is the round with its median p50, and the
    reference is timed ``rounds + 1`` times around the model's ``rounds``."""
    device = torch.device(device)
    with pinned_threads(threads if device.type != "cuda" else None) as used_threads:
        ours = LatencyTimer(model, input_shape, device, batch_size, int(used_threads), runtime)
        theirs = LatencyTimer(reference, input_shape, device, batch_size, int(used_threads), runtime)
        ref_rounds, our_rounds = [theirs.time(**settings)], []
        for _ in range(rounds):
            our_rounds.append(ours.time(**settings))
            ref_rounds.append(theirs.time(**settings))

    def middle(stats: list[LatencyStats]) -> LatencyStats:
        return sorted(stats, key=lambda s: s.p50_ms)[len(stats) // 2]

    return middle(our_rounds), middle(ref_rounds)
