"""ResNets: He et al.'s CIFAR ResNet (elastic depth and width per stage, projection or identity shortcuts) and
timm's ImageNet ResNet with elastic depth and width."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdsearch.exceptions import SpaceError
from kdsearch.spaces.family import NESTED, half, register_family

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
            h = half(h) if stride == 2 else h
            in_planes = width
    return keys + [("fc", in_planes)]


def _resnet_cifar_params(config: dict, num_classes: int, in_chans: int) -> int:
    """CifarResNet's parameter count, layer by layer as the builder makes them (3x3 convolutions without bias)."""
    widths = (config.get("width1", 16), config.get("width2", 32), config.get("width3", 64))
    total, in_planes = in_chans * 9 * widths[0] + 2 * widths[0], widths[0]
    for i, width in enumerate(widths):
        for j in range(config[f"depth{i + 1}"]):
            stride = 2 if (i > 0 and j == 0) else 1
            total += in_planes * 9 * width + 9 * width * width + 4 * width
            if stride != 1 or in_planes != width:
                padded = config.get("shortcut") == "identity" and width >= in_planes
                total += 0 if padded else in_planes * width + 2 * width
            in_planes = width
    return total + in_planes * num_classes + num_classes


register_family(resnet_cifar, block_keys=_resnet_cifar_keys, sharing=NESTED, params=_resnet_cifar_params)
register_family(resnet_timm)
