"""The built wheel is what a user installs: it must carry the bundled search spaces."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "kdsearch", src / "kdsearch", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                          capture_output=True, text=True)
    if done.returncode != 0 and "No matching distribution" in done.stderr + done.stdout:
        pytest.skip("setuptools cannot be fetched for the isolated build here")
    assert done.returncode == 0, done.stderr[-2000:]
    return next(out.glob("kdsearch-*.whl"))


def test_wheel_ships_every_bundled_search_space(wheel):
    # package-data pointed at kdsearch/search_spaces/*.yaml while the files lived at the repository root
    names = set(zipfile.ZipFile(wheel).namelist())
    bundled = sorted(p.name for p in (REPO / "kdsearch" / "search_spaces").glob("*.yaml"))
    assert bundled and {f"kdsearch/search_spaces/{name}" for name in bundled} <= names
    assert "kdsearch/run/folder.py" in names and "kdsearch/pipeline/find.py" in names


def test_repository_search_spaces_folder_is_the_packaged_one():
    from kdsearch.spaces import SPACES_DIR, default_space_path

    assert (REPO / "search_spaces").resolve() == SPACES_DIR.resolve()
    assert default_space_path(32).exists() and default_space_path(224).exists()
