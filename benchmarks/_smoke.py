"""``--smoke``: every benchmark's quick mode — a few candidates or images, about a minute, results and caches in a
temporary folder, never over ``benchmarks/results/``. ``tests/test_benchmarks.py`` runs every script's smoke mode;
a script that cannot run where it is (an anchor library not installed, no CUDA) prints one ``SKIP: why`` line."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def add_smoke(parser, what: str) -> None:
    parser.add_argument("--smoke", action="store_true", help=f"a quick run ({what}); results to a temporary folder")


def smoke_dir(name: str) -> Path:
    """A fresh temporary folder for a smoke run's results and caches (KDSEARCH_CACHE_DIR points into it, so no
    cached teacher or supernet of a real run is read or written). ``KDSEARCH_SMOKE_CACHE``: one cache the smoke runs
    share instead (the test suite sets it, so a teacher prepared by one smoke run serves the others)."""
    path = Path(tempfile.mkdtemp(prefix=f"kdsearch-smoke-{name}-"))
    os.environ["KDSEARCH_CACHE_DIR"] = os.environ.get("KDSEARCH_SMOKE_CACHE") or str(path / "cache")
    print(f"smoke run: results in {path}", flush=True)
    return path


def thread_count(wanted: int) -> int:
    """``wanted`` torch threads, at most $OMP_NUM_THREADS where it is set (the test suite runs two workers of one
    thread each; a smoke run that took two threads beside another job would oversubscribe the cores)."""
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(wanted, int(cap))) if cap.isdigit() else wanted


def skip(reason: str) -> None:
    print(f"SKIP: {reason}", flush=True)
    sys.exit(0)
