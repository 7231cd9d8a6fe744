import os
import tarfile
from pathlib import Path

import pytest
import torch

# $KDSEARCH_CIFAR_ARCHIVE points elsewhere where ../shared does not travel (the GPU machine: benchmarks/gpu.sh)
SHARED_CIFAR = Path(os.environ.get("KDSEARCH_CIFAR_ARCHIVE") or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# Under pytest-xdist (`make test` runs 2 workers) each worker gets one torch thread, and so do the processes it starts
# (OMP_NUM_THREADS; the benchmarks cap their own thread counts by it): two 2-thread jobs on 2 cores ran 10-25x slower.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
if THREADS == 1:
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # Prepared teachers go to a per-session cache, never the user's.
    os.environ["KDSEARCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("kdsearch-cache"))
    torch.set_num_threads(THREADS)
    yield


def _extract_subset(dest: Path, per_class_train: int, per_class_test: int) -> Path:
    """A small, class-balanced ImageFolder cut from the real CIFAR-10 JPEG archive."""
    limits = {"train": per_class_train, "test": per_class_test}
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(SHARED_CIFAR, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3:
                continue
            split, cls = parts[-3], parts[-2]
            if split not in limits or counts.get((split, cls), 0) >= limits[split]:
                continue
            counts[(split, cls)] = counts.get((split, cls), 0) + 1
            target = dest / split / cls / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    return dest


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory) -> Path:
    if not SHARED_CIFAR.exists():
        pytest.skip(f"{SHARED_CIFAR} is not here")
    return _extract_subset(tmp_path_factory.mktemp("cifar10"), per_class_train=40, per_class_test=10)


@pytest.fixture(scope="session")
def digits_task():
    from kdsearch.data import load_task

    return load_task("digits")


@pytest.fixture(scope="session")
def fashion_available():
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    return FASHION_DIR


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on loopback for the session (tests/postgres.py); skips where none can be started."""
    from tests.postgres import PostgresServer, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = PostgresServer().init()
    yield server
    server.destroy()
