"""Where a run's images come from: the ``--data`` spec (``DataSpec``), the built-in data sets by name (``LOADERS``:
digits, fashion-mnist, cifar10/100) and ImageFolder directories. A loader returns the decoded uint8 images and labels
of both splits; ``kdsearch.data.task.load_task`` makes them a Task."""

from __future__ import annotations

import gzip
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
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


def _split(images: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise DataError(f"val_fraction must lie between 0 and 1 (got {fraction}); try 0.2.")
    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels.numpy())
    return images[np.sort(train_idx)], labels[np.sort(train_idx)], images[np.sort(val_idx)], labels[np.sort(val_idx)]



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


def load_image_folder(spec: DataSpec, progress: bool):
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

