"""Teacher-aware proxies beyond DisWOT's own: CKA to the teacher at aligned depths, DisWOT with a random-init teacher.

``cka``: linear CKA (unbiased HSIC, :mod:`kdsearch.similarity`) between the student's and the teacher's
features at the same relative depths (the end of each third of their blocks, the last being the
pre-pool map), averaged. Compiled teachers expose only their output, so there the final features alone
are compared.

``diswot_randinit``: DisWOT's score against a randomly initialised copy of the teacher (seeded) — the
mode of the paper's architecture search; ``diswot`` uses the teacher as given (trained), which is what
kdsearch distils from.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from kdsearch.proxies.diswot import diswot_terms
from kdsearch.proxies.registry import ProxyContext, register_proxy
from kdsearch.similarity import MinibatchCKA, default_layers
from kdsearch.taps import forward_taps

ALIGNED_FRACTIONS = (1 / 3, 2 / 3, 1.0)


def aligned_features(model: nn.Module, x: torch.Tensor, fractions=ALIGNED_FRACTIONS) -> list[torch.Tensor]:
    """Block outputs at the given relative depths; the last one is the pre-pool map."""
    names = default_layers(model) if isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule) else []
    picked = sorted({max(0, round(f * len(names)) - 1) for f in fractions[:-1]}) if names else []
    store: dict[int, torch.Tensor] = {}
    modules = dict(model.named_modules()) if names else {}
    handles = [modules[names[i]].register_forward_hook(lambda _m, _i, out, i=i: store.__setitem__(i, out)) for i in picked]
    try:
        final = forward_taps(model, x).prepool
    finally:
        for h in handles:
            h.remove()
    return [store[i] for i in picked if isinstance(store.get(i), torch.Tensor)] + [final]


@register_proxy("cka")
@torch.no_grad()
def cka(model, ctx: ProxyContext, metrics) -> float:
    if "teacher_aligned" not in ctx.cache:
        teacher_model = ctx.teacher_module.eval()
        ctx.cache["teacher_aligned"] = aligned_features(teacher_model, ctx.images)
    was_training = model.training
    model.eval()
    try:
        student = aligned_features(model, ctx.images)
    finally:
        model.train(was_training)
    teacher = ctx.cache["teacher_aligned"]
    k = min(len(student), len(teacher))
    student, teacher = student[-k:], teacher[-k:]  # align from the end: the final maps always pair up
    meter = MinibatchCKA()
    meter.update(student, teacher)
    return float(torch.diagonal(meter.compute()).mean())


def _random_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """The teacher's architecture with freshly initialised weights (seeded; global RNG untouched).

    Initialised on the CPU: a CUDA generator draws other numbers for the same seed, and the score moved 1.4 %
    between CPU and GPU before (benchmarks/results/gpu_tests.xml)."""
    device = next(model.parameters()).device
    copy_ = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in copy_.modules():
            if hasattr(m, "reset_parameters") and m is not copy_:
                m.reset_parameters()
    return copy_.to(device).eval()


@register_proxy("diswot_randinit")
def diswot_randinit(model, ctx: ProxyContext, metrics) -> float:
    if "random_teacher_ctx" not in ctx.cache:
        ctx.cache["random_teacher_ctx"] = ProxyContext(
            teacher=_random_copy(ctx.teacher_module), images=ctx.images, labels=ctx.labels,
            num_classes=ctx.num_classes, input_shape=ctx.input_shape,
        )
    sem, rel = diswot_terms(model, ctx.cache["random_teacher_ctx"])
    return -(sem + rel)
