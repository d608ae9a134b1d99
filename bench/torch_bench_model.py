#!/usr/bin/env python3
"""PyTorch reference for the bench model of ../shared/DESIGN.md ("bench model").

26 categorical fields, each its own 100,000 x 16 table, + 13 dense floats -> 429-dim
input; 4 experts, each MLP 429->256->128 with ReLU; 2 tasks, each a gate
Linear(429->4)+softmax and a tower 128->64->1; loss = sum of BCE-with-logits; Adam
lr 1e-3 for dense parameters; the tables use sparse gradients + SparseAdam (PyTorch's
best CPU configuration per DESIGN.md) or dense gradients + Adam (--dense-embeddings).
Uniform random ids. Training batch 2048; inference latency at batches 1, 64, 512, 2048
in f32 and bf16 (autocast).

    python bench/torch_bench_model.py --threads 2 --json out.json

Prints medians; mixrank's own bench runs the same model in the same session so the two
columns of docs/BENCHMARKS.md are comparable.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn

FIELDS, ROWS, DIM, DENSE = 26, 100_000, 16, 13
D_IN = FIELDS * DIM + DENSE  # 429
EXPERTS, TASKS = 4, 2


class BenchModel(nn.Module):
    def __init__(self, sparse: bool):
        super().__init__()
        self.tables = nn.ModuleList([nn.Embedding(ROWS, DIM, sparse=sparse) for _ in range(FIELDS)])
        self.experts = nn.ModuleList(
            [nn.Sequential(nn.Linear(D_IN, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU()) for _ in range(EXPERTS)]
        )
        self.gates = nn.ModuleList([nn.Linear(D_IN, EXPERTS) for _ in range(TASKS)])
        self.towers = nn.ModuleList(
            [nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1)) for _ in range(TASKS)]
        )

    def forward(self, ids, dense):
        # ids: [batch, 26] int64; dense: [batch, 13]
        emb = [t(ids[:, i]) for i, t in enumerate(self.tables)]
        x = torch.cat(emb + [dense], dim=1)  # [batch, 429]
        e = torch.stack([ex(x) for ex in self.experts], dim=1)  # [batch, 4, 128]
        out = []
        for g, tw in zip(self.gates, self.towers):
            w = torch.softmax(g(x), dim=1).unsqueeze(2)  # [batch, 4, 1]
            out.append(tw((w * e).sum(dim=1)).squeeze(1))  # [batch]
        return torch.stack(out, dim=1)  # [batch, 2] logits


def batch(n, gen):
    ids = torch.randint(0, ROWS, (n, FIELDS), generator=gen)
    dense = torch.randn(n, DENSE, generator=gen)
    y = (torch.rand(n, TASKS, generator=gen) < 0.2).float()
    return ids, dense, y


def bench_train(sparse, steps, warmup, bs):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    m = BenchModel(sparse)
    dense_params = [p for n, p in m.named_parameters() if not n.startswith("tables.")]
    table_params = [p for n, p in m.named_parameters() if n.startswith("tables.")]
    opt_d = torch.optim.Adam(dense_params, lr=1e-3)
    opt_t = torch.optim.SparseAdam(table_params, lr=1e-3) if sparse else torch.optim.Adam(table_params, lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss(reduction="mean")
    data = [batch(bs, gen) for _ in range(8)]
    times = []
    for s in range(warmup + steps):
        ids, dense, y = data[s % len(data)]
        t = time.perf_counter()
        opt_d.zero_grad(set_to_none=True)
        opt_t.zero_grad(set_to_none=True)
        logits = m(ids, dense)
        loss = sum(loss_fn(logits[:, k], y[:, k]) for k in range(TASKS))
        loss.backward()
        opt_d.step()
        opt_t.step()
        if s >= warmup:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"median_step_s": med, "examples_per_s": bs / med}


@torch.no_grad()
def bench_infer(bs, bf16, reps, warmup):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    m = BenchModel(False).eval()
    ids, dense, _ = batch(bs, gen)
    times = []
    for r in range(warmup + reps):
        t = time.perf_counter()
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                m(ids, dense)
        else:
            m(ids, dense)
        if r >= warmup:
            times.append(time.perf_counter() - t)
    return {"median_ms": 1e3 * statistics.median(times), "p99_ms": 1e3 * sorted(times)[int(0.99 * (len(times) - 1))]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--json")
    ap.add_argument("--infer-only", action="store_true", help="skip the training figures")
    ap.add_argument("--train-only", action="store_true", help="skip the inference figures")
    ap.add_argument("--sparse-only", action="store_true", help="train only the best configuration (sparse + SparseAdam)")
    ap.add_argument("--batches", default="1,64,512,2048", help="inference batch sizes, comma-separated")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    res = {"torch": torch.__version__, "threads": a.threads, "train": {}, "infer": {}}
    for sparse in (() if a.infer_only else (True,) if a.sparse_only else (True, False)):
        key = "sparse_sparseadam" if sparse else "dense_adam"
        r = bench_train(sparse, a.steps, 5, 2048)
        res["train"][key] = r
        print(f"train {key:<18} batch 2048: {r['examples_per_s']:>9.0f} ex/s (median step {1e3 * r['median_step_s']:.1f} ms)")
    for bf16 in (() if a.train_only else (False, True)):
        for bs in [int(b) for b in a.batches.split(",")]:
            reps = 200 if bs <= 64 else 50
            r = bench_infer(bs, bf16, reps, 10)
            key = f"{'bf16' if bf16 else 'f32'}@{bs}"
            res["infer"][key] = r
            print(f"infer {key:<10} median {r['median_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
