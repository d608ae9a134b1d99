#!/usr/bin/env python3
"""f32 GEMM GFLOP/s of PyTorch's CPU GEMM (MKL/oneDNN) on this machine: a stand-in for
the machine's f32 GEMM peak where mixrank's own gemm_bench (cargo, docs/BENCHMARKS.md
"GEMM kernels") has not been run on it. Median of --reps products after 5 warm-ups,
GFLOP/s = 2·m·k·n / time.

    python bench/torch_gemm_peak.py --threads 2
"""
import argparse
import statistics
import time

import torch

SHAPES = [(2048, 429, 256), (2048, 113, 256), (2048, 256, 128), (2048, 4096, 128), (1024, 263, 64), (1024, 1024, 1024)]

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--reps", type=int, default=30)
a = ap.parse_args()
torch.set_num_threads(a.threads)
print(f"torch {torch.__version__}, {a.threads} threads, f32")
best = 0.0
for m, k, n in SHAPES:
    x, w = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    ts = []
    for r in range(5 + a.reps):
        t = time.perf_counter()
        torch.mm(x, w, out=out)
        if r >= 5:
            ts.append(time.perf_counter() - t)
    g = 2 * m * k * n / statistics.median(ts) / 1e9
    best = max(best, g)
    print(f"{m:>5}x{k:<5}x{n:<5} {g:8.1f} GFLOP/s")
print(f"best {best:.1f} GFLOP/s")
