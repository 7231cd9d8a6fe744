"""The training loop that teacher preparation and distillation share.

Plain SGD/AdamW with warm-up + cosine, per-batch augmentation on the device, an atomic checkpoint
after every epoch (a killed run resumes from the last finished epoch), and a NaN/inf guard.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdsearch._util import atomic_path
from kdsearch.data import Task
from kdsearch.taps import as_logits


class TrainingDiverged(RuntimeError):
    """Loss became NaN or infinite; the candidate is marked failed, the search goes on."""


@dataclass
class Recipe:
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.05
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    accuracy: float
    epochs: int
    seconds: float
    history: list[dict] = field(default_factory=list)


# loss(student_logits, labels, images) -> scalar; teacher-aware losses close over the teacher.
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, *, device: torch.device | str = "cpu", batch_size: int = 256) -> float:
    """Top-1 accuracy on the task's validation split."""
    model.eval()
    correct = total = 0
    for x, y in task.batches("val", batch_size, device=device):
        correct += int((as_logits(model(x)).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BN and biases
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def fit(
    model: nn.Module,
    task: Task,
    recipe: Recipe,
    *,
    loss_fn: LossFn | None = None,
    device: torch.device | str = "cpu",
    checkpoint: str | Path | None = None,
    progress: bool = False,
    desc: str = "training",
) -> TrainResult:
    """Train ``model`` in place; resumes from ``checkpoint`` when it holds finished epochs."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    model.to(device)
    loss_fn = loss_fn or (lambda logits, y, _x: F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing))
    optimizer = _optimizer(model, recipe)
    steps_per_epoch = max(1, len(task.train_labels) // recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    # short runs (smoke tests, quick searches) must not spend most of their steps warming up
    warmup_steps = int(min(recipe.warmup_epochs, recipe.epochs / 5) * steps_per_epoch)
    start_epoch, history = 0, []
    checkpoint = Path(checkpoint) if checkpoint else None
    if checkpoint and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
    began = time.perf_counter()
    bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, desc=desc, disable=None if progress else True, leave=False)
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, recipe.epochs):
        model.train()
        seen, loss_sum, epoch_start = 0, 0.0, time.perf_counter()
        batches = task.batches(
            "train", recipe.batch_size, shuffle=True, augment=recipe.augment,
            seed=recipe.seed * 1000 + epoch, device=device, drop_last=True,
        )
        for x, y in batches:
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, warmup_steps, recipe.lr)
            logits = as_logits(model(x))
            loss = loss_fn(logits, y, x)
            if not torch.isfinite(loss):
                bar.close()
                raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
            loss_sum += loss.detach() * len(y)
            step += 1
            bar.update(1)
        accuracy = evaluate(model, task, device=device)
        elapsed = time.perf_counter() - epoch_start
        history.append(
            {"epoch": epoch + 1, "loss": float(loss_sum) / max(seen, 1), "val_accuracy": accuracy, "img_per_s": seen / elapsed}
        )
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", acc=f"{accuracy:.3f}")
        if checkpoint:
            with atomic_path(checkpoint) as tmp:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "history": history}, tmp)
    bar.close()
    accuracy = history[-1]["val_accuracy"] if history else evaluate(model, task, device=device)
    return TrainResult(accuracy=accuracy, epochs=recipe.epochs, seconds=time.perf_counter() - began, history=history)
