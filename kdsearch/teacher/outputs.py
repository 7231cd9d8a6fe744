"""The teacher's logits for every view a training run shows, computed once and shared by every student.

Augmentation is a deterministic stream: the crop offsets and flips of epoch ``e`` are drawn from the recipe's
seed and ``e`` alone (``kdsearch.training.epoch_seed``), the same for any student, batch size or device. So the
frozen teacher's logits for each epoch's views can be computed once, stored, and looked up by image index:
every finalist of a run, and any later run with the same teacher, data, seed and augmentation, reads them
instead of running the teacher at every step (a ResNet-56-sized teacher, BN folded and in channels_last,
is about a third of a ResNet-20 KD step on the 2-core CPU: benchmarks/front_cost.py).

Stored compactly under the cache directory, keyed by content hash: fp16 logits, one ``.npy`` per epoch
(memory-mapped, so a data set larger than RAM works); above ``FULL_LOGITS_MAX_CLASSES`` classes only the top-K
logits, their class indices and the row's log-sum-exp (as Fast Knowledge Distillation stores soft labels), from
which a row is rebuilt with the remaining probability spread evenly over the other classes. Epoch files are
written atomically, so an interrupted fill resumes at the first missing epoch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from kdsearch._util import atomic_path, cache_dir, stable_hash
from kdsearch.data import Task
from kdsearch.taps import as_logits
from kdsearch.training import Recipe, amp_dtype_for, epoch_seed, fold_batchnorm, memory_format_for

FULL_LOGITS_MAX_CLASSES = 128
TOP_K = 32
# Batch of the fill: large on a GPU; on this 2-core CPU 64-128 ran 1.4x faster than 256-512 (cache-sized
# activations), channels_last included: 5,000 CIFAR images x 2 epochs of a ResNet-56 in 14 s vs 29-38 s before.
FILL_BATCH = {"cuda": 512, "cpu": 128}
FORMAT_VERSION = 1


def weights_sha(model: nn.Module) -> str:
    """Content hash of a module's architecture name and tensors (the cache must never serve another teacher)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class TeacherOutputs:
    """The teacher's logits for each epoch's training views, by image index (``lookup``); ``fill`` computes them."""

    def __init__(self, folder: Path, epochs: int, augment: bool, num_classes: int):
        self.folder, self.epochs, self.augment, self.num_classes = folder, epochs, augment, num_classes
        self.filled_now = 0  # epochs this process computed (the rest were read from an earlier run)
        self._table_key: tuple[Path, str] | None = None
        self._table: torch.Tensor | None = None

    @property
    def key(self) -> str:
        return self.folder.name

    def _file(self, epoch: int) -> Path:
        return self.folder / (f"epoch{epoch:04d}.npy" if self.augment else "plain.npy")

    def missing(self) -> list[int]:
        epochs = range(self.epochs) if self.augment else [0]
        return [e for e in epochs if not self._file(e).exists()]

    def lookup(self, epoch: int, device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
        """``lookup(epoch)(indices)``: float32 logits of those images' views in that epoch, on ``device``.

        An epoch that fits in 1 GiB as float32 goes to the device whole, once (a lookup is then device indexing,
        no host copy per step); a larger one stays memory-mapped and only each batch's rows are read."""
        path = self._file(epoch if self.augment else 0)
        stored = np.load(path, mmap_mode="r")
        if len(stored) * self.num_classes * 4 > 2**30:
            return lambda idx: self._rows(stored, idx.cpu().numpy()).to(device, non_blocking=True)
        if self._table_key != (path, str(device)):  # one table held: un-augmented views reuse it every epoch
            self._table_key, self._table = (path, str(device)), self._rows(stored, slice(None)).to(device)
        table = self._table
        return lambda idx: table[idx.to(table.device)]

    def _rows(self, stored: np.ndarray, rows) -> torch.Tensor:
        picked = stored[rows]
        if stored.dtype.names is None:
            return torch.from_numpy(np.array(picked, dtype=np.float32))
        return _rebuild(picked["values"], picked["indices"], picked["lse"], self.num_classes)

    def fill(self, teacher: nn.Module, task: Task, recipe: Recipe, device: torch.device, world_size: int = 1) -> None:
        """Compute the missing epochs (large batches, the recipe's mixed precision on a GPU)."""
        missing = self.missing()
        if not missing:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        amp_dtype = amp_dtype_for(recipe, device)
        fmt = memory_format_for(recipe, device, task.input_shape)  # the trainer's: channels_last made the live teacher 1.3x faster
        teacher = teacher.to(device=device, memory_format=fmt).eval()
        probe = task.sample_batch(min(8, len(task.train_labels)))[0].to(device).contiguous(memory_format=fmt)
        teacher = fold_batchnorm(teacher, probe)
        for epoch in missing:
            logits = torch.full((len(task.train_labels), self.num_classes), float("nan"))
            for rank in range(world_size):  # under DDP each rank has its own share and its own draws
                for x, _, idx in task.batches("train", FILL_BATCH.get(device.type, 128), shuffle=True, augment=self.augment,
                                              seed=epoch_seed(recipe, epoch), device=device, rank=rank,
                                              world_size=world_size, with_index=True):
                    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        logits[idx.cpu()] = as_logits(teacher(x.contiguous(memory_format=fmt))).float().cpu()
            self._write(epoch, logits)
            self.filled_now += 1

    def _write(self, epoch: int, logits: torch.Tensor) -> None:
        if self.num_classes <= FULL_LOGITS_MAX_CLASSES:
            array = logits.numpy().astype(np.float16)
        else:  # one record per image (a single memory-mappable file): top-K logits, their classes, log-sum-exp
            values, indices = logits.topk(TOP_K, dim=1)
            array = np.empty(len(logits), dtype=[("values", np.float16, TOP_K), ("indices", np.int32, TOP_K), ("lse", np.float32)])
            array["values"], array["indices"] = values.numpy(), indices.numpy()
            array["lse"] = torch.logsumexp(logits, dim=1).numpy()
        with atomic_path(self._file(epoch)) as tmp:
            with open(tmp, "wb") as handle:  # np.save on a path would append '.npy' to the temp name
                np.save(handle, array)


def _rebuild(values: np.ndarray, indices: np.ndarray, lse: np.ndarray, num_classes: int) -> torch.Tensor:
    """Full logits from the top-K: the top-K exactly, the rest equal, holding the probability the top-K leave."""
    values_t = torch.from_numpy(np.array(values, dtype=np.float32))
    lse_t = torch.from_numpy(np.array(lse, dtype=np.float32))
    kept = torch.logsumexp(values_t, dim=1)
    rest_mass = (-torch.expm1(kept - lse_t)).clamp_min(1e-12)  # 1 - p(top-K)
    fill = lse_t + torch.log(rest_mass) - math.log(max(1, num_classes - values_t.shape[1]))
    table = fill[:, None].expand(len(fill), num_classes).clone()
    table.scatter_(1, torch.from_numpy(np.array(indices, dtype=np.int64)), values_t)
    return table


def teacher_outputs(teacher: nn.Module, task: Task, recipe: Recipe, device: torch.device | str = "cpu", *,
                    world_size: int = 1, root: str | Path | None = None) -> TeacherOutputs:
    """The shared logits of ``teacher`` for ``recipe``'s views of ``task`` (filled now where missing)."""
    device = torch.device(device)
    amp_dtype = amp_dtype_for(recipe, device)
    key = stable_hash({
        "teacher": weights_sha(teacher), "data": task.fingerprint, "seed": recipe.seed, "augment": recipe.augment,
        "flip": task.flip, "world_size": world_size, "amp": str(amp_dtype), "version": FORMAT_VERSION,
    }, length=16)
    outputs = TeacherOutputs(Path(root or cache_dir() / "teacher_outputs") / key, recipe.epochs, recipe.augment,
                             task.num_classes)
    if world_size > 1:  # one rank computes, the others wait and read
        import torch.distributed as dist

        if dist.get_rank() == 0:
            outputs.fill(teacher, task, recipe, device, world_size)
        dist.barrier()
    else:
        outputs.fill(teacher, task, recipe, device, world_size)
    return outputs


__all__ = ["TeacherOutputs", "teacher_outputs", "weights_sha"]
