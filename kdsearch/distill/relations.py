"""Self-attention relation distillation between transformers (MiniLMv2, Wang et al. 2021), as AutoDistil trains its
SuperLM with it, and the variant AutoDistil released (MSE on the attention scores summed over heads).

Relations need no adapter: for each of the queries, keys and values of one teacher layer and of the student's last
layer, the heads are concatenated and split again into ``relation_heads`` heads of equal size, and each head's
scaled dot-product relation softmax(X Xᵀ / √d_r) is compared between teacher and student (a tokens × tokens matrix
on both sides, whatever their hidden sizes and head counts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from kdsearch.distill.losses import DistillLoss, _kd_objective, _KDParams, register_loss
from kdsearch.exceptions import LossError
from kdsearch.similarity.relations import relation_heads_for, relation_kl, summed_scores
from kdsearch.taps import Taps

VARIANTS = ("minilm", "autodistil")


@register_loss("minilm")
class MiniLM(DistillLoss):
    """MiniLMv2: relation_weight·Σ_{QQ,KK,VV} KL(teacher ‖ student) on ``teacher_layer`` (default the last) and the
    student's last layer, plus logit KD (ce_weight·CE + kd_weight·T²·KL; kd_weight 0 for relations alone).
    ``variant=autodistil``: AutoDistil's released loss instead of the relations: MSE between the attention scores
    summed over heads (any head counts)."""

    uses_features = True
    student_attention_layer = -1

    @dataclass
    class Params(_KDParams):
        relation_weight: float = 1.0
        relation_heads: int = 0  # 0: the teacher's head count
        teacher_layer: int = -1
        variant: str = "minilm"

    def __init__(self, params):
        super().__init__(params)
        if params.variant not in VARIANTS:
            raise LossError(f"--loss minilm variant must be one of {', '.join(VARIANTS)}, not {params.variant!r}.")
        self.teacher_attention_layer = params.teacher_layer

    def setup(self, student: Taps, teacher: Taps | None) -> None:
        if teacher is None or teacher.attention is None or student.attention is None:
            raise LossError("--loss minilm distils self-attention relations, so the teacher and the student must both be "
                            "transformers (a vit space, a ViT/DeiT teacher); use --loss kd for this pair.")
        if student.attention[0].shape[1] != teacher.attention[0].shape[1]:
            raise LossError(f"--loss minilm needs the same number of tokens in teacher and student (teacher "
                            f"{teacher.attention[0].shape[1]}, student {student.attention[0].shape[1]}); give them "
                            "the same patch size and input size, or use --loss kd.")
        widths = (student.attention[0].shape[-1], teacher.attention[0].shape[-1])
        if self.params.variant == "minilm":
            self.params.relation_heads = relation_heads_for(self.params.relation_heads, teacher.attention_heads, widths)

    def forward(self, student, teacher, labels, epoch):
        p = self.params
        if p.variant == "minilm":
            rel = sum(relation_kl(s, t, p.relation_heads) for s, t in zip(student.attention, teacher.attention))
        else:
            rel = F.mse_loss(summed_scores(*student.attention[:2], student.attention_heads),
                             summed_scores(*teacher.attention[:2], teacher.attention_heads))
        logits = _kd_objective(p, student.logits.float(), teacher.logits.float(), labels) if p.kd_weight or p.ce_weight else 0.0
        return p.relation_weight * rel + logits
