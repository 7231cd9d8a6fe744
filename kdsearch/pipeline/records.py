"""The typed values the stages of ``find`` pass along: what a run holds once its teacher is loaded (``RunContext``)
and a finalist's role (``Role``; stored as text in finalists.json and candidates.csv, as before)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from kdsearch.data import Task
from kdsearch.pipeline.worker import RunQueue
from kdsearch.run import RunFolder, RunSettings
from kdsearch.supernet import SupernetRanker
from kdsearch.teacher import Teacher, load_network

ROLE_KINDS = ("top", "band", "control", "pool")


@dataclass(frozen=True)
class Role:
    """Why a finalist was chosen: a ``top`` pick of the selection, the pick of latency ``band`` N of the front, a random
    ``control``, or a ``pool`` member successive halving cut (not distilled to the end unless it takes another role)."""

    kind: str
    band: int | None = None

    def __post_init__(self):
        if self.kind not in ROLE_KINDS or (self.kind == "band") != (self.band is not None):
            raise ValueError(f"not a finalist role: {self.kind!r} (band {self.band!r})")

    @classmethod
    def of(cls, finalist: dict) -> Role:
        """The role a finalists.json entry records (entries from before roles were recorded: a top pick)."""
        text = finalist.get("role") or "top"
        kind, _, band = text.partition(" ")
        return cls(kind, int(band) if band else None)

    def __str__(self) -> str:
        return f"band {self.band}" if self.kind == "band" else self.kind


TOP, CONTROL, POOL = Role("top"), Role("control"), Role("pool")


@dataclass
class RunContext:
    """What every stage after the teacher shares: the run's settings and what the stages before produced."""

    settings: RunSettings
    task: Task
    teacher: Teacher
    folder: RunFolder
    queue: RunQueue | None = None
    ranker: SupernetRanker | None = None  # with a supernet proxy: the trained supernets
    built_reference: nn.Module | None = field(default=None, repr=False)  # see ``reference``

    @property
    def reference(self) -> nn.Module | None:
        """A relative budget's reference network (untrained: only its latency is used), built once per run — by
        ``resolve_budget`` in find, on first use in a worker — and timed beside candidates and finalists."""
        if self.built_reference is None and self.settings.budget.factor is not None:
            self.built_reference = load_network(self.settings.budget.reference, self.task)
        return self.built_reference
