"""A run's images as a Task: train/val uint8 tensors, classes, input shape, normalisation; batches with augmentation
on the device; class-balanced subsets (``load_task`` turns a ``--data`` spec into one)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from kdsearch.data.sources import LOADERS, DataSpec, balanced_indices, load_image_folder
from kdsearch.exceptions import DataError


@dataclass
class Task:
    """A classification task with images in memory as uint8 (N, C, H, W)."""

    name: str
    description: str
    class_names: list[str]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool  # horizontal flips make sense for natural images, not for digits
    spec: DataSpec = field(default_factory=DataSpec)
    _device_copies: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def in_chans(self) -> int:
        return self.input_shape[0]

    @functools.cached_property
    def fingerprint(self) -> str:
        """Content hash of the images and labels (computed once): a prepared teacher is reused only for the same data."""
        import hashlib

        digest = hashlib.sha256()
        for tensor in (self.train_images, self.train_labels, self.val_images, self.val_labels):
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()[:16]

    def record(self) -> dict:
        """What a run stores about its data, so reports never reload it."""
        return {
            "name": self.name,
            "description": self.description,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "input_shape": list(self.input_shape),
            "mean": list(self.mean),
            "std": list(self.std),
            "train_size": int(self.train_labels.numel()),
            "val_size": int(self.val_labels.numel()),
            "spec": self.spec.to_dict(),
        }

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        # mean/std built once per device: a fresh torch.tensor(..., device=cuda) per batch is a host copy that syncs
        key = ("stats", str(images.device))
        if key not in self._device_copies:
            self._device_copies[key] = (
                torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1),
                torch.tensor(self.std, device=images.device).view(1, -1, 1, 1),
            )
        mean, std = self._device_copies[key]
        return (images.float() / 255.0 - mean) / std

    def _augment_draws(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Crop offsets (dy, dx) and flip flags for n images, drawn on the CPU: the same on any device."""
        pad = max(1, round(self.input_shape[1] / 8))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        return dy, dx, flip

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop with 4-pixel padding (+ horizontal flip for natural images), on uint8 batches."""
        draws = self._augment_draws(len(images), generator)
        return self._apply_augment(images, *(d.to(images.device) for d in draws))

    def _apply_augment(self, images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        pad = max(1, round(h / 8))
        padded = F.pad(images, (pad, pad, pad, pad))
        rows = dy.view(n, 1) + torch.arange(h, device=images.device).view(1, h)
        cols = dx.view(n, 1) + torch.arange(w, device=images.device).view(1, w)
        batch_idx = torch.arange(n, device=images.device).view(n, 1, 1, 1)
        chan_idx = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
        out = padded[batch_idx, chan_idx, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
        return torch.where(flip.view(n, 1, 1, 1), out.flip(-1), out) if self.flip else out

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        with_index: bool = False,
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Normalised float batches on ``device``; augmentation only when asked (training).

        Under data parallelism each of ``world_size`` ranks takes an equal, disjoint share of the
        same seeded permutation. ``with_index`` adds the samples' indices (for cached teacher outputs),
        on ``device`` when the split is resident there.
        """
        images, labels = (
            (self.train_images, self.train_labels) if split == "train" else (self.val_images, self.val_labels)
        )
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(labels), generator=generator) if shuffle else torch.arange(len(labels))
        if world_size > 1:
            order = order[: len(order) - len(order) % world_size][rank::world_size]
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        # one draw per epoch (not per batch): the random numbers reach the GPU in one copy
        draws = self._augment_draws(len(order), torch.Generator().manual_seed(seed * 7919 + rank)) if augment else ()
        resident = self._resident(split, torch.device(device))
        if resident is not None:
            # everything on the device once per epoch: each batch is then pure device indexing, with no host copy
            # (a copy from pageable memory waits for the GPU, so the CPU could never queue work ahead)
            images, labels = resident
            order, draws = order.to(images.device), tuple(d.to(images.device) for d in draws)
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            x = images[idx].to(device, non_blocking=True)
            if augment:
                x = self._apply_augment(x, *(d[start : start + batch_size].to(x.device) for d in draws))
            batch = (self.normalize(x), labels[idx].to(device, non_blocking=True))
            yield (*batch, idx) if with_index else batch

    def _resident(self, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The split's uint8 images and labels kept on an accelerator for the whole run, when they take under a
        quarter of its free memory (CIFAR-10's train split: 150 MB). None on CPU."""
        if device.type == "cpu":
            return None
        key = (split, str(device))
        if key not in self._device_copies:
            images, labels = (self.train_images, self.train_labels) if split == "train" else (self.val_images, self.val_labels)
            free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
            fits = images.numel() * images.element_size() < free / 4
            self._device_copies[key] = (images.to(device), labels.to(device)) if fits else None
        return self._device_copies[key]

    def sample_batch(self, size: int = 64, *, split: str = "train", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A class-balanced, seeded batch of real images (normalised): what proxies score on."""
        labels = self.train_labels if split == "train" else self.val_labels
        images = self.train_images if split == "train" else self.val_images
        idx = balanced_indices(labels.numpy(), size, seed)
        return self.normalize(images[idx]), labels[idx]


def _subset(images: torch.Tensor, labels: torch.Tensor, size: int | None, seed: int):
    if size is None or size >= len(labels):
        return images, labels
    if size < 1:
        raise DataError(f"A sample count of {size} leaves no images; pass a positive --train-samples/--val-samples.")
    idx = balanced_indices(labels.numpy(), size, seed)
    return images[idx], labels[idx]



def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    sample = images[: min(len(images), 10000)].float() / 255.0
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)



def load_task(spec: DataSpec | str = "digits", *, progress: bool = False, **overrides) -> Task:
    """Load the images a run trains and scores on. ``spec`` may be a DataSpec or the ``--data`` string."""
    if isinstance(spec, str):
        spec = DataSpec(data=spec, **overrides)
    elif overrides:
        spec = DataSpec(**{**spec.to_dict(), **overrides})
    key = spec.data.strip()
    if key.lower() in LOADERS:
        loaded = LOADERS.get(key.lower())(spec, progress)
    else:
        path = Path(key).expanduser()
        if not path.exists():
            from kdsearch._util import suggest

            raise DataError(
                f"Data path {key!r} does not exist;{suggest(key.lower(), LOADERS.names()) or ''} pass an ImageFolder "
                f"directory or one of {', '.join(LOADERS.names())}."
            )
        if not path.is_dir():
            raise DataError(f"--data {key!r} is a file; pass an ImageFolder directory (one sub-folder per class).")
        loaded = load_image_folder(spec, progress)

    name, description, classes, train_x, train_y, val_x, val_y, flip = loaded
    train_x, train_y = _subset(train_x, train_y, spec.train_samples, spec.seed)
    val_x, val_y = _subset(val_x, val_y, spec.val_samples, spec.seed + 1)
    mean, std = _channel_stats(train_x)
    if spec.train_samples or spec.val_samples:
        description += f"; subset {len(train_y)} train / {len(val_y)} val (class-balanced, seed {spec.seed})"
    return Task(
        name=name,
        description=description,
        class_names=[str(c) for c in classes],
        train_images=train_x.contiguous(),
        train_labels=train_y,
        val_images=val_x.contiguous(),
        val_labels=val_y,
        mean=mean,
        std=std,
        flip=flip,
        spec=spec,
    )
