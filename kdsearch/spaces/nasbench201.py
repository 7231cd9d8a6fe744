"""NAS-Bench-201 (Dong & Yang, ICLR 2020): its cell space, built as the benchmark builds it, and its weight sharing
(every op on every edge, each with its own weights)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdsearch.exceptions import SpaceError
from kdsearch.spaces.family import SharingRule, build_config, half, register_family

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


def _nasbench201_keys(config: dict, input_shape: tuple) -> list:
    c, h = config.get("channels", 16), input_shape[1]
    ops = tuple(config[e] for e in NB201_EDGES)
    keys = [("stem_conv", input_shape[0], c, h), ("stem_bn", c, h)]
    for stage in range(3):
        if stage:
            keys.append(("reduction", c, h))
            c, h = c * 2, half(h)
        keys.extend(("cell", ops, c, h) for _ in range(config.get("cells_per_stage", 5)))
    return keys + [("last_bn", c, h), ("last_relu", c, h), ("classifier", c)]



def _nb201_supernet(space, num_classes: int, in_chans: int) -> nn.Module:
    """The NAS-Bench-201 skeleton with every op on every edge (each op keeps its own weights, as in the benchmark's
    weight-sharing baselines)."""
    model = build_config(space.config({edge: "nor_conv_3x3" for edge in NB201_EDGES}), num_classes, in_chans)
    for cell in model.cells:
        if hasattr(cell, "edges"):
            channels = cell.edges[NB201_EDGES[0]][1].in_channels
            cell.edges = nn.ModuleDict({edge: nn.ModuleDict({op: _nb201_op(op, channels) for op in NB201_OPS})
                                        for edge in NB201_EDGES})
    return model


def _nb201_source(name: str, config: dict, space) -> str:
    parts = name.split(".")
    if "edges" in parts:  # cells.<i>.edges.<edge>.<rest> → cells.<i>.edges.<edge>.<op>.<rest>
        at = parts.index("edges") + 1
        parts.insert(at + 1, config[parts[at]])
    return ".".join(parts)



register_family(nasbench201, block_keys=_nasbench201_keys, sharing=SharingRule(_nb201_supernet, _nb201_source))
