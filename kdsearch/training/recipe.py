"""A training recipe (optimiser, schedule, augmentation, precision, restarts) and what follows from it alone:
the optimiser, the learning rate at a step, the memory format and autocast dtype, and each epoch's seed."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from kdsearch.exceptions import RecipeError

RECIPE_CHOICES = {"optimizer": ("sgd", "adamw"), "schedule": ("cosine", "step"), "amp": ("auto", "none", "bf16", "fp16"),
            "channels_last": ("auto", "on", "off")}


# The distillation recipe of find's students (and its supernets), apart from what the user chooses (epochs, batch
# size, seed).
STUDENT_RECIPE = {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4}


@dataclass
class Recipe:
    epochs: int = 10
    batch_size: int = 64  # per process under DDP
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.05
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step (×0.1 at 50 % and 75 %)
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0
    amp: str = "auto"  # auto (bf16/fp16 on CUDA, off on CPU) | none | bf16 | fp16
    channels_last: str = "auto"  # auto (= on: faster with cuDNN and oneDNN alike) | on | off
    compile: bool = False
    clip_grad_norm: float = 0.0  # 0 = off
    # Epochs at which the schedule starts again (its warm-up, then its decay to zero by the next restart): SGDR-style
    # segments, so that each rung of successive halving is a short complete schedule (kdsearch.pipeline.halving).
    restarts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for key, allowed in RECIPE_CHOICES.items():
            if getattr(self, key) not in allowed:
                raise RecipeError(f"Recipe {key} {getattr(self, key)!r} is not one of {', '.join(allowed)}; pick one of those.")
        for key in ("epochs", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise RecipeError(f"Recipe {key} must be at least 1 (got {getattr(self, key)}).")
        for key in ("lr", "weight_decay", "warmup_epochs", "clip_grad_norm"):
            if not getattr(self, key) >= 0:
                raise RecipeError(f"Recipe {key} must be zero or positive (got {getattr(self, key)}).")
        if not 0 <= self.label_smoothing < 1:
            raise RecipeError(f"Recipe label_smoothing must lie in [0, 1) (got {self.label_smoothing}).")
        object.__setattr__(self, "restarts", tuple(int(e) for e in self.restarts))
        if list(self.restarts) != sorted(set(self.restarts)) or any(not 0 < e < self.epochs for e in self.restarts):
            raise RecipeError(f"Recipe restarts must be increasing epochs between 1 and epochs - 1 = {self.epochs - 1} "
                              f"(got {list(self.restarts)}).")

    def to_dict(self) -> dict:
        record = asdict(self)
        if not self.restarts:  # absent = none, so the records of recipes without restarts stay as they were
            record.pop("restarts")
        else:
            record["restarts"] = list(self.restarts)
        return record

    def segments(self) -> list[tuple[int, int]]:
        """(first epoch, end epoch) of each part of the schedule: one without restarts."""
        edges = [0, *self.restarts, self.epochs]
        return list(zip(edges[:-1], edges[1:]))

    def lr_at_step(self, step: int, steps_per_epoch: int) -> float:
        """The learning rate of a step: linear warm-up, then cosine or step decay, within the step's segment."""
        for first, end in self.segments():
            if step < end * steps_per_epoch or end == self.epochs:
                total = (end - first) * steps_per_epoch
                warmup = int(min(self.warmup_epochs, (end - first) / 5) * steps_per_epoch)
                return lr_at(step - first * steps_per_epoch, total, warmup, self.lr, self.schedule)
        raise AssertionError("unreachable: the last segment ends at the last epoch")


def make_optimizer(params: list[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    decay = [p for p in params if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in params if p.requires_grad and p.ndim <= 1]  # no weight decay on BN and biases
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)


def lr_at(step: int, total: int, warmup: int, base: float, schedule: str = "cosine") -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "step":
        return base * (0.1 ** (int(progress >= 0.5) + int(progress >= 0.75)))
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


# torch 2.14.1's oneDNN crashes the process (segfault, "double free or corruption") in the backward pass of a
# strided 1x1 convolution in channels_last once its input is 48 px or more (found 2026-11-26: resnet_cifar's
# projection shortcut at 64 px; 32 and 40 px run fine; with oneDNN off it runs). timm ResNets downsample the same way.
CPU_CHANNELS_LAST_MAX_PX = 40


def memory_format_for(recipe: Recipe, device: torch.device | str | None = None,
                      input_shape: tuple[int, ...] | None = None) -> torch.memory_format:
    """channels_last unless the recipe turns it off: cuDNN's fast path on GPU, 1.3x on this CPU at 32 px. 'auto' on a
    CPU keeps it only for inputs (C, H, W) up to ``CPU_CHANNELS_LAST_MAX_PX`` (above, oneDNN's training path crashes)."""
    if recipe.channels_last == "off":
        return torch.contiguous_format
    if (recipe.channels_last == "auto" and device is not None and torch.device(device).type == "cpu"
            and input_shape is not None and max(input_shape[1:]) > CPU_CHANNELS_LAST_MAX_PX):
        return torch.contiguous_format
    return torch.channels_last


def amp_dtype_for(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or recipe.amp == "none":
        return None
    if recipe.amp == "fp16":
        return torch.float16
    if recipe.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16



def epoch_seed(recipe: Recipe, epoch: int) -> int:
    """The seed of an epoch's order and augmentation: a function of the recipe's seed and the epoch alone, so every
    student of a run sees the same views (and the teacher's logits for them can be shared: kdsearch.teacher.outputs)."""
    return recipe.seed * 1000 + epoch

