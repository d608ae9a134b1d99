#!/usr/bin/env bash
# Issue 14: the CUDA backend's GPU checks in one call, for a machine with an NVIDIA GPU.
# Runs crates/mixrank-cuda's ignored tests: NVRTC compiles every kernel (tests/nvrtc.rs),
# the backend opens on GPU 0 (tests/no_driver.rs), and every op of the Backend trait
# against the reference backend at tiny shapes and at 4096 x 1024 (tests/conformance.rs).
# Not yet here (later parts of issue 14): the end-to-end train -> checkpoint -> resume ->
# eval -> serve test on CUDA, and the benchmark against PyTorch.
#
# Needs at run time: the NVIDIA driver (libcuda.so.1), libnvrtc and libcublas (a CUDA 12
# toolkit, or the PyPI wheels nvidia-cuda-nvrtc-cu12 and nvidia-cublas-cu12, whose lib
# directories this script puts on LD_LIBRARY_PATH when python can import them; or set
# MIXRANK_CUDA_LIBS to a directory holding libnvrtc.so.12 and libcublas.so.12).
#
# Usage: bench/gpu_check.sh [TEST_BIN_DIR]
#   With cargo on the machine: builds and runs the tests (dev profile).
#   Without: give the directory of test binaries built elsewhere with
#     CARGO_TARGET_DIR=T cargo test -p mixrank-cuda --no-run
#   (T/debug/deps/{conformance,nvrtc,no_driver}-*; copy them there) and it runs those.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
libs=()
[ -n "${MIXRANK_CUDA_LIBS:-}" ] && libs+=("$MIXRANK_CUDA_LIBS")
for py in python3 python; do
  command -v "$py" > /dev/null || continue
  for d in $("$py" -c 'import site; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2> /dev/null); do
    for sub in cuda_nvrtc/lib cublas/lib cuda_runtime/lib; do
      [ -d "$d/nvidia/$sub" ] && libs+=("$d/nvidia/$sub")
    done
  done
  break
done
for l in "${libs[@]}"; do LD_LIBRARY_PATH="$l${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
echo "== gpu_check: $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2> /dev/null || echo "nvidia-smi: not found"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
status=0
if [ -n "${1:-}" ]; then
  ran=0
  for t in nvrtc no_driver conformance; do
    for bin in "$1"/"$t"-*; do
      [ -f "$bin" ] && [ -x "$bin" ] || continue
      echo "== $bin"
      ran=$((ran + 1))
      "$bin" --include-ignored --test-threads=1 --nocapture || status=1
    done
  done
  [ $ran = 3 ] || { echo "expected 3 test binaries (nvrtc, no_driver, conformance) in $1, found $ran"; status=1; }
else
  cd "$root" || exit 1
  echo "== cargo test -p mixrank-cuda -- --include-ignored"
  cargo test -p mixrank-cuda --tests -- --include-ignored --test-threads=1 --nocapture || status=1
fi
echo "== gpu_check: $([ $status = 0 ] && echo PASSED || echo FAILED)"
exit $status
