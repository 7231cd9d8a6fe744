from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from kdsearch.exceptions import CheckpointError

_WRAPPERS = ("state_dict", "model", "model_state_dict", "module", "net", "network", "state_dict_ema", "model_ema")
_PREFIXES = ("module.", "_orig_mod.", "model.")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint in any common layout and return a clean ``{name: tensor}`` state dict.

    Accepts safetensors files, raw state dicts, ``{'state_dict': …}``, ``{'model': …}`` and friends,
    with ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes stripped. Pickles
    are always read with ``weights_only=True``: a checkpoint can never run code.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist; check the --teacher-weights path.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"Could not read checkpoint {str(path)!r} ({reason}); it is truncated, corrupted or not a "
            "PyTorch/safetensors file — re-save it with torch.save(model.state_dict(), path)."
        ) from None
    for _ in range(3):  # nested wrappers such as {'model': {'state_dict': …}}
        if isinstance(state, dict) and not _is_tensor_dict(state):
            inner = next((state[k] for k in _WRAPPERS if k in state and isinstance(state[k], dict)), None)
            if inner is None:
                break
            state = inner
    if not isinstance(state, dict) or not _is_tensor_dict(state):
        raise CheckpointError(
            f"Checkpoint {str(path)!r} holds no state dict (found {type(state).__name__}); save model.state_dict()."
        )
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in _PREFIXES:
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def _is_tensor_dict(d: dict) -> bool:
    values = list(d.values())
    return bool(values) and sum(isinstance(v, torch.Tensor) for v in values) >= max(1, len(values) // 2)
