"""Self-attention relations (MiniLMv2) between two transformer layers of any widths and head counts: the math shared by
the minilm loss (kdsearch.distill.relations) and the transformer supernets' objective (kdsearch.supernet.train)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdsearch.exceptions import LossError


def relation_heads_for(requested: int, teacher_heads: int, widths: tuple[int, ...]) -> int:
    """``requested`` relation heads, or (0) the teacher's head count; when a width does not split into that many
    heads, the largest smaller count that splits all of them (MiniLMv2 needs equal heads on both sides)."""
    wanted = requested or teacher_heads
    if requested:
        for width in widths:
            if width % requested:
                raise LossError(f"--loss minilm: relation_heads={requested} does not divide the attention width {width}; "
                                f"choose a divisor of {math.gcd(*widths)} (or 0 for the teacher's head count).")
        return requested
    return max(a for a in range(1, wanted + 1) if all(w % a == 0 for w in widths))


def relation(x: torch.Tensor, heads: int) -> torch.Tensor:
    """log softmax(X Xᵀ / √d_r) per relation head: (B, tokens, width) → (B, heads, tokens, tokens)."""
    b, n, width = x.shape
    x = x.float().reshape(b, n, heads, width // heads).transpose(1, 2)
    return F.log_softmax(x @ x.transpose(-1, -2) / math.sqrt(width // heads), dim=-1)


def relation_kl(student: torch.Tensor, teacher: torch.Tensor, heads: int) -> torch.Tensor:
    """KL(teacher ‖ student) of one relation, averaged over batch, relation heads and tokens."""
    log_s, log_t = relation(student, heads), relation(teacher, heads)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def summed_scores(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Pre-softmax attention scores q_h k_hᵀ / √d summed over the layer's own heads: (B, tokens, tokens)."""
    b, n, width = q.shape
    d = width // heads
    q = q.float().reshape(b, n, heads, d).transpose(1, 2)
    k = k.float().reshape(b, n, heads, d).transpose(1, 2)
    return (q @ k.transpose(-1, -2) / math.sqrt(d)).sum(1)
