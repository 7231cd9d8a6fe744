#!/usr/bin/env bash
# Run HERE (a machine with PyPI) before a GPU session: fills .gpu/ (git-ignored) with what the GPU machine lacks
# and cannot download — the wheels of optuna, plotly and the anchors (torchdistill, torch-cka, ckatorch) for its
# Python 3.12, and the CIFAR-10 JPEG archive from ../shared (which does not travel). ~36 MB; carry it as `.gpu`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu/wheels
for spec in optuna alembic sqlalchemy greenlet colorlog mako plotly torchdistill torch-cka==0.21 ckatorch==1.0.3; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/wheels "$spec"
done
cp ../shared/data/cifar10-jpeg.tar.gz .gpu/
du -sh .gpu
