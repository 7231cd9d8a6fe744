"""The family registry: one small, explicit builder per architecture family (as timm registers models).

A builder takes the family's searchable keys plus ``num_classes`` and ``in_chans`` and returns an
``nn.Module`` that exposes ``forward_features`` (pre-pool map), ``forward_head(x, pre_logits=...)``
and ``get_classifier()`` — the timm contract, which the proxies rely on.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdsearch.exceptions import SpaceError
from kdsearch.registry import Registry


@dataclass(frozen=True)
class SharingRule:
    """How a family shares weights in a supernet (kdsearch.supernet): the supernet module for a space, and the name
    of the supernet tensor each subnet tensor is cut from."""

    build: Callable[[Any, int, int], nn.Module]  # (space, num_classes, in_chans) -> supernet module
    source_name: Callable[[str, dict], str]  # (subnet tensor name, config) -> supernet tensor name


@dataclass(frozen=True)
class FamilySpec:
    """Everything the stages know of one family, registered once: ``build`` (the builder), ``block_keys`` (which
    block each leaf of its forward pass is, from a config alone, for the latency lookup table; None: the latency
    model regresses on the config) and ``sharing`` (its weight-sharing rule; None: no supernet for its spaces)."""

    name: str
    build: Callable[..., nn.Module]
    block_keys: Callable[[dict, tuple], list] | None = None
    sharing: SharingRule | None = None


FAMILIES: Registry[FamilySpec] = Registry("candidate family", SpaceError)


def register_family(build: Callable[..., nn.Module] | None = None, *, name: str | None = None,
                    block_keys: Callable[[dict, tuple], list] | None = None, sharing: SharingRule | None = None):
    """Register a family: ``@register_family`` on a builder, or ``register_family(builder, block_keys=…, sharing=…)``
    (the name is the builder's unless given). Returns the builder."""

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        family = name or fn.__name__
        FAMILIES.add(family, FamilySpec(family, fn, block_keys, sharing))
        return fn

    return add(build) if build is not None else add


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


# --------------------------------------------------------------------------- CIFAR ResNet
SHORTCUTS = ("projection", "identity")


class _PadShortcut(nn.Module):
    """He et al.'s option A: identity, subsampled by the stride, channels zero-padded to the block's width (no weights)."""

    def __init__(self, stride: int, extra: int):
        super().__init__()
        self.stride, self.extra = stride, extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str = "projection"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "identity" and planes >= in_planes:
                self.shortcut = _PadShortcut(stride, planes - in_planes)
            else:
                # projection shortcut (option B): works for any width change (a narrowing stage needs it: option A
                # can only pad)
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        # activation modules (not F.relu) so that hooks can see them: NWOT reads every activation's input
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet: a 3x3 stem and three stages of basic blocks (ResNet-20 = depths 3,3,3)."""

    def __init__(self, depths, widths, num_classes: int = 10, in_chans: int = 3, shortcut: str = "projection"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU()
        stages, in_planes = [], widths[0]
        for i, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                blocks.append(_BasicBlock(in_planes, width, 2 if (i > 0 and j == 0) else 1, shortcut))
                in_planes = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.act1(self.bn1(self.conv1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def resnet_cifar(
    depth1: int, depth2: int, depth3: int, width1: int = 16, width2: int = 32, width3: int = 64,
    shortcut: str = "projection", *, num_classes: int = 10, in_chans: int = 3,
) -> nn.Module:
    """``shortcut``: where a block changes resolution or width, a 1x1 projection (default; configs without the key keep
    it and their ids) or He et al.'s original identity with zero-padded channels ('identity': the ResNet-20 of the
    paper, which distils about a point better than the projection version; a narrowing block still projects)."""
    if shortcut not in SHORTCUTS:
        raise SpaceError(f"resnet_cifar shortcut must be one of {', '.join(SHORTCUTS)}, not {shortcut!r}; fix the space or candidate.")
    return CifarResNet((depth1, depth2, depth3), (width1, width2, width3), num_classes, in_chans, shortcut)


# --------------------------------------------------------------------------- timm ResNet
def resnet_timm(
    depth1: int, depth2: int, depth3: int, depth4: int, width_mult: float = 1.0, block: str = "basic",
    stem: str = "", *, num_classes: int = 1000, in_chans: int = 3,
) -> nn.Module:
    """timm's ImageNet ResNet with per-stage depth, a width multiplier and basic/bottleneck blocks."""
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    if block not in ("basic", "bottleneck"):
        raise SpaceError(f"resnet_timm block must be 'basic' or 'bottleneck', not {block!r}; fix the space or candidate.")
    channels = tuple(max(8, int(round(c * width_mult / 8)) * 8) for c in (64, 128, 256, 512))
    return ResNet(
        block=BasicBlock if block == "basic" else Bottleneck,
        layers=(depth1, depth2, depth3, depth4),
        channels=channels,
        stem_width=channels[0] if stem == "" else max(8, channels[0] // 2),
        stem_type=stem,
        num_classes=num_classes,
        in_chans=in_chans,
    )


# --------------------------------------------------------------------------- timm MobileNetV3
# OFA's MobileNetV3-Large skeleton: (channels, first stride, squeeze-excite, activation) per stage.
_MBV3_STAGES = ((24, 2, False, "nre"), (40, 2, True, "nre"), (80, 2, False, ""), (112, 1, True, ""), (160, 2, True, ""))


def mobilenetv3(
    depth1: int = 2, depth2: int = 3, depth3: int = 4, depth4: int = 3, depth5: int = 3,
    kernel1: int = 3, kernel2: int = 5, kernel3: int = 3, kernel4: int = 3, kernel5: int = 5,
    expand1: int = 4, expand2: int = 3, expand3: int = 6, expand4: int = 6, expand5: int = 6,
    width_mult: float = 1.0, *, num_classes: int = 1000, in_chans: int = 3,
) -> nn.Module:
    """Once-for-All-style MobileNetV3: elastic depth, kernel and expansion per stage, built by timm."""
    from functools import partial

    from timm.layers import get_act_layer
    from timm.models._efficientnet_blocks import SqueezeExcite
    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.mobilenetv3 import MobileNetV3

    depths = (depth1, depth2, depth3, depth4, depth5)
    kernels = (kernel1, kernel2, kernel3, kernel4, kernel5)
    expands = (expand1, expand2, expand3, expand4, expand5)
    arch_def = [["ds_r1_k3_s1_e1_c16_nre"]]
    for (chs, stride, se, act), d, k, e in zip(_MBV3_STAGES, depths, kernels, expands):
        suffix = ("_se0.25" if se else "") + (f"_{act}" if act else "")
        stage = [f"ir_r1_k{k}_s{stride}_e{e}_c{chs}{suffix}"]
        if d > 1:
            stage.append(f"ir_r{d - 1}_k{k}_s1_e{e}_c{chs}{suffix}")
        arch_def.append(stage)
    arch_def.append(["cn_r1_k1_s1_c960"])
    return MobileNetV3(
        block_args=decode_arch_def(arch_def),
        num_features=1280,
        stem_size=16,
        fix_stem=False,
        round_chs_fn=partial(round_channels, multiplier=width_mult),
        act_layer=get_act_layer("hard_swish"),
        se_layer=partial(
            SqueezeExcite,
            gate_layer="hard_sigmoid",
            force_act_layer=nn.ReLU,
            rd_round_fn=round_channels,
        ),
        num_classes=num_classes,
        in_chans=in_chans,
    )


# --------------------------------------------------------------------------- existing timm models
def timm(model: str, *, num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    """Any architecture timm knows, built untrained (students are distilled from scratch)."""
    import timm as _timm

    return _timm.create_model(model, pretrained=False, num_classes=num_classes, in_chans=in_chans)


# --------------------------------------------------------------------------- NAS-Bench-201
# Dong & Yang, "NAS-Bench-201" (ICLR 2020): a 4-node cell, 6 edges, 5 ops → 5⁶ = 15,625 cells.
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NB201_EDGES = ("edge_1_0", "edge_2_0", "edge_2_1", "edge_3_0", "edge_3_1", "edge_3_2")  # edge_<to>_<from>


def nb201_arch_str(config: dict) -> str:
    """The benchmark's standard encoding, e.g. ``|nor_conv_3x3~0|+|skip_connect~0|none~1|+|...|``."""
    nodes = []
    for to in (1, 2, 3):
        nodes.append("|" + "|".join(f"{config[f'edge_{to}_{src}']}~{src}" for src in range(to)) + "|")
    return "+".join(nodes)


def nb201_config(arch_str: str) -> dict:
    """Inverse of :func:`nb201_arch_str`: the candidate config of an encoded cell."""
    config: dict = {"family": "nasbench201"}
    for to, node in enumerate(arch_str.strip().split("+"), start=1):
        for item in filter(None, node.split("|")):
            op, src = item.split("~")
            config[f"edge_{to}_{src}"] = op
    return config


class _ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int):
        super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out))


class _Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def _nb201_op(name: str, channels: int) -> nn.Module:
    if name == "none":
        return _Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return _ReLUConvBN(channels, channels, 1, 1)
    if name == "nor_conv_3x3":
        return _ReLUConvBN(channels, channels, 3, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    raise SpaceError(f"Unknown NAS-Bench-201 op {name!r}; use one of {', '.join(NB201_OPS)}.")


class _NB201Cell(nn.Module):
    def __init__(self, ops: dict[str, str], channels: int):
        super().__init__()
        self.edges = nn.ModuleDict({edge: _nb201_op(ops[edge], channels) for edge in NB201_EDGES})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for to in (1, 2, 3):
            nodes.append(sum(self.edges[f"edge_{to}_{src}"](nodes[src]) for src in range(to)))
        return nodes[3]


class _NB201Reduction(nn.Module):
    """NAS-Bench-201's residual reduction block between stages (stride 2, channels doubled)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_a = _ReLUConvBN(c_in, c_out, 3, 2)
        self.conv_b = _ReLUConvBN(c_out, c_out, 3, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NasBench201(nn.Module):
    """The NAS-Bench-201 macro skeleton: stem, 3 stages of N cells (C, 2C, 4C) joined by reduction blocks."""

    def __init__(self, ops: dict[str, str], channels: int = 16, cells_per_stage: int = 5, num_classes: int = 10,
                 in_chans: int = 3):
        super().__init__()
        self.arch_str = nb201_arch_str(ops)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))
        layers, c = [], channels
        for stage in range(3):
            if stage:
                layers.append(_NB201Reduction(c, c * 2))
                c *= 2
            layers.extend(_NB201Cell(ops, c) for _ in range(cells_per_stage))
        self.cells = nn.Sequential(*layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())
        self.num_features = c
        self.classifier = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.lastact(self.cells(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def nasbench201(
    edge_1_0: str, edge_2_0: str, edge_2_1: str, edge_3_0: str, edge_3_1: str, edge_3_2: str,
    channels: int = 16, cells_per_stage: int = 5, *, num_classes: int = 10, in_chans: int = 3,
) -> nn.Module:
    ops = dict(zip(NB201_EDGES, (edge_1_0, edge_2_0, edge_2_1, edge_3_0, edge_3_1, edge_3_2)))
    return NasBench201(ops, channels, cells_per_stage, num_classes, in_chans)


# --------------------------------------------------------------------------- NNI model spaces
def nni(space: str, *, num_classes: int = 10, in_chans: int = 3, **choices) -> nn.Module:
    """A candidate of an NNI model space (``space``: 'nni:NasBench201' or 'nni:package.module:attr'), frozen by NNI;
    the other keys are the space's choice labels (kdsearch.spaces.nni_spaces, the optional nni extra)."""
    from kdsearch.spaces.nni_spaces import freeze

    return freeze(space, choices, num_classes=num_classes, in_chans=in_chans)


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


def _half(size: int) -> int:
    return (size + 1) // 2  # a 3x3 (or kxk) convolution with stride 2 and padding k//2


def _resnet_cifar_keys(config: dict, input_shape: tuple) -> list:
    c, h = input_shape[0], input_shape[1]
    widths = (config.get("width1", 16), config.get("width2", 32), config.get("width3", 64))
    keys = [("conv1", c, widths[0], h), ("bn1", widths[0], h), ("act1", widths[0], h)]
    in_planes = widths[0]
    for i, width in enumerate(widths):
        for j in range(config[f"depth{i + 1}"]):
            stride = 2 if (i > 0 and j == 0) else 1
            padded = config.get("shortcut") == "identity" and (stride != 1 or in_planes != width) and width >= in_planes
            keys.append(("block_pad" if padded else "block", in_planes, width, stride, h))
            h = _half(h) if stride == 2 else h
            in_planes = width
    return keys + [("fc", in_planes)]


def _mobilenetv3_keys(config: dict, input_shape: tuple) -> list:
    defaults = {k: p.default for k, p in inspect.signature(mobilenetv3).parameters.items()}
    cfg = {**defaults, **config}
    wm, h = cfg["width_mult"], _half(input_shape[1])  # the stem has stride 2
    keys = [("stem", input_shape[0], wm, input_shape[1]), ("bn1", wm, h), ("ds", wm, h)]
    for s, (_, stride, _, _) in enumerate(_MBV3_STAGES, start=1):
        k, e = cfg[f"kernel{s}"], cfg[f"expand{s}"]
        for j in range(cfg[f"depth{s}"]):
            keys.append(("ir", s, j == 0, wm, k, e, h))
            h = _half(h) if (j == 0 and stride == 2) else h
    return keys + [("cn", wm, h), ("pool", wm, h), ("conv_head", wm), ("norm_head", wm), ("act2", wm), ("flatten", wm),
                   ("classifier", wm)]


def _nasbench201_keys(config: dict, input_shape: tuple) -> list:
    c, h = config.get("channels", 16), input_shape[1]
    ops = tuple(config[e] for e in NB201_EDGES)
    keys = [("stem_conv", input_shape[0], c, h), ("stem_bn", c, h)]
    for stage in range(3):
        if stage:
            keys.append(("reduction", c, h))
            c, h = c * 2, _half(h)
        keys.extend(("cell", ops, c, h) for _ in range(config.get("cells_per_stage", 5)))
    return keys + [("last_bn", c, h), ("last_relu", c, h), ("classifier", c)]


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


def _build(config: dict, num_classes: int, in_chans: int) -> nn.Module:
    """A space's own config (already valid), built by its family's builder."""
    keys = {k: v for k, v in config.items() if k != "family"}
    return get_family(config["family"])(**keys, num_classes=num_classes, in_chans=in_chans)


def _nested(space, num_classes: int, in_chans: int) -> nn.Module:
    return _build(largest_config(space), num_classes, in_chans)


def _same_name(name: str, config: dict) -> str:
    return name


def _nb201_supernet(space, num_classes: int, in_chans: int) -> nn.Module:
    """The NAS-Bench-201 skeleton with every op on every edge (each op keeps its own weights, as in the benchmark's
    weight-sharing baselines)."""
    model = _build(space.config({edge: "nor_conv_3x3" for edge in NB201_EDGES}), num_classes, in_chans)
    for cell in model.cells:
        if hasattr(cell, "edges"):
            channels = cell.edges[NB201_EDGES[0]][1].in_channels
            cell.edges = nn.ModuleDict({edge: nn.ModuleDict({op: _nb201_op(op, channels) for op in NB201_OPS})
                                        for edge in NB201_EDGES})
    return model


def _nb201_source(name: str, config: dict) -> str:
    parts = name.split(".")
    if "edges" in parts:  # cells.<i>.edges.<edge>.<rest> → cells.<i>.edges.<edge>.<op>.<rest>
        at = parts.index("edges") + 1
        parts.insert(at + 1, config[parts[at]])
    return ".".join(parts)


# --------------------------------------------------------------------------- the registry: one entry per family
NESTED = SharingRule(_nested, _same_name)  # a subnet's tensors are cuts of the same-named supernet tensors
register_family(resnet_cifar, block_keys=_resnet_cifar_keys, sharing=NESTED)
register_family(resnet_timm)
register_family(mobilenetv3, block_keys=_mobilenetv3_keys, sharing=NESTED)
register_family(timm)
register_family(nasbench201, block_keys=_nasbench201_keys, sharing=SharingRule(_nb201_supernet, _nb201_source))
register_family(nni)
