from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn
import yaml

from kdsearch._util import stable_hash, suggest
from kdsearch.exceptions import SpaceError
from kdsearch.spaces.families import family_keys, family_spec, get_family, list_families, open_keys

# The bundled spaces ship inside the package (package data of the wheel); the repository's top-level
# search_spaces/ is a link to this folder.
SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
_TOP_KEYS = {"family", "description", "resolution", "choices", "fixed", "subspaces"}


def candidate_id(config: dict[str, Any]) -> str:
    """Stable 12-hex id of a candidate config (same on every machine)."""
    return stable_hash(config)


def create_model(config: dict[str, Any], *, num_classes: int, in_chans: int = 3) -> nn.Module:
    """The single entry that turns a candidate config into a fresh, untrained model."""
    config = dict(config)
    family = config.pop("family", None)
    if family not in list_families():
        raise SpaceError(
            f"Candidate family {family!r} is unknown;{suggest(str(family), list_families())} "
            f"known families: {', '.join(list_families())}."
        )
    keys, required = family_keys(family)
    unknown, missing = set() if open_keys(family) else set(config) - keys, required - set(config)
    if unknown or missing:
        raise SpaceError(
            f"Candidate {config} does not fit family {family!r} (unknown keys: {sorted(unknown, key=str)}, "
            f"missing keys: {sorted(missing)}); allowed keys: {', '.join(sorted(keys))}."
        )
    return get_family(family)(**config, num_classes=num_classes, in_chans=in_chans)


@dataclass
class SearchSpace:
    name: str
    family: str
    choices: dict[str, list[Any]]
    fixed: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    resolution: tuple[int, int] = (1, 100000)
    path: str | None = None

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.choices.values())

    def is_numeric(self, key: str) -> bool:
        """Are ``key``'s choices numbers (ordered: depth, width, kernel), not categories (ops, block types)?"""
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.choices[key])

    def encode(self, configs: list[dict]) -> np.ndarray:
        """Configs as model features — numeric keys as their numbers, the others one-hot over their choices — in the
        order of ``choices``: the one encoding of the latency model, the supernet bands and the constrained sampler."""
        columns = []
        for key, values in self.choices.items():
            if self.is_numeric(key):
                columns.append(np.array([[float(c[key])] for c in configs], dtype=np.float64).reshape(-1, 1))
            else:
                columns.append(np.array([[float(c[key] == v) for v in values] for c in configs], dtype=np.float64)
                               .reshape(-1, len(values)))
        return np.concatenate(columns, axis=1)

    def encode_indices(self, rows: np.ndarray) -> np.ndarray:
        """``encode`` for configs given as choice indices (one column per key, in the order of ``choices``)."""
        columns = []
        for j, (key, values) in enumerate(self.choices.items()):
            if self.is_numeric(key):
                columns.append(np.asarray(values, dtype=np.float64)[rows[:, j]][:, None])
            else:
                columns.append(np.eye(len(values))[rows[:, j]])
        return np.concatenate(columns, axis=1)

    def config(self, values: dict[str, Any]) -> dict[str, Any]:
        return {"family": self.family, **self.fixed, **values}

    def suggest(self, trial) -> dict[str, Any]:
        """Sample a candidate through an Optuna trial (categorical per key)."""
        return self.config({k: trial.suggest_categorical(k, v) for k, v in self.choices.items()})

    def enumerate(self) -> Iterator[dict[str, Any]]:
        keys = list(self.choices)
        for combo in itertools.product(*(self.choices[k] for k in keys)):
            yield self.config(dict(zip(keys, combo)))

    def sample(self, n: int, seed: int = 0) -> list[dict[str, Any]]:
        """``n`` distinct candidates drawn uniformly (seeded); the whole space when it holds fewer."""
        import random

        if n >= self.size:
            return list(self.enumerate())
        rng = random.Random(seed)
        picked: list[dict[str, Any]] = []
        while len(picked) < n:
            config = self.config({k: rng.choice(v) for k, v in self.choices.items()})
            if config not in picked:
                picked.append(config)
        return picked

    def for_input(self, size: int) -> SearchSpace:
        """The space for inputs of ``size`` px: a family built for one input size (a ViT's position embedding: key
        ``img_size``) gets it fixed, unless the space already names it; every other space is returned as it is."""
        keys, _ = family_keys(self.family)
        if "img_size" not in keys or "img_size" in self.choices or "img_size" in self.fixed:
            return self
        return replace(self, fixed={**self.fixed, "img_size": size})

    def build(self, config: dict[str, Any], *, num_classes: int, in_chans: int = 3) -> nn.Module:
        return create_model(config, num_classes=num_classes, in_chans=in_chans)

    def record(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "path": self.path,
            "size": self.size,
            "choices": self.choices,
            "fixed": self.fixed,
        }


def list_spaces() -> list[Path]:
    return sorted(SPACES_DIR.glob("*.yaml"))


def _resolve_path(spec: str | Path) -> Path:
    path = Path(spec).expanduser()
    if path.exists():
        return path
    for candidate in (SPACES_DIR / f"{spec}", SPACES_DIR / f"{spec}.yaml"):
        if candidate.exists():
            return candidate
    names = [p.stem for p in list_spaces()]
    raise SpaceError(
        f"Search space {str(spec)!r} not found;{suggest(Path(str(spec)).stem, names)} pass a YAML path or one of: "
        f"{', '.join(names)}."
    )


def _read_yaml(path: Path):
    where = str(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise SpaceError(f"{where}: is not UTF-8 text (byte {exc.start}); save the search space as a UTF-8 YAML file.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or (str(exc).strip().splitlines() or ["unreadable"])[0]  # one line
        raise SpaceError(f"{where}:{line} is not valid YAML ({problem}); fix the syntax.") from None


def _check_keys(where: str, family: str, keys, required, choices: dict, fixed: dict) -> None:
    """Every key a parameter of the family, every choice a non-empty list of distinct plain values, nothing missing."""
    for key in {**choices, **fixed}:
        if key not in keys:
            raise SpaceError(
                f"{where}: key {key!r} is not a parameter of family {family!r};{suggest(key, keys)} allowed: "
                f"{', '.join(sorted(keys))}."
            )
    for key, values in choices.items():
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{where}: choices.{key} must be a non-empty list of values, got {values!r}.")
        if len(set(map(repr, values))) != len(values):
            raise SpaceError(f"{where}: choices.{key} lists a value twice; list each value once.")
        if not all(isinstance(v, (int, float, str, bool)) for v in values):
            raise SpaceError(f"{where}: choices.{key} may hold only numbers, strings or booleans.")
    both = set(choices) & set(fixed)
    if both:
        raise SpaceError(f"{where}: key {sorted(both, key=str)[0]!r} is both in 'choices' and 'fixed'; keep it in one.")
    missing = required - set(choices) - set(fixed)
    if missing:
        raise SpaceError(f"{where}: family {family!r} needs key(s) {', '.join(sorted(missing))} in 'choices' or 'fixed'.")


def read_space(spec: str | Path) -> tuple[list[SearchSpace], str]:
    """The space(s) a spec names and the file's name: an NNI model space ('nni:NasBench201',
    'nni:package.module:SpaceOrFactory'; the nni extra), a YAML path or bundled name (its one space, or each subspace
    it declares), or ``name.part`` (that subspace alone). :func:`kdsearch.spaces.load_space` is the public entry."""
    if str(spec).startswith("nni:"):
        from kdsearch.spaces.nni_spaces import nni_space_fields

        space = SearchSpace(**nni_space_fields(str(spec)))
        return [space], space.name
    try:
        path, part = _resolve_path(spec), None
    except SpaceError as not_found:  # ``name.part``: one subspace of a file that declares them
        base, _, part = str(spec).rpartition(".")
        try:
            path = _resolve_path(base) if base and part else None
        except SpaceError:
            path = None
        if path is None:
            raise not_found from None
    parts = _read_space_file(path)
    if part is None:
        return parts, path.stem
    chosen = [p for p in parts if p.name == f"{path.stem}.{part}"]
    if not chosen:
        names = ", ".join(p.name for p in parts) if len(parts) > 1 else "none"
        raise SpaceError(f"Search space {path.stem} declares no subspace {part!r} (its subspaces: {names}); "
                         "name one of them or the whole space.")
    return chosen, path.stem


def _read_space_file(path: Path) -> list[SearchSpace]:
    """A YAML's space, or each of its declared subspaces (named ``<file>.<subspace>``, sharing the file's keys)."""
    where = str(path)
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise SpaceError(f"{where}: a search space must be a mapping with keys 'family' and 'choices'.")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        key = sorted(unknown, key=str)[0]
        raise SpaceError(f"{where}: unknown key {key!r};{suggest(key, _TOP_KEYS)} allowed: {', '.join(sorted(_TOP_KEYS))}.")
    subspaces = raw.get("subspaces")
    if subspaces is None:
        return [_space(path.stem, where, raw, raw.get("choices"), path)]
    if "choices" in raw:
        raise SpaceError(f"{where}: give either 'choices' (one space) or 'subspaces' (its parts, each with its own "
                         "choices), not both.")
    if not isinstance(subspaces, dict) or len(subspaces) < 2 or not all(isinstance(v, dict) for v in subspaces.values()):
        raise SpaceError(f"{where}: key 'subspaces' must map two or more names to their choices, e.g. "
                         "tiny: {depth: [4, 5]}, base: {depth: [9, 10]}.")
    return [_space(f"{path.stem}.{name}", f"{where}: subspace {name}", raw, choices, path)
            for name, choices in subspaces.items()]


def _space(name: str, where: str, raw: dict, choices, path: Path) -> SearchSpace:
    family = raw.get("family")
    if family not in list_families():
        raise SpaceError(
            f"{where}: key 'family' is {family!r};{suggest(str(family), list_families())} allowed: "
            f"{', '.join(list_families())}."
        )
    keys, required = family_keys(family)
    choices = choices or {}
    fixed = raw.get("fixed") or {}
    if not isinstance(choices, dict) or not choices:
        raise SpaceError(f"{where}: key 'choices' must map at least one of {', '.join(sorted(keys))} to a list of values.")
    if not isinstance(fixed, dict):
        raise SpaceError(f"{where}: key 'fixed' must be a mapping of key: value.")
    _check_keys(where, family, keys, required, choices, fixed)
    if family_spec(family).check is not None:
        family_spec(family).check(where, choices, fixed)
    resolution = raw.get("resolution", [1, 100000])
    if not (isinstance(resolution, list) and len(resolution) == 2 and all(isinstance(r, int) for r in resolution)):
        raise SpaceError(f"{where}: key 'resolution' must be [min, max] input sizes in pixels, e.g. [16, 64].")
    if family == "timm":
        import timm

        known = set(timm.list_models())
        for model in choices.get("model", []) + ([fixed["model"]] if "model" in fixed else []):
            if model not in known:
                raise SpaceError(f"{where}: choices.model lists {model!r}, which timm does not know;{suggest(model, known)}")
    return SearchSpace(name=name, family=family, choices=choices, fixed=fixed,
                       description=str(raw.get("description", "")).strip(), resolution=tuple(resolution), path=str(path))


def default_space_path(input_size: int) -> Path:
    """The bundled space meant for this input resolution: CIFAR ResNets for small images, MobileNetV3 above."""
    return SPACES_DIR / ("resnet_cifar.yaml" if input_size <= 64 else "mobilenetv3.yaml")
