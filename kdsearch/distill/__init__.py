"""Distillation: train a student against a teacher with a registered loss.

``distill(student, teacher, task, recipe, loss="kd")`` trains in place, checkpointing every epoch
when given a path (``kdsearch.pipeline.distill_student`` adds the student folder around it). Losses:
``kdsearch.distill.losses``, one registry (``list_losses()``; ``ce`` is the no-KD baseline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from kdsearch.data import Task
from kdsearch.distill.losses import LOSSES, DistillLoss, create_loss, list_losses, register_loss
from kdsearch.training import Recipe, TrainResult, fit


def distill(
    student: nn.Module,
    teacher: nn.Module | None,
    task: Task,
    recipe: Recipe | None = None,
    loss: str | DistillLoss = "kd",
    *,
    loss_options: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    checkpoint: str | Path | None = None,
    metrics_csv: str | Path | None = None,
    progress: bool = False,
    desc: str = "distilling",
) -> TrainResult:
    recipe = recipe or Recipe()
    loss_obj = create_loss(loss, **(loss_options or {})) if isinstance(loss, str) else loss
    return fit(
        student, task, recipe, loss=loss_obj, teacher=teacher if loss_obj.uses_teacher else None, device=device,
        checkpoint=checkpoint, metrics_csv=metrics_csv, progress=progress, desc=desc,
    )


__all__ = ["LOSSES", "DistillLoss", "Recipe", "create_loss", "distill", "list_losses", "register_loss"]
