"""Evaluation on the validation split (accuracy, the teacher's KD loss, logits) and the teacher-side helpers that
prepare a frozen teacher for fast inference (BatchNorm folding, class means)."""

from __future__ import annotations

import torch
import torch.nn as nn

from kdsearch.data import Task
from kdsearch.taps import as_logits, forward_taps


def evaluate(model: nn.Module, task: Task, *, device: torch.device | str = "cpu", batch_size: int = 256) -> float:
    """Top-1 accuracy on the task's validation split (inputs in the model's memory format; one read-back at the end)."""
    return evaluate_scores(model, task, device=device, batch_size=batch_size)["val_accuracy"]


VAL_KD_TEMPERATURE = 4.0


@torch.inference_mode()
def evaluate_scores(model: nn.Module, task: Task, *, device: torch.device | str = "cpu", batch_size: int = 256,
                    teacher_logits: torch.Tensor | None = None) -> dict[str, float]:
    """``val_accuracy`` on the validation split; with the teacher's validation logits (in the split's order) also
    ``val_kd_loss``: the mean KL divergence from the teacher at temperature ``VAL_KD_TEMPERATURE`` (x T^2)."""
    model.eval()
    channels_last = any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
                        for p in model.parameters())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    correct, total = torch.zeros((), dtype=torch.long, device=device), 0
    kl = torch.zeros((), dtype=torch.float64, device=device)
    t = VAL_KD_TEMPERATURE
    for x, y in task.batches("val", batch_size, device=device):
        logits = as_logits(model(x.contiguous(memory_format=fmt))).float()
        correct += (logits.argmax(1) == y).sum()
        if teacher_logits is not None:
            target = teacher_logits[total:total + len(y)].to(device=logits.device, dtype=torch.float32)
            kl += nn.functional.kl_div(nn.functional.log_softmax(logits / t, 1), nn.functional.log_softmax(target / t, 1),
                                       reduction="sum", log_target=True).double() * t * t
        total += len(y)
    scores = {"val_accuracy": int(correct) / max(total, 1)}
    if teacher_logits is not None:
        scores["val_kd_loss"] = float(kl) / max(total, 1)
    return scores


@torch.inference_mode()
def validation_logits(model: nn.Module, task: Task, *, device: torch.device | str = "cpu", batch_size: int = 256) -> torch.Tensor:
    """A (frozen) model's logits on the validation split, in its order, on ``device``."""
    model.eval()
    return torch.cat([as_logits(model(x)).float() for x, _ in task.batches("val", batch_size, device=device)])



@torch.no_grad()
def fold_batchnorm(teacher: nn.Module, probe: torch.Tensor) -> nn.Module:
    """Conv+BN folding (torch.fx) for an eval-mode teacher; the original when tracing fails or outputs differ."""
    from torch.fx.experimental.optimization import fuse

    try:
        fused = fuse(teacher)
        reference, candidate = as_logits(teacher(probe)), as_logits(fused(probe))
        scale = reference.abs().max().clamp_min(1.0)
        if torch.allclose(candidate, reference, atol=1e-3 * float(scale), rtol=1e-3):
            return fused.eval()
    except Exception:  # not symbolically traceable (data-dependent control flow): keep it as it is
        pass
    return teacher


@torch.no_grad()
def teacher_class_means(teacher: nn.Module, task: Task, device, amp_dtype=None) -> torch.Tensor:
    """(classes, features) mean of the teacher's pre-logit embedding over the un-augmented training set."""
    teacher.eval()
    sums, counts = None, torch.zeros(task.num_classes, device=device)
    for x, y in task.batches("train", 512, device=device):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            emb = forward_taps(teacher, x).prelogits.float()
        if sums is None:
            sums = torch.zeros(task.num_classes, emb.shape[1], device=device)
        sums.index_add_(0, y, emb)
        counts += torch.bincount(y, minlength=task.num_classes).float()
    return sums / counts.clamp(min=1)[:, None]


