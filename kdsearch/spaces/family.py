"""The family registry: one small, explicit builder per architecture family (as timm registers models).

The builders live one module per family (resnet, mobilenetv3, nasbench201, zoo); ``kdsearch.spaces.families``
imports them all, so that importing it registers every bundled family.

A builder takes the family's searchable keys plus ``num_classes`` and ``in_chans`` and returns an
``nn.Module`` that exposes ``forward_features`` (pre-pool map), ``forward_head(x, pre_logits=...)``
and ``get_classifier()`` — the timm contract, which the proxies rely on.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from kdsearch.exceptions import SpaceError
from kdsearch.registry import Registry


@dataclass(frozen=True)
class SharingRule:
    """How a family shares weights in a supernet (kdsearch.supernet): the supernet module for a space, the name
    of the supernet tensor each subnet tensor is cut from, and (where a leading slice is wrong) how it is cut."""

    build: Callable[[Any, int, int], nn.Module]  # (space, num_classes, in_chans) -> supernet module
    source_name: Callable[[str, dict, Any], str]  # (subnet tensor name, config, space) -> supernet tensor name
    # (subnet tensor name, supernet tensor, subnet shape) -> the cut, or None for the generic first-k cut
    cut: Callable[[str, Any, Any], Any] | None = None
    # (supernet module, teacher module, the supernet's config) -> whether the supernet now starts from the teacher's
    # weights (AutoDistil starts its SuperLM from BERT's)
    from_teacher: Callable[[nn.Module, nn.Module, dict], bool] | None = None


@dataclass(frozen=True)
class FamilySpec:
    """Everything the stages know of one family, registered once: ``build`` (the builder), ``block_keys`` (which
    block each leaf of its forward pass is, from a config alone, for the latency lookup table; None: the latency
    model regresses on the config) and ``sharing`` (its weight-sharing rule; None: no supernet for its spaces)."""

    name: str
    build: Callable[..., nn.Module]
    block_keys: Callable[[dict, tuple], list] | None = None
    sharing: SharingRule | None = None
    check: Callable[[str, dict, dict], None] | None = None  # (where, choices, fixed): refuses a bad space at load
    # the family's own optimiser settings over the students' recipe (as timm's pretrained_cfg carries a model's):
    # transformers train with AdamW, not the CNNs' SGD
    recipe: dict | None = None
    # the parameter count from the config alone, (config, num_classes, in_chans) -> int: the search counts thousands
    # of candidates exactly; None: the model is built and counted (tests check each formula against the built model)
    params: Callable[[dict, int, int], int] | None = None


FAMILIES: Registry[FamilySpec] = Registry("candidate family", SpaceError)


def register_family(build: Callable[..., nn.Module] | None = None, *, name: str | None = None,
                    block_keys: Callable[[dict, tuple], list] | None = None, sharing: SharingRule | None = None,
                    check: Callable[[str, dict, dict], None] | None = None, recipe: dict | None = None,
                    params: Callable[[dict, int, int], int] | None = None):
    """Register a family: ``@register_family`` on a builder, or ``register_family(builder, block_keys=…, sharing=…,
    check=…, recipe=…, params=…)`` (the name is the builder's unless given). Returns the builder."""

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        family = name or fn.__name__
        FAMILIES.add(family, FamilySpec(family, fn, block_keys, sharing, check, recipe, params))
        return fn

    return add(build) if build is not None else add


def family_recipe(family: str) -> dict:
    """The optimiser settings a family trains with over the students' recipe ({} for most: find's SGD)."""
    return dict(FAMILIES.get(family).recipe or {})


def list_families() -> list[str]:
    return FAMILIES.names()


def family_spec(name: str) -> FamilySpec:
    return FAMILIES.get(name)


def get_family(name: str) -> Callable[..., nn.Module]:
    return FAMILIES.get(name).build


def sharing_rule(name: str) -> SharingRule:
    """The family's weight-sharing rule; a family without one is refused in one line naming those that have one."""
    spec = FAMILIES.get(name)
    if spec.sharing is None:
        shared = [n for n in FAMILIES.names() if FAMILIES.get(n).sharing is not None]
        raise SpaceError(f"Unknown weight-sharing family {name!r}; available: {', '.join(shared)}. A supernet needs a "
                         "space of one of those families; choose one, or another --proxy.")
    return spec.sharing


def open_keys(name: str) -> bool:
    """Does the family take keys its builder does not name (an NNI space's labels)?"""
    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(get_family(name)).parameters.values())


def family_keys(name: str) -> tuple[set[str], set[str]]:
    """(all searchable keys, keys without a default) of a family's builder."""
    params = inspect.signature(get_family(name)).parameters
    keys = {k for k, p in params.items() if k not in ("num_classes", "in_chans") and p.kind != p.VAR_KEYWORD}
    required = {k for k in keys if params[k].default is inspect.Parameter.empty}
    return keys, required


# --------------------------------------------------------------------------- latency blocks
# A family may say, from a config alone (microseconds, no model built), which block each leaf of its forward pass is:
# ``block_keys(config, input_shape) -> [key, ...]`` in the order :func:`latency_blocks` visits the built model's blocks.
# The latency model's lookup table (kdsearch.cost.latency_model) sums per-block latencies by these keys, as OFA's
# latency tables do; a family without keys is still modelled, by a regressor on the config.
_CONTAINERS = (nn.Sequential, nn.ModuleList)


def latency_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks in definition order: its children, with plain containers (Sequential, ModuleList) opened."""
    blocks = []
    for child in model.children():
        blocks.extend(latency_blocks(child) if isinstance(child, _CONTAINERS) else [child])
    return blocks


def half(size: int) -> int:
    return (size + 1) // 2  # a 3x3 (or kxk) convolution with stride 2 and padding k//2



# --------------------------------------------------------------------------- weight sharing (kdsearch.supernet)
def largest_config(space) -> dict[str, Any]:
    """Every numeric key of ``space`` at its largest choice (depth, width, kernel, expansion): a nested supernet's
    skeleton."""
    values = {}
    for key, choices in space.choices.items():
        if not space.is_numeric(key):
            raise SpaceError(f"Space {space.name!r}: key {key!r} has non-numeric choices, which a nested supernet cannot "
                             f"share; use a family with a rule for them (nasbench201).")
        values[key] = max(choices)
    return space.config(values)


def build_config(config: dict, num_classes: int, in_chans: int) -> nn.Module:
    """A space's own config (already valid), built by its family's builder."""
    keys = {k: v for k, v in config.items() if k != "family"}
    return get_family(config["family"])(**keys, num_classes=num_classes, in_chans=in_chans)


def _nested(space, num_classes: int, in_chans: int) -> nn.Module:
    return build_config(largest_config(space), num_classes, in_chans)


def _same_name(name: str, config: dict, space) -> str:
    return name



NESTED = SharingRule(_nested, _same_name)  # a subnet's tensors are cuts of the same-named supernet tensors
