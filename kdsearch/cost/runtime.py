"""Deployment runtimes: how a network is run while its latency is measured, and the format it is exported in.

A user's budget is a latency in the runtime they ship with; the same network's latency differs between eager
PyTorch, TorchScript, ``torch.compile`` and ONNX Runtime by more than the margins a budget is met by
(``benchmarks/latency_runtimes.py``). A runtime turns a module and an example input into ``run()``: one forward
pass, ready to be timed (compiled, exported, warmed by one call).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from kdsearch.exceptions import RuntimeUnavailable
from kdsearch.registry import Registry


@dataclass(frozen=True)
class Runtime:
    name: str
    export_format: str  # the format `kdsearch export` writes by default for a run measured in this runtime
    description: str
    # (eval-mode module on its device, example input, CPU threads) -> run(): one forward pass
    prepare: Callable[[nn.Module, torch.Tensor, int], Callable[[], object]]
    # raises RuntimeUnavailable when the runtime is not usable on this machine and device
    check: Callable[[torch.device], None] = lambda device: None
    # the autograd mode calls run in (first call and timing alike: torch.compile guards on it)
    context: Callable[[], contextlib.AbstractContextManager] = torch.inference_mode

    def compile(self, model: nn.Module, x: torch.Tensor, threads: int = 1) -> Callable[[], object]:
        """``run()`` for ``model`` on ``x``; any failure is one RuntimeUnavailable naming the runtime."""
        self.check(x.device)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer/exporter warnings about Python control flow are not the user's
                with torch.inference_mode(False):
                    run = self.prepare(model, x, threads)
                with self.context():
                    run()  # the first call compiles / allocates; a network the runtime cannot run fails here
        except RuntimeUnavailable:
            raise
        except Exception as exc:  # tracing, export and compilation raise anything
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise RuntimeUnavailable(
                f"The {self.name} runtime cannot run {type(model).__name__} ({type(exc).__name__}: {first}); measure with "
                "--runtime torch, or pick a space whose networks this runtime supports."
            ) from None
        return run


RUNTIMES: Registry[Runtime] = Registry("runtime", RuntimeUnavailable)


def get_runtime(name: str) -> Runtime:
    return RUNTIMES.get(name)


def list_runtimes() -> list[str]:
    return RUNTIMES.names()


def _eager(model: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], object]:
    return lambda: model(x)  # timed inside Runtime.context (inference mode)


def _torchscript(model: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], object]:
    # trace + freeze: what a TorchScript deployment ships (weights inlined, conv+bn folded)
    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(model.eval(), x, check_trace=False))
    return _eager(frozen, x, threads)


def _check_compiler(device: torch.device) -> None:
    if device.type == "cpu" and not (shutil.which("cc") or shutil.which("gcc") or shutil.which("g++")):
        raise RuntimeUnavailable("--runtime compile needs a C++ compiler on the CPU (torch.compile's inductor "
                                 "generates C++); install one (apt-get install g++) or use --runtime torchscript.")


def _compile(model: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], object]:
    import torch._dynamo

    # Every candidate shares its class's forward code object: without a reset, dynamo stops recompiling after
    # cache_size_limit models and silently runs the rest eagerly.
    torch._dynamo.reset()
    compiled = torch.compile(model.eval(), dynamic=False)
    return _eager(compiled, x, threads)


def _check_onnxruntime(device: torch.device) -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime as ort
    except ImportError:
        raise RuntimeUnavailable("--runtime onnxruntime needs ONNX Runtime; install it with: pip install 'kdsearch[onnx]' "
                                 "(onnxruntime-gpu for the CUDA provider).") from None
    if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeUnavailable("--runtime onnxruntime on a GPU needs ONNX Runtime's CUDA provider; install "
                                 "onnxruntime-gpu (in place of onnxruntime) or measure on --device cpu.")


def onnx_bytes(model: nn.Module, x: torch.Tensor) -> bytes:
    """The model as ONNX (the exporter `kdsearch export --format onnx` uses), in memory."""
    buffer = io.BytesIO()
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model.eval(), (x,), buffer, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return buffer.getvalue()


def _onnxruntime(model: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], object]:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1  # the same thread count as torch gets
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    cuda = x.device.type == "cuda"
    providers = [("CUDAExecutionProvider", {"device_id": x.device.index or 0})] if cuda else ["CPUExecutionProvider"]
    session = ort.InferenceSession(onnx_bytes(model.cpu(), x.cpu()), options, providers=providers)
    model.to(x.device)
    if not cuda:
        feed = {"images": x.numpy()}
        return lambda: session.run(None, feed)
    # On the GPU the input stays in device memory (no host copy timed): bound by pointer, output bound on the device.
    binding = session.io_binding()
    x = x.contiguous()
    binding.bind_input("images", "cuda", x.device.index or 0, np.float32, list(x.shape), x.data_ptr())
    binding.bind_output("logits", "cuda", x.device.index or 0)

    def run():
        session.run_with_iobinding(binding)
        return x  # keeps the bound input alive

    return run


RUNTIMES.add("torch", Runtime("torch", "safetensors", "eager PyTorch (inference mode)", _eager))
RUNTIMES.add("torchscript", Runtime("torchscript", "torchscript", "torch.jit.trace + freeze", _torchscript))
RUNTIMES.add("compile", Runtime("compile", "safetensors", "torch.compile (inductor), compiled once per network", _compile,
                                _check_compiler, torch.no_grad))
RUNTIMES.add("onnxruntime", Runtime("onnxruntime", "onnx", "ONNX Runtime (CPU provider; CUDA provider on a GPU)",
                                    _onnxruntime, _check_onnxruntime, contextlib.nullcontext))

__all__ = ["RUNTIMES", "Runtime", "get_runtime", "list_runtimes", "onnx_bytes"]
