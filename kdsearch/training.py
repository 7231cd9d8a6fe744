"""The training engine that teacher preparation and distillation share.

SGD or AdamW with linear warm-up then cosine or step decay; per-batch augmentation on the device;
on CUDA mixed precision (bf16, or fp16 with a grad scaler) and channels_last; optional
``torch.compile``; gradient clipping; a NaN/inf guard; DDP when launched under ``torchrun``
(gloo on CPU, NCCL on GPU). After every epoch an atomic checkpoint holds the model, the loss's own
weights (adapters) and state, optimiser, scaler, RNG states and history: a run killed at any point
resumes from the last finished epoch and continues exactly as it would have.
"""

from __future__ import annotations

import io
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from kdsearch._util import atomic_torch_save, atomic_write_text, read_resume_state
from kdsearch.data import Task
from kdsearch.exceptions import DistributedError, RecipeError, TrainingDiverged
from kdsearch.taps import Taps, as_logits, forward_taps

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


class CrossEntropyObjective(nn.Module):
    """The trainer's default objective (teacher preparation): cross-entropy on the labels.

    It honours the loss protocol the trainer expects (``uses_teacher``, ``setup``, ``forward(student_taps,
    teacher_taps, labels, epoch)``), so the engine needs nothing from the distillation losses.
    """

    name = "ce"
    uses_teacher = False
    uses_features = False

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def setup(self, student: Taps, teacher: Taps | None) -> None:
        pass

    def forward(self, student: Taps, teacher: Taps | None, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        return nn.functional.cross_entropy(student.logits.float(), labels, label_smoothing=self.label_smoothing)


@dataclass
class TrainResult:
    accuracy: float
    epochs: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    world_size: int = 1
    teacher_source: str = "none"  # "live", "shared outputs <key>" (kdsearch.teacher.outputs) or "none" (no teacher)


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


def distributed_context() -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun describes in the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def close_distributed() -> None:
    """Leave the process group at the end of a successful run.

    Without it gloo's worker threads outlive the interpreter and a rank can abort at exit
    ("terminate called without an active exception"), failing the whole torchrun job.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class _StudentStep(nn.Module):
    """Student and loss in one module, so DDP synchronises the loss's adapters too."""

    def __init__(self, model: nn.Module, loss: nn.Module):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, x, teacher: Taps | None, labels, epoch: int):
        taps = forward_taps(self.model, x)
        return self.loss(taps, teacher, labels, epoch), taps.logits


def _rng_state() -> dict:
    """RNG states as plain tensors and numbers, so checkpoints load with weights_only=True."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "python": (int(version), torch.tensor(py_state, dtype=torch.int64), py_gauss),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in py_state.tolist()), py_gauss))


def _write_metrics(path: Path, history: list[dict]) -> None:
    import pandas as pd

    buf = io.StringIO()
    pd.DataFrame(history).to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())


def epoch_seed(recipe: Recipe, epoch: int) -> int:
    """The seed of an epoch's order and augmentation: a function of the recipe's seed and the epoch alone, so every
    student of a run sees the same views (and the teacher's logits for them can be shared: kdsearch.teacher.outputs)."""
    return recipe.seed * 1000 + epoch


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


@dataclass
class _Session:
    """Everything one training run holds between its steps (built by ``_prepare``)."""

    model: nn.Module
    loss: nn.Module
    step_module: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    teacher: nn.Module | None
    teacher_outputs: Any  # kdsearch.teacher.TeacherOutputs (or anything with .lookup(epoch, device)), or None
    device: torch.device
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    rank: int
    world: int
    steps_per_epoch: int
    total_steps: int
    start_epoch: int = 0
    history: list[dict] = field(default_factory=list)


def fit(
    model: nn.Module,
    task: Task,
    recipe: Recipe,
    *,
    loss: nn.Module | None = None,
    teacher: nn.Module | None = None,
    device: torch.device | str = "cpu",
    checkpoint: str | Path | None = None,
    metrics_csv: str | Path | None = None,
    progress: bool = False,
    desc: str = "training",
    teacher_outputs: Any = None,
    stop_at_epoch: int | None = None,
    val_teacher_logits: torch.Tensor | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place with ``loss`` (default: cross-entropy); resumes from ``checkpoint``.

    ``teacher_outputs`` (``kdsearch.teacher.teacher_outputs``): the teacher's logits for every epoch's views,
    computed once; a loss that needs only the teacher's logits reads them instead of running the teacher.
    ``stop_at_epoch``: stop after that many epochs of ``recipe`` (its schedule unchanged: a later call with the same
    checkpoint continues exactly where this one stopped). ``val_teacher_logits``: the teacher's logits on the
    validation images, in their order; each epoch then also records ``val_kd_loss`` (KL divergence at temperature 4).
    ``on_epoch(record)``: called on rank 0 after each epoch's checkpoint is written (it may raise to stop training)."""
    from tqdm.auto import tqdm

    checkpoint = Path(checkpoint) if checkpoint else None
    run = _prepare(model, task, recipe, loss, teacher, torch.device(device), checkpoint, teacher_outputs)
    end = recipe.epochs if stop_at_epoch is None else min(recipe.epochs, int(stop_at_epoch))
    began = time.perf_counter()
    bar = tqdm(total=end * run.steps_per_epoch, initial=min(run.start_epoch, end) * run.steps_per_epoch, desc=desc,
               disable=None if progress and run.rank == 0 else True, leave=False)
    try:
        for epoch in range(run.start_epoch, end):
            seen, loss_sum, lr, elapsed = _train_epoch(run, task, recipe, epoch, bar)
            scores = evaluate_scores(model, task, device=run.device, teacher_logits=val_teacher_logits)
            run.history.append({
                "epoch": epoch + 1, "loss": loss_sum / max(seen, 1), **scores,
                "img_per_s": seen * run.world / elapsed, "lr": lr, "seconds": elapsed,
            })
            h = run.history[-1]
            accuracy = h["val_accuracy"]
            bar.set_postfix(loss=f"{h['loss']:.3f}", acc=f"{accuracy:.3f}", img_s=f"{h['img_per_s']:.0f}")
            if run.rank == 0:
                _save_checkpoint(run, recipe, epoch, checkpoint)
                if metrics_csv:
                    _write_metrics(Path(metrics_csv), run.history)
                if on_epoch is not None:
                    on_epoch(dict(h))
            if run.world > 1:
                dist.barrier()
    finally:
        bar.close()
    if run.world > 1:
        _check_ranks_agree(model, run.device)
    return _result(run, model, task, end, began)


def _result(run: _Session, model: nn.Module, task: Task, end: int, began: float) -> TrainResult:
    accuracy = run.history[-1]["val_accuracy"] if run.history else evaluate(model, task, device=run.device)
    source = "none" if run.teacher is None else "live"
    if run.teacher_outputs is not None:
        source = f"shared outputs {getattr(run.teacher_outputs, 'key', '')}".strip()
    return TrainResult(accuracy=accuracy, epochs=len(run.history) or end, seconds=time.perf_counter() - began, history=run.history,
                       world_size=run.world, teacher_source=source)


def _prepare(model, task: Task, recipe: Recipe, loss, teacher, device: torch.device, checkpoint: Path | None,
             teacher_outputs: Any = None) -> _Session:
    """Device, memory format, the loss's adapters, optimiser, resume state, DDP/compile wrapping, teacher shortcuts."""
    rank, world = distributed_context()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    loss = loss if loss is not None else CrossEntropyObjective(recipe.label_smoothing)
    uses_teacher = getattr(loss, "uses_teacher", False)
    if uses_teacher and teacher is None:
        raise RecipeError(f"The loss {getattr(loss, 'name', loss)!r} distils from a teacher; pass one, or use the 'ce' loss.")
    amp_dtype = amp_dtype_for(recipe, device)
    memory_format = memory_format_for(recipe, device, task.input_shape)
    model.to(device=device, memory_format=memory_format)
    if teacher is not None:
        teacher.to(device=device, memory_format=memory_format).eval()
    steps_per_epoch = max(1, len(task.train_labels) // world // recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    if hasattr(loss, "params") and hasattr(loss.params, "total_steps"):
        loss.params.total_steps = total_steps
    probe_x = task.sample_batch(min(8, len(task.train_labels)))[0].to(device=device, memory_format=memory_format)
    with torch.no_grad():
        model.eval()
        loss.setup(forward_taps(model, probe_x), forward_taps(teacher.eval(), probe_x) if teacher is not None else None)
    if getattr(loss, "uses_class_means", False):
        loss.set_class_means(teacher_class_means(teacher, task, device, amp_dtype))
    loss.to(device)
    step_module: nn.Module = _StudentStep(model, loss)
    optimizer = make_optimizer(list(step_module.parameters()), recipe)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    run = _Session(
        model=model, loss=loss, step_module=step_module, optimizer=optimizer, scaler=scaler, teacher=teacher,
        teacher_outputs=None, device=device, amp_dtype=amp_dtype, memory_format=memory_format, rank=rank, world=world,
        steps_per_epoch=steps_per_epoch, total_steps=total_steps,
    )
    if checkpoint and (state := read_resume_state(checkpoint, run.device)) is not None:
        _load_checkpoint(run, state)
    if world > 1:
        run.step_module = nn.parallel.DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None)
    if recipe.compile:
        run.step_module = torch.compile(run.step_module)
    if getattr(loss, "logits_only", False):
        if teacher_outputs is not None:  # the teacher never runs during the steps: nothing to fold
            run.teacher_outputs = teacher_outputs
        else:  # a frozen teacher whose features are not needed runs with BatchNorm folded into its convolutions
            run.teacher = fold_batchnorm(teacher, probe_x).to(memory_format=memory_format)
    return run


FINITE_CHECK_EVERY = 50


def _train_epoch(run: _Session, task: Task, recipe: Recipe, epoch: int, bar) -> tuple[int, float, float, float]:
    """One epoch of steps; returns (images seen, summed loss, last learning rate, seconds)."""
    run.step_module.train()
    if run.teacher is not None:
        run.teacher.eval()
    uses_teacher = getattr(run.loss, "uses_teacher", False)
    seen, loss_sum, lr, epoch_start = 0, torch.zeros((), device=run.device), recipe.lr, time.perf_counter()
    nonfinite = torch.zeros((), dtype=torch.bool, device=run.device)
    step = epoch * run.steps_per_epoch
    batches = task.batches(
        "train", recipe.batch_size, shuffle=True, augment=recipe.augment, seed=epoch_seed(recipe, epoch),
        device=run.device, drop_last=True, rank=run.rank, world_size=run.world, with_index=True,
    )
    lookup = run.teacher_outputs.lookup(epoch, run.device) if run.teacher_outputs is not None else None
    for x, y, idx in batches:
        x = x.contiguous(memory_format=run.memory_format)
        lr = recipe.lr_at_step(step, run.steps_per_epoch)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
            if lookup is not None:
                t_logits = lookup(idx)
                teacher_taps = Taps(t_logits, t_logits, t_logits, False)
            elif uses_teacher:
                with torch.no_grad():
                    teacher_taps = forward_taps(run.teacher, x)
            else:
                teacher_taps = None
            value, _ = run.step_module(x, teacher_taps, y, epoch)
        # Read back every FINITE_CHECK_EVERY steps, not every step: a per-step read syncs the GPU and starves it.
        nonfinite |= ~torch.isfinite(value.detach())
        if (step + 1) % FINITE_CHECK_EVERY == 0:
            _raise_if_diverged(nonfinite, epoch)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(value).backward()
        if recipe.clip_grad_norm > 0:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(run.step_module.parameters(), recipe.clip_grad_norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        seen += len(y)
        loss_sum += value.detach() * len(y)
        step += 1
        bar.update(1)
    _raise_if_diverged(nonfinite, epoch)
    return seen, float(loss_sum), lr, time.perf_counter() - epoch_start


def _raise_if_diverged(nonfinite: torch.Tensor, epoch: int) -> None:
    if bool(nonfinite):
        raise TrainingDiverged(
            f"Training diverged: the loss became nan or inf at epoch {epoch + 1}; lower the learning rate "
            "(--lr), clip gradients (--clip-grad-norm 1) or turn mixed precision off (--amp none)."
        )


def _save_checkpoint(run: _Session, recipe: Recipe, epoch: int, checkpoint: Path | None) -> None:
    if not checkpoint:
        return
    atomic_torch_save({
        "model": run.model.state_dict(), "loss": run.loss.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(), "rng": _rng_state(), "epoch": epoch + 1, "history": run.history,
        "recipe": recipe.to_dict(),
    }, checkpoint)


def _load_checkpoint(run: _Session, state: dict) -> None:
    run.model.load_state_dict(state["model"])
    run.loss.load_state_dict(state["loss"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])
    run.start_epoch, run.history = int(state["epoch"]), list(state["history"])


@torch.no_grad()
def _check_ranks_agree(model: nn.Module, device: torch.device) -> None:
    """DDP keeps replicas identical; a mismatch means a broken setup, not a result to keep."""
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().view(1).to(device)
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    if any(not torch.allclose(g, gathered[0], rtol=1e-6, atol=1e-6) for g in gathered):
        raise DistributedError(
            f"DDP replicas diverged (parameter checksums {[float(g) for g in gathered]}); start every rank with the same "
            "command, data and kdsearch version."
        )
