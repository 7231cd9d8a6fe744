import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kdsearch.exceptions import ProxyError
from kdsearch.proxies import ProxyContext, list_proxies, parse_proxies, score
from kdsearch.proxies.diswot import classifier_grad_gram
from kdsearch.spaces import create_model
from kdsearch.taps import forward_taps


class _Wrap:
    """Anything with .taps(x) serves as the proxies' teacher."""

    def __init__(self, model):
        self.model = model.eval()

    @torch.no_grad()
    def taps(self, x):
        return forward_taps(self.model, x)


def _cfg(d, w):
    return {"family": "resnet_cifar", "depth1": d, "depth2": d, "depth3": d, "width1": w, "width2": 2 * w, "width3": 4 * w}


@pytest.fixture(scope="module")
def ctx(digits_task):
    torch.manual_seed(0)
    teacher = create_model(_cfg(3, 16), num_classes=10, in_chans=1)
    x, y = digits_task.sample_batch(64)
    return ProxyContext(teacher=_Wrap(teacher), images=x, labels=y, num_classes=10, input_shape=(1, 32, 32))


def test_registry_and_unknown_proxy():
    assert {"params", "flops", "diswot", "diswot_semantic", "diswot_relation"} <= set(list_proxies())
    assert parse_proxies("diswot, params") == ["diswot", "params"]
    with pytest.raises(ProxyError, match="Did you mean 'diswot'"):
        parse_proxies("diswat")


def test_closed_form_semantic_gram_is_the_classifier_gradient(digits_task):
    torch.manual_seed(0)
    model = create_model(_cfg(1, 8), num_classes=10, in_chans=1)
    x, y = digits_task.sample_batch(32)
    model.eval()
    F.cross_entropy(model(x), y).backward()
    grad = model.fc.weight.grad.double()
    expected = F.normalize(grad @ grad.T, dim=1)
    taps = forward_taps(model, x)
    assert torch.allclose(classifier_grad_gram(taps.prelogits, taps.logits, y), expected, atol=1e-6)


def test_diswot_is_zero_distance_for_the_teacher_itself(ctx):
    out = score(["diswot"], ctx.teacher.model, ctx, {})
    assert out["diswot"] == pytest.approx(0.0, abs=1e-9)
    assert out["diswot_ms"] > 0


def test_diswot_works_across_widths_and_prefers_the_teacher_like_student(ctx):
    torch.manual_seed(5)
    near = create_model(_cfg(3, 16), num_classes=10, in_chans=1)  # teacher's architecture, other init
    far = create_model(_cfg(1, 4), num_classes=10, in_chans=1)
    s_near = score(["diswot", "diswot_semantic", "diswot_relation"], near, ctx, {})
    s_far = score(["diswot", "diswot_semantic", "diswot_relation"], far, ctx, {})
    for s in (s_near, s_far):
        assert s["diswot"] < 0 and s["diswot"] == pytest.approx(s["diswot_semantic"] + s["diswot_relation"])
    assert s_near["diswot_relation"] > s_far["diswot_relation"]


def test_proxies_are_deterministic(ctx):
    torch.manual_seed(1)
    model = create_model(_cfg(1, 8), num_classes=10, in_chans=1)
    assert score(["diswot"], model, ctx, {})["diswot"] == score(["diswot"], model, ctx, {})["diswot"]


def test_size_proxies(ctx):
    model = create_model(_cfg(1, 8), num_classes=10, in_chans=1)
    out = score(["params", "flops"], model, ctx, {})
    assert out["params"] == sum(p.numel() for p in model.parameters())
    assert out["flops"] > out["params"]


class _TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.body(x)), {"aux": 1}


def test_models_returning_tuples_are_scored(ctx):
    out = score(["diswot"], _TupleNet(), ctx, {})
    assert out["diswot"] < 0
