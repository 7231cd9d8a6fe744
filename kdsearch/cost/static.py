from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 1) -> int:
    """FLOPs of one forward pass (a multiply-add counts 2), as torch's own counter reports them."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(batch_size, *input_shape, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())
