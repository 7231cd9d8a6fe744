#!/usr/bin/env bash
# Every GPU measurement the project has, in ONE command that ends within 10 minutes on an H100/H200:
#   GPU tests (CUDA latency events, AMP + channels_last training, zoo proxies and CKA on CUDA, shared teacher
#   outputs, supernets trained with bf16/fp16 AMP and scored on CUDA as on the CPU)   → gpu_tests.xml
#   latency on CUDA: event timing vs a naive host timer, repeatability            → latency_stability_gpu.{csv,json}
#   trainer img/s fp32 vs bf16 + channels_last, GPU utilisation, vs torchdistill  → trainer_speed_gpu.json
#   CKA on CUDA vs torch-cka and ckatorch                                          → cka_speed_gpu.json
#   the same students in eager torch / TorchScript / ONNX Runtime on CUDA          → latency_runtimes_gpu.{csv,json}
# Results go to $GPU_RESULTS (default benchmarks/results). On the lent machine (see CONTRIBUTING.md, "GPU"):
#   here:  bash benchmarks/gpu_prepare.sh                  (fills .gpu/: wheels + CIFAR archive)
#   there: run(command="GPU_RESULTS=$OUT bash benchmarks/gpu.sh", carry=[".gpu"], timeout_s=600)
# Each step has its own time limit; a failed step is reported and the others still run (exit 1 at the end).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${GPU_RESULTS:-benchmarks/results}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 KDSEARCH_CACHE_DIR=${KDSEARCH_CACHE_DIR:-/tmp/kdsearch-cache}
if ls .gpu/wheels/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
[ -f .gpu/cifar10-jpeg.tar.gz ] && export KDSEARCH_CIFAR_ARCHIVE=$PWD/.gpu/cifar10-jpeg.tar.gz
if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"; then
  echo "gpu.sh: no CUDA device is visible; nothing to measure (run it on the lent GPU machine)." >&2
  exit 3
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; $PY -c "import torch; print('torch', torch.__version__)"; } \
  > "$RESULTS/gpu_env.txt" 2>&1
failed=0
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2 start rc
  shift 2
  echo "== $name (limit ${limit} s)"
  start=$(date +%s)
  timeout "$limit" "$@"
  rc=$?
  echo "== $name: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$RESULTS/gpu_steps.txt"
  [ "$rc" -eq 0 ] || failed=1
}
: > "$RESULTS/gpu_steps.txt"
step "GPU tests" 240 $PY -m pytest -q -rs -m gpu -p no:cacheprovider tests --junitxml="$RESULTS/gpu_tests.xml"
step "latency on CUDA" 60 $PY benchmarks/latency_stability.py --device cuda --rounds 20 --out "$RESULTS"
step "trainer AMP" 200 $PY benchmarks/trainer_speed.py --gpu-only --no-install --epochs 3 --train-per-class 2000 --out "$RESULTS"
step "CKA on CUDA" 120 $PY benchmarks/cka_speed.py --device cuda --repeats 3 --no-install --out "$RESULTS/cka_speed_gpu.json"
# torch.compile left out (~30 s per network); onnxruntime is left out (and says why) unless onnxruntime-gpu is installed
step "runtimes on CUDA" 120 $PY benchmarks/latency_runtimes.py --device cuda --students 10 --rounds 2 --skip compile --out "$RESULTS"
exit $failed
