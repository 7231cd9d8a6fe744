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
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from kdsearch._util import atomic_torch_save, atomic_write_text, read_resume_state
from kdsearch.data import Task
from kdsearch.exceptions import DistributedError, RecipeError, TrainingDiverged
from kdsearch.taps import Taps, forward_taps
from kdsearch.training.evaluation import evaluate, evaluate_scores, fold_batchnorm, teacher_class_means
from kdsearch.training.recipe import Recipe, amp_dtype_for, epoch_seed, make_optimizer, memory_format_for


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
        taps = forward_taps(self.model, x, getattr(self.loss, "student_attention_layer", None))
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
        loss.setup(forward_taps(model, probe_x, getattr(loss, "student_attention_layer", None)),
                   forward_taps(teacher.eval(), probe_x, getattr(loss, "teacher_attention_layer", None))
                   if teacher is not None else None)
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
                    teacher_taps = forward_taps(run.teacher, x, getattr(run.loss, "teacher_attention_layer", None))
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
