"""One student: ``distill_student`` (a candidate config trained into a StudentFolder; what ``find`` runs for
each finalist) and ``train_student`` (``kdsearch distill``: one student, optionally with a run's settings)."""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from kdsearch._util import resolve_device
from kdsearch.data import DataSpec, Task, load_task
from kdsearch.distill import create_loss, distill
from kdsearch.exceptions import KdsearchError, RunFolderError, SpaceError
from kdsearch.run import RunFolder, RunSettings, StudentFolder
from kdsearch.spaces import create_model
from kdsearch.teacher import load_teacher
from kdsearch.teacher.teacher import teacher_summary
from kdsearch.training import Recipe, distributed_context

logger = logging.getLogger(__name__)


def distill_student(
    config: dict,
    teacher: nn.Module,
    task: Task,
    out: str | Path | StudentFolder,
    recipe: Recipe,
    *,
    loss: str = "kd",
    loss_options: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "distilling",
    extra: dict | None = None,
    initial: nn.Module | None = None,
    until_epoch: int | None = None,
    **fit_options: Any,
) -> dict:
    """Distil the candidate ``config`` into ``out``; resumes from its checkpoint; returns its result record.
    ``initial``: a module of the same architecture whose weights the student starts from (a warm start, e.g. the
    subnet's inherited weights); a resumed checkpoint takes precedence. ``until_epoch`` (below ``recipe.epochs``):
    stop there, keep the checkpoint and return ``{"status": "stopped", "history": ...}`` without a result (a rung of
    successive halving; the next call continues from it). ``fit_options``: ``val_teacher_logits``, ``on_epoch``."""
    folder = out if isinstance(out, StudentFolder) else StudentFolder(out)
    done = folder.result()
    if done is not None:
        return done
    folder.path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    student = create_model(config, num_classes=task.num_classes, in_chans=task.in_chans)
    if initial is not None:
        student.load_state_dict({k: v.detach().cpu() for k, v in initial.state_dict().items()})
    loss_obj = create_loss(loss, **(loss_options or {}))
    stop = until_epoch if until_epoch is not None and until_epoch < recipe.epochs else None
    result = distill(student, teacher, task, recipe, loss_obj, device=device, checkpoint=folder.checkpoint,
                     metrics_csv=folder.metrics_csv, progress=progress, desc=desc, stop_at_epoch=stop, **fit_options)
    if stop is not None:
        return {"status": "stopped", "config": config, "epochs": result.epochs, "history": result.history,
                "val_accuracy": result.accuracy, "seconds": result.seconds, **(extra or {})}
    record = {
        "status": "distilled", "config": config, "val_accuracy": result.accuracy, "epochs": result.epochs,
        "seconds": result.seconds, "history": result.history, "recipe": recipe.to_dict(), "loss": loss_obj.config(),
        "world_size": result.world_size, "teacher_source": result.teacher_source, **(extra or {}),
    }
    rank, _ = distributed_context()
    if rank == 0:
        meta = {
            "config": config, "num_classes": task.num_classes, "class_names": task.class_names,
            "input_shape": list(task.input_shape), "mean": list(task.mean), "std": list(task.std),
            "val_accuracy": result.accuracy, "loss": loss_obj.config(),
        }
        folder.write_model(student.to("cpu"), meta)
        folder.write_result(record)
    return record


def resolve_student(student: str | dict | None, *, from_run: str | Path | RunFolder | None = None, trial: int | None = None) -> dict:
    """A candidate config from a dict, a JSON string, a timm name, or a trial of a run folder."""
    if from_run is not None:
        if trial is None:
            raise KdsearchError("--from-run needs --trial N (the trial numbers are in 'kdsearch report RUN').")
        run = from_run if isinstance(from_run, RunFolder) else RunFolder.open(from_run, need_candidates=True)
        candidates = run.candidates()
        row = candidates[candidates["trial"] == trial]
        if row.empty:
            raise KdsearchError(f"Run {run.path} has no trial {trial}; 'kdsearch report {run.path}' lists the trials.")
        return json.loads(row.iloc[0]["config"])
    if isinstance(student, dict):
        return student
    if not student:
        raise KdsearchError("No student given; pass --student (a timm name or a JSON config) or --from-run RUN --trial N.")
    text = student.strip()
    if text.startswith("{"):
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpaceError(f"--student is not valid JSON ({exc.msg} at column {exc.colno}); quote it as one shell word.") from None
        create_model(config, num_classes=2)  # validates family and keys with a clear message
        return config
    import timm

    if not timm.is_model(text):
        from kdsearch._util import suggest

        raise SpaceError(f"Unknown student {text!r}: not a timm model or a JSON config;{suggest(text, timm.list_models())}")
    return {"family": "timm", "model": text}


def train_student(
    teacher: str | None = None,
    student: str | dict | None = None,
    *,
    from_run: str | Path | None = None,
    trial: int | None = None,
    data: str | None = None,
    data_root: str | None = None,
    input_size: int | None = None,
    train_samples: int | None = None,
    val_samples: int | None = None,
    teacher_weights: str | None = None,
    pretrained: bool | None = None,
    teacher_epochs: int | None = None,
    loss: str | None = None,
    loss_options: dict | None = None,
    recipe: Recipe | dict | None = None,
    device: str = "auto",
    out: str | Path = "student",
    resume: bool = False,
    quiet: bool = False,
) -> dict:
    """Distil one student (``kdsearch distill``): the same code ``find`` runs for its top-k.

    With ``from_run``, everything not given here is that run's: teacher (spec, weights, pretrained,
    preparation epochs), data (the whole spec: input size, sample counts, seed), loss and its settings,
    and the recipe find trained its students with. ``recipe`` as a dict overrides single fields of that
    recipe; a :class:`Recipe` is used as it is. Without ``from_run`` the defaults are digits, kd and Recipe().
    """
    run = RunFolder.open(from_run, need_candidates=True) if from_run is not None else None
    base = run.settings() if run is not None else None
    config = resolve_student(student, from_run=run, trial=trial)
    teacher = teacher or (base.teacher if base else None)
    if not teacher:
        raise KdsearchError("No teacher given; pass --teacher (or --from-run RUN to use that run's teacher).")
    spec = _data_spec(base, data=data, data_root=data_root, input_size=input_size, train_samples=train_samples,
                      val_samples=val_samples)
    loss_name, loss_options = _loss(base, loss, loss_options)
    recipe = _recipe(base, recipe, config.get("family") if isinstance(config, dict) else None)
    folder = StudentFolder(out)
    if not resume and folder.has_work():
        raise RunFolderError(f"{folder.path} already holds a distillation; pass --resume to continue it, or choose another --out.")
    torch_device = resolve_device(device)
    task = load_task(spec, progress=not quiet)
    logger.info(f"data: {task.description}")
    teacher_obj = load_teacher(
        teacher, task, weights=teacher_weights or (base.teacher_weights if base else None), device=torch_device,
        pretrained=pretrained if pretrained is not None else (base.pretrained if base else True),
        epochs=teacher_epochs or (base.teacher_epochs if base else None), measure=False, progress=not quiet,
    )
    logger.info(f"teacher: {teacher_summary(teacher_obj)}")
    result = distill_student(
        config, teacher_obj.model, task, folder, recipe, loss=loss_name, loss_options=loss_options, device=torch_device,
        progress=not quiet, desc=f"distilling ({loss_name})", extra={"teacher": teacher_obj.record(), "data": task.record()},
    )
    logger.info(f"student: val acc {result['val_accuracy']:.4f} after {result['epochs']} epochs ({loss_name}); written to {folder.path}")
    return result


def _loss(base: RunSettings | None, loss: str | None, options: dict | None) -> tuple[str, dict | None]:
    """The loss and its settings: as given, else the run's (its settings only when the loss is the run's); validated
    before any work."""
    name = loss or (base.loss_name if base else "kd")
    if options is None and base and name == base.loss_name:
        options = base.loss_options
    create_loss(name, **(options or {}))
    return name, options


def _family_optimiser(family: str | None) -> dict:
    from kdsearch.spaces.families import family_recipe, list_families

    return family_recipe(family) if family in list_families() else {}


def _data_spec(base: RunSettings | None, **given) -> DataSpec:
    """The run's whole data spec unless the user names other data; single fields given here override it."""
    explicit = {k: v for k, v in given.items() if v is not None}
    if base is None or ("data" in explicit and explicit["data"] != base.data.data):
        return DataSpec(**{"data": "digits", **explicit})
    return DataSpec(**{**base.data.to_dict(), **explicit})


def _recipe(base: RunSettings | None, recipe: Recipe | dict | None, family: str | None = None) -> Recipe:
    """A Recipe as given; else the run's (or the default) with the student family's optimiser, then ``recipe``'s fields."""
    if isinstance(recipe, Recipe):
        return recipe
    start = base.recipe(family).to_dict() if base else Recipe(**_family_optimiser(family)).to_dict()
    overrides = recipe or {}
    unknown = set(overrides) - {f.name for f in fields(Recipe)}
    if unknown:
        raise KdsearchError(f"Unknown recipe setting(s) {', '.join(sorted(unknown))}; see kdsearch.training.Recipe.")
    return Recipe(**{**start, **overrides})
