#!/usr/bin/env bash
# `make demo`: the main job on real images, offline. Fashion-MNIST (Debian's dataset-fashion-mnist, installed here
# when we can: root and apt-get) with a CIFAR ResNet-56 teacher trained on the task, a budget of half the teacher's
# latency on this machine; without Fashion-MNIST, the same on scikit-learn's bundled digits (the front is then
# one or two images apart: digits are too easy to show a trade-off).
set -euo pipefail
BIN=${1:-.venv/bin}
OUT=${DEMO_OUT:-runs/demo}
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -d "$FMNIST" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "demo: installing Fashion-MNIST (apt-get install dataset-fashion-mnist)" >&2
  apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "demo: could not install dataset-fashion-mnist" >&2
fi
if [ -d "$FMNIST" ]; then
  DATA=(--data fashion-mnist --train-samples 5000 --val-samples 3000)
else
  echo "demo: Fashion-MNIST is not installed (as root: apt-get install dataset-fashion-mnist); using the digits" >&2
  DATA=(--data digits)
fi
# --target-epochs 4: the demo exports the student find distilled, so the choice is made for find's own recipe
# (successive halving; a longer target would choose by the proxy: docs/how-it-works.md#the-recipe-you-ship-with)
"$BIN/kdsearch" find --teacher examples/resnet56.json "${DATA[@]}" --budget 0.5x:examples/resnet56.json \
  --epochs 4 --target-epochs 4 --out "$OUT"
"$BIN/kdsearch" export "$OUT" --best --format onnx --out "$OUT/student"
