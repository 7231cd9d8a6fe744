"""Small helpers shared by every stage: atomic writes, stable hashes, device choice."""

from __future__ import annotations

import contextlib
import difflib
import errno
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from kdsearch.exceptions import DeviceError, KdsearchError, WriteError


def _current_umask() -> int:
    # os.umask can only be read by setting it; set it straight back (nothing else runs in between in this thread)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """The mode an ordinary open() gives a new file (mkstemp's is 0600, whatever the umask)."""
    return 0o666 & ~_current_umask()


def _temp_beside(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, _file_mode())
    return fd, tmp


_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def _write_failed(exc: BaseException | None) -> bool:
    """The disk (or a quota, or the file-size limit) is full: an OSError anywhere in the chain (torch.save wraps the
    file object's error in a RuntimeError), or a Rust/C writer's message that names the errno (safetensors)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return True
        if any(f"(os error {code})" in str(exc) for code in _FULL):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _full_error(path: Path, exc: BaseException) -> WriteError:
    cause = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else "the write failed"
    return WriteError(f"Could not write {path} ({reason}: the disk, a quota or a file-size limit is full); the previous "
                      "version of that file is intact — free some space and run the same command again to resume.")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if _write_failed(exc):
            raise _full_error(path, exc) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode())  # again: some writers (safetensors) replace the file they are given
        os.replace(tmp, path)
    except Exception as exc:
        if _write_failed(exc):
            raise _full_error(path, exc) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save, atomically. Through a Python file object, so that a full disk surfaces as its OSError (torch's own
    file writer reports only "iostream error") and becomes one WriteError."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def read_resume_state(path: Path, map_location) -> dict | None:
    """A training checkpoint to resume from, or None to start over: a file that cannot be read (truncated by a crash,
    corrupted) or that holds more than tensors and plain values (``weights_only`` refuses pickled code, which is never
    run) is set aside as ``<name>.rejected`` with a warning, so that a bad file costs the work since the start,
    never a crash loop."""
    import pickle
    import warnings
    import zipfile

    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"it holds a {type(state).__name__}, not a checkpoint")
        return state
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        with contextlib.suppress(FileNotFoundError):  # another rank set it aside first
            os.replace(path, path.with_name(path.name + ".rejected"))
        warnings.warn(f"checkpoint {path} was not loaded ({reason}); it is kept as {path.name}.rejected and this "
                      "training starts from the beginning", RuntimeWarning, stacklevel=2)
        return None


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hash of a JSON-serialisable object that is identical on every machine and run."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def file_sha256(path: str | os.PathLike, length: int = 16) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def suggest(name: str, options: Iterable[str]) -> str:
    """' Did you mean …?' with up to three close matches, or '' when none are close (or the name is not text)."""
    if not isinstance(name, str):  # YAML keys can be None, numbers or booleans
        return ""
    matches = difflib.get_close_matches(name, list(options), n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


@contextlib.contextmanager
def exact_fp32():
    """fp32 convolutions and matmuls in full precision while inside.

    cuDNN runs fp32 convolutions in TF32 by default on Ampere and later; that moved gradient-based proxy scores
    of one model by 0.2-13 % between CPU and an H200 (benchmarks/results/gpu_tests.xml), enough to reorder
    candidates whose scores are close. Proxies score small batches, so full precision costs little there.
    """
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def import_attr(spec: str, error: type[KdsearchError], what: str) -> Any:
    """``package.module:attr`` → that object; a module that does not import, or lacks the name, is one ``error`` line
    (``what`` names what the spec was for: "teacher 'x:y'", "the NNI space 'nni:x:y'")."""
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"Cannot import {module_name!r} for {what} ({exc}); check PYTHONPATH.") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise error(f"{module_name!r} has no {attr!r};{suggest(attr, dir(module))} check the spec.")
    return obj


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present; an explicit 'cuda' without a GPU is a user error."""
    device = (device or "auto").lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {device} was asked for but no CUDA GPU is visible; use --device cpu or auto."
            )
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise DeviceError(f"Unknown device '{device}'; use auto, cpu or cuda[:N].")


class _StderrHandler(logging.Handler):
    """Each record as one line on the stderr of the moment (looked up per record: a test's captured stream, or the
    terminal); stdout is left for results."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # a closed stream must not turn a log line into a crash
            self.handleError(record)


def configure_logging(verbosity: int = 0) -> None:
    """The ``kdsearch`` loggers' one configuration, made by the CLI: ``verbosity`` -1 (``-q``: warnings only),
    0 (the progress lines) or 1 (``-v``: debug lines too, and Optuna's own). The library itself never configures
    logging: from Python, ``logging.basicConfig(level=logging.INFO)`` shows the same lines."""
    logger = logging.getLogger("kdsearch")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    logger.propagate = False  # an application's root handlers would print every line twice


def cache_dir() -> Path:
    """Where prepared teachers are kept between runs ($KDSEARCH_CACHE_DIR overrides)."""
    root = os.environ.get("KDSEARCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kdsearch"
    )
    return Path(root)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
