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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @property
    def key(self) -> str:
        """What a cached figure is only valid for."""
        return f"{self.device}|t{self.threads}|b{self.batch_size}|{'x'.join(map(str, self.input_shape))}"


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


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    threads: int | None = 1,
    warmup_s: float = 0.05,
    min_repeats: int = 15,
    max_repeats: int = 400,
    max_time_s: float = 0.6,
    rel_precision: float = 0.02,
) -> LatencyStats:
    """Time ``model`` on a zero batch of ``input_shape`` (latency does not depend on pixel values)."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.zeros(batch_size, *input_shape, device=device)
    cuda = device.type == "cuda"
    with pinned_threads(threads if not cuda else None) as used_threads:
        # Warm-up: first calls allocate, pick kernels and fill caches.
        start = time.perf_counter()
        for i in range(1000):
            model(x)
            if cuda:
                torch.cuda.synchronize(device)
            if i >= 3 and time.perf_counter() - start >= warmup_s:
                break
        samples: list[float] = []
        start = time.perf_counter()
        stable = False
        while len(samples) < max_repeats:
            if cuda:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                model(x)
                end.record()
                end.synchronize()
                samples.append(begin.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                model(x)
                samples.append((time.perf_counter() - t0) * 1e3)
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
    arr = np.asarray(samples)
    q25, q50, q75, q90 = np.percentile(arr, [25, 50, 75, 90])
    return LatencyStats(
        p50_ms=float(q50),
        p90_ms=float(q90),
        iqr_ms=float(q75 - q25),
        mean_ms=float(arr.mean()),
        min_ms=float(arr.min()),
        repeats=len(samples),
        stable=stable,
        device=_device_name(device),
        threads=int(used_threads),
        batch_size=batch_size,
        input_shape=tuple(input_shape),
        timer="cuda_events" if cuda else "perf_counter",
    )
