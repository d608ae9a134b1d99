#!/usr/bin/env python3
"""PyTorch on a GPU for the bench model of ../shared/DESIGN.md (issue 14's comparison).

The model of bench/torch_bench_model.py (26 tables of 100,000 x 16 + 13 dense -> 429;
4 experts 429->256->128; 2 gates and towers 128->64->1; BCE; Adam 1e-3), measured on
one device in every configuration issue 14 names:

- modes: eager, `torch.compile` (default), `torch.compile(mode="reduce-overhead")`
  (CUDA graphs), each in f32 and with bf16 autocast;
- training examples/s at batches 2048 and 16384: the tables with dense gradients and
  fused Adam (what compiles and what a GPU trainer uses), and eager sparse gradients +
  SparseAdam for reference;
- inference latency at batches 1, 512 and 2048.

Timing: the data is generated on the device before timing; each figure is the median of
timed windows, every window ended by `torch.cuda.synchronize()` (wall time of the
device's work). Runs on the CPU too (`--device cpu`, e.g. `--modes eager` as a smoke
test); `bench/gpu_check.sh` runs it with `--device cuda` when torch sees a GPU.

    python bench/torch_gpu_bench.py --device cuda --json out.json
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(__file__))
from torch_bench_model import BenchModel, DENSE, FIELDS, ROWS, TASKS  # noqa: E402

MODES = ("eager", "compile", "reduce-overhead")


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def batch(n, dev, gen):
    ids = torch.randint(0, ROWS, (n, FIELDS), generator=gen).to(dev)
    dense = torch.randn(n, DENSE, generator=gen).to(dev)
    y = (torch.rand(n, TASKS, generator=gen) < 0.2).float().to(dev)
    return ids, dense, y


def compiled(fn, mode):
    if mode == "eager":
        return fn
    return torch.compile(fn, mode=None if mode == "compile" else "reduce-overhead")


def timed(step, dev, warmup, windows, per_window):
    for _ in range(warmup):
        step()
    sync(dev)
    out = []
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(per_window):
            step()
        sync(dev)
        out.append((time.perf_counter() - t) / per_window)
    return statistics.median(out)


def bench_train(dev, mode, bf16, bs, sparse, a):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    m = BenchModel(sparse).to(dev)
    dense_params = [p for n, p in m.named_parameters() if not n.startswith("tables.")]
    table_params = [p for n, p in m.named_parameters() if n.startswith("tables.")]
    fused = {"fused": True} if dev.type == "cuda" else {}
    opt_d = torch.optim.Adam(dense_params, lr=1e-3, **fused)
    opt_t = torch.optim.SparseAdam(table_params, lr=1e-3) if sparse else torch.optim.Adam(table_params, lr=1e-3, **fused)
    loss_fn = nn.BCEWithLogitsLoss(reduction="mean")
    data = [batch(bs, dev, gen) for _ in range(4)]

    def fwd_bwd(ids, dense, y):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits = m(ids, dense)
        loss = sum(loss_fn(logits[:, k].float(), y[:, k]) for k in range(TASKS))
        loss.backward()
        return loss

    fb = compiled(fwd_bwd, mode)
    i = [0]

    def step():
        opt_d.zero_grad(set_to_none=True)
        opt_t.zero_grad(set_to_none=True)
        fb(*data[i[0] % len(data)])
        opt_d.step()
        opt_t.step()
        i[0] += 1

    s = timed(step, dev, a.warmup, a.windows, a.steps)
    return {"median_step_s": s, "examples_per_s": bs / s}


@torch.no_grad()
def bench_infer(dev, mode, bf16, bs, a):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    m = BenchModel(False).to(dev).eval()
    ids, dense, _ = batch(bs, dev, gen)

    def fwd(ids, dense):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            return m(ids, dense)

    f = compiled(fwd, mode)
    s = timed(lambda: f(ids, dense), dev, a.warmup, a.windows, a.reps)
    return {"median_ms": 1e3 * s}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--train-batches", default="2048,16384")
    ap.add_argument("--infer-batches", default="1,512,2048")
    ap.add_argument("--warmup", type=int, default=10, help="untimed calls first (compilation happens here)")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="training steps per timed window")
    ap.add_argument("--reps", type=int, default=100, help="inference calls per timed window")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    modes = [m for m in a.modes.split(",") if m]
    if any(m not in MODES for m in modes):
        raise SystemExit(f"--modes: expected some of {MODES}")
    res = {"torch": torch.__version__, "device": str(dev), "train": {}, "infer": {}}
    if dev.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(dev)
    print(f"torch {torch.__version__} on {res.get('gpu', dev)}")
    for bs in [int(b) for b in a.train_batches.split(",") if b]:
        runs = [(mode, bf16, False) for mode in modes for bf16 in (False, True)] + [("eager", False, True)]
        for mode, bf16, sparse in runs:
            key = f"{mode}/{'bf16' if bf16 else 'f32'}/{'sparse+SparseAdam' if sparse else 'dense+Adam'}@{bs}"
            try:
                r = bench_train(dev, mode, bf16, bs, sparse, a)
            except Exception as e:  # a mode this torch or device cannot run: say so, go on
                r = {"error": f"{type(e).__name__}: {e}"[:300]}
            res["train"][key] = r
            save(res, a.json)
            print(f"train {key:<46} " + (f"{r['examples_per_s']:>11.0f} ex/s" if "error" not in r else r["error"]))
    for bs in [int(b) for b in a.infer_batches.split(",") if b]:
        for mode in modes:
            for bf16 in (False, True):
                key = f"{mode}/{'bf16' if bf16 else 'f32'}@{bs}"
                try:
                    r = bench_infer(dev, mode, bf16, bs, a)
                except Exception as e:
                    r = {"error": f"{type(e).__name__}: {e}"[:300]}
                res["infer"][key] = r
                save(res, a.json)
                print(f"infer {key:<30} " + (f"{r['median_ms']:.4f} ms" if "error" not in r else r["error"]))


def save(res, path):
    """Writes the figures so far (a run cut short by a time limit keeps them)."""
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump(res, f, indent=2)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
