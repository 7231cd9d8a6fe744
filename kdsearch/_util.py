"""Small helpers shared by every stage: atomic writes, stable hashes, device choice."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from kdsearch.exceptions import DeviceError


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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


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
    """' Did you mean …?' with up to three close matches, or '' when none are close."""
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


def stderr_logger(quiet: bool):
    """``log(message)``: one line to stderr, or nothing when quiet (stdout is left for results)."""

    def log(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return log


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
