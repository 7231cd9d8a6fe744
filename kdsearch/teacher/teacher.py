from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import warnings
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from kdsearch._util import atomic_path, atomic_write_json, cache_dir, file_sha256, import_attr, stable_hash, suggest
from kdsearch.cost import LatencyStats, count_flops, measure_latency
from kdsearch.data import Task
from kdsearch.exceptions import KdsearchError, RuntimeUnavailable, TeacherError
from kdsearch.taps import Taps, as_logits, classifier_of, forward_taps, last_linear
from kdsearch.teacher.checkpoint import load_state_dict
from kdsearch.training import Recipe, distributed_context, evaluate, fit

logger = logging.getLogger(__name__)

PREPARE_VERSION = 1  # bump when the preparation recipe changes, so old caches are not reused


@dataclass
class Teacher:
    model: nn.Module
    spec: str
    source: str  # how the weights were obtained
    accuracy: float
    params: int
    flops: int | None
    latency: LatencyStats | None = None
    prepared: bool = False
    notes: list[str] = field(default_factory=list)

    @torch.no_grad()
    def taps(self, x: torch.Tensor) -> Taps:
        self.model.eval()
        return forward_taps(self.model, x)

    def record(self) -> dict:
        return {
            "spec": self.spec,
            "source": self.source,
            "val_accuracy": self.accuracy,
            "params": self.params,
            "flops": self.flops,
            "latency": self.latency.to_dict() if self.latency else None,
            "prepared": self.prepared,
            "notes": self.notes,
        }


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A DNS lookup with a deadline: offline, timm would otherwise retry for ~50 s per file."""
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    with ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(socket.getaddrinfo, host, 443).result(timeout=timeout)
            return True
        except (FutureTimeout, OSError):
            return False


def _cached_pretrained_file(name: str) -> str | None:
    """Pretrained weights already in the local Hugging Face cache, usable without network."""
    import timm

    try:
        from huggingface_hub import try_to_load_from_cache

        repo = timm.models.get_pretrained_cfg(name.split(".")[0] if not timm.models.get_pretrained_cfg(name) else name).hf_hub_id
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str):
                return found
    except Exception:
        return None
    return None


def _build_timm(name: str, task: Task, pretrained: bool, notes: list[str]) -> tuple[nn.Module, str]:
    import timm

    if not timm.is_model(name):
        raise TeacherError(
            f"Unknown teacher {name!r}: not a timm model, a module:callable or a file;"
            f"{suggest(name, timm.list_models())} see timm.list_models()."
        )
    kwargs = {"num_classes": task.num_classes, "in_chans": task.in_chans}
    if pretrained:
        overlay = None
        if not _hub_reachable():
            overlay = _cached_pretrained_file(name)
            if overlay is None:
                notes.append(
                    f"pretrained weights for {name} are not reachable (offline) and not in the local Hugging Face cache; "
                    "starting from random initialisation and training on the task"
                )
        if overlay is not None or not notes:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    extra = {"pretrained_cfg_overlay": {"file": overlay}} if overlay else {}
                    return timm.create_model(name, pretrained=True, **kwargs, **extra), "timm-pretrained"
            except Exception as exc:  # no pretrained tag, gated repo, network error mid-way …
                notes.append(
                    f"pretrained weights for {name} could not be obtained ({type(exc).__name__}); "
                    "starting from random initialisation and training on the task"
                )
    return timm.create_model(name, pretrained=False, **kwargs), "random-init"


def _build_callable(spec: str, task: Task) -> nn.Module:
    fn = import_attr(spec, TeacherError, f"teacher {spec!r}")
    if not callable(fn):
        raise TeacherError(f"{spec!r} is a {type(fn).__name__}, not a callable that returns the teacher; check the spec.")
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in (("num_classes", task.num_classes), ("in_chans", task.in_chans)) if k in params}
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise TeacherError(f"{spec!r} returned a {type(model).__name__}, not a torch.nn.Module.")
    return model


def _load_file(path: Path) -> nn.Module:
    if path.suffix in (".pt2", ".ep"):
        try:
            return torch.export.load(str(path)).module()
        except Exception as exc:
            raise TeacherError(f"Could not load torch.export file {str(path)!r} ({type(exc).__name__}); re-export it with torch.export.save.") from None
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception:
        raise TeacherError(
            f"{str(path)!r} is not a TorchScript or torch.export model file; if it is a checkpoint, pass the "
            "architecture as --teacher and this file as --teacher-weights."
        ) from None


def _apply_weights(model: nn.Module, path: str, notes: list[str]) -> bool:
    """Load a checkpoint into ``model``; returns True when its classifier was loaded as well."""
    state = load_state_dict(path)
    own = model.state_dict()
    head = classifier_of(model)
    head_names = {n for n, m in model.named_modules() if m is head}
    head_keys = {k for k in own if any(k.startswith(h + ".") for h in head_names)}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing_body = sorted(set(own) - set(usable) - head_keys - {k for k in own if k.endswith("num_batches_tracked")})
    if missing_body:
        raise TeacherError(
            f"Checkpoint {path!r} does not match the teacher architecture: {len(missing_body)} tensors missing or "
            f"of another shape (e.g. {missing_body[0]!r}); pass the architecture it was saved from as --teacher."
        )
    model.load_state_dict(usable, strict=False)
    head_loaded = head_keys <= set(usable)
    if not head_loaded:
        notes.append(f"the classifier in {Path(path).name} does not fit this task: a new head is trained")
    return head_loaded


def _replace_head(model: nn.Module, num_classes: int) -> None:
    reset = getattr(model, "reset_classifier", None)
    if callable(reset):
        reset(num_classes)
        return
    found = last_linear(model)
    if found is None:
        raise TeacherError("The teacher has no nn.Linear classifier to replace; build it with the task's number of classes.")
    name, linear = found
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Linear(linear.in_features, num_classes))


def default_teacher_recipe(task: Task, source: str) -> Recipe:
    """Fine-tuning from ImageNet weights needs little; training from scratch more (sized for small data)."""
    n = len(task.train_labels)
    if source == "timm-pretrained":
        epochs = 3 if n > 20000 else 8
        return Recipe(epochs=epochs, optimizer="adamw", lr=5e-4, weight_decay=0.05, warmup_epochs=0.5, label_smoothing=0.1)
    epochs = 4 if n > 20000 else 6
    return Recipe(epochs=epochs, optimizer="adamw", lr=2e-3, weight_decay=0.05, warmup_epochs=1.0, label_smoothing=0.1)


def load_teacher(
    spec: str,
    task: Task,
    *,
    weights: str | None = None,
    device: torch.device | str = "cpu",
    pretrained: bool = True,
    prepare: bool = True,
    recipe: Recipe | None = None,
    epochs: int | None = None,
    measure: bool = True,
    latency_kwargs: dict | None = None,
    progress: bool = False,
) -> Teacher:
    """Build the teacher, load ``weights``, prepare it for ``task`` if needed, and measure it.

    ``epochs`` overrides the preparation length of ``recipe`` or, without one, of the default recipe for
    the weights actually obtained (fine-tuning for pretrained weights, training for a random init).
    """
    notes: list[str] = []
    model, source, scripted = _build(spec, task, weights, pretrained, notes)
    head_fits = _apply_weights(model, weights, notes) if weights else scripted
    if weights:
        source = f"checkpoint:{Path(weights).name}"
    head_fits = _fit_head(model, task, scripted, head_fits, notes)
    for note in notes:
        logger.info(f"teacher: {note}")
    prepared = prepare and not head_fits
    if prepared:
        recipe = recipe or default_teacher_recipe(task, source)
        if epochs is not None:
            recipe = replace(recipe, epochs=epochs)
        _prepare(model, task, recipe, key={**_cache_key(spec), "weights": file_sha256(weights) if weights else None, "source": source},
                 device=device, progress=progress, notes=notes)
    model.to(device).eval()
    accuracy = evaluate(model, task, device=device)
    flops = None
    if not scripted:
        try:
            flops = count_flops(model, task.input_shape)
        except Exception:  # exotic ops the counter cannot trace; FLOPs are informative only for the teacher
            notes.append("FLOPs could not be counted for this teacher")
    latency = _teacher_latency(model, task, device, latency_kwargs or {}, notes) if measure else None
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(model=model, spec=spec, source=source, accuracy=accuracy, params=sum(p.numel() for p in model.parameters()),
                   flops=flops, latency=latency, prepared=prepared, notes=notes)


def _teacher_latency(model: nn.Module, task: Task, device, latency_kwargs: dict, notes: list[str]):
    """The teacher's latency in the run's runtime; in eager PyTorch when that runtime cannot run the teacher (its
    latency is informative only: the budget applies to students)."""
    try:
        return measure_latency(model, task.input_shape, device=device, **latency_kwargs)
    except RuntimeUnavailable as exc:
        notes.append(f"teacher latency measured in eager PyTorch: {exc}")
        return measure_latency(model, task.input_shape, device=device, **{**latency_kwargs, "runtime": "torch"})


MODEL_FILE_SUFFIXES = (".pt", ".pth", ".ts", ".pt2", ".ep", ".torchscript", ".jit")


def _names_a_file(path: Path) -> bool:
    """A TorchScript / torch.export spec: a model file's suffix (it may not exist yet: then it is an error) or a file."""
    return path.suffix in MODEL_FILE_SUFFIXES or path.is_file()


def _is_candidate_json(text: str) -> bool:
    return text.endswith(".json") or text.startswith("{")


def _build(spec: str, task: Task, weights: str | None, pretrained: bool, notes: list[str]) -> tuple[nn.Module, str, bool]:
    """(model, source, is a TorchScript/export file) for a candidate config (JSON text or file), a model file, a
    module:callable or a timm name."""
    if _is_candidate_json(spec.strip()):
        return _build_candidate(spec, task), "candidate", False
    path = Path(spec).expanduser()
    if _names_a_file(path):
        if not path.is_file():
            raise TeacherError(f"Teacher file {spec!r} does not exist; check the path.")
        if weights:
            raise TeacherError("--teacher-weights applies to a model name or callable, not to a TorchScript/export file.")
        return _load_file(path), f"file:{path.name}", True
    if ":" in spec:
        return _build_callable(spec, task), "callable", False
    model, source = _build_timm(spec, task, pretrained and not weights, notes)
    return model, source, False


def check_network(spec: str, option: str) -> None:
    """Does ``spec`` name a network that ``load_network`` can build? Checked before any work starts, so a typo is
    refused at once, in one line that names the ``option`` it was given to (a file must exist, a module:callable must
    import, a name must be a timm model; a candidate JSON must parse to a config)."""
    import timm

    text = spec.strip()
    if _is_candidate_json(text):
        try:
            _read_candidate(text)
        except TeacherError as exc:
            raise TeacherError(f"{option}: {exc}") from None
        return
    path = Path(text).expanduser()
    if _names_a_file(path):
        if not path.is_file():
            raise TeacherError(f"{option}: the file {spec!r} does not exist; check the path.")
    elif ":" in text:
        try:
            import_attr(text, TeacherError, f"{option} {spec!r}")
        except TeacherError as exc:
            raise TeacherError(str(exc) if option in str(exc) else f"{option}: {exc}") from None
    elif not timm.is_model(text):
        raise TeacherError(f"{option}: unknown network {text!r} — not a timm model, a module:callable or a file;"
                           f"{suggest(text, timm.list_models())} see timm.list_models().")


def load_network(spec: str, task: Task) -> nn.Module:
    """A network named as a teacher is (timm name, module:callable, TorchScript / torch.export file) or a candidate
    config (JSON text or a .json file), untrained, in eval mode: the reference of a relative budget (its latency is
    all that is used, so no weights are fetched)."""
    return _build(spec.strip(), task, None, False, [])[0].eval()


def _read_candidate(spec: str) -> dict:
    """A candidate config given as JSON text or a .json file."""
    text = spec.strip()
    try:
        config = json.loads(Path(text).expanduser().read_text() if text.endswith(".json") else text)
    except OSError as exc:
        raise TeacherError(f"Cannot read the candidate JSON {spec!r} ({exc.strerror}); check the path.") from None
    except ValueError as exc:
        raise TeacherError(f"{spec!r} is not valid JSON ({exc}); give a candidate config such as "
                           '{"family": "resnet_cifar", "depth1": 3, "depth2": 3, "depth3": 3}.') from None
    if not isinstance(config, dict):
        raise TeacherError(f"{spec!r} holds no candidate config (a JSON object with a 'family' key).")
    return config


def _build_candidate(spec: str, task: Task) -> nn.Module:
    from kdsearch.spaces import create_model

    try:
        return create_model(_read_candidate(spec), num_classes=task.num_classes, in_chans=task.in_chans)
    except KdsearchError as exc:
        raise TeacherError(str(exc)) from None


def _cache_key(spec: str) -> dict:
    """What names a prepared teacher in the cache: the spec, and a candidate's config itself (its file may be edited;
    other specs keep the key they always had, so their cached teachers stay valid)."""
    return {"spec": spec, "config": _read_candidate(spec)} if _is_candidate_json(spec.strip()) else {"spec": spec}


def _fit_head(model: nn.Module, task: Task, scripted: bool, head_fits: bool, notes: list[str]) -> bool:
    """Replace a classifier whose output does not match the task; returns whether the head fits the task."""
    model.eval()
    with torch.no_grad():
        probe = as_logits(model(task.sample_batch(2)[0]))
    if probe.shape[-1] == task.num_classes:
        return head_fits
    if scripted:
        raise TeacherError(
            f"The teacher file outputs {probe.shape[-1]} classes but the task has {task.num_classes}; "
            "export it with the task's head, or pass it as a module:callable so kdsearch can replace the head."
        )
    _replace_head(model, task.num_classes)
    notes.append(f"head replaced: {probe.shape[-1]} → {task.num_classes} classes")
    return False


def _prepare(model: nn.Module, task: Task, recipe: Recipe, *, key: dict, device, progress: bool, notes: list[str]) -> None:
    """Train ``model`` on ``task`` once; the weights are cached by content hash and reused by later runs."""
    from safetensors.torch import load_model, save_model

    digest = stable_hash({**key, "task": task.fingerprint, "recipe": recipe.to_dict(), "version": PREPARE_VERSION}, length=16)
    cached = cache_dir() / "teachers" / f"{digest}.safetensors"
    meta_path = cached.with_suffix(".json")
    if cached.exists() and meta_path.exists():
        load_model(model, str(cached), device="cpu", strict=True)
        notes.append(f"prepared teacher reused from cache {cached}")
        logger.info(f"teacher: reusing prepared weights from {cached}")
        return
    logger.info(f"teacher: preparing {key['spec']} on {task.name} ({recipe.epochs} epochs, {recipe.optimizer}, lr {recipe.lr}); "
                f"cached for later runs as {cached.name}")
    checkpoint = cached.with_suffix(".partial.pt")  # resumes if interrupted
    result = fit(model, task, recipe, device=device, checkpoint=checkpoint, progress=progress, desc="preparing teacher")
    model.to("cpu")
    rank, world = distributed_context()
    if rank == 0:  # under torchrun every rank trained the same weights; one writes them
        with atomic_path(cached) as tmp:
            save_model(model, str(tmp))
        atomic_write_json(meta_path, {"spec": key["spec"], "task": task.fingerprint, "recipe": recipe.to_dict(), "history": result.history})
        checkpoint.unlink(missing_ok=True)
    if world > 1:
        torch.distributed.barrier()
    notes.append(f"prepared: {recipe.epochs} epochs {'fine-tuning' if key['source'] == 'timm-pretrained' else 'training'} on {task.name}")


def teacher_summary(teacher: Teacher) -> str:
    lat = f", {teacher.latency.p50_ms:.2f} ms p50" if teacher.latency else ""
    return f"{teacher.spec} ({teacher.source}): val acc {teacher.accuracy:.4f}, {teacher.params / 1e6:.2f} M params{lat}"


__all__ = ["Teacher", "check_network", "load_teacher", "teacher_summary"]
