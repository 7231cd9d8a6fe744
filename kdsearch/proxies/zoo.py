"""The zero-cost proxy zoo, each by its published definition; higher = better for every one.

=============  =====================================================================  ==========================
name           definition (what is summed over conv / linear weights W, unless said)  source
=============  =====================================================================  ==========================
grad_norm      Σ_layers ‖∂L/∂W‖₂ (cross-entropy L on one real batch)                  Abdelfattah et al. 2021
snip           Σ |∂L/∂W ⊙ W|                                                          Lee et al. 2019
grasp          Σ −W ⊙ (H g), g = ∂L/∂W, H the Hessian (as published; sign kept)       Wang et al. 2020
fisher         Σ_channels ½·mean_batch(Σ_spatial a ⊙ ∂L/∂a)², a = each layer's output Theis et al. / Turner 2020
jacob_cov      −Σ log(λ + k) + 1/(λ + k), λ = eigenvalues of the correlation of the   Mellor et al. 2020 (v1)
               per-sample input Jacobians, k = 1e-5
nwot           log|K_H|, K_H = c cᵀ + (1−c)(1−c)ᵀ over the binary codes c of every    Mellor et al. 2021
               activation's input sign
synflow        Σ |W ⊙ ∂R/∂W|, R = Σ f(1) in float64 with |W|, BatchNorm as identity   Tanaka et al. 2020
zico           Σ_layers log Σ mean|∂L/∂W| / std(∂L/∂W) over ≥ 2 minibatches          Li et al. ICLR 2023
zen            log E‖f(x) − f(x + 0.01ε)‖₁ + Σ_BN log √mean σ², Gaussian x, ε and    Lin et al. ICCV 2021
               N(0, 1) weights, f = pre-pool features
meco           Σ_layers λ_min(corrcoef of one sample's channels), every conv output   Jiang et al. NeurIPS 2023
=============  =====================================================================  ==========================

Every proxy runs on the batch in the :class:`ProxyContext` (real images; SynFlow and Zen use the
inputs their definitions prescribe), leaves the student exactly as it found it (mode and BatchNorm
buffers restored, gradients cleared) and is deterministic for a seed.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdsearch.proxies.registry import ProxyContext, register_proxy
from kdsearch.taps import as_logits, classifier_of, forward_taps

_WEIGHTED = (nn.Conv2d, nn.Linear)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.ELU)


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _WEIGHTED)]


@contextmanager
def preserved(model: nn.Module):
    """Run a proxy in train mode and hand the model back untouched: mode, buffers, grads."""
    was_training = model.training
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        yield model
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def _ce(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(as_logits(model(images)), labels)


def _weight_grads(model: nn.Module, ctx: ProxyContext, metrics: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(W, ∂L/∂W) of every conv/linear layer from one train-mode backward; shared by grad_norm and snip."""

    def compute():
        with preserved(model):
            model.train()
            layers = weighted_layers(model)
            grads = torch.autograd.grad(_ce(model, ctx.images, ctx.labels), [m.weight for m in layers], allow_unused=True)
            return [(m.weight.detach(), torch.zeros_like(m.weight) if g is None else g.detach()) for m, g in zip(layers, grads)]

    return ctx.memo(model, "weight_grads", compute)


def _sum(values: list[torch.Tensor]) -> float:
    return float(torch.stack(values).sum()) if values else 0.0


@register_proxy("grad_norm")
def grad_norm(model, ctx, metrics) -> float:
    return _sum([g.norm() for _, g in _weight_grads(model, ctx, metrics)])


@register_proxy("snip")
def snip(model, ctx, metrics) -> float:
    return _sum([(w * g).abs().sum() for w, g in _weight_grads(model, ctx, metrics)])


@register_proxy("grasp")
def grasp(model, ctx, metrics) -> float:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # a Hessian-vector product: fused attention kernels have no double backward, the math one does (transformers)
    with preserved(model), sdpa_kernel(SDPBackend.MATH):
        model.train()
        weights = [m.weight for m in weighted_layers(model)]
        first = torch.autograd.grad(_ce(model, ctx.images, ctx.labels), weights, allow_unused=True)
        first = [torch.zeros_like(w) if g is None else g.detach() for w, g in zip(weights, first)]
        grads = torch.autograd.grad(_ce(model, ctx.images, ctx.labels), weights, create_graph=True, allow_unused=True)
        z = sum((g * g0).sum() for g, g0 in zip(grads, first) if g is not None)
        hg = torch.autograd.grad(z, weights, allow_unused=True) if isinstance(z, torch.Tensor) and z.requires_grad else [None] * len(weights)
        return _sum([(-w.detach() * h).sum() for w, h in zip(weights, hg) if h is not None])


@register_proxy("fisher")
def fisher(model, ctx, metrics) -> float:
    acts: list[torch.Tensor] = []

    def keep(_m, _inputs, out):
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.retain_grad()
            acts.append(out)

    with preserved(model):
        model.train()
        handles = [m.register_forward_hook(keep) for m in weighted_layers(model)]
        try:
            _ce(model, ctx.images, ctx.labels).backward()
        finally:
            for h in handles:
                h.remove()
        per_channel = []
        for a in acts:
            if a.grad is None:
                continue
            prod = a.detach() * a.grad
            if prod.dim() == 3:  # tokens (B, N, C): channels last
                prod = prod.transpose(1, 2)
            summed = prod.sum(dim=tuple(range(2, prod.dim()))) if prod.dim() > 2 else prod
            per_channel.append((0.5 * summed.pow(2).mean(0)).sum())
        return _sum(per_channel)


@register_proxy("jacob_cov")
def jacob_cov(model, ctx, metrics) -> float:
    with preserved(model):
        model.train()
        x = ctx.images.detach().clone().requires_grad_(True)
        out = as_logits(model(x))
        (jac,) = torch.autograd.grad(out.sum(), x)
        corr = torch.corrcoef(jac.flatten(1).double())
        corr = torch.nan_to_num(corr, nan=0.0, posinf=0.0, neginf=0.0)
        eig = torch.linalg.eigvalsh(corr).clamp(min=0)
        k = 1e-5
        return float(-(torch.log(eig + k) + 1.0 / (eig + k)).sum())


@register_proxy("nwot")
def nwot(model, ctx, metrics) -> float:
    n = ctx.images.shape[0]
    kernel = torch.zeros(n, n, dtype=torch.float64, device=ctx.images.device)

    def code(_m, inputs, _out):
        c = (inputs[0].detach().flatten(1) > 0).double()
        kernel.add_(c @ c.T + (1 - c) @ (1 - c).T)

    with preserved(model), torch.no_grad():
        model.train()
        acts = [m for m in model.modules() if isinstance(m, _ACTIVATIONS)]
        if not acts:
            return float("nan")
        handles = [m.register_forward_hook(code) for m in acts]
        try:
            model(ctx.images)
        finally:
            for h in handles:
                h.remove()
    return float(torch.linalg.slogdet(kernel)[1])


def _bn_as_identity(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            # 1 + tiny == 1 in float64, so BN is still exactly the identity; eps = 0 itself is refused by torch 2.11
            m.eps = torch.finfo(torch.float64).tiny
            if m.running_mean is not None:
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
            if m.affine:
                m.weight.data.fill_(1.0)
                m.bias.data.zero_()


@register_proxy("synflow")
def synflow(model, ctx, metrics) -> float:
    net = copy.deepcopy(model).double()
    net.eval()
    _bn_as_identity(net)
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    layers = weighted_layers(net)
    ones = torch.ones((1, *ctx.input_shape), dtype=torch.float64, device=ctx.images.device)
    grads = torch.autograd.grad(as_logits(net(ones)).sum(), [m.weight for m in layers], allow_unused=True)
    return _sum([(m.weight.detach() * g).abs().sum() for m, g in zip(layers, grads) if g is not None])


@register_proxy("zico")
def zico(model, ctx, metrics) -> float:
    splits = 2 if ctx.images.shape[0] >= 4 else 1
    with preserved(model):
        model.train()
        layers = weighted_layers(model)
        per_split = []
        for x, y in zip(ctx.images.chunk(splits), ctx.labels.chunk(splits)):
            grads = torch.autograd.grad(_ce(model, x, y), [m.weight for m in layers], allow_unused=True)
            per_split.append([torch.zeros_like(m.weight) if g is None else g.detach() for m, g in zip(layers, grads)])
    total = torch.zeros((), dtype=torch.float64)
    for i in range(len(layers)):
        stacked = torch.stack([s[i] for s in per_split]).double()
        std = stacked.std(dim=0, unbiased=False)
        mean_abs = stacked.abs().mean(dim=0)
        nonzero = std != 0
        nsr = (mean_abs[nonzero] / std[nonzero]).sum()
        if nsr > 0:
            total = total + torch.log(nsr.cpu())
    return float(total)


@register_proxy("zen")
def zen(model, ctx, metrics) -> float:
    gen = torch.Generator(device="cpu").manual_seed(0)
    net = copy.deepcopy(model)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, _WEIGHTED):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 1.0  # running_var = this batch's variance, as Zen reads it
        net.train()
        device = ctx.images.device
        x = torch.randn(ctx.images.shape, generator=gen).to(device)
        eps = torch.randn(ctx.images.shape, generator=gen).to(device)
        out = forward_taps(net, x).prepool
        mixed = forward_taps(net, x + 0.01 * eps).prepool
        delta = (out - mixed).abs().flatten(1).sum(1).mean()
        bn_term = sum(
            math.log(math.sqrt(float(m.running_var.mean())) + 1e-12)
            for m in net.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None
        )
    return float(torch.log(delta + 1e-12)) + bn_term


@register_proxy("meco")
def meco(model, ctx, metrics) -> float:
    values: list[torch.Tensor] = []

    def hook(_m, _inputs, out):
        if isinstance(out, torch.Tensor) and out.dim() in (3, 4):
            # (channels, H·W) of the first sample; a transformer's (tokens, channels) read the same way
            fea = (out[0].detach().flatten(1) if out.dim() == 4 else out[0].detach().T).double()
            corr = torch.nan_to_num(torch.corrcoef(fea), nan=0.0, posinf=0.0, neginf=0.0)
            values.append(torch.linalg.eigvalsh(corr)[0])

    with preserved(model), torch.no_grad():
        model.train()
        handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)
                   or (isinstance(m, nn.Linear) and m is not classifier_of(model))]
        try:
            model(ctx.images)
        finally:
            for h in handles:
                h.remove()
    return _sum(values)
