from __future__ import annotations

import functools
import gzip
import os
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdsearch.exceptions import DataError
from kdsearch.registry import Registry

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Built-in data sets by --data name; anything else is an ImageFolder path. A loader takes (spec, progress).
LOADERS: Registry = Registry("data set", DataError, hint=" Or pass an ImageFolder directory.")


@dataclass(frozen=True)
class DataSpec:
    """Everything that decides which images a run sees; recorded in the run's config."""

    data: str = "digits"
    data_root: str | None = None
    input_size: int | None = None  # None: native size for small images, 224 for large ones
    val_fraction: float = 0.2  # only used when the source has no split of its own
    train_samples: int | None = None  # class-balanced subset, for quick runs
    val_samples: int | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


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


def balanced_indices(labels: np.ndarray, size: int, seed: int) -> torch.Tensor:
    """``size`` indices spread as evenly over the classes as the data allows, seeded."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = {c: rng.permutation(np.flatnonzero(labels == c)).tolist() for c in classes}
    chosen: list[int] = []
    while len(chosen) < min(size, len(labels)):
        for c in classes:
            if per_class[c] and len(chosen) < size:
                chosen.append(per_class[c].pop())
    return torch.tensor(sorted(chosen), dtype=torch.long)


def _subset(images: torch.Tensor, labels: torch.Tensor, size: int | None, seed: int):
    if size is None or size >= len(labels):
        return images, labels
    if size < 1:
        raise DataError(f"A sample count of {size} leaves no images; pass a positive --train-samples/--val-samples.")
    idx = balanced_indices(labels.numpy(), size, seed)
    return images[idx], labels[idx]


def _split(images: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise DataError(f"val_fraction must lie between 0 and 1 (got {fraction}); try 0.2.")
    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels.numpy())
    return images[np.sort(train_idx)], labels[np.sort(train_idx)], images[np.sort(val_idx)], labels[np.sort(val_idx)]


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    sample = images[: min(len(images), 10000)].float() / 255.0
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


@LOADERS.register("digits")
def _load_digits(spec: DataSpec, progress: bool = False):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 grey levels → 0..255, then upsample 8x8 → 32x32 so CIFAR-style networks apply unchanged.
    small = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)
    size = spec.input_size or 32
    images = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    description = (
        f"scikit-learn digits (1,797 8x8 images, 10 classes), upsampled to {size}x{size}, "
        f"stratified {1 - spec.val_fraction:.0%}/{spec.val_fraction:.0%} split"
    )
    return "digits", description, [str(i) for i in range(10)], *_split(images, labels, spec.val_fraction, spec.seed), False


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes; point --data-root at the official Fashion-MNIST files.")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).exists():
            return root / name
    raise DataError(
        f"Fashion-MNIST file {stem}(.gz) is missing in {root}; install it with "
        "'apt-get install dataset-fashion-mnist' or pass --data-root to the folder holding the IDX files."
    )


@LOADERS.register("fashion-mnist", aliases=("fashion_mnist", "fashionmnist"))
def _load_fashion(spec: DataSpec, progress: bool = False):
    root = Path(spec.data_root or FASHION_MNIST_DIR)
    if not root.is_dir():
        raise DataError(
            f"Fashion-MNIST folder {root} does not exist; install it with "
            "'apt-get install dataset-fashion-mnist' or pass --data-root to the folder holding the IDX files."
        )
    arrays = {
        stem: _read_idx(_find_idx(root, stem))
        for stem in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    }
    def images(a):
        t = torch.from_numpy(a.copy()).unsqueeze(1)
        if spec.input_size and spec.input_size != t.shape[-1]:
            t = F.interpolate(t.float(), size=(spec.input_size,) * 2, mode="bilinear").round().clamp(0, 255).to(torch.uint8)
        return t
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    size = spec.input_size or 28
    return (
        "fashion-mnist",
        f"Fashion-MNIST from {root} (60,000 train / 10,000 test, {size}x{size} grey)",
        names,
        images(arrays["train-images-idx3-ubyte"]),
        torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64)),
        images(arrays["t10k-images-idx3-ubyte"]),
        torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)),
        True,
    )


@LOADERS.register("cifar100")
@LOADERS.register("cifar10")
def _load_torchvision_cifar(spec: DataSpec, progress: bool = False):
    import torchvision

    name = spec.data.lower()
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    root = Path(spec.data_root or Path.home() / ".cache" / "kdsearch" / "datasets")
    try:
        train = cls(str(root), train=True, download=True)
        test = cls(str(root), train=False, download=True)
    except Exception as exc:  # URLError, socket errors, corrupted archives
        raise DataError(
            f"Could not load {name} from {root} ({type(exc).__name__}); download needs network access — "
            f"place the extracted python archive in --data-root, or pass an ImageFolder directory as --data."
        ) from None

    def images(ds):
        t = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        if spec.input_size and spec.input_size != 32:
            t = F.interpolate(t.float(), size=(spec.input_size,) * 2, mode="bilinear").round().clamp(0, 255).to(torch.uint8)
        return t

    return (
        name,
        f"{name.upper()} via torchvision from {root}",
        list(train.classes),
        images(train),
        torch.tensor(train.targets, dtype=torch.long),
        images(test),
        torch.tensor(test.targets, dtype=torch.long),
        True,
    )


def _list_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    from torchvision.datasets.folder import find_classes, make_dataset

    try:
        classes, class_to_idx = find_classes(str(root))
    except FileNotFoundError:
        raise DataError(f"ImageFolder {root} holds no class folders; put one sub-folder of images per class in it.") from None
    if len(classes) < 2:
        raise DataError(
            f"ImageFolder {root} has only one class folder ({classes[0]!r}); a classifier needs at least two — "
            "add one sub-folder of images per class."
        )
    try:
        samples = make_dataset(str(root), class_to_idx, extensions=IMAGE_EXTENSIONS, allow_empty=True)
    except TypeError:  # older torchvision without allow_empty
        samples = make_dataset(str(root), class_to_idx, extensions=IMAGE_EXTENSIONS)
    if not samples:
        raise DataError(f"ImageFolder {root} contains no images ({', '.join(IMAGE_EXTENSIONS)}); check the path.")
    return classes, samples


def _decide_size(samples: list[tuple[str, int]], requested: int | None) -> int:
    """Native size for small images (≤ 64 px, CIFAR-like); 224 for photos, unless asked."""
    if requested:
        return requested
    from PIL import Image

    sizes = []
    for path, _ in samples[:: max(1, len(samples) // 16)][:16]:
        with Image.open(path) as im:
            sizes.append(min(im.size))
    native = int(np.median(sizes))
    return native if native <= 64 else 224


def _decode(samples: list[tuple[str, int]], size: int, channels: int, progress: bool, what: str):
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"

    def load(item):
        path, _ = item
        with Image.open(path) as im:
            im = im.convert(mode)
            if im.size != (size, size):
                # shorter side to size, then centre crop: the usual evaluation transform
                scale = size / min(im.size)
                im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BILINEAR)
                left, top = (im.width - size) // 2, (im.height - size) // 2
                im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    from tqdm.auto import tqdm

    out = np.empty((len(samples), channels, size, size), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        for i, arr in enumerate(
            tqdm(pool.map(load, samples, chunksize=64), total=len(samples), desc=f"decoding {what}", disable=None if progress else True, leave=False)
        ):
            out[i] = arr
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    return torch.from_numpy(out), labels


def _load_image_folder(spec: DataSpec, progress: bool):
    from PIL import Image

    root = Path(spec.data).expanduser()
    split_names = [d for d in ("test", "val", "valid", "validation") if (root / d).is_dir()]
    if (root / "train").is_dir() and split_names:
        classes, train_samples = _list_folder(root / "train")
        val_classes, val_samples = _list_folder(root / split_names[0])
        if val_classes != classes:
            raise DataError(
                f"{root}/train and {root}/{split_names[0]} have different class folders; give both the same classes."
            )
        presplit = True
    else:
        classes, train_samples = _list_folder(root)
        val_samples, presplit = [], False

    rng = np.random.default_rng(spec.seed)
    # Subsample file lists before decoding: a 10-image-per-class smoke run should not decode 60k files.
    def pick(samples, size):
        if size is None or size >= len(samples):
            return samples
        labels = np.array([lbl for _, lbl in samples])
        return [samples[i] for i in balanced_indices(labels, size, int(rng.integers(1 << 31))).tolist()]

    if presplit:
        train_samples, val_samples = pick(train_samples, spec.train_samples), pick(val_samples, spec.val_samples)
    size = _decide_size(train_samples, spec.input_size)
    with Image.open(train_samples[0][0]) as first:
        channels = 1 if first.mode in ("L", "1", "I;16") else 3
    train_x, train_y = _decode(train_samples, size, channels, progress, "train images")
    if presplit:
        val_x, val_y = _decode(val_samples, size, channels, progress, "val images")
        how = f"its {split_names[0]}/ split"
    else:
        train_x, train_y, val_x, val_y = _split(train_x, train_y, spec.val_fraction, spec.seed)
        how = f"a seeded stratified {spec.val_fraction:.0%} validation split"
    return (
        root.name or str(root),
        f"ImageFolder {root} ({len(classes)} classes, {size}x{size}, {how})",
        classes,
        train_x,
        train_y,
        val_x,
        val_y,
        True,
    )


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
        loaded = _load_image_folder(spec, progress)

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
