"""Training one band's supernet: knowledge distillation from the user's teacher with the sandwich rule.

Each step runs the band's anchors — by default its slowest and fastest members — and two random ones on the same
batch and accumulates their gradients (BigNAS / AttentiveNAS / AutoDistil); every subnet learns from the teacher's
logits for that epoch's views, read from the shared teacher outputs (``kdsearch.teacher.outputs``: computed once, also used by
the run's students), or — with in-place distillation — the smaller ones from the largest subnet's.
The subnets of a step are drawn from a generator seeded by (seed, band, epoch), so a resumed run and every
data-parallel rank draw the same ones. One checkpoint per epoch, written atomically; a killed run resumes at
the first unfinished epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from kdsearch._util import atomic_path, atomic_torch_save, atomic_write_json, read_resume_state
from kdsearch.data import Task
from kdsearch.similarity import kl_div_t
from kdsearch.similarity.relations import relation_heads_for, relation_kl
from kdsearch.supernet.bands import BandPool, check_anchors
from kdsearch.supernet.weights import Supernet, recalibrate
from kdsearch.taps import attention_blocks, forward_taps
from kdsearch.teacher.outputs import TeacherOutputs
from kdsearch.training import Recipe, amp_dtype_for, epoch_seed, lr_at, make_optimizer

WEIGHTS_FILE = "weights.safetensors"  # a finished band's weights in its cache folder
OBJECTIVES = ("auto", "kd", "relations+kd", "relations")
RELATIONAL = ("relations+kd", "relations")  # the objectives that read the teacher's and the subnets' attention


@dataclass(frozen=True)
class SandwichRule:
    """What one supernet step does: the subnets it runs and what they learn from."""

    random_subnets: int = 2
    temperature: float = 4.0
    kd_weight: float = 0.9  # the rest is cross-entropy on the labels
    inplace: bool = False  # smaller subnets learn from the largest subnet's logits instead of the teacher's
    anchors: str = "latency"  # the members run every step (BandPool.anchors): latency, span or uniform
    # what a subnet learns: "kd" (the teacher's logits), "relations+kd" (and MiniLM's self-attention relations of the
    # teacher's last layer; transformer teacher and supernet) or "relations" (the relations alone: AutoDistil's
    # task-agnostic SuperLM, then ``finetune_epochs`` of logit KD for all subnets at once — the short shared fine-tune
    # that lets inherited weights be scored on the task); "auto": "relations+kd" where both are transformers, else "kd"
    objective: str = "auto"
    finetune_epochs: int = 1

    def __post_init__(self):
        check_anchors(self.anchors)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"A supernet objective is one of {', '.join(OBJECTIVES)}, not {self.objective!r}.")
        if self.objective == "relations" and self.finetune_epochs < 1:
            raise ValueError("The task-agnostic objective needs at least one shared fine-tune epoch to score subnets on "
                             "the task; set finetune_epochs >= 1.")
        if self.inplace and self.anchors == "uniform":
            raise ValueError("In-place distillation needs a largest subnet to learn from; use anchors 'latency' or 'span'.")
        if self.anchors == "uniform" and self.random_subnets < 1:
            raise ValueError("A sandwich without anchors needs at least one random subnet per step.")

    @classmethod
    def with_anchors(cls, anchors: str) -> SandwichRule:
        """The default rule with ``anchors``; without anchors, four random members, so that every variant runs four
        subnets per step (the same compute)."""
        return cls(anchors=anchors, random_subnets=4 if anchors == "uniform" else 2)

    def to_dict(self) -> dict:
        record = {"random_subnets": self.random_subnets, "temperature": self.temperature, "kd_weight": self.kd_weight,
                  "inplace": self.inplace}
        if self.anchors != "latency":  # the default stays out of the record so that supernets cached before it stay valid
            record["anchors"] = self.anchors
        if self.objective in RELATIONAL:  # (logit KD, the only objective before them, keeps the old records)
            record["objective"] = self.objective
        if self.objective == "relations":
            record["finetune_epochs"] = self.finetune_epochs
        return record

    def phases(self, epochs: int) -> list[tuple[str, int]]:
        """Each training epoch's (objective, data epoch): ``epochs`` of the objective, then with the task-agnostic one
        the shared fine-tune's KD epochs, which revisit the first epochs' views (their teacher outputs are stored).
        The data epoch also counts the epochs within the phase (each phase has its own learning-rate schedule)."""
        if self.objective != "relations":
            return [(self.objective, e) for e in range(epochs)]
        if self.finetune_epochs > epochs:
            raise ValueError(f"The shared fine-tune ({self.finetune_epochs} epochs) reuses the supernet's stored teacher "
                             f"outputs and may not be longer than its {epochs} epochs.")
        return [("relations", e) for e in range(epochs)] + [("kd", e) for e in range(self.finetune_epochs)]

    def resolved(self, student: torch.nn.Module, teacher) -> SandwichRule:
        """``auto`` made concrete: relations where the teacher and the space's students (``student``: one of them,
        e.g. built on the meta device) both have readable attention; a relational objective without them is refused."""
        both = teacher is not None and attention_blocks(teacher) is not None and attention_blocks(student) is not None
        if self.objective in RELATIONAL and not both:
            raise ValueError(f"The supernet objective {self.objective} distils self-attention relations, which needs a "
                             "transformer teacher and transformer students; use objective kd (or auto).")
        if self.objective != "auto":
            return self
        return replace(self, objective="relations+kd" if both else "kd")


def train_band(supernet: Supernet, pool: BandPool, band: int, task: Task, outputs: TeacherOutputs, recipe: Recipe,
               rule: SandwichRule, *, folder: Path, device: torch.device, progress: bool = False,
               teacher: torch.nn.Module | None = None) -> list[dict]:
    """Train (or resume) one band's supernet on ``task``'s training split; returns its per-epoch history, in which the
    band's largest and smallest subnets are scored on ``task``'s validation split (for find: a slice carved out of the
    training images). ``folder`` holds the per-epoch training state, the history and, when done, ``weights.safetensors``."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    supernet.to(device).train()
    optimizer = make_optimizer(list(supernet.parameters()), recipe)
    amp_dtype = amp_dtype_for(recipe, device)
    # fp16 gradients underflow without loss scaling (bf16 has fp32's range and needs none)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    history, start = _resume(supernet, optimizer, scaler, folder / "training_state.pt", device)
    steps, phases = math.ceil(len(task.train_labels) / recipe.batch_size), rule.phases(recipe.epochs)
    bar = tqdm(total=len(phases) * steps, initial=start * steps, desc=f"supernet band {band + 1}", leave=False,
               disable=None if progress else True)
    for epoch in range(start, len(phases)):
        objective, data_epoch = phases[epoch]
        bar.set_description(f"supernet band {band + 1}, epoch {epoch + 1}/{len(phases)}")
        started, losses = time.perf_counter(), []
        lookup = outputs.lookup(data_epoch, device)
        draws = torch.Generator().manual_seed(epoch_seed(recipe, epoch) * 1009 + band)
        length = sum(p[0] == objective for p in phases)  # epochs of this phase (data_epoch counts within it)
        for step, (x, y, idx) in enumerate(task.batches("train", recipe.batch_size, shuffle=True, augment=recipe.augment,
                                                        seed=epoch_seed(recipe, data_epoch), device=device, with_index=True)):
            for group in optimizer.param_groups:  # each phase has its own schedule (the fine-tune warms up again)
                group["lr"] = lr_at(data_epoch * steps + step, length * steps, int(recipe.warmup_epochs * steps),
                                    recipe.lr, recipe.schedule)
            relations = _teacher_relations(teacher, x, objective, device, amp_dtype)
            losses.append(_sandwich_step(supernet, pool.sandwich(band, draws, rule.random_subnets, rule.anchors), x, y, lookup(idx),
                                         replace(rule, objective=objective), optimizer, scaler, device, amp_dtype, relations))
            bar.update(1)
        record = {"epoch": epoch + 1, "loss": sum(losses) / max(1, len(losses)), "seconds": time.perf_counter() - started,
                  **({"objective": objective} if rule.objective == "relations" else {})}
        record.update(_extremes_accuracy(supernet, pool, band, task, device))  # the supernet's learning curve
        supernet.train()
        history.append(record)
        _checkpoint(supernet, optimizer, scaler, history, folder / "training_state.pt")
    bar.close()
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in supernet.shared.state_dict().items()}, str(tmp))
    atomic_write_json(folder / "history.json", history)
    (folder / "training_state.pt").unlink(missing_ok=True)
    return history


def _teacher_relations(teacher, x, objective: str, device, amp_dtype):
    """The teacher's last-layer queries, keys and values on the batch (a relational objective), else None."""
    if objective not in RELATIONAL:
        return None
    if teacher is None:
        raise ValueError(f"The {objective} objective needs the teacher module; pass teacher= to train_band.")
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        return forward_taps(teacher, x, attention_layer=-1)


def _sandwich_step(supernet: Supernet, configs: list[dict], x, y, teacher_logits, rule: SandwichRule, optimizer, scaler,
                   device: torch.device, amp_dtype, relations=None) -> float:
    optimizer.zero_grad(set_to_none=True)
    total, largest = 0.0, None
    for i, config in enumerate(configs):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if relations is None:
                logits = supernet(config, x)
            else:
                taps = supernet.taps(config, x, attention_layer=-1)
                logits = taps.logits
        target = largest if (rule.inplace and largest is not None) else teacher_logits
        loss = 0.0 if rule.objective == "relations" else (  # task-agnostic: the relations alone
            rule.kd_weight * kl_div_t(logits.float(), target.float(), rule.temperature)
            + (1 - rule.kd_weight) * F.cross_entropy(logits.float(), y))
        if relations is not None:
            heads = relation_heads_for(0, relations.attention_heads, (taps.attention[0].shape[-1], relations.attention[0].shape[-1]))
            loss = loss + sum(relation_kl(s, t, heads) for s, t in zip(taps.attention, relations.attention))
        scaler.scale(loss).backward()  # gradients accumulate over the sandwich
        if i == 0:
            largest = logits.detach()
        total += float(loss.detach())
    scaler.step(optimizer)  # skips the step when fp16 gradients overflowed
    scaler.update()
    return total / max(1, len(configs))


def _extremes_accuracy(supernet: Supernet, pool: BandPool, band: int, task: Task, device) -> dict:
    from kdsearch.training import evaluate

    largest, smallest = pool.anchors(band, "latency")
    out = {}
    for name, config in (("largest", largest), ("smallest", smallest)):
        model = recalibrate(supernet.extract(config), calibration_batches(task, device))
        out[f"holdout_accuracy_{name}"] = evaluate(model, task, device=device)
    return out


def calibration_batches(task: Task, device, images: int = 256, batch_size: int = 64) -> list[torch.Tensor]:
    """A fixed, seeded set of un-augmented training images for BatchNorm recalibration."""
    x, _ = task.sample_batch(min(images, len(task.train_labels)), seed=1)
    return [x[i:i + batch_size].to(device) for i in range(0, len(x), batch_size)]


def _checkpoint(supernet: Supernet, optimizer, scaler, history: list[dict], path: Path) -> None:
    atomic_torch_save({"model": supernet.shared.state_dict(), "optimizer": optimizer.state_dict(),
                       "scaler": scaler.state_dict(), "history": history}, path)


def _resume(supernet: Supernet, optimizer, scaler, path: Path, device) -> tuple[list[dict], int]:
    state = read_resume_state(path, device)
    if state is None:
        return [], 0
    supernet.shared.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):  # checkpoints written before the scaler have none
        scaler.load_state_dict(state["scaler"])
    return list(state["history"]), len(state["history"])


__all__ = ["SandwichRule", "calibration_batches", "train_band"]
