"""Distillation: train a student against a teacher with a registered loss.

``distill(student, teacher, task, recipe, loss="kd")`` trains in place; ``distill_student`` adds the
run-folder side (checkpoint every epoch, metrics.csv, model.safetensors + student.yaml, result.json)
that ``kdsearch find`` uses for its top-k and ``kdsearch distill`` for one student. Losses:
``kdsearch.distill.losses`` (kd, dkd, fitnet, diswot, cka, taid, pld, and ce as the no-KD baseline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from kdsearch._util import atomic_write_json, atomic_write_text
from kdsearch.data import Task
from kdsearch.distill.losses import DistillLoss, create_loss, list_losses, register_loss
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


def distill_student(
    config: dict,
    teacher: nn.Module,
    task: Task,
    out: str | Path,
    recipe: Recipe,
    *,
    loss: str = "kd",
    loss_options: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "distilling",
    extra: dict | None = None,
) -> dict:
    """Distil the candidate ``config`` into ``out``; resumes from ``out/checkpoint.pt``; returns result.json's content."""
    import json

    import yaml
    from safetensors.torch import save_model

    from kdsearch.spaces import create_model
    from kdsearch.training import distributed_context

    out = Path(out)
    result_path = out / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    student = create_model(config, num_classes=task.num_classes, in_chans=task.in_chans)
    loss_obj = create_loss(loss, **(loss_options or {}))
    result = distill(
        student, teacher, task, recipe, loss_obj, device=device, checkpoint=out / "checkpoint.pt",
        metrics_csv=out / "metrics.csv", progress=progress, desc=desc,
    )
    record = {
        "status": "distilled", "config": config, "val_accuracy": result.accuracy, "epochs": result.epochs,
        "seconds": result.seconds, "history": result.history, "recipe": recipe.to_dict(), "loss": loss_obj.config(),
        "world_size": result.world_size, **(extra or {}),
    }
    rank, _ = distributed_context()
    if rank == 0:
        tmp = out / ".model.tmp"
        save_model(student.to("cpu"), str(tmp))
        tmp.replace(out / "model.safetensors")
        meta = {
            "config": config, "num_classes": task.num_classes, "class_names": task.class_names,
            "input_shape": list(task.input_shape), "mean": list(task.mean), "std": list(task.std),
            "val_accuracy": result.accuracy, "loss": loss_obj.config(),
        }
        atomic_write_text(out / "student.yaml", yaml.safe_dump(meta, sort_keys=False))
        atomic_write_json(result_path, record)
        (out / "checkpoint.pt").unlink(missing_ok=True)
    return record


__all__ = ["DistillLoss", "Recipe", "create_loss", "distill", "distill_student", "list_losses", "register_loss"]
