"""Distillation: train a student against the teacher's soft targets (Hinton et al. 2015).

loss = (1 − α)·CE(student, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T)), with T = 4, α = 0.9 by default.
Checkpoints after every epoch; an interrupted student resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdsearch.data import Task
from kdsearch.taps import as_logits
from kdsearch.training import Recipe, TrainResult, fit


@dataclass
class KDConfig:
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the KD term; CE gets 1 − alpha

    def to_dict(self) -> dict:
        return asdict(self)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, cfg: KDConfig) -> torch.Tensor:
    t = cfg.temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1), reduction="batchmean", log_target=True
    ) * (t * t)
    return (1.0 - cfg.alpha) * F.cross_entropy(student_logits, labels) + cfg.alpha * soft


def distill(
    student: nn.Module,
    teacher: nn.Module,
    task: Task,
    recipe: Recipe | None = None,
    kd: KDConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    checkpoint: str | Path | None = None,
    progress: bool = False,
    desc: str = "distilling",
) -> TrainResult:
    recipe = recipe or Recipe()
    kd = kd or KDConfig()
    teacher = teacher.to(device).eval()

    def loss_fn(logits, labels, images):
        with torch.no_grad():
            teacher_logits = as_logits(teacher(images))
        return kd_loss(logits, teacher_logits, labels, kd)

    return fit(student, task, recipe, loss_fn=loss_fn, device=device, checkpoint=checkpoint, progress=progress, desc=desc)


__all__ = ["KDConfig", "distill", "kd_loss"]
