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


# --------------------------------------------------------------------------- the zero-cost zoo
ZOO = ["grad_norm", "snip", "grasp", "fisher", "jacob_cov", "nwot", "synflow", "zico", "zen", "meco", "cka", "diswot_randinit"]


class _DictNet(_TupleNet):
    def forward(self, x):
        return {"logits": self.head(self.body(x)), "features": x}


def test_every_registered_proxy_is_listed():
    assert set(ZOO) | {"params", "flops", "diswot", "diswot_semantic", "diswot_relation", "supernet", "supernet_kd"} == set(list_proxies())


def test_supernet_proxies_without_a_trained_supernet_say_how_to_get_one(ctx):
    from kdsearch.exceptions import ProxyError

    model = create_model(_cfg(1, 8), num_classes=10, in_chans=1)
    with pytest.raises(ProxyError, match="--proxy supernet"):
        score(["supernet"], model, ctx, {"config": _cfg(1, 8), "latency_p50_ms": 1.0})


@pytest.mark.parametrize("name", ZOO)
def test_zoo_proxy_is_finite_deterministic_and_leaves_the_model_untouched(ctx, name):
    torch.manual_seed(3)
    model = create_model(_cfg(1, 8), num_classes=10, in_chans=1).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = score([name], model, ctx, {})
    second = score([name], model, ctx, {})
    assert first[name] == second[name]
    assert torch.isfinite(torch.tensor(first[name])) and first[f"{name}_ms"] > 0
    assert not model.training and all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("net", [_TupleNet, _DictNet])
def test_zoo_proxy_copes_with_tuple_and_dict_outputs(ctx, name, net):
    torch.manual_seed(0)
    assert torch.isfinite(torch.tensor(score([name], net(), ctx, {})[name]))


def test_synflow_batchnorm_is_the_identity_with_a_positive_eps():
    from kdsearch.proxies.zoo import _bn_as_identity

    bn = torch.nn.BatchNorm2d(4).double()
    bn.running_var.fill_(3.0)
    _bn_as_identity(bn)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    assert bn.eps > 0 and torch.equal(bn(x), x)  # torch 2.11 refuses eps = 0 (seen on the H200)


def test_synflow_on_a_linear_net_is_twice_the_path_sum(ctx):
    """For f(x) = W2 W1 x with |W|, each layer's Σ W ⊙ ∂R/∂W equals R = 1ᵀ|W2||W1|1, so SynFlow = 2R."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 6, bias=False), nn.Linear(6, 10, bias=False))
    w1, w2 = net[1].weight.detach().double().abs(), net[2].weight.detach().double().abs()
    expected = 2 * float(w2.sum(0) @ w1.sum(1))
    assert score(["synflow"], net, ctx, {})["synflow"] == pytest.approx(expected, rel=1e-9)


def test_grad_norm_and_snip_match_autograd(ctx):
    torch.manual_seed(0)
    model = create_model(_cfg(1, 8), num_classes=10, in_chans=1)
    model.train()
    F.cross_entropy(model(ctx.images), ctx.labels).backward()
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    grad_norm = sum(float(m.weight.grad.norm()) for m in layers)
    snip = sum(float((m.weight.grad * m.weight).abs().sum()) for m in layers)
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():  # the proxies run in train mode; reset BN stats the manual pass updated
        fresh = create_model(_cfg(1, 8), num_classes=10, in_chans=1)
        model.load_state_dict({k: v for k, v in fresh.state_dict().items() if "running" in k or "num_batches" in k}, strict=False)
    out = score(["grad_norm", "snip"], model, ctx, {})
    assert out["grad_norm"] == pytest.approx(grad_norm, rel=1e-5)
    assert out["snip"] == pytest.approx(snip, rel=1e-5)


def test_nwot_is_the_log_det_of_the_hamming_kernel(ctx):
    """A lone ReLU on the input: codes are the input pixels' signs, K_ij = #agreeing units."""
    net = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(32 * 32, 10))
    x = ctx.images[:16]
    small = ProxyContext(teacher=None, images=x, labels=ctx.labels[:16], num_classes=10, input_shape=(1, 32, 32))
    c = (x.flatten(1) > 0).double()
    k = c @ c.T + (1 - c) @ (1 - c).T
    assert score(["nwot"], net, small, {})["nwot"] == pytest.approx(float(torch.linalg.slogdet(k)[1]), rel=1e-9)


def test_meco_is_the_minimum_eigenvalue_of_channel_correlation(ctx):
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 32 * 32, 10))
    fea = net[0](ctx.images[:1]).detach()[0].flatten(1).double()
    expected = float(torch.linalg.eigvalsh(torch.corrcoef(fea))[0])
    assert score(["meco"], net, ctx, {})["meco"] == pytest.approx(expected, rel=1e-6)


def test_bigger_students_score_higher_on_size_like_proxies(ctx):
    torch.manual_seed(0)
    small = create_model(_cfg(1, 4), num_classes=10, in_chans=1)
    big = create_model(_cfg(3, 16), num_classes=10, in_chans=1)
    for name in ("synflow", "nwot", "zen"):
        assert score([name], big, ctx, {})[name] > score([name], small, ctx, {})[name], name


def test_cka_to_the_teacher_is_one_for_the_teacher_itself(ctx):
    assert score(["cka"], ctx.teacher.model, ctx, {})["cka"] == pytest.approx(1.0, abs=1e-5)


# --------------------------------------------------------------------------- ensembles
def test_ensemble_ranks_within_the_reference_population(ctx):
    from dataclasses import replace

    from kdsearch.proxies.ensemble import percentile

    sizes = [(1, 4), (1, 8), (3, 8), (3, 16)]
    ref_ctx = replace(ctx, cache={}, reference_models=lambda: [create_model(_cfg(d, w), num_classes=10, in_chans=1) for d, w in sizes])
    mid = create_model(_cfg(2, 8), num_classes=10, in_chans=1)
    out = score(["params+2*flops", "params"], mid, ref_ctx, {})
    # params and FLOPs of depth-2 width-8 both sit between the 2nd and 3rd reference models: percentile 0.5
    assert out["params+2*flops"] == pytest.approx(0.5)
    assert percentile(3.0, torch.tensor([1.0, 3.0, 5.0, 7.0])) == pytest.approx(0.375)
    with pytest.raises(ProxyError, match="reference population"):
        score(["params+flops"], mid, replace(ctx, cache={}), {})


def test_ensemble_names_are_validated():
    from kdsearch.proxies.ensemble import DEFAULT_PROXY

    assert parse_proxies("default") == parse_proxies(["default"]) == [DEFAULT_PROXY]
    with pytest.raises(ProxyError, match="Did you mean 'synflow'"):
        parse_proxies("params+synflaw")
    with pytest.raises(ProxyError, match="WEIGHT\\*NAME"):
        parse_proxies("params+2*")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ZOO + ["diswot"])
def test_zoo_proxy_on_cuda_agrees_with_cpu(ctx, name):
    from dataclasses import replace

    torch.manual_seed(3)
    model = create_model(_cfg(1, 8), num_classes=10, in_chans=1)
    cpu = score([name], model, ctx, {})[name]
    teacher = _Wrap(ctx.teacher.model.cuda())
    gpu_ctx = replace(ctx, cache={}, teacher=teacher, images=ctx.images.cuda(), labels=ctx.labels.cuda())
    try:
        gpu = score([name], model.cuda(), gpu_ctx, {})[name]
    finally:
        ctx.teacher.model.cpu()
    assert gpu == pytest.approx(cpu, rel=1e-3, abs=1e-4)


def test_default_proxy_is_the_one_the_committed_evidence_chose():
    import json
    from pathlib import Path

    from kdsearch.proxies.ensemble import DEFAULT_PROXY

    evidence = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "proxy_rank.json"
    if not evidence.exists():
        pytest.skip("benchmarks/results/proxy_rank.json not committed yet")
    assert json.loads(evidence.read_text())["default_proxy"] == DEFAULT_PROXY


def test_a_plain_module_serves_as_the_teacher(ctx):
    from dataclasses import replace

    torch.manual_seed(2)
    model = create_model(_cfg(1, 8), num_classes=10, in_chans=1)
    plain = replace(ctx, teacher=ctx.teacher.model, cache={})
    for name in ("diswot", "cka", "diswot_randinit"):
        assert score([name], model, plain, {})[name] == score([name], model, replace(ctx, cache={}), {})[name]
