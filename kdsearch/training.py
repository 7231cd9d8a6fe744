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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from kdsearch._util import atomic_path, atomic_write_text
from kdsearch.data import Task
from kdsearch.taps import Taps, as_logits, forward_taps


class TrainingDiverged(RuntimeError):
    """Loss became NaN or infinite; the candidate is marked failed, the search goes on."""


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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    accuracy: float
    epochs: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    world_size: int = 1


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, *, device: torch.device | str = "cpu", batch_size: int = 256) -> float:
    """Top-1 accuracy on the task's validation split."""
    model.eval()
    correct = total = 0
    for x, y in task.batches("val", batch_size, device=device):
        correct += int((as_logits(model(x)).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def _optimizer(params: list[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    decay = [p for p in params if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in params if p.requires_grad and p.ndim <= 1]  # no weight decay on BN and biases
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {recipe.optimizer!r}")


def lr_at(step: int, total: int, warmup: int, base: float, schedule: str = "cosine") -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "step":
        return base * (0.1 ** (int(progress >= 0.5) + int(progress >= 0.75)))
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def _amp_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
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


@torch.no_grad()
def _fold_batchnorm(teacher: nn.Module, probe: torch.Tensor) -> nn.Module:
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
def _cache_teacher_logits(teacher: nn.Module, task: Task, device, amp_dtype) -> torch.Tensor:
    teacher.eval()
    out = []
    for x, _ in task.batches("train", 512, device=device):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out.append(as_logits(teacher(x)).float())
    return torch.cat(out)


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
) -> TrainResult:
    """Train ``model`` in place with ``loss`` (default: cross-entropy); resumes from ``checkpoint``."""
    from tqdm.auto import tqdm

    from kdsearch.distill.losses import create_loss

    device = torch.device(device)
    rank, world = distributed_context()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    loss = loss if loss is not None else create_loss("ce", label_smoothing=recipe.label_smoothing)
    uses_teacher = getattr(loss, "uses_teacher", False)
    if uses_teacher and teacher is None:
        raise ValueError(f"loss {getattr(loss, 'name', loss)!r} needs a teacher")
    amp_dtype = _amp_dtype(recipe, device)
    # channels_last: cuDNN's fast path on GPU; on CPU oneDNN gained 1.25x in a bare loop (not measurable in fit yet)
    channels_last = recipe.channels_last in ("on", "auto")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    if teacher is not None:
        teacher.to(device=device, memory_format=memory_format).eval()

    steps_per_epoch = max(1, len(task.train_labels) // world // recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    if hasattr(loss, "params") and hasattr(loss.params, "total_steps"):
        loss.params.total_steps = total_steps
    probe_x, probe_y = task.sample_batch(min(8, len(task.train_labels)))
    probe_x = probe_x.to(device=device, memory_format=memory_format)
    with torch.no_grad():
        model.eval()
        loss.setup(forward_taps(model, probe_x), forward_taps(teacher.eval(), probe_x) if teacher is not None else None)
    if getattr(loss, "uses_class_means", False):
        loss.set_class_means(teacher_class_means(teacher, task, device, amp_dtype))
    loss.to(device)
    step_module: nn.Module = _StudentStep(model, loss)
    optimizer = _optimizer(list(step_module.parameters()), recipe)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_epoch, history = 0, []
    checkpoint = Path(checkpoint) if checkpoint else None
    if checkpoint and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        loss.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start_epoch, history = int(state["epoch"]), list(state["history"])

    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None)
    if recipe.compile:
        step_module = torch.compile(step_module)

    # A frozen teacher whose features are not needed runs with BatchNorm folded into its convolutions.
    if uses_teacher and not getattr(loss, "uses_features", False):
        teacher = _fold_batchnorm(teacher, probe_x).to(memory_format=memory_format)
    # Teacher logits do not change between epochs when images are not augmented: compute them once.
    teacher_logits = None
    if uses_teacher and not recipe.augment and not getattr(loss, "uses_features", False):
        teacher_logits = _cache_teacher_logits(teacher, task, device, amp_dtype)

    warmup_steps = int(min(recipe.warmup_epochs, recipe.epochs / 5) * steps_per_epoch)
    began = time.perf_counter()
    show = progress and rank == 0
    bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, desc=desc, disable=None if show else True, leave=False)
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, recipe.epochs):
        step_module.train()
        if teacher is not None:
            teacher.eval()
        seen, loss_sum, epoch_start = 0, torch.zeros((), device=device), time.perf_counter()
        batches = task.batches(
            "train", recipe.batch_size, shuffle=True, augment=recipe.augment, seed=recipe.seed * 1000 + epoch,
            device=device, drop_last=True, rank=rank, world_size=world, with_index=True,
        )
        for x, y, idx in batches:
            x = x.contiguous(memory_format=memory_format)
            lr = lr_at(step, total_steps, warmup_steps, recipe.lr, recipe.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                if teacher_logits is not None:
                    t_logits = teacher_logits[idx.to(teacher_logits.device)]
                    teacher_taps = Taps(t_logits, t_logits, t_logits, False)
                elif uses_teacher:
                    with torch.no_grad():
                        teacher_taps = forward_taps(teacher, x)
                else:
                    teacher_taps = None
                value, _ = step_module(x, teacher_taps, y, epoch)
            if not torch.isfinite(value):
                bar.close()
                raise TrainingDiverged(f"loss became {value.item()} at epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(value).backward()
            if recipe.clip_grad_norm > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(step_module.parameters(), recipe.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            seen += len(y)
            loss_sum += value.detach() * len(y)
            step += 1
            bar.update(1)
        elapsed = time.perf_counter() - epoch_start
        accuracy = evaluate(model, task, device=device)
        history.append({
            "epoch": epoch + 1, "loss": float(loss_sum) / max(seen, 1), "val_accuracy": accuracy,
            "img_per_s": seen * world / elapsed, "lr": lr, "seconds": elapsed,
        })
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", acc=f"{accuracy:.3f}", img_s=f"{history[-1]['img_per_s']:.0f}")
        if rank == 0:
            if checkpoint:
                with atomic_path(checkpoint) as tmp:
                    torch.save({
                        "model": model.state_dict(), "loss": loss.state_dict(), "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(), "rng": _rng_state(), "epoch": epoch + 1, "history": history,
                        "recipe": recipe.to_dict(),
                    }, tmp)
            if metrics_csv:
                _write_metrics(Path(metrics_csv), history)
        if world > 1:
            dist.barrier()
    bar.close()
    if world > 1:
        _check_ranks_agree(model, device)
    accuracy = history[-1]["val_accuracy"] if history else evaluate(model, task, device=device)
    return TrainResult(accuracy=accuracy, epochs=recipe.epochs, seconds=time.perf_counter() - began, history=history, world_size=world)


@torch.no_grad()
def _check_ranks_agree(model: nn.Module, device: torch.device) -> None:
    """DDP keeps replicas identical; a mismatch means a broken setup, not a result to keep."""
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().view(1).to(device)
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    if any(not torch.allclose(g, gathered[0], rtol=1e-6, atol=1e-6) for g in gathered):
        raise RuntimeError(f"DDP replicas diverged: parameter checksums {[float(g) for g in gathered]}")
