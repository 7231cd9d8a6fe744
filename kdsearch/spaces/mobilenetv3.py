"""Once-for-All's MobileNetV3 skeleton with elastic depth, kernel and expansion per stage, built by timm."""

from __future__ import annotations

import inspect

import torch.nn as nn

from kdsearch.exceptions import SpaceError
from kdsearch.spaces.family import NESTED, half, register_family

# timm builds MobileNetV3 from an architecture definition (``decode_arch_def``) whose pieces it keeps in private modules
# and exports nowhere public; this is the one place kdsearch reaches for them. Checked with timm 1.0.31;
# tests/test_spaces.py fails loudly when a release moves or changes them.
TIMM_BUILDER_CHECKED = "timm 1.0.31"


def timm_efficientnet_builder():
    """(SqueezeExcite, decode_arch_def, round_channels) of timm's EfficientNet builder; a timm that moved them is
    refused in one sentence."""
    import timm

    try:
        from timm.models._efficientnet_blocks import SqueezeExcite
        from timm.models._efficientnet_builder import decode_arch_def, round_channels
    except ImportError as exc:
        raise SpaceError(f"timm {timm.__version__} moved the EfficientNet builder the mobilenetv3 family uses ({exc}); "
                         f"install the timm it was checked with: pip install '{TIMM_BUILDER_CHECKED.replace(' ', '==')}'.") from None
    return SqueezeExcite, decode_arch_def, round_channels


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
    from timm.models.mobilenetv3 import MobileNetV3

    SqueezeExcite, decode_arch_def, round_channels = timm_efficientnet_builder()

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


def _mobilenetv3_keys(config: dict, input_shape: tuple) -> list:
    defaults = {k: p.default for k, p in inspect.signature(mobilenetv3).parameters.items()}
    cfg = {**defaults, **config}
    wm, h = cfg["width_mult"], half(input_shape[1])  # the stem has stride 2
    keys = [("stem", input_shape[0], wm, input_shape[1]), ("bn1", wm, h), ("ds", wm, h)]
    for s, (_, stride, _, _) in enumerate(_MBV3_STAGES, start=1):
        k, e = cfg[f"kernel{s}"], cfg[f"expand{s}"]
        for j in range(cfg[f"depth{s}"]):
            keys.append(("ir", s, j == 0, wm, k, e, h))
            h = half(h) if (j == 0 and stride == 2) else h
    return keys + [("cn", wm, h), ("pool", wm, h), ("conv_head", wm), ("norm_head", wm), ("act2", wm), ("flatten", wm),
                   ("classifier", wm)]



register_family(mobilenetv3, block_keys=_mobilenetv3_keys, sharing=NESTED)
