#!/usr/bin/env bash
# One call on a GPU machine: build llmrt with the CUDA backend, run the CUDA
# tests against the CPU backend, then bench/gpu.py. Logs go to $OUT (or
# ./gpu_out). Python packages the machine lacks (gguf) travel as wheels in
# .whl (see bench/RESULTS.md, "GPU"); with pip access they are installed.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt"
# build: CUDA required, only the architecture of this GPU to save time
ARCH=$($PY -c "import torch; p=torch.cuda.get_device_capability(); print(f'{p[0]}{p[1]}')" 2>/dev/null || echo 90)
time $PY -m pip install --no-build-isolation --no-deps -q --target /tmp/llmrt . \
  -C cmake.define.LLMRT_CUDA=ON -C cmake.define.LLMRT_CUDA_ARCHITECTURES=$ARCH \
  -C build-dir=/tmp/llmrt-build 2>&1 | tee "$OUT/build.log" | tail -20
export PYTHONPATH=/tmp/llmrt:${PYTHONPATH:-}
$PY -c "import llmrt; print(llmrt.build_info())" 2>&1 | tee -a "$OUT/gpu.txt"
$PY -m pytest tests/cuda -q -o cache_dir=/tmp/llmrt-pytest 2>&1 | tee "$OUT/tests_cuda.log" | tail -30
if grep -q "failed" "$OUT/tests_cuda.log"; then
  # the failures again on one kernel per primitive (no fused kernels, no
  # split attention): tells a fused kernel's fault from the rest
  LLMRT_CUDA_FUSED=0 $PY -m pytest tests/cuda -q --lf -o cache_dir=/tmp/llmrt-pytest 2>&1 \
    | tee "$OUT/tests_cuda_unfused.log" | tail -15
fi
$PY bench/gpu.py 2>&1 | tee "$OUT/bench_gpu.log"
