"""The public entries that read search spaces: one spec (:func:`load_space`) or several comma-separated
(:func:`load_spaces`), a YAML that declares subspaces loading as their union."""

from __future__ import annotations

from pathlib import Path

from kdsearch.exceptions import SpaceError
from kdsearch.spaces.space import SearchSpace, read_space
from kdsearch.spaces.union import UnionSpace, is_union


def load_space(spec: str | Path) -> SearchSpace | UnionSpace:
    """Read and validate a search-space YAML (a path, or the name of a bundled space), or an NNI model space
    ('nni:NasBench201', 'nni:package.module:SpaceOrFactory'; the nni extra). A YAML that declares ``subspaces``
    (AutoDistil's hand partition) loads as the union of its parts; ``name.part`` loads one part."""
    parts, name = read_space(spec)
    return parts[0] if len(parts) == 1 else UnionSpace(tuple(parts), label=name)


def load_spaces(spec: str) -> SearchSpace | UnionSpace:
    """One space, or several comma-separated (``resnet_cifar,vit_cifar``) searched as one."""
    names = [s.strip() for s in str(spec).split(",")] if "," in str(spec) and not str(spec).startswith("nni:") else [spec]
    if any(not n for n in names):
        raise SpaceError(f"--space {spec!r} has an empty name between commas; write e.g. resnet_cifar,vit_cifar.")
    spaces = [load_space(n) for n in names]
    if len(spaces) == 1:
        return spaces[0]
    return UnionSpace(tuple(p for s in spaces for p in (s.parts if is_union(s) else (s,))))  # a subspaced file: its parts
