#!/usr/bin/env python3
"""PyTorch twin of the small MMoE of issue 15 item 1 (bench/small_mmoe.toml).

32 categorical fields, each its own 10,000 x 8 table, + 7 dense floats -> 263 inputs;
8 experts, each Linear(263->64)+ReLU; 2 tasks, each a gate Linear(263->8)+softmax and a
tower 64->32 (ReLU) ->1; loss = sum over tasks of mean BCE-with-logits; Adam lr 1e-3 for
dense parameters, sparse gradients + SparseAdam lr 1e-3 for the tables (mixrank: lazy
Adam 1e-3, the pairing bench/torch_bench_model.py uses). Batch 1024, one epoch of the
Parquet file the config names, every batch built as tensors before the first timed step.

    python bench/bench_model_data.py /tmp/small_mmoe 409600 --cat 32 --buckets 10000 --dense 7
    python bench/torch_small_mmoe.py bench/small_mmoe.toml --threads 2 --json out.json

Reports training examples/s: the median over windows of `--window` steps after
`--warmup` steps (zero_grad, forward, loss, backward, both optimizer steps timed; nothing
else).

Differences from mixrank's model and optimizers:
- SparseAdam's bias correction uses the global step count; mixrank's lazy Adam corrects
  per row by that row's own update count (`BiasCorrection::PerRow`). Same work per row.
- `--tables one` (not the default) keeps the 32 tables as row ranges of one
  [32·10,000, 8] table and looks them up with one `embedding` call (ids offset per
  field): the same parameters and the same updates, fewer PyTorch ops per step.
- Ids: mixrank's hash (XXH3 of the decimal text, mod buckets) when `xxhash` is installed
  (else a stand-in hash); rows are shuffled by one global permutation, not mixrank's
  65,536-row shuffle buffer. Initialisation as mixrank's (Xavier-uniform weights, zero
  biases, tables N(0, 0.01²)).
"""
import argparse
import json
import os
import statistics
import sys
import time
import tomllib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_mmoe_heterogeneous import (  # noqa: E402  the shared data helpers
    dense_matrix,
    encode,
    load_config,
    make_batches,
    read_split,
    task_arrays,
    windows,
    xavier_,
)


class SmallMMoE(nn.Module):
    def __init__(self, rows, dims, d_dense, experts, hidden, tower, tasks, one_table):
        super().__init__()
        self.one_table = one_table
        if one_table:
            assert len(set(dims)) == 1
            self.table = nn.Embedding(sum(rows), dims[0], sparse=True)
            nn.init.normal_(self.table.weight, std=0.01)
            self.register_buffer("offsets", torch.tensor(np.concatenate([[0], np.cumsum(rows)[:-1]]), dtype=torch.int64))
        else:
            self.tables = nn.ModuleList([nn.Embedding(r, d, sparse=True) for r, d in zip(rows, dims)])
            for t in self.tables:
                nn.init.normal_(t.weight, std=0.01)
        d_in = sum(dims) + d_dense
        self.d_in = d_in
        self.experts = nn.ModuleList([nn.Sequential(xavier_(nn.Linear(d_in, hidden)), nn.ReLU()) for _ in range(experts)])
        self.gates = nn.ModuleList([xavier_(nn.Linear(d_in, experts)) for _ in range(tasks)])
        self.towers = nn.ModuleList(
            [nn.Sequential(xavier_(nn.Linear(hidden, tower)), nn.ReLU(), xavier_(nn.Linear(tower, 1))) for _ in range(tasks)]
        )

    def forward(self, ids, dense):
        # ids: [batch, fields] int64 (one table) or a list of [batch] (per-field tables)
        if self.one_table:
            emb = [self.table(ids + self.offsets).flatten(1)]
        else:
            emb = [t(i) for t, i in zip(self.tables, ids)]
        x = torch.cat(emb + [dense], dim=1)  # [batch, 263]
        e = torch.stack([ex(x) for ex in self.experts], dim=1)  # [batch, 8, 64]
        out = []
        for g, tw in zip(self.gates, self.towers):
            w = torch.softmax(g(x), dim=1).unsqueeze(2)  # [batch, 8, 1]
            out.append(tw((w * e).sum(dim=1)))
        return torch.cat(out, dim=1)  # [batch, tasks] logits


def flops(m):
    lin = lambda l: 2 * l.in_features * l.out_features  # noqa: E731
    ex = sum(lin(s[0]) for s in m.experts)
    gates = sum(lin(g) for g in m.gates)
    towers = sum(lin(l) for t in m.towers for l in t if isinstance(l, nn.Linear))
    mix = len(m.gates) * 2 * len(m.experts) * m.experts[0][0].out_features
    fwd = ex + gates + towers + mix
    return {"experts": ex, "gates": gates, "towers": towers, "mixtures": mix, "forward": fwd, "train_step": 3 * fwd}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", nargs="?", default=os.path.join(os.path.dirname(__file__), "small_mmoe.toml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--tables", choices=["per-field", "one"], default="per-field")
    ap.add_argument("--adam", choices=["default", "foreach", "fused"], default="default")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg, base, tables, feats, dense = load_config(a.config)
    if any(f["pooling"] for f in feats):
        raise SystemExit("the small MMoE has single-valued features only")
    mcfg, tcfg = cfg["model"], cfg.get("train", {})
    assert mcfg["architecture"] == "mmoe" and len(mcfg["experts"]) == 1 and mcfg["experts"][0]["kind"] == "mlp"
    ex = mcfg["experts"][0]
    assert ex["hidden"] == [mcfg["expert_dim"]], "one hidden layer of expert_dim units"
    rows = [tables[f["table"]]["rows"] for f in feats]
    dims = [tables[f["table"]]["dim"] for f in feats]
    n_dense = len(dense) + sum(1 for d in dense if d.get("missing_indicator"))
    tasks = cfg["tasks"]
    model = SmallMMoE(rows, dims, n_dense, ex["count"], ex["hidden"][0], mcfg["tower"]["hidden"][0], len(tasks), a.tables == "one")
    fl = flops(model)
    print(f"d_in {model.d_in}; forward {fl['forward'] / 1e3:.1f} kFLOP/ex, training step ≈ 3× = {fl['train_step'] / 1e3:.1f} kFLOP/ex")

    t0 = time.perf_counter()
    tab = read_split(cfg, base, "train")
    dmat, _ = dense_matrix(tab, dense)
    y, m = task_arrays(tab, tasks)
    ids = encode(tab, feats, tables)
    perm = np.random.default_rng(a.seed).permutation(tab.num_rows)
    bs = cfg["data"].get("batch_size", 2048)
    batches = make_batches(ids, dmat, y, m, feats, bs, perm)
    if a.tables == "one":
        for b in batches:
            b["ids"] = torch.stack(b["ids"], dim=1)
    prep_s = time.perf_counter() - t0

    dense_params = [p for n, p in model.named_parameters() if not n.startswith("table")]
    table_params = [p for n, p in model.named_parameters() if n.startswith("table")]
    kw = {"fused": True} if a.adam == "fused" else {"foreach": True} if a.adam == "foreach" else {}
    opt_d = torch.optim.Adam(dense_params, lr=tcfg.get("lr", 1e-3), **kw)
    opt_t = torch.optim.SparseAdam(table_params, lr=tcfg.get("sparse_lr", 1e-3))
    times, nrows, losses = [], [], []
    for b in batches:
        t = time.perf_counter()
        opt_d.zero_grad(set_to_none=True)
        opt_t.zero_grad(set_to_none=True)
        logits = model(b["ids"], b["dense"])
        loss = sum(F.binary_cross_entropy_with_logits(logits[:, k], b["y"][:, k]) for k in range(len(tasks)))
        loss.backward()
        opt_d.step()
        opt_t.step()
        times.append(time.perf_counter() - t)
        nrows.append(b["dense"].shape[0])
        losses.append(float(loss.detach()))
    w = windows(times, nrows, a.warmup, a.window)
    med = statistics.median(w)
    res = {"torch": torch.__version__, "threads": a.threads, "tables": a.tables, "adam": a.adam, "batch_size": bs,
           "d_in": model.d_in, "flops_per_example": fl, "steps": len(times), "examples": sum(nrows),
           "window_examples_per_s": w, "examples_per_s": med, "data_prep_s": prep_s,
           "first_loss": losses[0], "last_loss": statistics.mean(losses[-20:])}
    print(f"train {sum(nrows)} rows, batch {bs}: {len(times)} steps; median of {len(w)} windows of {a.window} steps "
          f"after {a.warmup}: {med:.0f} ex/s ({med * fl['train_step'] / 1e9:.1f} GFLOP/s); "
          f"loss {losses[0]:.3f} → {res['last_loss']:.3f} (data prep {prep_s:.1f} s, untimed)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
