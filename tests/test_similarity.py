"""CKA against a direct fp64 reference (NumPy, textbook formulas) on features of real digit images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdsearch.similarity import MinibatchCKA, SimilarityError, cka_matrix, linear_cka, rbf_cka
from kdsearch.spaces import create_model


def _hsic_ref(k: np.ndarray, lg: np.ndarray, unbiased: bool) -> float:
    n = k.shape[0]
    if not unbiased:
        h = np.eye(n) - 1.0 / n
        return float(np.trace(k @ h @ lg @ h)) / (n - 1) ** 2
    k, lg = k.copy(), lg.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(lg, 0)
    one = np.ones(n)
    return float(
        np.trace(k @ lg) + (one @ k @ one) * (one @ lg @ one) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (one @ k @ lg @ one)
    ) / (n * (n - 3))


def _cka_ref(x: np.ndarray, y: np.ndarray, unbiased: bool = False, kernel=None) -> float:
    # centring the features first changes nothing in exact arithmetic but keeps the fp64 reference exact
    kernel = kernel or (lambda a: (a - a.mean(0)) @ (a - a.mean(0)).T)
    k, lg = kernel(x), kernel(y)
    return _hsic_ref(k, lg, unbiased) / np.sqrt(_hsic_ref(k, k, unbiased) * _hsic_ref(lg, lg, unbiased))


@pytest.fixture(scope="module")
def features(digits_task):
    """Post-ReLU block outputs of two random-init CIFAR ResNets on 3 batches of 48 real digit images."""
    torch.manual_seed(0)
    a = create_model({"family": "resnet_cifar", "depth1": 1, "depth2": 1, "depth3": 1}, num_classes=10, in_chans=1).eval()
    b = create_model({"family": "resnet_cifar", "depth1": 3, "depth2": 1, "depth3": 1, "width1": 8}, num_classes=10,
                     in_chans=1).eval()
    images = digits_task.normalize(digits_task.train_images[:144])
    out = []
    with torch.no_grad():
        for x in images.split(48):
            fa = [a.stages[:i + 1](a.act1(a.bn1(a.conv1(x)))) for i in range(3)]
            fb = [b.stages[:i + 1](b.act1(b.bn1(b.conv1(x)))) for i in range(3)]
            out.append((fa, fb))
    return out


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_matches_fp64_reference_in_both_forms(features, unbiased):
    fa, fb = features[0]
    # pooled (48 × 64, narrow → feature form) and flattened maps (48 × 1024+, wide → Gram form)
    pairs = [(fa[2].mean((2, 3)), fb[2].mean((2, 3))), (fa[0].flatten(1), fb[1].flatten(1)), (fa[2].mean((2, 3)), fb[0].flatten(1))]
    for x, y in pairs:
        ref = _cka_ref(x.double().numpy(), y.double().numpy(), unbiased)
        assert abs(float(linear_cka(x, y, unbiased=unbiased)) - ref) <= 1e-6
        assert abs(float(linear_cka(x.double(), y.double(), unbiased=unbiased)) - ref) <= 1e-10


def test_uncentred_post_relu_features_are_centred_first(features):
    x, y = features[0][0][0].flatten(1) + 50.0, features[0][1][1].flatten(1)  # large common offset
    ref = _cka_ref(x.double().numpy(), y.double().numpy(), True)
    assert abs(float(linear_cka(x, y, unbiased=True)) - ref) <= 1e-6


def test_rbf_cka_matches_reference(features):
    x, y = features[0][0][1].flatten(1), features[0][1][2].flatten(1)

    def rbf(a, frac=0.8):
        a = a - a.mean(0)
        d2 = ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
        med = np.median(d2[~np.eye(len(a), dtype=bool)])
        return np.exp(-d2 / (2 * frac**2 * med))

    for unbiased in (False, True):
        ref = _cka_ref(x.double().numpy(), y.double().numpy(), unbiased, kernel=rbf)
        assert abs(float(rbf_cka(x.double(), y.double(), unbiased=unbiased)) - ref) <= 1e-8


def test_minibatch_all_pairs_matches_reference(features):
    meter = MinibatchCKA()
    sums = {}
    for fa, fb in features:
        meter.update(fa, fb)
        ka = [f.flatten(1).double().numpy() for f in fa]
        kb = [f.flatten(1).double().numpy() for f in fb]
        ka = [(f - f.mean(0)) @ (f - f.mean(0)).T for f in ka]
        kb = [(f - f.mean(0)) @ (f - f.mean(0)).T for f in kb]
        for i, k in enumerate(ka):
            sums[("a", i)] = sums.get(("a", i), 0.0) + _hsic_ref(k, k, True)
            for j, lg in enumerate(kb):
                sums[(i, j)] = sums.get((i, j), 0.0) + _hsic_ref(k, lg, True)
        for j, lg in enumerate(kb):
            sums[("b", j)] = sums.get(("b", j), 0.0) + _hsic_ref(lg, lg, True)
    got = meter.compute()
    assert got.shape == (3, 3) and meter.batches == 3
    for i in range(3):
        for j in range(3):
            ref = sums[(i, j)] / np.sqrt(sums[("a", i)] * sums[("b", j)])
            assert abs(float(got[i, j]) - ref) <= 1e-6
    assert abs(float(got[0, 0]) - float(got[2, 2])) > 1e-3  # different layers really differ


def test_cka_matrix_hooks_models_and_self_similarity_is_one(digits_task):
    torch.manual_seed(1)
    model = create_model({"family": "resnet_cifar", "depth1": 1, "depth2": 2, "depth3": 1}, num_classes=10, in_chans=1).eval()
    batches = digits_task.normalize(digits_task.train_images[:96]).split(32)
    matrix, names_a, names_b = cka_matrix(model, model, batches)
    assert names_a == names_b and len(names_a) == 4
    assert torch.allclose(torch.diagonal(matrix), torch.ones(4), atol=1e-5)
    assert (matrix <= 1 + 1e-5).all() and not torch.isnan(matrix).any()


def test_degenerate_inputs_never_nan_and_too_few_samples_error():
    const = torch.ones(16, 8)
    other = torch.arange(16 * 8, dtype=torch.float32).reshape(16, 8).sin()
    assert float(linear_cka(const, other)) == 0.0
    assert float(linear_cka(const, other, unbiased=True)) == 0.0
    assert float(rbf_cka(const, other)) == 0.0
    meter = MinibatchCKA()
    meter.update([const], [other])
    assert float(meter.compute()[0, 0]) == 0.0
    with pytest.raises(SimilarityError, match="at least 4 samples"):
        linear_cka(other[:3], other[:3], unbiased=True)
    with pytest.raises(SimilarityError, match="same samples"):
        linear_cka(other[:8], other)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_minibatch_cka_on_cuda_matches_cpu(features):
    cpu, gpu = MinibatchCKA(), MinibatchCKA()
    for fa, fb in features:
        cpu.update(fa, fb)
        gpu.update([f.cuda() for f in fa], [f.cuda() for f in fb])
    out = gpu.compute()
    assert out.is_cuda
    assert torch.allclose(out.cpu(), cpu.compute(), atol=1e-5)
