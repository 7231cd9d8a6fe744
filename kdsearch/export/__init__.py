"""Export: write a distilled student as safetensors (+ student.yaml), TorchScript or ONNX.

Every export is verified: a batch of real validation images saved with the run goes through the
exported artefact and the in-memory model, and the max absolute difference is reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from kdsearch._util import atomic_path, atomic_write_text
from kdsearch.exceptions import ExportError
from kdsearch.report import read_run
from kdsearch.spaces import create_model

FORMATS = ("safetensors", "torchscript", "onnx")
TOLERANCE = 1e-3


@dataclass
class ExportResult:
    path: Path
    format: str
    candidate_id: str
    accuracy: float
    max_abs_diff: float


def _pick(run_dir: Path, best: bool, trial: int | None) -> dict:
    config, candidates, _ = read_run(run_dir)
    distilled = candidates[candidates["distilled_accuracy"].notna() & candidates["within_budget"].astype(bool)]
    if distilled.empty:
        raise ExportError(f"Run {run_dir} has no distilled student within budget; finish it with 'kdsearch find --out {run_dir}' first.")
    if trial is not None:
        row = candidates[candidates["trial"] == trial]
        if row.empty:
            raise ExportError(f"Run {run_dir} has no trial {trial}; 'kdsearch report {run_dir}' lists the trials.")
        if row["distilled_accuracy"].isna().all():
            trials = ", ".join(str(t) for t in distilled["trial"])
            raise ExportError(f"Trial {trial} of {run_dir} was not distilled; export one of trials {trials}, or use --best.")
        return row.iloc[0].to_dict()
    return distilled.sort_values(["distilled_accuracy", "latency_p50_ms"], ascending=[False, True]).iloc[0].to_dict()


def load_run_student(run_dir: str | Path, *, best: bool = True, trial: int | None = None) -> tuple[nn.Module, dict]:
    """The distilled student of a run (best, or by trial number) and its metadata."""
    from safetensors.torch import load_model

    run_dir = Path(run_dir)
    row = _pick(run_dir, best, trial)
    data = json.loads((run_dir / "data.json").read_text())
    config = json.loads(row["config"])
    model = create_model(config, num_classes=data["num_classes"], in_chans=data["input_shape"][0])
    weights = run_dir / "students" / row["candidate_id"] / "model.safetensors"
    if not weights.exists():
        raise ExportError(f"Weights {weights} are missing; re-run 'kdsearch find --out {run_dir}' to distil the student again.")
    load_model(model, str(weights), device="cpu")
    meta = {
        "candidate_id": row["candidate_id"],
        "trial": int(row["trial"]),
        "config": config,
        "num_classes": data["num_classes"],
        "class_names": data["class_names"],
        "input_shape": data["input_shape"],
        "mean": data["mean"],
        "std": data["std"],
        "val_accuracy": float(row["distilled_accuracy"]),
        "latency_p50_ms": float(row["latency_p50_ms"]),
        "params": int(row["params"]),
        "flops": int(row["flops"]),
    }
    return model.eval(), meta


def load_student(directory: str | Path) -> nn.Module:
    """Rebuild an exported student (safetensors + student.yaml) as an eval-mode nn.Module."""
    from safetensors.torch import load_model

    directory = Path(directory)
    meta_path = directory / "student.yaml"
    if not meta_path.exists():
        raise ExportError(f"{directory} has no student.yaml; pass a folder written by 'kdsearch export --format safetensors'.")
    meta = yaml.safe_load(meta_path.read_text())
    model = create_model(meta["config"], num_classes=meta["num_classes"], in_chans=meta["input_shape"][0])
    load_model(model, str(directory / "model.safetensors"), device="cpu")
    model.eval()
    model.kdsearch_meta = meta  # input shape, normalisation and class names travel with the model
    return model


def export(
    run_dir: str | Path,
    *,
    best: bool = True,
    trial: int | None = None,
    format: str = "safetensors",
    out: str | Path | None = None,
) -> ExportResult:
    if format not in FORMATS:
        raise ExportError(f"Unknown export format {format!r}; use one of {', '.join(FORMATS)}.")
    run_dir = Path(run_dir)
    model, meta = load_run_student(run_dir, best=best, trial=trial)
    out = Path(out) if out else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import load_file

    sample = load_file(str(run_dir / "sample_batch.safetensors"))["images"]
    with torch.no_grad():
        reference = model(sample)

    meta = {**meta, "format": format, "run": str(run_dir)}
    if format == "safetensors":
        from safetensors.torch import save_model

        path = out / "model.safetensors"
        with atomic_path(path) as tmp:
            save_model(model, str(tmp))
        atomic_write_text(out / "student.yaml", yaml.safe_dump(meta, sort_keys=False))
        with torch.no_grad():
            produced = load_student(out)(sample)
    elif format == "torchscript":
        path = out / "student.torchscript.pt"
        with torch.no_grad():
            scripted = torch.jit.trace(model, sample[:1])
        with atomic_path(path) as tmp:
            torch.jit.save(scripted, str(tmp))
        with torch.no_grad():
            produced = torch.jit.load(str(path))(sample)
        atomic_write_text(out / "student.yaml", yaml.safe_dump(meta, sort_keys=False))
    else:
        try:
            import onnx  # noqa: F401
            import onnxruntime as ort
        except ImportError:
            raise ExportError("ONNX export needs the onnx extra; install it with: pip install 'kdsearch[onnx]'.") from None
        path = out / "student.onnx"
        with atomic_path(path) as tmp:
            torch.onnx.export(
                model, (sample[:1],), str(tmp), input_names=["images"], output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
            )
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        produced = torch.from_numpy(session.run(None, {"images": sample.numpy()})[0])
        atomic_write_text(out / "student.yaml", yaml.safe_dump(meta, sort_keys=False))
    diff = float((produced - reference).abs().max())
    if diff > TOLERANCE:
        raise ExportError(f"The exported {format} model differs from the trained one by {diff:.2e} (> {TOLERANCE}); please report this.")
    return ExportResult(path=path, format=format, candidate_id=meta["candidate_id"], accuracy=meta["val_accuracy"], max_abs_diff=diff)


__all__ = ["FORMATS", "ExportResult", "export", "load_run_student", "load_student"]
