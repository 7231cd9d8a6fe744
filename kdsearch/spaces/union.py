"""Several spaces searched as one (``--space resnet_cifar,vit_cifar``): the space is the first choice of a conditional
search space, each part's keys the choices under it. A candidate is a plain config of one part's family, so latency,
proxies, distillation, the report and export take it as they take any other; what needs one family's keys for every
candidate (the constrained sampler's exact counts, the latency model) is refused or switched off for a union, in one
sentence. Parts of one family are a partition of that family's space: a YAML that declares ``subspaces`` loads as
their union (``label`` = the file's name), and a supernet proxy trains one supernet per part.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

import torch.nn as nn

from kdsearch.exceptions import SpaceError
from kdsearch.spaces.space import SearchSpace, create_model

SPACE_KEY = "space"  # the trial parameter that picks the part


@dataclass(frozen=True)
class UnionSpace:
    parts: tuple[SearchSpace, ...]
    label: str | None = None  # a YAML that declares its subspaces: the file's name (else the parts' names joined)

    def __post_init__(self):
        names = [p.name for p in self.parts]
        if len(self.parts) < 2 or len(set(names)) != len(names):
            raise SpaceError(f"A union of spaces needs two or more different spaces, got {', '.join(names)}; list each once.")

    @property
    def name(self) -> str:
        return self.label or ",".join(p.name for p in self.parts)

    @property
    def family(self) -> str:
        return "+".join(dict.fromkeys(p.family for p in self.parts))

    @property
    def families(self) -> list[str]:
        return list(dict.fromkeys(p.family for p in self.parts))

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)

    @property
    def resolution(self) -> tuple[int, int]:
        return max(p.resolution[0] for p in self.parts), min(p.resolution[1] for p in self.parts)

    @property
    def description(self) -> str:
        return "; ".join(f"{p.name}: {p.description}" for p in self.parts)

    @property
    def path(self) -> None:
        return None

    @property
    def fixed(self) -> dict:
        return {}

    @property
    def choices(self) -> dict:
        raise SpaceError(f"The union {self.name} has no single set of keys; this step needs one space (search the "
                         "spaces one at a time for it).")

    def part_of(self, config: dict) -> SearchSpace:
        for part in self.parts:
            if config.get("family") == part.family and all(config.get(k) == v for k, v in part.fixed.items()) and \
                    all(config.get(k) in v for k, v in part.choices.items()):
                return part
        raise SpaceError(f"Candidate {config} belongs to none of {self.name}.")

    def for_input(self, size: int) -> UnionSpace:
        return replace(self, parts=tuple(p.for_input(size) for p in self.parts))

    def suggest(self, trial) -> dict[str, Any]:
        """The part first, then its keys under its name (Optuna's define-by-run conditional space)."""
        name = trial.suggest_categorical(SPACE_KEY, [p.name for p in self.parts])
        part = next(p for p in self.parts if p.name == name)
        return part.config({k: trial.suggest_categorical(f"{name}.{k}", v) for k, v in part.choices.items()})

    def enumerate(self):
        for part in self.parts:
            yield from part.enumerate()

    def sample(self, n: int, seed: int = 0) -> list[dict[str, Any]]:
        """``n`` distinct candidates drawn uniformly from the union (a part in proportion to its size; seeded)."""
        if n >= self.size:
            return list(self.enumerate())
        rng = random.Random(seed)
        weights = [p.size for p in self.parts]
        picked: list[dict[str, Any]] = []
        while len(picked) < n:
            part = rng.choices(self.parts, weights=weights)[0]
            config = part.config({k: rng.choice(v) for k, v in part.choices.items()})
            if config not in picked:
                picked.append(config)
        return picked

    def build(self, config: dict[str, Any], *, num_classes: int, in_chans: int = 3) -> nn.Module:
        return create_model(config, num_classes=num_classes, in_chans=in_chans)

    def record(self) -> dict:
        return {"name": self.name, "family": self.family, "size": self.size, "parts": [p.record() for p in self.parts],
                **({"label": self.label} if self.label else {})}


def is_union(space) -> bool:
    return isinstance(space, UnionSpace)
