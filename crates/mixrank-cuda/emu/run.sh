#!/usr/bin/env bash
# Runs the CUDA backend's conformance suite on the CPU: builds a fake libcuda.so.1
# (driver API over host memory, kernels from ../src/kernels compiled as C++ and run as
# fibers), a fake libcublas.so.12 (naive sgemm) and a fake libnccl.so (ranks as threads of
# one process), then runs the ignored GPU tests with
# them first on the loader path and the real libnvrtc (pip nvidia-cuda-nvrtc-cu12).
# What it checks: the Rust glue (argument lists, launch shapes, buffer handling, host
# plans) and the kernels' logic against the reference. What it does not: anything about
# a real GPU (CUDA's math library, scheduling, memory model, cuBLAS, the PTX itself).
# Usage: crates/mixrank-cuda/emu/run.sh [extra args to the test binaries, e.g. a filter]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=${EMU_OUT:-${TMPDIR:-/tmp}/mixrank-cuda-emu}
mkdir -p "$out/src"
python3 "$here/gen.py" "$here/../src/kernels" "$out/src"
flags=(-std=c++17 -O2 -fPIC -ffp-contract=off -fno-fast-math -w -I "$here")
g++ "${flags[@]}" -shared -o "$out/libcuda.so.1" "$here/fake_cuda.cpp" "$out"/src/*.cpp
ln -sf libcuda.so.1 "$out/libcuda.so"
g++ "${flags[@]}" -shared -o "$out/libcublas.so.12" "$here/fake_cublas.cpp"
ln -sf libcublas.so.12 "$out/libcublas.so"
g++ "${flags[@]}" -shared -pthread -o "$out/libnccl.so.2" "$here/fake_nccl.cpp"
ln -sf libnccl.so.2 "$out/libnccl.so"
nvrtc=$(python3 -c 'import site,os; print(next((os.path.join(d,"nvidia/cuda_nvrtc/lib") for d in site.getsitepackages() if os.path.isdir(os.path.join(d,"nvidia/cuda_nvrtc/lib"))), ""))')
export LD_LIBRARY_PATH="$out${nvrtc:+:$nvrtc}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MIXRANK_CUDA_EMULATED=1
cd "$root"
# Both allocation paths of cudarc: cuMemAllocAsync (memory pools, as on an H100) and
# cuMemAlloc_v2.
for pools in 1 0; do
  echo "== EMU_MEMPOOLS=$pools"
  # The release profile of the README's test command, so CI reuses its build.
  EMU_MEMPOOLS=$pools cargo test --workspace --release --locked --test conformance --test layers --test no_driver -- \
    --include-ignored --test-threads=1 "$@"
done
# The real binary end to end on the emulated driver: train -> resume -> eval -> predict
# -> serve with --device cuda, against the CPU (crates/mixrank/tests/cuda.rs).
echo "== end to end: crates/mixrank/tests/cuda.rs"
EMU_MEMPOOLS=1 cargo test --workspace --release --locked --test cuda -- --include-ignored --test-threads=1 "$@"
# NCCL (mixrank-dist's `Nccl` collective) on the fake libnccl, ranks as threads: the
# collective's operations on 1-3 ranks, then training over it against the in-process
# transport (crates/mixrank-dist/tests/nccl.rs, crates/mixrank-train/tests/distributed.rs).
echo "== NCCL collective: crates/mixrank-dist/tests/nccl.rs, distributed.rs's nccl_transport test"
MIXRANK_NCCL_EMULATED=1 cargo test --workspace --release --locked --test nccl --test distributed -- \
  --include-ignored nccl "$@"
