"""Representation similarity shared by proxies, losses and benchmarks: CKA in all its common forms.

* :func:`linear_cka`, :func:`rbf_cka` — Kornblith et al. (ICML 2019), one pair of feature matrices,
  biased (HSIC₀, the paper's) or unbiased (HSIC₁, Song et al. 2012) estimator.
* :class:`MinibatchCKA` — Nguyen, Raghu & Kornblith (ICLR 2021): unbiased HSIC accumulated over
  minibatches, for *all* layer pairs of two models at once. Each layer's Gram is computed once and
  U-centred; the HSIC of every pair is then one matrix product of flattened Grams (Gram form), or, when
  a layer is narrower than the batch, is computed from the features directly (feature form).
* :func:`cka_matrix` — hooks two models, runs batches through them, returns the layers × layers CKA.
* :func:`semantic_gram`, :func:`relation_gram` — DisWOT's two Grams, shared by its proxy and its loss.

Features are centred per minibatch before any Gram is formed: CKA is invariant to it in exact
arithmetic, but uncentred post-ReLU features lose up to ~0.1 of CKA to fp32 cancellation. Accumulators
stay on the tensors' device (CUDA when they are there) and never call ``.item()`` inside loops.
Degenerate inputs (a constant feature map) give CKA 0, never NaN; fewer than 4 samples (the unbiased
estimator's minimum) raise a clear error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdsearch.exceptions import SimilarityError


def semantic_gram(prelogits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """DisWOT's semantic Gram: classes × classes Gram of dCE/dW of the last linear layer, rows L2-normalised.

    The gradient in closed form, G = (softmax(logits) − onehot)ᵀ · prelogits / B; computed in the inputs'
    dtype and differentiable (the loss trains through it; the proxy passes float64).
    """
    residual = logits.softmax(dim=1) - F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    grad = residual.T @ prelogits.to(logits.dtype) / len(labels)
    return F.normalize(grad @ grad.T, dim=1)


def relation_gram(features: torch.Tensor) -> torch.Tensor:
    """Sample relation Gram (B × B) of flattened feature maps, rows L2-normalised (similarity-preserving KD)."""
    flat = features.flatten(1)
    return F.normalize(flat @ flat.T, dim=1)


def relation_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """‖relation_gram(s) − relation_gram(t)‖²_F / B² (Tung & Mori 2019; DisWOT's relation term)."""
    return (relation_gram(student) - relation_gram(teacher)).pow(2).sum() / student.shape[0] ** 2


def _flat_centred(x: torch.Tensor) -> torch.Tensor:
    x = x.flatten(1)
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x - x.mean(dim=0, keepdim=True)


def _check_n(n: int, unbiased: bool) -> None:
    if unbiased and n < 4:
        raise SimilarityError(f"Unbiased HSIC needs at least 4 samples per batch, got {n}; use a larger batch.")
    if n < 2:
        raise SimilarityError(f"CKA needs at least 2 samples, got {n}; use a larger batch.")


def centre_gram(gram: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """H K H (biased) or the U-centred Gram (unbiased, zero diagonal): ⟨Ũ_K, Ũ_L⟩ / (n(n−3)) is HSIC₁."""
    n = gram.shape[0]
    if not unbiased:
        gram = gram - gram.mean(dim=0, keepdim=True)
        return gram - gram.mean(dim=1, keepdim=True)
    gram = gram.clone()
    gram.fill_diagonal_(0)
    col = gram.sum(dim=0, keepdim=True) / (n - 2)
    row = gram.sum(dim=1, keepdim=True) / (n - 2)
    total = gram.sum() / ((n - 1) * (n - 2))
    gram = gram - col - row + total
    gram.fill_diagonal_(0)
    return gram


def _hsic_scale(n: int, unbiased: bool) -> float:
    return 1.0 / (n * (n - 3)) if unbiased else 1.0 / (n - 1) ** 2


def _cka_from_hsic(xy: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    # Only an exactly-zero self-HSIC (a constant feature map centres to exact zeros) is degenerate;
    # small features legitimately give HSIC values far below any absolute threshold.
    denom = torch.sqrt(torch.clamp(xx, min=0) * torch.clamp(yy, min=0))
    tiny = torch.finfo(denom.dtype).tiny
    return torch.where(denom > tiny, xy / denom.clamp(min=tiny), torch.zeros_like(xy))


def linear_hsic_features(x: torch.Tensor, y: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """HSIC of linear kernels from (centred) features, never forming an n × n Gram: O(n·dx·dy)."""
    n = x.shape[0]
    cross = (x.T @ y).pow(2).sum()  # tr(K L)
    if not unbiased:
        return cross * _hsic_scale(n, False)
    kd, ld = x.pow(2).sum(1), y.pow(2).sum(1)  # Gram diagonals
    k1 = x @ x.sum(0) - kd  # K̃ 1 (diagonal removed)
    l1 = y @ y.sum(0) - ld
    tr = cross - (kd * ld).sum()  # tr(K̃ L̃)
    return (tr + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2.0 * (k1 @ l1) / (n - 2)) * _hsic_scale(n, True)


def linear_cka(x: torch.Tensor, y: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Linear CKA of two (n, …) feature batches; feature form when both are narrower than n, Gram form otherwise."""
    if x.shape[0] != y.shape[0]:
        raise SimilarityError(f"CKA compares the same samples: got {x.shape[0]} and {y.shape[0]} rows.")
    _check_n(x.shape[0], unbiased)
    x, y = _flat_centred(x), _flat_centred(y.to(x.device))
    n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
    if dx * dy < n * (dx + dy):  # feature form is cheaper than forming two n × n Grams
        hsic = lambda a, b: linear_hsic_features(a, b, unbiased)  # noqa: E731
        return _cka_from_hsic(hsic(x, y), hsic(x, x), hsic(y, y))
    kx, ky = centre_gram(_gram(x), unbiased), centre_gram(_gram(y), unbiased)
    return _cka_from_hsic((kx * ky).sum(), (kx * kx).sum(), (ky * ky).sum())


def _gram(x: torch.Tensor) -> torch.Tensor:
    return x @ x.T


def rbf_gram(x: torch.Tensor, sigma_frac: float = 0.8) -> torch.Tensor:
    """Gaussian kernel with σ = ``sigma_frac`` × the median pairwise distance (Kornblith et al.'s choice)."""
    x = _flat_centred(x)
    sq = x.pow(2).sum(1)
    dist2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp(min=0)
    n = x.shape[0]
    off = dist2[~torch.eye(n, dtype=torch.bool, device=x.device)]
    # the midpoint median (as NumPy's): torch.median takes the lower middle value
    median = torch.quantile(off, 0.5) if 0 < off.numel() <= 2**24 else off.median()
    sigma2 = (sigma_frac**2) * median
    if sigma2 <= 0:  # all samples identical: every kernel entry is 1
        return torch.ones_like(dist2)
    return torch.exp(-dist2 / (2.0 * sigma2))


def rbf_cka(x: torch.Tensor, y: torch.Tensor, sigma_frac: float = 0.8, unbiased: bool = False) -> torch.Tensor:
    if x.shape[0] != y.shape[0]:
        raise SimilarityError(f"CKA compares the same samples: got {x.shape[0]} and {y.shape[0]} rows.")
    _check_n(x.shape[0], unbiased)
    kx, ky = centre_gram(rbf_gram(x, sigma_frac), unbiased), centre_gram(rbf_gram(y.to(x.device), sigma_frac), unbiased)
    return _cka_from_hsic((kx * ky).sum(), (kx * kx).sum(), (ky * ky).sum())


class MinibatchCKA:
    """All-pairs linear CKA with unbiased HSIC accumulated over minibatches (Nguyen et al., 2021).

    ``update(features_a, features_b)`` takes one minibatch's per-layer features of model A and model B
    (lists of (n, …) tensors on one device); ``compute()`` returns the (len(A), len(B)) CKA matrix.
    CKA_mb(a, b) = Σ_batches HSIC₁(a, b) / sqrt(Σ HSIC₁(a, a) · Σ HSIC₁(b, b)).
    """

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self._xy: torch.Tensor | None = None
        self._xx: torch.Tensor | None = None
        self._yy: torch.Tensor | None = None
        self.batches = 0

    def update(self, features_a: Sequence[torch.Tensor], features_b: Sequence[torch.Tensor]) -> None:
        if not features_a or not features_b:
            raise SimilarityError("MinibatchCKA.update needs at least one layer's features from each model.")
        n = features_a[0].shape[0]
        if any(f.shape[0] != n for f in (*features_a, *features_b)):
            raise SimilarityError("Every layer's features in one update must hold the same samples (same batch size).")
        _check_n(n, True)
        xy, xx, yy = self._batch_hsic(features_a, features_b, n)
        if self._xy is None:
            self._xy, self._xx, self._yy = xy, xx, yy
        else:
            self._xy += xy
            self._xx += xx
            self._yy += yy
        self.batches += 1

    def _batch_hsic(self, features_a, features_b, n):
        # Gram form: L Grams, each U-centred once, serve all L² pairs through one product of flattened
        # Grams (feature form would redo an n·dₐ·d_b product per pair).
        device = features_a[0].device
        flat = torch.stack([
            centre_gram(_gram(_flat_centred(f.to(device, self.dtype))), unbiased=True).flatten()
            for f in (*features_a, *features_b)
        ])
        hsic = (flat @ flat.T) * _hsic_scale(n, True)
        na = len(features_a)
        diagonal = torch.diagonal(hsic)
        return hsic[:na, na:], diagonal[:na], diagonal[na:]

    def compute(self) -> torch.Tensor:
        if self._xy is None:
            raise SimilarityError("MinibatchCKA.compute called before any update; feed at least one minibatch.")
        return _cka_from_hsic(self._xy, self._xx[:, None], self._yy[None, :])


def _feature_hooks(model: nn.Module, layers: Sequence[str] | None):
    named = dict(model.named_modules())
    if layers is None:
        layers = default_layers(model)
    missing = [name for name in layers if name not in named]
    if missing:
        raise SimilarityError(f"Layers {missing} are not in the model; pick names from model.named_modules().")
    store: dict[str, torch.Tensor] = {}
    handles = [named[name].register_forward_hook(lambda _m, _i, out, name=name: store.__setitem__(name, _first_tensor(out)))
               for name in layers]
    return list(layers), store, handles


def _first_tensor(out):
    from kdsearch.taps import as_logits

    return as_logits(out)


def default_layers(model: nn.Module) -> list[str]:
    """Every residual block / cell when the model has ``stages`` or ``cells``; else every conv and linear layer."""
    for container in ("stages", "cells", "layers", "blocks", "features"):
        seq = getattr(model, container, None)
        if isinstance(seq, nn.Sequential):
            names = []
            for name, child in seq.named_children():
                if isinstance(child, nn.Sequential) and len(child):
                    names.extend(f"{container}.{name}.{sub}" for sub, _ in child.named_children())
                else:
                    names.append(f"{container}.{name}")
            return names
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def cka_matrix(
    model_a: nn.Module,
    model_b: nn.Module,
    batches: Iterable[torch.Tensor],
    layers_a: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
) -> tuple[torch.Tensor, list[str], list[str]]:
    """Minibatch CKA between every hooked layer of two models over ``batches`` of inputs (one pass each)."""
    names_a, store_a, handles_a = _feature_hooks(model_a, layers_a)
    names_b, store_b, handles_b = _feature_hooks(model_b, layers_b)
    meter = MinibatchCKA()
    try:
        for x in batches:
            model_a(x)
            model_b(x)
            meter.update([store_a[n] for n in names_a], [store_b[n] for n in names_b])
    finally:
        for h in handles_a + handles_b:
            h.remove()
    return meter.compute(), names_a, names_b


def kl_div_t(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T²·KL(softmax(t/T) ‖ softmax(s/T)), batch mean (Hinton et al. 2015): the KD losses' and the supernets' term."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1), reduction="batchmean", log_target=True
    ) * (t * t)


__all__ = [
    "kl_div_t",
    "MinibatchCKA",
    "SimilarityError",
    "centre_gram",
    "cka_matrix",
    "default_layers",
    "linear_cka",
    "linear_hsic_features",
    "rbf_cka",
    "rbf_gram",
    "relation_distance",
    "relation_gram",
    "semantic_gram",
]
