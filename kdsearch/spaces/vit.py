"""Vision transformers: timm's ``VisionTransformer`` with per-model depth, hidden size, heads and MLP ratio.

As in AutoDistil, the head dimension is fixed by the space (64 by default), so the attention width is
``heads × head_dim`` whatever the hidden size; ``head_dim: 0`` instead splits the hidden size over the heads (timm's
default, ViT's and DeiT's). Weight sharing (kdsearch.supernet) is AutoFormer's weight entanglement: every tensor of a
subnet is the first-k slice of the supernet's — patch embedding, position embedding, class token, norms, MLPs, and
Q/K/V as heads × head dimension (each of Q, K and V cut on its own). Depth is shared two ways, by the config's
``depth_rule``: ``even`` (AutoDistil/DynaBERT: a d-layer subnet uses the supernet's layers floor(i·L/d), spread over
its depth) or ``first`` (AutoFormer: the first d layers).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn

from kdsearch.exceptions import SpaceError
from kdsearch.spaces.family import NESTED, SharingRule, register_family
from kdsearch.taps import attention_blocks

DEPTH_RULES = ("even", "first")


def vit(
    depth: int, embed_dim: int, num_heads: int, mlp_ratio: float = 4.0, patch_size: int = 4, img_size: int = 32,
    head_dim: int = 64, depth_rule: str = "even", *, num_classes: int = 10, in_chans: int = 3,
) -> nn.Module:
    """A timm ViT (class token, learned position embedding, pre-norm blocks). ``img_size`` is the input size it is built
    for (find sets it to the task's); ``depth_rule`` only says how a supernet shares depth (the module is the same)."""
    from timm.layers import Attention
    from timm.models.vision_transformer import VisionTransformer

    check_vit(depth, embed_dim, num_heads, patch_size, img_size, head_dim, depth_rule)
    attention = attention_with_head_dim(head_dim) if head_dim else Attention
    model = VisionTransformer(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dim,
        depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, global_pool="token", attn_layer=attention,
    )
    return model


@functools.cache
def attention_with_head_dim(head_dim: int) -> type:
    """timm's Attention with a fixed head dimension (timm takes only a class for ``attn_layer``); one class per
    dimension, kept in this module's namespace so that a pickled model finds it."""
    from timm.layers import Attention

    def __init__(self, dim, num_heads=8, **kwargs):
        Attention.__init__(self, dim, num_heads, attn_head_dim=head_dim, **kwargs)

    name = f"AttentionHeadDim{head_dim}"
    cls = type(name, (Attention,), {"__init__": __init__, "__module__": __name__, "__qualname__": name})
    globals()[name] = cls
    return cls


def check_vit(depth: int, embed_dim: int, num_heads: int, patch_size: int, img_size: int, head_dim: int,
              depth_rule: str) -> None:
    """One sentence per bad value, naming the fix."""
    if depth < 1 or embed_dim < 1 or num_heads < 1:
        raise SpaceError(f"A vit needs depth, embed_dim and num_heads of at least 1, not {depth}, {embed_dim}, {num_heads}.")
    if not head_dim and embed_dim % num_heads:
        raise SpaceError(f"vit hidden size {embed_dim} is not divisible by its {num_heads} heads; with head_dim 0 the "
                         f"heads split the hidden size, so choose a hidden size that is a multiple of the heads, or "
                         f"fix head_dim (e.g. 64) in the space.")
    if img_size % patch_size:
        raise SpaceError(f"vit input size {img_size} px is not a multiple of its patch size {patch_size}; choose a patch "
                         f"size that divides it (e.g. {math.gcd(img_size, 4) or 1}) or resize the images.")
    if depth_rule not in DEPTH_RULES:
        raise SpaceError(f"vit depth_rule must be one of {', '.join(DEPTH_RULES)}, not {depth_rule!r}; fix the space.")


def check_vit_space(where: str, choices: dict, fixed: dict) -> None:
    """Every combination a space allows must build: checked at load, one sentence naming the fix."""
    def values(key, default):
        return choices.get(key, [fixed.get(key, default)])

    for key in ("depth", "embed_dim", "num_heads", "patch_size", "img_size", "head_dim"):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values(key, 1)):
            raise SpaceError(f"{where}: vit key {key!r} takes whole numbers; fix its values.")
    for head_dim in values("head_dim", 64):
        for embed_dim in values("embed_dim", 1):
            for heads in values("num_heads", 1):
                if not head_dim and embed_dim % heads:
                    raise SpaceError(f"{where}: hidden size {embed_dim} is not divisible by {heads} heads (head_dim 0 splits "
                                     f"the hidden size over the heads); list hidden sizes that are multiples of every "
                                     f"head count, or fix head_dim (e.g. 64).")
    for rule in values("depth_rule", "even"):
        if rule not in DEPTH_RULES:
            raise SpaceError(f"{where}: vit depth_rule must be one of {', '.join(DEPTH_RULES)}, not {rule!r}.")


def kept_layers(depth: int, supernet_depth: int, rule: str) -> list[int]:
    """The supernet layer each of a subnet's ``depth`` layers is cut from: AutoDistil's floor(i / (d/L)) spreads them
    over the supernet's depth (its last layer is never the supernet's first); AutoFormer's are the first d."""
    if rule == "first":
        return list(range(depth))
    return [math.floor(i * supernet_depth / depth) for i in range(depth)]


def _layer_name(name: str, layers: list[int]) -> str:
    """A subnet tensor's name in the network it is cut from: layer i of the subnet is layer ``layers[i]`` there."""
    if not name.startswith("blocks."):
        return name
    _, index, rest = name.split(".", 2)
    return f"blocks.{layers[int(index)]}.{rest}"


def _vit_source(name: str, config: dict, space) -> str:
    # called per tensor on every supernet step: the supernet's depth read directly, not through largest_config
    depth = max(space.choices["depth"]) if "depth" in space.choices else space.fixed["depth"]
    return _layer_name(name, kept_layers(config["depth"], depth, config.get("depth_rule", "even")))


def _vit_cut(name: str, source: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """Q, K and V are each cut to the subnet's heads × head_dim (fused in timm's one ``qkv`` layer, a plain leading
    slice would hand the subnet's K the supernet's Q rows); every other tensor takes the generic first-k cut (None)."""
    if not name.endswith("attn.qkv.weight") and not name.endswith("attn.qkv.bias"):
        return None
    width = shape[0] // 3
    parts = source.reshape(3, source.shape[0] // 3, *source.shape[1:])
    if parts.shape[1] < width or (source.dim() == 2 and source.shape[1] < shape[1]):
        raise SpaceError(f"A subnet's attention of {width} channels cannot be cut from the supernet's {parts.shape[1]}.")
    cut = parts[:, :width] if source.dim() == 1 else parts[:, :width, : shape[1]]
    return cut.reshape(shape)


def _head_dim(attn: nn.Module) -> int:
    return attn.qkv.out_features // 3 // attn.num_heads


@torch.no_grad()
def start_from_teacher(shared: nn.Module, teacher: nn.Module, config: dict) -> bool:
    """Load the supernet ``shared`` (the largest subnet, ``config``) with cuts of a ViT teacher's own weights, as
    AutoDistil starts its SuperLM from BERT: the teacher's layers spread over the supernet's depth, every tensor the
    first-k slice (Q/K/V per heads). Only for a teacher at least as large in every dimension, with the same patches,
    tokens, head dimension and classes; returns whether it did (False: the supernet keeps its random init)."""
    target = shared.state_dict()
    source = teacher.state_dict()
    blocks = attention_blocks(teacher)
    if blocks is None or attention_blocks(shared) is None or len(blocks) < len(shared.blocks):
        return False
    if _head_dim(blocks[0].attn) != _head_dim(shared.blocks[0].attn):
        return False  # heads of another width: a cut would split them
    layers = kept_layers(len(shared.blocks), len(blocks), config.get("depth_rule", "even"))
    cuts = {}
    for name, tensor in target.items():
        have = source.get(_layer_name(name, layers))
        if have is None or have.dim() != tensor.dim():
            return False
        if name.endswith("attn.qkv.weight") or name.endswith("attn.qkv.bias"):
            if have.shape[0] < tensor.shape[0] or (have.dim() == 2 and have.shape[1] < tensor.shape[1]):
                return False
            cuts[name] = _vit_cut(name, have, tensor.shape)
            continue
        token_dims = {1} if name == "pos_embed" else set()  # the same tokens, or the positions mean nothing
        if name == "patch_embed.proj.weight":
            token_dims = {1, 2, 3}  # the same input channels and patch size
        if any(a < b or (d in token_dims and a != b) for d, (a, b) in enumerate(zip(have.shape, tensor.shape))):
            return False
        if name.startswith("head.") and have.shape[0] != tensor.shape[0]:
            return False  # another label set
        cuts[name] = have[tuple(slice(0, n) for n in tensor.shape)]
    for name, tensor in target.items():
        tensor.copy_(cuts[name])
    return True


def _vit_keys(config: dict, input_shape: tuple) -> list:
    """Blocks for the latency lookup table: embedding, each encoder layer (all alike), final norm and head."""
    tokens = (input_shape[1] // config.get("patch_size", 4)) * (input_shape[2] // config.get("patch_size", 4)) + 1
    e, h = config["embed_dim"], config["num_heads"]
    d = config.get("head_dim", 64) or e // h
    layer = ("vit_block", e, h, d, config.get("mlp_ratio", 4.0), tokens)
    return [("patch_embed", input_shape[0], e, config.get("patch_size", 4), tokens), ("pos_drop",), ("patch_drop",),
            ("norm_pre",), *[layer] * config["depth"], ("norm", e, tokens), ("fc_norm",), ("head_drop",), ("head", e)]


VIT_SHARING = SharingRule(NESTED.build, _vit_source, cut=_vit_cut, from_teacher=start_from_teacher)
# DeiT's optimiser (AdamW, weight decay 0.05) at a learning rate for batch 64: with find's SGD at 0.05 a vit_cifar student
# distilled from ResNet-56 for 3 epochs on 5,000 CIFAR-10 JPEGs read 29.3 % against 33.4 % (benchmarks/transformer_students.py)
VIT_RECIPE = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05}
def _vit_params(config: dict, num_classes: int, in_chans: int) -> int:
    """timm's VisionTransformer as ``vit`` builds it: patch projection, class token, position embedding over the
    patches and the class token, pre-norm blocks (attention width = heads x head dim), final norm, linear head."""
    dim, heads, patch = config["embed_dim"], config["num_heads"], config.get("patch_size", 4)
    head_dim = config.get("head_dim", 64) or dim // heads
    tokens = (config.get("img_size", 32) // patch) ** 2 + 1
    width, hidden = heads * head_dim, int(dim * config.get("mlp_ratio", 4.0))
    block = 4 * dim + (dim * 3 * width + 3 * width) + (width * dim + dim) + (dim * hidden + hidden) + (hidden * dim + dim)
    embed = in_chans * patch * patch * dim + dim + dim + tokens * dim
    return embed + config["depth"] * block + 2 * dim + dim * num_classes + num_classes


register_family(vit, block_keys=_vit_keys, sharing=VIT_SHARING, check=check_vit_space, recipe=VIT_RECIPE, params=_vit_params)
