import pytest
import torch
import torch.nn as nn

from kdsearch.cost import count_flops, count_params, measure_latency, parse_budget
from kdsearch.exceptions import BudgetError
from kdsearch.spaces import create_model


@pytest.mark.parametrize(
    "text, metric, limit",
    [("10ms", "latency_p50_ms", 10.0), ("500us", "latency_p50_ms", 0.5), ("1.5 s", "latency_p50_ms", 1500.0),
     ("300MFLOPs", "flops", 3e8), ("2GFLOPs", "flops", 2e9), ("5Mparams", "params", 5e6), ("250kparams", "params", 2.5e5)],
)
def test_parse_budget(text, metric, limit):
    budget = parse_budget(text)
    assert budget.metric == metric and budget.limit == pytest.approx(limit)


@pytest.mark.parametrize("text", ["10", "fast", "10 parsecs", "-3ms", "0ms", "ms10"])
def test_malformed_budget(text):
    with pytest.raises(BudgetError, match="budget"):
        parse_budget(text)


def test_flops_of_a_known_layer():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 4 * 4, 10, bias=False))
    # conv: 2 · (8·4·4 outputs) · (3·3·3 MACs each); linear: 2 · 128 · 10
    assert count_flops(model, (3, 4, 4)) == 2 * 8 * 16 * 27 + 2 * 128 * 10
    assert count_params(model) == 8 * 27 + 1280


def test_latency_statistics_are_robust_and_ordered():
    small = create_model({"family": "resnet_cifar", "depth1": 1, "depth2": 1, "depth3": 1, "width1": 8, "width2": 16, "width3": 32}, num_classes=10)
    big = create_model({"family": "resnet_cifar", "depth1": 5, "depth2": 5, "depth3": 5, "width1": 32, "width2": 64, "width3": 128}, num_classes=10)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # (the suite's workers run with one thread: make the pin observable)
    try:
        s = measure_latency(small, (3, 32, 32), threads=1, max_time_s=0.5)
        b = measure_latency(big, (3, 32, 32), threads=1, max_time_s=0.5)
        assert torch.get_num_threads() == 2  # the pin is undone afterwards
    finally:
        torch.set_num_threads(before)
    for stats in (s, b):
        assert stats.repeats >= 15 and stats.threads == 1 and stats.batch_size == 1
    # ~60x the FLOPs: the median must see it even on a noisy machine
    assert b.p50_ms > 3 * s.p50_ms
    assert s.key == "cpu|t1|b1|3x32x32"


def test_latency_batch_size_is_recorded():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    stats = measure_latency(model, (3, 2, 2), batch_size=4, max_time_s=0.1)
    assert stats.batch_size == 4 and stats.input_shape == (3, 2, 2) and stats.timer == "perf_counter"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_latency_on_cuda_uses_events(monkeypatch):
    created = []

    class CountingEvent(torch.cuda.Event):
        def __new__(cls, *args, **kwargs):
            event = super().__new__(cls, *args, **kwargs)
            created.append(kwargs.get("enable_timing", False))
            return event

    monkeypatch.setattr(torch.cuda, "Event", CountingEvent)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU())
    stats = measure_latency(model, (3, 32, 32), device="cuda")
    assert stats.device.startswith("cuda") and stats.p50_ms > 0 and stats.timer == "cuda_events"
    # two timing events per repeat: every sample is device time between a recorded start and end
    assert len(created) == 2 * stats.repeats and all(created)


# --------------------------------------------------------------------------- runtimes
RESNET8 = {"family": "resnet_cifar", "depth1": 1, "depth2": 1, "depth3": 1, "width1": 8, "width2": 16, "width3": 32}
QUICK = {"max_time_s": 0.2, "min_repeats": 5}


@pytest.mark.parametrize("runtime", ["torch", "torchscript", "onnxruntime"])
def test_each_runtime_times_a_candidate_and_says_which_it_was(runtime):
    pytest.importorskip("onnxruntime")
    model = create_model(RESNET8, num_classes=10)
    stats = measure_latency(model, (3, 16, 16), runtime=runtime, **QUICK)
    assert stats.runtime == runtime and stats.p50_ms > 0 and stats.repeats >= 5
    assert stats.key.endswith("" if runtime == "torch" else f"|{runtime}")


@pytest.mark.slow
def test_compile_runtime_compiles_once_and_times_the_compiled_network():
    model = create_model(RESNET8, num_classes=10)
    stats = measure_latency(model, (3, 16, 16), runtime="compile", **QUICK)
    assert stats.runtime == "compile" and stats.p50_ms > 0


class _Spectral(nn.Module):
    """An FFT: the TorchScript-based ONNX exporter has no symbolic for it."""

    def forward(self, x):
        return torch.fft.fft2(x).abs().mean(dim=(2, 3))


def test_a_network_the_runtime_cannot_run_is_one_clear_error():
    from kdsearch.exceptions import RuntimeUnavailable

    pytest.importorskip("onnxruntime")
    with pytest.raises(RuntimeUnavailable, match="onnxruntime runtime cannot run _Spectral.*--runtime torch"):
        measure_latency(_Spectral(), (3, 8, 8), runtime="onnxruntime", **QUICK)


def test_unknown_runtime_and_missing_onnxruntime_name_the_fix(monkeypatch):
    import sys

    from kdsearch.cost import get_runtime
    from kdsearch.exceptions import RuntimeUnavailable

    with pytest.raises(RuntimeUnavailable, match="Unknown runtime 'onnx'.*onnxruntime"):
        get_runtime("onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(RuntimeUnavailable, match=r"pip install 'kdsearch\[onnx\]'"):
        get_runtime("onnxruntime").check(torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("runtime", ["torchscript", "onnxruntime"])
def test_runtimes_on_cuda(runtime):
    from kdsearch.exceptions import RuntimeUnavailable

    model = create_model(RESNET8, num_classes=10)
    try:
        stats = measure_latency(model, (3, 32, 32), device="cuda", runtime=runtime, **QUICK)
    except RuntimeUnavailable as exc:  # onnxruntime missing, or without its CUDA provider, says what to install
        assert "install" in str(exc)
        return
    assert stats.device.startswith("cuda") and stats.timer == "perf_counter+sync" and stats.p50_ms > 0


# --------------------------------------------------------------------------- relative budgets
def test_relative_budget_compares_with_the_reference_timed_beside_the_candidate():
    budget = parse_budget("0.8x:resnet18")
    assert (budget.factor, budget.reference, budget.metric) == (0.8, "resnet18", "latency_p50_ms")
    assert not budget.resolved
    budget = budget.with_reference(10.0)
    assert budget.resolved and budget.limit == pytest.approx(8.0)
    assert budget.fits({"latency_p50_ms": 7.9}) and not budget.fits({"latency_p50_ms": 8.1})
    # beside a reference that ran 12 % slower (a loaded machine), the same candidate is judged against that reading
    assert budget.fits({"latency_p50_ms": 8.5, "reference_p50_ms": 11.2})
    assert not budget.fits({"latency_p50_ms": 8.5, "reference_p50_ms": 10.0})
    # on the run's scale: 8.5 ms beside an 11.2 ms reference is 8.5 / 11.2 of the reference, i.e. 7.6 ms at the start
    assert budget.limit_for({"latency_p50_ms": 8.5, "reference_p50_ms": 11.2}) == pytest.approx(8.96)
    assert budget.comparable({"latency_p50_ms": 8.5, "reference_p50_ms": 11.2}) == pytest.approx(8.5 * 10 / 11.2)
    assert budget.comparable({"latency_p50_ms": 8.5}) == 8.5  # no reading beside it: the run's limit
    assert parse_budget("10ms").comparable({"latency_p50_ms": 8.5, "reference_p50_ms": 3.0}) == 8.5  # absolute budget
    assert parse_budget('0.5x:{"family": "resnet_cifar"}').reference == '{"family": "resnet_cifar"}'
    with pytest.raises(BudgetError, match="positive factor"):
        parse_budget("0x:resnet18")


def test_measure_against_reference_orders_two_networks_and_times_the_reference_around_the_candidate():
    from kdsearch.cost import measure_against_reference

    small = create_model(RESNET8, num_classes=10)
    big = create_model({**RESNET8, "depth1": 5, "depth2": 5, "depth3": 5, "width1": 32, "width2": 64, "width3": 128},
                       num_classes=10)
    ours, reference = measure_against_reference(small, big, (3, 32, 32), rounds=3, **QUICK)
    assert ours.p50_ms < reference.p50_ms
    assert ours.runtime == reference.runtime == "torch"
