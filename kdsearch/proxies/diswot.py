"""DisWOT (Dong et al., "DisWOT: Student Architecture Search for Distillation WithOut Training", CVPR 2023).

Both terms compare small Gram matrices, so they work whatever the teacher's and student's widths:

* semantic: the gradient of the cross-entropy w.r.t. the classifier weights, G = (P - Y)ᵀ H / B
  (classes × features), gives a classes × classes Gram G Gᵀ; rows L2-normalised; distance is the
  Frobenius norm of the teacher–student difference. The gradient is computed in closed form from
  the logits and the classifier input — it is the gradient, not the weights (a bug in published code).
* relation: the B × B Gram of the flattened pre-pool feature maps (not one sample's pooled vector,
  another published bug), rows L2-normalised, compared as in similarity-preserving KD:
  ‖Gₜ − Gₛ‖²_F / B².

``diswot`` = −(semantic + relation), as in the paper's code; higher = more teacher-like.
"""

from __future__ import annotations

import torch

from kdsearch.proxies.registry import ProxyContext, register_proxy
from kdsearch.similarity import relation_distance, semantic_gram
from kdsearch.taps import forward_taps


def classifier_grad_gram(prelogits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The semantic Gram in float64 (the proxy compares tiny differences)."""
    return semantic_gram(prelogits.double(), logits.double(), labels)


@torch.no_grad()
def diswot_terms(model, ctx: ProxyContext) -> tuple[float, float]:
    model.eval()
    student = forward_taps(model, ctx.images)
    teacher = ctx.teacher_taps()
    if "teacher_sem" not in ctx.cache:
        ctx.cache["teacher_sem"] = classifier_grad_gram(teacher.prelogits, teacher.logits, ctx.labels)
    sem = torch.linalg.matrix_norm(ctx.cache["teacher_sem"] - classifier_grad_gram(student.prelogits, student.logits, ctx.labels))
    rel = relation_distance(student.prepool.double(), teacher.prepool.double())
    return float(sem), float(rel)


def _terms(model, ctx: ProxyContext, metrics: dict) -> tuple[float, float]:
    # one forward pass serves all three registered names
    return ctx.memo(model, "diswot_terms", lambda: diswot_terms(model, ctx))


@register_proxy("diswot")
def diswot(model, ctx, metrics) -> float:
    sem, rel = _terms(model, ctx, metrics)
    return -(sem + rel)


@register_proxy("diswot_semantic")
def diswot_semantic(model, ctx, metrics) -> float:
    return -_terms(model, ctx, metrics)[0]


@register_proxy("diswot_relation")
def diswot_relation(model, ctx, metrics) -> float:
    return -_terms(model, ctx, metrics)[1]
