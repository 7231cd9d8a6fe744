"""Subspaces by measured latency: K contiguous bands of the space, one supernet each.

AutoDistil split its space by model size into K = 3 subspaces; the user of ``find`` constrains latency, so the
bands are cut where the target device puts them: a seeded sample of candidates is timed, the band edges are
that sample's latency quantiles, and every other candidate is placed by a model of latency fitted on the
sample (randomized trees on the config's encoding). A band's sandwich — its fastest and slowest members and
random ones between — is drawn from a pool of candidates placed that way.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kdsearch.cost import measure_latency
from kdsearch.data import Task
from kdsearch.spaces import SearchSpace, create_model

logger = logging.getLogger(__name__)


@dataclass
class LatencyBands:
    """K bands of a space by latency on the device: ``edges`` are the K - 1 inner boundaries (ms)."""

    edges: list[float]
    sample: list[dict[str, Any]] = field(default_factory=list)  # {"config", "latency_ms"} of the timed candidates

    @property
    def count(self) -> int:
        return len(self.edges) + 1

    def band_of(self, latency_ms: float) -> int:
        return bisect.bisect_right(self.edges, latency_ms)

    def locate(self, config: dict, latency_ms: float) -> int:
        """The band a candidate falls in (by its latency; the config is the subspaces' key)."""
        return self.band_of(latency_ms)

    def span(self, band: int) -> tuple[float, float]:
        """(lower, upper) latency of a band; the outer bands are open (0 and infinity)."""
        lower = self.edges[band - 1] if band > 0 else 0.0
        upper = self.edges[band] if band < len(self.edges) else float("inf")
        return lower, upper

    def bands_below(self, limit_ms: float | None) -> list[int]:
        """The bands that hold candidates within ``limit_ms`` (all of them without a latency limit)."""
        return [b for b in range(self.count) if limit_ms is None or self.span(b)[0] <= limit_ms]

    def to_dict(self) -> dict:
        return {"edges_ms": self.edges, "sample": self.sample}

    @classmethod
    def from_dict(cls, record: dict) -> LatencyBands:
        return cls(list(record["edges_ms"]), list(record.get("sample", [])))


def measure_bands(space: SearchSpace, task: Task, count: int, *, device: torch.device, latency: dict[str, Any],
                  sample_size: int = 48, seed: int = 0) -> LatencyBands:
    """Time ``sample_size`` seeded candidates (plus the space's extremes) and cut ``count`` bands at the quantiles."""
    configs = space.sample(sample_size, seed=seed)
    rows = []
    for config in configs:
        torch.manual_seed(seed)
        model = create_model(config, num_classes=task.num_classes, in_chans=task.in_chans).to(device)
        rows.append({"config": config, "latency_ms": measure_latency(model, task.input_shape, device=device, **latency).p50_ms})
    values = np.array([r["latency_ms"] for r in rows])
    edges = [float(np.quantile(values, q)) for q in np.arange(1, count) / count]
    logger.info(f"supernet: {count} latency band(s) from {len(rows)} timed candidates "
                f"({values.min():.2f}-{values.max():.2f} ms; edges {', '.join(f'{e:.2f}' for e in edges) or 'none'} ms)")
    return LatencyBands(edges, rows)


@dataclass
class Subspaces:
    """The space's own partition (AutoDistil's hand-made K subspaces): a candidate's band is the subspace holding it;
    ``timed`` is each trained subspace's one-band timing sample."""

    space: Any  # a UnionSpace whose parts share one family
    timed: dict[int, LatencyBands]
    fastest_ms: dict[int, float] = field(default_factory=dict)  # each subspace's smallest member, timed

    @property
    def count(self) -> int:
        return len(self.space.parts)

    def locate(self, config: dict, latency_ms: float) -> int:
        return self.space.parts.index(self.space.part_of(config))

    def to_dict(self) -> dict:
        return {"edges_ms": [], "subspaces": [p.name for p in self.space.parts], "fastest_ms": list(self.fastest_ms.values()),
                "sample": [dict(r, subspace=self.space.parts[i].name) for i, t in self.timed.items() for r in t.sample]}


ANCHORS = ("latency", "span", "uniform")  # what a sandwich step always runs: BandPool.anchors


def check_anchors(kind: str) -> str:
    if kind not in ANCHORS:
        raise ValueError(f"Unknown sandwich anchors {kind!r}; use one of {', '.join(ANCHORS)}.")
    return kind


class BandPool:
    """Candidates placed in bands by predicted latency: the sandwich's largest, smallest and random members."""

    def __init__(self, space: SearchSpace, bands: LatencyBands, *, size: int = 4096, seed: int = 0):
        from sklearn.ensemble import ExtraTreesRegressor

        self.space, self.bands = space, bands
        self.configs = list(space.enumerate()) if space.size <= size else space.sample(size, seed=seed)
        timed = bands.sample
        model = ExtraTreesRegressor(n_estimators=100, random_state=seed, n_jobs=1, min_samples_leaf=2)
        model.fit(space.encode([r["config"] for r in timed]), np.log([r["latency_ms"] for r in timed]))
        self.predicted_ms = np.exp(model.predict(space.encode(self.configs)))
        self.members = {b: np.flatnonzero([bands.band_of(v) == b for v in self.predicted_ms]) for b in range(bands.count)}
        self._anchors: dict[tuple[int, str], list[dict]] = {}  # asked for at every training step; fixed per band

    def sandwich(self, band: int, generator: torch.Generator, random_count: int = 2, anchors: str = "latency") -> list[dict]:
        """The band's ``anchors`` (see :meth:`anchors`) and ``random_count`` members drawn uniformly."""
        members = self.members[band]
        if len(members) == 0:
            return []
        picks = [int(members[i]) for i in torch.randint(len(members), (random_count,), generator=generator)]
        return self.anchors(band, anchors) + [self.configs[i] for i in picks]

    def anchors(self, band: int, kind: str = "latency") -> list[dict]:
        """The members a sandwich step always runs, largest first: ``latency``, the band's slowest and fastest members
        by predicted latency; ``span``, the band's own largest and smallest configs, each key at its largest (smallest)
        value among the members — every weight any member uses is trained each step, as OFA trains its full network
        (a space with categorical keys has no such config and falls back to ``latency``); ``uniform``, none."""
        if (band, kind) not in self._anchors:
            self._anchors[band, kind] = self._find_anchors(band, check_anchors(kind))
        return self._anchors[band, kind]

    def _find_anchors(self, band: int, kind: str) -> list[dict]:
        members = self.members[band]
        if kind == "uniform" or len(members) == 0:
            return []
        if kind == "span" and all(self.space.is_numeric(k) for k in self.space.choices):
            configs = [self.configs[i] for i in members]
            return [self.space.config({k: pick(c[k] for c in configs) for k in self.space.choices}) for pick in (max, min)]
        by_latency = members[np.argsort(self.predicted_ms[members], kind="stable")]
        return [self.configs[int(by_latency[-1])], self.configs[int(by_latency[0])]]


__all__ = ["ANCHORS", "BandPool", "LatencyBands", "Subspaces", "check_anchors", "measure_bands"]
