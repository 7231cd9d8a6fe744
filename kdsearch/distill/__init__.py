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
from kdsearch.distill import relations as _relations  # noqa: F401  (registers minilm)
from kdsearch.distill.losses import LOSSES, DistillLoss, create_loss, list_losses, register_loss
from kdsearch.teacher.outputs import teacher_outputs
from kdsearch.training import Recipe, TrainResult, distributed_context, fit


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
    share_teacher_outputs: bool = True,
    outputs_root: str | Path | None = None,
    **fit_options: Any,
) -> TrainResult:
    """Distil ``teacher`` into ``student`` (in place) with ``loss``.

    ``share_teacher_outputs``: a loss that needs only the teacher's logits (kd, dkd, taid, ...) reads them from the
    shared cache (``kdsearch.teacher.teacher_outputs``: computed once for this teacher, data, seed and augmentation,
    then reused by every student); a loss that needs the teacher's features runs it live. ``result.teacher_source``
    says which. ``fit_options`` go to :func:`kdsearch.training.fit` (``stop_at_epoch``, ``val_teacher_logits``,
    ``on_epoch``)."""
    recipe = recipe or Recipe()
    loss_obj = create_loss(loss, **(loss_options or {})) if isinstance(loss, str) else loss
    outputs = None
    if share_teacher_outputs and teacher is not None and loss_obj.logits_only:
        _, world = distributed_context()
        outputs = teacher_outputs(teacher, task, recipe, torch.device(device), world_size=world, root=outputs_root)
    return fit(
        student, task, recipe, loss=loss_obj, teacher=teacher if loss_obj.uses_teacher else None, device=device,
        checkpoint=checkpoint, metrics_csv=metrics_csv, progress=progress, desc=desc, teacher_outputs=outputs,
        **fit_options,
    )


__all__ = ["LOSSES", "DistillLoss", "Recipe", "create_loss", "distill", "list_losses", "register_loss"]
