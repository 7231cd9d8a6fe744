"""Export: write a distilled student as safetensors (+ student.yaml), TorchScript or ONNX.

Every export is verified: a batch of real validation images saved with the run goes through the
exported artefact and the in-memory model, and the max absolute difference is reported.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from kdsearch._util import atomic_path
from kdsearch.cost import get_runtime
from kdsearch.distill.ranking import best_first
from kdsearch.exceptions import ExportError
from kdsearch.registry import Registry
from kdsearch.run import RunFolder, StudentFolder
from kdsearch.spaces import create_model

TOLERANCE = 1e-3


@dataclass
class ExportResult:
    path: Path
    format: str
    candidate_id: str
    accuracy: float
    max_abs_diff: float


# format → writer(model, sample batch, StudentFolder) -> (artefact path, the artefact's outputs on the sample)
Writer = Callable[[nn.Module, torch.Tensor, StudentFolder], tuple[Path, torch.Tensor]]
FORMATS: Registry[Writer] = Registry("export format", ExportError)


def _pick(folder: RunFolder, trial: int | None) -> dict:
    candidates = folder.candidates()
    distilled = candidates[candidates["distilled_accuracy"].notna() & candidates["within_budget"].astype(bool)]
    if distilled.empty:
        raise ExportError(f"Run {folder.path} has no distilled student within budget; finish it with 'kdsearch find --out {folder.path}' first.")
    if trial is not None:
        row = candidates[candidates["trial"] == trial]
        if row.empty:
            raise ExportError(f"Run {folder.path} has no trial {trial}; 'kdsearch report {folder.path}' lists the trials.")
        if row["distilled_accuracy"].isna().all():
            trials = ", ".join(str(t) for t in distilled["trial"])
            raise ExportError(f"Trial {trial} of {folder.path} was not distilled; export one of trials {trials}, or use --best.")
        return row.iloc[0].to_dict()
    return best_first(distilled, folder.data_record().get("val_size")).iloc[0].to_dict()


def load_run_student(run_dir: str | Path | RunFolder, *, best: bool = True, trial: int | None = None) -> tuple[nn.Module, dict]:
    """The distilled student of a run (best, or by trial number) and its metadata."""
    folder = run_dir if isinstance(run_dir, RunFolder) else RunFolder.open(run_dir, need_candidates=True)
    row = _pick(folder, trial)
    data = folder.data_record()
    config = json.loads(row["config"])
    model = create_model(config, num_classes=data["num_classes"], in_chans=data["input_shape"][0])
    folder.student(row["candidate_id"]).load_weights(model, f" re-run 'kdsearch find --out {folder.path}' to distil the student again.")
    meta = {
        "candidate_id": row["candidate_id"], "trial": int(row["trial"]), "config": config,
        "num_classes": data["num_classes"], "class_names": data["class_names"], "input_shape": data["input_shape"],
        "mean": data["mean"], "std": data["std"], "val_accuracy": float(row["distilled_accuracy"]),
        "latency_p50_ms": float(row["latency_p50_ms"]), "params": int(row["params"]), "flops": int(row["flops"]),
    }
    return model.eval(), meta


def load_student(directory: str | Path) -> nn.Module:
    """Rebuild an exported student (safetensors + student.yaml) as an eval-mode nn.Module."""
    folder = StudentFolder(directory)
    meta = folder.meta()
    model = create_model(meta["config"], num_classes=meta["num_classes"], in_chans=meta["input_shape"][0])
    folder.load_weights(model)
    model.eval()
    model.kdsearch_meta = meta  # input shape, normalisation and class names travel with the model
    return model


@FORMATS.register("safetensors")
def _safetensors(model: nn.Module, sample: torch.Tensor, out: StudentFolder) -> tuple[Path, torch.Tensor]:
    out.write_weights(model)  # student.yaml is already there (export writes it first)
    with torch.no_grad():
        return out.weights, load_student(out.path)(sample)


@FORMATS.register("torchscript")
def _torchscript(model: nn.Module, sample: torch.Tensor, out: StudentFolder) -> tuple[Path, torch.Tensor]:
    with torch.no_grad():
        scripted = torch.jit.trace(model, sample[:1])
    with atomic_path(out.torchscript) as tmp:
        torch.jit.save(scripted, str(tmp))
    with torch.no_grad():
        return out.torchscript, torch.jit.load(str(out.torchscript))(sample)


@FORMATS.register("onnx")
def _onnx(model: nn.Module, sample: torch.Tensor, out: StudentFolder) -> tuple[Path, torch.Tensor]:
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError:
        raise ExportError("ONNX export needs the onnx extra; install it with: pip install 'kdsearch[onnx]'.") from None
    with atomic_path(out.onnx) as tmp:
        torch.onnx.export(
            model, (sample[:1],), str(tmp), input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
        )
    session = ort.InferenceSession(str(out.onnx), providers=["CPUExecutionProvider"])
    return out.onnx, torch.from_numpy(session.run(None, {"images": sample.numpy()})[0])


def export(
    run_dir: str | Path,
    *,
    best: bool = True,
    trial: int | None = None,
    format: str | None = None,
    out: str | Path | None = None,
) -> ExportResult:
    """Write the chosen student of a run in ``format`` (default: the format of the runtime the run measured latency
    in), verified against the trained model on real images."""
    folder = RunFolder.open(run_dir, need_candidates=True)
    if format is None:
        format = get_runtime(folder.settings().runtime).export_format
    writer = FORMATS.get(format)
    model, meta = load_run_student(folder, best=best, trial=trial)
    target = StudentFolder(Path(out) if out else folder.export_dir)
    target.path.mkdir(parents=True, exist_ok=True)
    sample = folder.sample_images()
    with torch.no_grad():
        reference = model(sample)
    meta = {**meta, "format": format, "run": str(folder.path)}
    target.write_meta(meta)  # the metadata goes first: the safetensors writer and load_student read it
    path, produced = writer(model, sample, target)
    diff = float((produced - reference).abs().max())
    if diff > TOLERANCE:
        raise ExportError(f"The exported {format} model differs from the trained one by {diff:.2e} (> {TOLERANCE}); please report this.")
    return ExportResult(path=path, format=format, candidate_id=meta["candidate_id"], accuracy=meta["val_accuracy"], max_abs_diff=diff)


__all__ = ["FORMATS", "ExportResult", "export", "load_run_student", "load_student"]
