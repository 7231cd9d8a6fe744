"""Feature taps shared by teacher, proxies and losses: pre-pool map, pre-logits vector and logits.

Models that follow timm's contract (``forward_features`` / ``forward_head`` / ``get_classifier``)
give all three exactly. Any other ``nn.Module`` is read through a hook on its last ``nn.Linear``
(its input is the pre-logits vector). Compiled files (TorchScript, torch.export) only give logits,
which then stand in for the features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from kdsearch.exceptions import ModelOutputError


@dataclass
class Taps:
    prepool: torch.Tensor  # (B, C, H, W), (B, tokens, D) or (B, D)
    prelogits: torch.Tensor  # (B, D): the classifier's input
    logits: torch.Tensor  # (B, num_classes)
    exact: bool  # False when features had to be approximated by logits
    # one transformer layer's queries, keys and values, heads concatenated: 3 × (B, tokens, heads·head_dim) and the
    # layer's head count; only when asked for (forward_taps(..., attention_layer=i)), for the relation losses
    attention: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    attention_heads: int = 0


def attention_blocks(model: nn.Module) -> list[nn.Module] | None:
    """The model's transformer layers whose attention has a fused ``qkv`` projection and a head count (timm's ViT and
    DeiT, kdsearch's vit family); None for any other model."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
        return None
    ok = all(isinstance(getattr(getattr(b, "attn", None), "qkv", None), nn.Linear)
             and isinstance(getattr(b.attn, "num_heads", None), int) for b in blocks)
    return list(blocks) if ok else None


def as_logits(output) -> torch.Tensor:
    """Models may return tuples or dicts (aux heads, distillation tokens): take the main logits."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        for key in ("logits", "out", "output"):
            if key in output:
                return as_logits(output[key])
        return as_logits(next(iter(output.values())))
    if isinstance(output, (tuple, list)):
        return as_logits(output[0])
    raise ModelOutputError(
        f"The model returned a {type(output).__name__}, from which no logits can be read; make it return a tensor of "
        "logits, or a tuple, list or dict whose first item (or 'logits' entry) is one."
    )


def last_linear(model: nn.Module) -> tuple[str, nn.Linear] | None:
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    return found


def classifier_of(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
            return head
    found = last_linear(model)
    return found[1] if found else None


def forward_taps(model: nn.Module, x: torch.Tensor, attention_layer: int | None = None) -> Taps:
    """The model's taps on ``x``; with ``attention_layer`` (an index into its transformer layers, -1 the last) also
    that layer's queries, keys and values (``Taps.attention``)."""
    if attention_layer is None:
        return _forward_taps(model, x)
    blocks = attention_blocks(model)
    if blocks is None:
        raise ModelOutputError(f"{type(model).__name__} has no transformer layers with a fused qkv projection, so its "
                               "attention cannot be read; use a logit or feature loss for it.")
    if not -len(blocks) <= attention_layer < len(blocks):
        raise ModelOutputError(f"Layer {attention_layer} is out of range for a transformer of {len(blocks)} layers; "
                               f"choose one in {-len(blocks)}..{len(blocks) - 1}.")
    attn = blocks[attention_layer].attn
    captured = {}
    handle = attn.qkv.register_forward_hook(lambda _m, _i, out: captured.__setitem__("qkv", out))
    try:
        taps = _forward_taps(model, x)
    finally:
        handle.remove()
    taps.attention = tuple(captured["qkv"].chunk(3, dim=-1))
    taps.attention_heads = attn.num_heads
    return taps


def _forward_taps(model: nn.Module, x: torch.Tensor) -> Taps:
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        feats = model.forward_features(x)
        if isinstance(feats, torch.Tensor):
            pre = model.forward_head(feats, pre_logits=True)
            head = classifier_of(model)
            logits = head(pre) if head is not None else model.forward_head(feats)
            return Taps(feats, pre.flatten(1), as_logits(logits), True)
    if isinstance(model, torch.jit.ScriptModule) or not any(isinstance(m, nn.Linear) for m in model.modules()):
        logits = as_logits(model(x))
        return Taps(logits, logits, logits, False)
    _, linear = last_linear(model)
    captured = {}
    handle = linear.register_forward_pre_hook(lambda _m, inputs: captured.__setitem__("pre", inputs[0]))
    try:
        logits = as_logits(model(x))
    finally:
        handle.remove()
    pre = captured.get("pre", logits).flatten(1)
    return Taps(pre, pre, logits, "pre" in captured)
