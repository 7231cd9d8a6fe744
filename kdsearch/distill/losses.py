"""Distillation losses: one registry, one signature.

A loss is an ``nn.Module`` built by ``create_loss(name, **overrides)``; before training the trainer
calls ``setup(student_taps, teacher_taps)`` once on a probe batch (feature losses create their
adapters there, so adapter weights join the optimiser and the checkpoint), then per step
``loss(student_taps, teacher_taps, labels, epoch)``. Defaults follow the reference papers and are
recorded in the run through ``loss.config()``.
"""

from __future__ import annotations

import abc
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdsearch._util import suggest
from kdsearch.exceptions import LossError
from kdsearch.registry import Registry
from kdsearch.similarity import kl_div_t, linear_cka, relation_distance, semantic_gram
from kdsearch.taps import Taps

LOSSES: Registry[type[DistillLoss]] = Registry("loss", LossError)


def register_loss(name: str):
    def wrap(cls):
        cls.name = name
        LOSSES.add(name, cls)
        return cls

    return wrap


def list_losses() -> list[str]:
    return LOSSES.names()


def _parse_setting(loss: str, key: str, value: Any, default: Any) -> Any:
    """A --loss-opt value in the type of the setting's default; a value that does not parse is a LossError."""
    if not isinstance(value, str):
        return value
    kind = type(default)
    if kind is bool:
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
    else:
        try:
            return kind(value)
        except ValueError:
            pass
    raise LossError(
        f"Loss {loss!r} setting {key} needs a {kind.__name__} (default {default!r}), got {value!r}; "
        f"write e.g. --loss-opt {key}={default}."
    )


def create_loss(name: str, **overrides: Any) -> DistillLoss:
    cls = LOSSES.get(name)
    params = cls.Params()
    known = {f.name for f in fields(params)}
    for key, value in overrides.items():
        if key not in known:
            raise LossError(f"Loss {name!r} has no setting {key!r};{suggest(key, known)} settings: {', '.join(sorted(known))}.")
        setattr(params, key, _parse_setting(name, key, value, getattr(params, key)))
    return cls(params)


class DistillLoss(nn.Module, abc.ABC):
    name = "base"
    uses_teacher = True
    uses_features = False  # needs pre-pool / pre-logit taps of the teacher, not only logits

    @property
    def logits_only(self) -> bool:
        """Needs the teacher's logits and nothing else: they can be computed once and shared (kdsearch.teacher.outputs)."""
        return self.uses_teacher and not self.uses_features

    @dataclass
    class Params:
        pass

    def __init__(self, params):
        super().__init__()
        self.params = params

    def setup(self, student: Taps, teacher: Taps | None) -> None:
        """Called once with taps of a probe batch, before the optimiser is built."""

    def config(self) -> dict:
        return {"name": self.name, **asdict(self.params)}

    @abc.abstractmethod
    def forward(self, student: Taps, teacher: Taps | None, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        """The loss of one batch (a scalar)."""


@dataclass
class _KDParams:
    temperature: float = 4.0
    ce_weight: float = 0.1
    kd_weight: float = 0.9


def _kd_objective(p: _KDParams, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    return p.ce_weight * ce + p.kd_weight * kl_div_t(student_logits, teacher_logits, p.temperature)


@register_loss("ce")
class CrossEntropy(DistillLoss):
    """No distillation: the student alone on the labels (the no-KD baseline)."""

    uses_teacher = False

    @dataclass
    class Params:
        label_smoothing: float = 0.0

    def forward(self, student, teacher, labels, epoch):
        return F.cross_entropy(student.logits.float(), labels, label_smoothing=self.params.label_smoothing)


@register_loss("kd")
class KD(DistillLoss):
    """Hinton et al. 2015: ce_weight·CE + kd_weight·T²·KL; T = 4, CE 0.1 / KD 0.9."""

    @dataclass
    class Params(_KDParams):
        label_smoothing: float = 0.0

    def forward(self, student, teacher, labels, epoch):
        p = self.params
        return _kd_objective(p, student.logits.float(), teacher.logits.float(), labels, p.label_smoothing)


@register_loss("deit_hard")
class DeiTHard(DistillLoss):
    """DeiT's hard-label distillation (Touvron et al. 2021), for a transformer student of a CNN teacher:
    ½·CE(student, labels) + ½·CE(student, the teacher's argmax)."""

    @dataclass
    class Params:
        label_smoothing: float = 0.0

    def forward(self, student, teacher, labels, epoch):
        s = student.logits.float()
        return 0.5 * F.cross_entropy(s, labels, label_smoothing=self.params.label_smoothing) + \
            0.5 * F.cross_entropy(s, teacher.logits.argmax(1))


@register_loss("dkd")
class DKD(DistillLoss):
    """Decoupled KD (Zhao et al., CVPR 2022): α·TCKD + β·NCKD, ramped in over ``warmup`` epochs.

    TCKD: binary KL between teacher and student target/non-target probabilities.
    NCKD: KL between the distributions over the non-target classes only.
    """

    @dataclass
    class Params:
        alpha: float = 1.0
        beta: float = 8.0
        temperature: float = 4.0
        warmup: int = 20
        ce_weight: float = 1.0

    def forward(self, student, teacher, labels, epoch):
        p = self.params
        s, t = student.logits.float(), teacher.logits.float()
        gt = F.one_hot(labels, s.shape[1]).bool()
        ps, pt = F.softmax(s / p.temperature, dim=1), F.softmax(t / p.temperature, dim=1)
        # binary (target, all non-target) distributions
        bs = torch.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], dim=1).clamp_min(1e-12)
        bt = torch.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], dim=1).clamp_min(1e-12)
        tckd = (bt * (bt.log() - bs.log())).sum(1).mean() * p.temperature**2
        # non-target distributions: push the target logit to -inf-ish before the softmax
        log_ps_nt = F.log_softmax(s / p.temperature - 1000.0 * gt, dim=1)
        log_pt_nt = F.log_softmax(t / p.temperature - 1000.0 * gt, dim=1)
        nckd = F.kl_div(log_ps_nt, log_pt_nt, reduction="batchmean", log_target=True) * p.temperature**2
        ramp = min((epoch + 1) / p.warmup, 1.0) if p.warmup > 0 else 1.0
        return p.ce_weight * F.cross_entropy(s, labels) + ramp * (p.alpha * tckd + p.beta * nckd)


class _Adapter(nn.Module):
    """1×1 conv (+BN) from the student's channels to the teacher's, resized to the teacher's map."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(student_channels, teacher_channels, 1, bias=False), nn.BatchNorm2d(teacher_channels))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.proj(x)


def _as_map(x: torch.Tensor) -> torch.Tensor:
    return x if x.ndim == 4 else x.view(x.shape[0], x.shape[1], 1, 1)


@register_loss("fitnet")
class FitNet(DistillLoss):
    """FitNets (Romero et al. 2015) at the last aligned stage: CE + hint_weight·MSE(adapter(s), t)."""

    uses_features = True

    @dataclass
    class Params:
        hint_weight: float = 100.0
        ce_weight: float = 1.0

    def setup(self, student, teacher):
        self.adapter = _Adapter(_as_map(student.prepool).shape[1], _as_map(teacher.prepool).shape[1])

    def forward(self, student, teacher, labels, epoch):
        t = _as_map(teacher.prepool).float()
        s = self.adapter(_as_map(student.prepool).float(), t.shape[-2:])
        return self.params.ce_weight * F.cross_entropy(student.logits.float(), labels) + self.params.hint_weight * F.mse_loss(s, t)


@register_loss("diswot")
class DisWOTPlus(DistillLoss):
    """DisWOT+ (Dong et al., CVPR 2023): KD plus the two similarity terms the search ranks by.

    relation: SP loss on pre-pool maps (γ = 3000, SP's default); semantic: mean squared difference
    of the classifier-gradient class Grams (C×C). Both are width-independent (B×B and C×C Grams).
    """

    uses_features = True

    @dataclass
    class Params(_KDParams):
        relation_weight: float = 3000.0
        semantic_weight: float = 1.0

    def forward(self, student, teacher, labels, epoch):
        p = self.params
        s, t = student.logits.float(), teacher.logits.float()
        loss = _kd_objective(p, s, t, labels) + p.relation_weight * relation_distance(student.prepool.float(), teacher.prepool.float())
        sem_s = semantic_gram(student.prelogits.float(), s, labels)
        sem_t = semantic_gram(teacher.prelogits.float(), t, labels)
        return loss + p.semantic_weight * (sem_s - sem_t).pow(2).mean()


@register_loss("cka")
class CKALoss(DistillLoss):
    """KD plus cka_weight·(1 − linear CKA) between student and teacher pre-pool features."""

    uses_features = True

    @dataclass
    class Params(_KDParams):
        cka_weight: float = 1.0

    def forward(self, student, teacher, labels, epoch):
        p = self.params
        cka = linear_cka(student.prepool.float(), teacher.prepool.float())
        return _kd_objective(p, student.logits.float(), teacher.logits.float(), labels) + p.cka_weight * (1 - cka)


@register_loss("taid")
class TAID(DistillLoss):
    """Temporally Adaptive Interpolated Distillation (Shing et al., ICLR 2025).

    Target: p_λ = softmax((1 − λ)·stopgrad(s) + λ·t); loss KL(p_λ ‖ softmax(s)). λ starts at
    ``t_start`` and grows each step by α·sigmoid(m)·(1 − λ), m the momentum of the loss's relative
    improvement, never below the linear schedule to ``t_end``.
    """

    @dataclass
    class Params:
        t_start: float = 0.4
        t_end: float = 1.0
        alpha: float = 5e-4
        beta: float = 0.99
        ce_weight: float = 0.0
        total_steps: int = 0  # filled in by the trainer

    def __init__(self, params):
        super().__init__(params)
        self.register_buffer("lam", torch.tensor(params.t_start))
        self.register_buffer("momentum", torch.tensor(0.0))
        self.register_buffer("prev_loss", torch.tensor(float("nan")))
        self.register_buffer("step", torch.tensor(0))

    def forward(self, student, teacher, labels, epoch):
        p = self.params
        s, t = student.logits.float(), teacher.logits.float()
        lam = float(self.lam)
        target = F.softmax((1 - lam) * s.detach() + lam * t, dim=1)
        loss = F.kl_div(F.log_softmax(s, dim=1), target, reduction="batchmean")
        if self.training:
            with torch.no_grad():
                current = loss.detach()
                if not torch.isnan(self.prev_loss):
                    delta = (self.prev_loss - current) / (self.prev_loss.abs() + 1e-8)
                    self.momentum.mul_(p.beta).add_((1 - p.beta) * delta)
                self.prev_loss.copy_(current)
                self.step += 1
                linear = p.t_start + (p.t_end - p.t_start) * float(self.step) / max(p.total_steps, 1)
                grown = lam + p.alpha * float(torch.sigmoid(self.momentum)) * (1 - lam)
                self.lam.fill_(min(p.t_end, max(linear, grown)))
        return loss + p.ce_weight * F.cross_entropy(s, labels) if p.ce_weight else loss


@register_loss("pld")
class PLD(DistillLoss):
    """Plackett–Luce Distillation: a list-wise loss over the teacher's class ranking.

    The permutation puts the true class first, then the rest by teacher logit; each position k
    adds w_k·(logsumexp(s_{π_k..π_K}) − s_{π_k}) with w_k = softmax(t/T)_{π_k}.
    """

    @dataclass
    class Params:
        temperature: float = 1.0

    def forward(self, student, teacher, labels, epoch):
        s, t = student.logits.float(), teacher.logits.float()
        boosted = t.scatter(1, labels[:, None], math.inf)  # true class ranks first
        order = boosted.argsort(dim=1, descending=True)
        s_sorted = s.gather(1, order)
        weights = F.softmax(t / self.params.temperature, dim=1).gather(1, order)
        tail_lse = torch.logcumsumexp(s_sorted.flip(1), dim=1).flip(1)  # logsumexp over positions k..K
        return (weights * (tail_lse - s_sorted)).sum(1).mean()


@register_loss("nd")
class NormDirection(DistillLoss):
    """KD++ (Wang et al., "Improving KD via Regularizing Feature Norm and Direction", 2023).

    CE + KD + nd_weight·ND, ND = mean over samples of 1 − (s · ê_y) / max(‖s‖, ‖t‖): the student's
    embedding s (projected to the teacher's width by a linear layer when they differ) is pulled along
    the unit direction ê_y of the teacher's class mean for its label and towards a large norm; t is
    the teacher's embedding. Class means come from one pass of the teacher over the training set.
    Defaults: the paper's CIFAR ResNet-56 → ResNet-20 setting (CE 1, KD 1, T = 4, ND 2).
    """

    uses_features = True
    uses_class_means = True

    @dataclass
    class Params:
        temperature: float = 4.0
        ce_weight: float = 1.0
        kd_weight: float = 1.0
        nd_weight: float = 2.0

    def __init__(self, params):
        super().__init__(params)
        self.register_buffer("class_means", torch.zeros(0))
        self.project = nn.Identity()

    def setup(self, student, teacher):
        ds, dt = student.prelogits.shape[1], teacher.prelogits.shape[1]
        if ds != dt:
            self.project = nn.Linear(ds, dt, bias=False)

    def set_class_means(self, means: torch.Tensor) -> None:
        self.class_means = means.detach().float()

    def nd_loss(self, student_emb: torch.Tensor, teacher_emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.class_means.numel() == 0:
            raise LossError("The 'nd' loss needs the teacher's class means; train it through kdsearch's trainer (fit/distill).")
        s = self.project(student_emb.float())
        direction = F.normalize(self.class_means[labels], dim=1)
        max_norm = torch.maximum(s.norm(dim=1), teacher_emb.float().norm(dim=1)).clamp_min(1e-12)
        return (1 - (s * direction).sum(1) / max_norm).mean()

    def forward(self, student, teacher, labels, epoch):
        p = self.params
        s, t = student.logits.float(), teacher.logits.float()
        ce = F.cross_entropy(s, labels)
        kd = kl_div_t(s, t, p.temperature)
        return p.ce_weight * ce + p.kd_weight * kd + p.nd_weight * self.nd_loss(student.prelogits, teacher.prelogits, labels)


__all__ = ["LOSSES", "DistillLoss", "create_loss", "kl_div_t", "list_losses", "register_loss"]
