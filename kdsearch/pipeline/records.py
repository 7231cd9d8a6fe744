"""The typed values the stages of ``find`` pass along: what a run holds once its teacher is loaded (``RunContext``),
a finalist (``Finalist``: stored flat in finalists.json, as before) and its role (``Role``; stored as text in
finalists.json and candidates.csv)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    def parse(cls, text: str | None) -> Role:
        """The role a finalists.json entry records as text (entries from before roles were recorded: a top pick)."""
        kind, _, band = (text or "top").partition(" ")
        return cls(kind, int(band) if band else None)

    def __str__(self) -> str:
        return f"band {self.band}" if self.kind == "band" else self.kind


TOP, CONTROL, POOL = Role("top"), Role("control"), Role("pool")

# The fields of a Finalist that finalists.json stores beside its search row's columns.
_OWN = ("candidate_id", "config", "role", "within_budget", "band", "rung", "stopped_at_epoch")


@dataclass
class Finalist:
    """A candidate chosen to distil: its search row with the latency re-measured for the decision (``metrics``: the
    proxies' scores, params, flops, the latency columns and, with a relative budget, ``reference_p50_ms``), why it was
    chosen, whether it fits the budget on re-measurement, the latency band of the front it stands in, and — in a
    successive-halving pool — the last rung it reached."""

    candidate_id: str
    config: dict[str, Any]
    role: Role
    within_budget: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    band: int | None = None
    rung: int | None = None
    stopped_at_epoch: int | None = None

    @property
    def accepted(self) -> bool:
        """It fits and is one of the run's students (not a pool member successive halving cut)."""
        return self.within_budget and self.role != POOL

    @property
    def family(self) -> str:
        return self.config["family"]

    @property
    def latency_ms(self) -> float:
        return float(self.metrics["latency_p50_ms"])

    def __getitem__(self, column: str) -> Any:
        """A metric by its column name (``budget.fits(finalist)``, ``finalist[proxy]``: read like the search's rows)."""
        return self.metrics[column]

    def get(self, column: str, default: Any = None) -> Any:
        return self.metrics.get(column, default)

    def to_record(self) -> dict[str, Any]:
        """The flat finalists.json entry."""
        return {**self.metrics, "candidate_id": self.candidate_id, "config": self.config, "role": str(self.role),
                "within_budget": self.within_budget, "band": self.band, "rung": self.rung,
                "stopped_at_epoch": self.stopped_at_epoch}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Finalist:
        return cls(candidate_id=record["candidate_id"], config=record["config"], role=Role.parse(record.get("role")),
                   within_budget=bool(record["within_budget"]), band=record.get("band"), rung=record.get("rung"),
                   stopped_at_epoch=record.get("stopped_at_epoch"), metrics=metrics_of(record))


def metrics_of(row: dict[str, Any]) -> dict[str, Any]:
    """A search row's or finalists.json entry's columns that are not a Finalist's own fields."""
    return {k: v for k, v in row.items() if k not in _OWN}


def read_finalists(folder: RunFolder) -> dict[str, Finalist]:
    """The run's finalists by candidate id (none yet: empty)."""
    return {cid: Finalist.from_record(r) for cid, r in folder.finalists().items()}


def write_finalists(folder: RunFolder, finalists: dict[str, Finalist]) -> None:
    folder.write_finalists({cid: f.to_record() for cid, f in finalists.items()})


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
