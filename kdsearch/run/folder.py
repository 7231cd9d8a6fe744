"""The run folder and the student folder: the only code that knows their file names.

A run folder is the single source of truth of a run::

    config.yaml                 the RunSettings (identity checked on resume)
    data.json, teacher.json     what the data and the teacher were
    sample_batch.safetensors    a few real validation images (exports are verified on them)
    study.db                    the Optuna studies: the search and the students' queue (unless --storage points elsewhere)
    finalists.json              re-measured finalists
    latency_model.json          with a latency model: which predictor, its held-out error, its cache
    candidates.csv              one row per scored candidate
    report.html                 the report
    students/<candidate id>/    one StudentFolder per distilled student
    supernet/                   with --proxy supernet: bands.json (latency bands, cache key) and per trained band
                                band<N>/history.json + weights.safetensors (linked from the cache when it can be)
    export/                     the default export folder

A student folder (also what ``kdsearch distill --out`` and ``kdsearch export`` write)::

    checkpoint.pt, metrics.csv  while training (the checkpoint is removed once the student is done)
    model.safetensors           weights
    student.yaml                config, classes, input shape, normalisation: enough to rebuild it
    result.json                 accuracy, history, recipe, loss (its presence means "done")
    student.onnx, student.torchscript.pt   exports

Every write is atomic (temp file, then rename), so an interrupted run leaves whole files or none.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn
import yaml

from kdsearch._util import atomic_path, atomic_write_json, atomic_write_text
from kdsearch.exceptions import ExportError, RunFolderError
from kdsearch.run.settings import IDENTITY_DEFAULTS, IDENTITY_KEYS, RunSettings
from kdsearch.search.storage import without_password

STUDY_NAME = "kdsearch"


class StudentFolder:
    """One student's files: training checkpoint and metrics, weights, metadata, result, exports."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    metrics_csv = property(lambda self: self.path / "metrics.csv")
    weights = property(lambda self: self.path / "model.safetensors")
    meta_path = property(lambda self: self.path / "student.yaml")
    onnx = property(lambda self: self.path / "student.onnx")
    torchscript = property(lambda self: self.path / "student.torchscript.pt")
    _result_path = property(lambda self: self.path / "result.json")

    def has_work(self) -> bool:
        """A distillation has started or finished here."""
        return self.checkpoint.exists() or self._result_path.exists()

    def result(self) -> dict | None:
        return json.loads(self._result_path.read_text()) if self._result_path.exists() else None

    def write_result(self, record: dict) -> None:
        """Marks the student done: the checkpoint it no longer needs goes."""
        atomic_write_json(self._result_path, record)
        self.checkpoint.unlink(missing_ok=True)

    def rung(self, index: int) -> dict | None:
        """The record of this student's rung ``index`` of successive halving (its history up to the rung's end)."""
        path = self.path / f"rung{index}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def write_rung(self, index: int, record: dict) -> None:
        atomic_write_json(self.path / f"rung{index}.json", record)

    def write_model(self, model: nn.Module, meta: dict[str, Any]) -> None:
        self.write_weights(model)
        self.write_meta(meta)

    def write_weights(self, model: nn.Module) -> None:
        from safetensors.torch import save_model

        with atomic_path(self.weights) as tmp:
            save_model(model, str(tmp))

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_text(self.meta_path, yaml.safe_dump(meta, sort_keys=False))

    def meta(self) -> dict[str, Any]:
        if not self.meta_path.exists():
            raise ExportError(f"{self.path} has no student.yaml; pass a folder written by 'kdsearch export --format safetensors'.")
        return yaml.safe_load(self.meta_path.read_text())

    def load_weights(self, model: nn.Module, hint: str = "") -> nn.Module:
        from safetensors.torch import load_model

        if not self.weights.exists():
            raise ExportError(f"Weights {self.weights} are missing;{hint or ' distil the student again.'}")
        load_model(model, str(self.weights), device="cpu")
        return model


class RunFolder:
    """Reads and writes every file of one run; ``find``, ``distill --from-run``, ``report`` and ``export`` go through it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    _config = property(lambda self: self.path / "config.yaml")
    _data = property(lambda self: self.path / "data.json")
    _teacher = property(lambda self: self.path / "teacher.json")
    _sample = property(lambda self: self.path / "sample_batch.safetensors")
    _finalists = property(lambda self: self.path / "finalists.json")
    _candidates = property(lambda self: self.path / "candidates.csv")
    _latency_model = property(lambda self: self.path / "latency_model.json")
    report_html = property(lambda self: self.path / "report.html")
    export_dir = property(lambda self: self.path / "export")

    @classmethod
    def open(cls, path: str | Path, *, need_candidates: bool = False) -> RunFolder:
        """An existing run; a folder that is not one (or not finished enough) is a RunFolderError."""
        folder = cls(path)
        if not folder.is_run():
            raise RunFolderError(f"{folder.path} is not a kdsearch run folder (no config.yaml); pass the --out folder of 'kdsearch find'.")
        if need_candidates:
            folder._require_candidates()
        return folder

    def is_run(self) -> bool:
        return self._config.exists()

    # ------------------------------------------------------------------ start / resume
    def check_can_start(self, settings: RunSettings) -> None:
        """A new folder, an empty one, or this same study (resume); anything else is refused before any work."""
        if not self.is_run():
            if self.path.exists() and any(self.path.iterdir()):
                raise RunFolderError(
                    f"--out {self.path} already holds files that are not a kdsearch run; choose an empty or new folder."
                )
            return
        old, new = self.config(), settings.identity()
        for key in IDENTITY_KEYS:
            default = IDENTITY_DEFAULTS.get(key)
            there, now = old.get(key, default), new.get(key, default)
            if there != now:
                raise RunFolderError(
                    f"--out {self.path} holds a different study ({key}: {there!r} there, {now!r} now); "
                    "choose another --out, or delete that folder to start over."
                )

    def write_start(self, settings: RunSettings, task, teacher) -> bool:
        """Write the run's settings, data and teacher records and a real sample batch; True when resuming."""
        from datetime import datetime, timezone

        from safetensors.torch import save_file

        resumed = self.is_run()
        created = self.config().get("created") if resumed else None
        config = {**settings.to_config(), "storage": without_password(self.storage_url(settings)),
                  "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write_text(self._config, yaml.safe_dump(config, sort_keys=False))
        atomic_write_json(self._data, task.record())
        atomic_write_json(self._teacher, teacher.record())
        images, labels = task.sample_batch(8, split="val", seed=settings.seed)
        with atomic_path(self._sample) as tmp:
            save_file({"images": images.contiguous(), "labels": labels.contiguous()}, str(tmp))
        return resumed

    def storage_url(self, settings: RunSettings) -> str:
        """The Optuna storage of the run: --storage, else SQLite in the folder."""
        return settings.storage or f"sqlite:///{(self.path / 'study.db').resolve()}"

    # ------------------------------------------------------------------ records
    def config(self) -> dict[str, Any]:
        try:
            return yaml.safe_load(self._config.read_text()) or {}
        except yaml.YAMLError:
            raise RunFolderError(f"{self._config} is unreadable; delete the run folder {self.path} or choose another --out.") from None

    def settings(self) -> RunSettings:
        try:
            return RunSettings.from_config(self.config(), self.path)
        except (KeyError, TypeError) as exc:
            raise RunFolderError(
                f"{self._config} lacks {exc} or holds it in another form (written by another kdsearch version); "
                f"run 'kdsearch find' again with a new --out."
            ) from None

    def data_record(self) -> dict[str, Any]:
        return json.loads(self._data.read_text()) if self._data.exists() else {}

    def teacher_record(self) -> dict[str, Any]:
        return json.loads(self._teacher.read_text())

    def sample_images(self) -> torch.Tensor:
        from safetensors.torch import load_file

        return load_file(str(self._sample))["images"]

    def finalists(self) -> dict[str, dict]:
        return json.loads(self._finalists.read_text()) if self._finalists.exists() else {}

    def write_finalists(self, finalists: dict[str, dict]) -> None:
        atomic_write_json(self._finalists, finalists)

    def halving(self) -> dict | None:
        """The successive-halving stage's record: its plan, and each decided rung's members, scores and survivors."""
        path = self.path / "halving.json"
        return json.loads(path.read_text()) if path.exists() else None

    def write_halving(self, record: dict) -> None:
        atomic_write_json(self.path / "halving.json", record)

    def write_latency_model(self, record: dict) -> None:
        atomic_write_json(self._latency_model, record)

    def latency_model(self) -> dict | None:
        """The latency model's record (predictor, held-out error), or None when the run timed every candidate."""
        return json.loads(self._latency_model.read_text()) if self._latency_model.exists() else None

    def student(self, candidate_id: str) -> StudentFolder:
        return StudentFolder(self.path / "students" / candidate_id)

    def _require_candidates(self) -> None:
        if not self._candidates.exists():
            raise RunFolderError(f"{self.path} has no candidates.csv yet; finish (or resume) the run with 'kdsearch find --out {self.path}'.")

    def candidates(self) -> pd.DataFrame:
        self._require_candidates()
        return pd.read_csv(self._candidates)

    def write_candidates(self, table: pd.DataFrame) -> None:
        buf = io.StringIO()
        table.to_csv(buf, index=False)
        atomic_write_text(self._candidates, buf.getvalue())

    def write_supernets(self, record: dict, histories: dict[int, list[dict]], weights: dict[int, Path]) -> None:
        """The supernets the run ranked with: their bands and cache key, and each trained band's curve and weights."""
        import os
        import shutil

        for band, history in histories.items():
            folder = self.path / "supernet" / f"band{band}"
            atomic_write_json(folder / "history.json", history)
            target = folder / "weights.safetensors"
            if weights.get(band) and not target.exists():
                with atomic_path(target) as tmp:
                    tmp.unlink()
                    try:
                        os.link(weights[band], tmp)  # the cache's file, no second copy of the weights
                    except OSError:
                        shutil.copyfile(weights[band], tmp)
        atomic_write_json(self.path / "supernet" / "bands.json", record)

    def supernets(self) -> dict | None:
        """{"bands": bands.json, "histories": {band: [per-epoch records]}} or None when the run used no supernet."""
        bands = self.path / "supernet" / "bands.json"
        if not bands.exists():
            return None
        histories = {int(p.parent.name[4:]): json.loads(p.read_text()) for p in sorted(self.path.glob("supernet/band*/history.json"))}
        return {"bands": json.loads(bands.read_text()), "histories": histories}

    def write_report(self, html: str) -> None:
        atomic_write_text(self.report_html, html)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"


__all__ = ["STUDY_NAME", "RunFolder", "StudentFolder"]
