#!/usr/bin/env bash
# Issue 14: the CUDA backend's GPU checks in one call.
#
# On the GPU machine it runs crates/mixrank-cuda's ignored tests: NVRTC compiles every
# kernel (tests/nvrtc.rs; skipped without libnvrtc when PTX is given), the backend opens
# on GPU 0 (tests/no_driver.rs), and every op of the Backend trait against the reference
# backend at tiny shapes and at 4096 x 1024, cuBLAS and the tiled GEMM kernel
# (tests/conformance.rs), and mixrank-nn's layers on CudaOps within the rounding bound
# of BoundOps (tests/layers.rs); then the end-to-end test on the real binary
# (crates/mixrank/tests/cuda.rs: train -> resume -> eval -> predict -> serve on CUDA,
# against the CPU), `mixrank bench infer` and `mixrank bench train` on CUDA and on the
# CPU; NCCL's collective and training over it (crates/mixrank-dist/tests/nccl.rs,
# crates/mixrank-train/tests/distributed.rs), when libnccl.so.2 is there; PyTorch on the
# same GPU (bench/torch_gpu_bench.py, the heterogeneous twin with --device cuda) when
# torch there sees it.
#
# Usage:
#   bench/gpu_check.sh --prepare [DIR]   here, without a GPU: build the mixrank binary,
#       the five test binaries (release, stripped) and the kernels' PTX into DIR (default
#       target/gpu-check, ~45 MB: carry it). The PTX comes from the libnvrtc on the loader
#       path or in MIXRANK_PTX_NVRTC (a lib directory); the driver there must be at least
#       that CUDA version (libnvrtc 12.0's PTX loads on every CUDA 12 driver).
#   bench/gpu_check.sh [DIR]             on the GPU machine: run the binaries in DIR
#       (default target/gpu-check if it exists), with its PTX when libnvrtc is absent;
#       without DIR and with cargo there, build and run with cargo.
#
# At run time the machine needs the NVIDIA driver (libcuda.so.1); libcublas is optional
# (without it the GEMM is the tiled kernel); libnvrtc is needed unless DIR has PTX. The
# PyPI wheels' lib directories (nvidia-cuda-nvrtc-cu12, nvidia-cublas-cu12) are put on
# LD_LIBRARY_PATH when python can find them (unless MIXRANK_CUDA_NO_WHEELS is set), as is
# MIXRANK_CUDA_LIBS (directories, space-separated).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
default_dir="$root/target/gpu-check"

wheel_libs() { # lib directories of the nvidia wheels python sees
  local py
  for py in python3 python; do
    command -v "$py" > /dev/null || continue
    "$py" - << 'PY' 2> /dev/null
import os, site
dirs = site.getsitepackages() + [site.getusersitepackages()]
for d in dirs:
    for sub in ("cuda_nvrtc/lib", "cublas/lib", "cuda_runtime/lib", "nccl/lib"):
        p = os.path.join(d, "nvidia", sub)
        if os.path.isdir(p):
            print(p)
PY
    return
  done
}
have_lib() { # NAME: exactly that file, on the loader's cache or path
  ldconfig -p 2> /dev/null | grep -qE "^[[:space:]]*$1 " && return 0
  local d
  for d in ${LD_LIBRARY_PATH//:/ }; do [ -e "$d/$1" ] && return 0; done
  return 1
}
find_lib() { # NAME: its path on the loader's cache or path, or nothing
  local found d
  found=$(ldconfig -p 2> /dev/null | grep -m1 -E "^[[:space:]]*$1 " | sed 's/.*=> //')
  for d in ${LD_LIBRARY_PATH//:/ }; do [ -z "$found" ] && [ -e "$d/$1" ] && found="$d/$1"; done
  echo "$found"
}
wheels=""
[ -z "${MIXRANK_CUDA_NO_WHEELS:-}" ] && wheels=$(wheel_libs)
for l in ${MIXRANK_CUDA_LIBS:-} $wheels; do
  LD_LIBRARY_PATH="$l${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"

if [ "${1:-}" = "--prepare" ]; then
  dir=${2:-$default_dir}
  mkdir -p "$dir/ptx"
  cd "$root" || exit 1
  cargo build --release --locked -q || { echo "building mixrank failed"; exit 1; }
  cp target/release/mixrank "$dir/mixrank" && strip "$dir/mixrank" 2> /dev/null
  bins=$(cargo test --workspace --release --locked --no-run --message-format=json \
    --test conformance --test layers --test nvrtc --test no_driver --test cuda --test nccl --test distributed 2> /dev/null |
    python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("conformance", "layers", "nvrtc", "no_driver", "cuda", "nccl", "distributed"):
        print(m["target"]["name"], m["executable"])')
  [ "$(echo "$bins" | grep -c .)" = 7 ] || { echo "building the test binaries failed"; exit 1; }
  while read -r name exe; do
    cp "$exe" "$dir/$name" && strip "$dir/$name" 2> /dev/null
    echo "$dir/$name"
  done <<< "$bins"
  LD_LIBRARY_PATH="${MIXRANK_PTX_NVRTC:+$MIXRANK_PTX_NVRTC:}$LD_LIBRARY_PATH" \
    cargo run -q -p mixrank-cuda --example write_ptx -- "$dir/ptx" || exit 1
  du -sh "$dir"
  exit 0
fi

dir=${1:-}
[ -z "$dir" ] && [ -d "$default_dir" ] && dir=$default_dir
echo "== gpu_check: $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2> /dev/null || echo "nvidia-smi: not found"
# NCCL's wheel ships libnccl.so.2 only; cudarc loads libnccl.so: a link to it.
nccl2=$(find_lib libnccl.so.2)
if [ -n "$nccl2" ] && ! have_lib libnccl.so; then
  nccl_link=$(mktemp -d)
  ln -s "$nccl2" "$nccl_link/libnccl.so"
  export LD_LIBRARY_PATH="$nccl_link:$LD_LIBRARY_PATH"
fi
for lib in libcuda.so.1 libnvrtc.so.12 libcublas.so.12 libnccl.so; do
  found=$(find_lib "$lib")
  echo "$lib: ${found:-not found}"
done
status=0
if [ -n "$dir" ]; then
  if ! have_lib libnvrtc.so.12; then
    if [ -d "$dir/ptx" ]; then
      export MIXRANK_CUDA_PTX_DIR="$dir/ptx"
      echo "no libnvrtc: kernels from $MIXRANK_CUDA_PTX_DIR"
    fi
  fi
  ran=0
  for t in nvrtc no_driver conformance layers; do
    bin="$dir/$t"
    [ -x "$bin" ] || continue
    ran=$((ran + 1))
    if [ "$t" = nvrtc ] && [ -n "${MIXRANK_CUDA_PTX_DIR:-}" ]; then
      echo "== $bin (kernel list only: no libnvrtc)"
      "$bin" --test-threads=1 || status=1
      continue
    fi
    echo "== $bin"
    "$bin" --include-ignored --test-threads=1 --nocapture || status=1
  done
  [ $ran = 4 ] || { echo "expected the test binaries nvrtc, no_driver, conformance, layers in $dir, found $ran"; status=1; }
  # End to end on the real binary: train, resume, eval, predict, serve on CUDA against the CPU.
  if [ -x "$dir/cuda" ] && [ -x "$dir/mixrank" ]; then
    echo "== $dir/cuda (train -> resume -> eval -> predict -> serve on cuda)"
    MIXRANK_BIN="$dir/mixrank" "$dir/cuda" --include-ignored --test-threads=1 --nocapture || status=1
    # Inference latency of the DESIGN.md bench model, CUDA then CPU, on this machine.
    echo "== bench infer --device cuda"
    "$dir/mixrank" bench infer --device cuda --batches 1,512,2048 --reps 200 || status=1
    echo "== bench infer --device cpu (same machine, $(nproc) threads)"
    "$dir/mixrank" bench infer --device cpu --batches 1,512,2048 --reps 100 --threads "$(nproc)" || status=1
    # Training throughput of the DESIGN.md bench model (random batches), CUDA then CPU.
    echo "== bench train --device cuda (batch 2048, then 16384)"
    "$dir/mixrank" bench train --device cuda --steps 30 || status=1
    "$dir/mixrank" bench train --device cuda --batch 16384 --steps 10 || status=1
    echo "== bench train --device cpu (same machine, $(nproc) threads)"
    "$dir/mixrank" bench train --device cpu --threads "$(nproc)" --steps 10 || status=1
  else
    echo "no $dir/cuda or $dir/mixrank: the end-to-end test and the benchmark were not run"; status=1
  fi
  # PyTorch on the same GPU (issue 14's comparison), when torch there sees it: the bench
  # model in every mode (bench/torch_gpu_bench.py; cut at 300 s, the figures so far kept
  # in its JSON), then the demo's heterogeneous MMoE, mixrank on CUDA against its twin.
  if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2> /dev/null; then
    out=${OUT:-$(mktemp -d)}
    echo "== PyTorch, bench model on cuda (bench/torch_gpu_bench.py; JSON in $out)"
    timeout 300 python3 "$root/bench/torch_gpu_bench.py" --device cuda --json "$out/torch_gpu_bench.json" || status=1
    sim=$(mktemp -d)
    if "$dir/mixrank" simulate --out "$sim" --days 4 --requests-per-day 10000 > /dev/null; then
      echo "== demo heterogeneous MMoE: mixrank train --device cuda"
      "$dir/mixrank" train "$sim/mixrank.toml" --model "$root/configs/models/mmoe_heterogeneous.toml" \
        --out "$sim/run" --device cuda --log-every 10 || status=1
      echo "== demo heterogeneous MMoE: the PyTorch twin on cuda (fused Adam)"
      timeout 200 python3 "$root/bench/torch_mmoe_heterogeneous.py" "$sim/mixrank.toml" --device cuda --adam fused \
        --json "$out/torch_mmoe_heterogeneous.json" || status=1
    fi
  else
    echo "PyTorch with CUDA: not on this machine; the comparison with PyTorch was not run"
  fi
  # NCCL (issue 17): the collective's operations, then training over it against the
  # in-process transport, one rank per GPU (a one-GPU machine: one rank).
  if have_lib libnccl.so && [ -x "$dir/nccl" ] && [ -x "$dir/distributed" ]; then
    gpus=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU') || gpus=1
    echo "== $dir/nccl and $dir/distributed nccl ($gpus GPU(s))"
    MIXRANK_NCCL_GPUS=$gpus "$dir/nccl" --include-ignored --nocapture || status=1
    MIXRANK_NCCL_GPUS=$gpus "$dir/distributed" --include-ignored --nocapture nccl || status=1
  else
    echo "NCCL: not run (no libnccl.so.2 here, e.g. pip's nvidia-nccl-cu12, or no test binaries)"
  fi
else
  cd "$root" || exit 1
  echo "== cargo test -p mixrank-cuda -- --include-ignored"
  cargo test -p mixrank-cuda --tests -- --include-ignored --test-threads=1 --nocapture || status=1
fi
echo "== gpu_check: $([ $status = 0 ] && echo PASSED || echo FAILED)"
exit $status
