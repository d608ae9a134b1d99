#!/usr/bin/env python3
"""PyTorch twin of the demo's heterogeneous MMoE (configs/models/mmoe_heterogeneous.toml).

Trains one epoch of the simulator's training split (the Parquet files and features of a
`mixrank simulate` config) with the same model, losses and optimizers as

    mixrank train SIM/mixrank.toml --model configs/models/mmoe_heterogeneous.toml

and reports training examples/s (median over windows of steps, after a warm-up; data
preparation excluded: every batch is built as tensors before the first timed step).

    python bench/torch_mmoe_heterogeneous.py /tmp/twin/sim/mixrank.toml --threads 2 --json out.json

The model, as mixrank builds it (crates/mixrank-model/src/{expert,moe,towers}.rs,
crates/mixrank-nn/src/{cross,mask,finalmlp,dense,moe}); layers written the way FuxiCTR
writes them (CrossNetV2, MaskBlock/ParallelMaskNet, FeatureSelection +
InteractionAggregation, MLP_Block, MMoE_Layer):

- input x = [embeddings of every categorical feature in config order | dense values |
  missing indicators]; for the simulator's config 6×16 + 3×4 = 108 embedding columns
  + 4 dense + 1 indicator = 113 (`d_in`);
- expert 0, DCNv2 stacked: 3 low-rank cross layers x_{l+1} = x0 ⊙ (U (Vᵀ x_l) + b) + x_l
  (V, U: [113, 32], no nonlinearity between them), then MLP 113→256→128 (ReLU);
- expert 1, MaskNet parallel: 2 MaskBlocks, each mask = Linear(113→226)+ReLU →
  Linear(226→113), hidden = LayerNorm(113)(x), out = ReLU(LayerNorm(128)(Linear(113→128,
  no bias)(mask ⊙ hidden))); concat 256 → Linear(256→128) (mixrank's projection to
  expert_dim);
- expert 2, FinalMLP: two feature-selection gates g_i = 2σ(MLP 113→64 (ReLU)→113 (x)),
  streams MLP(113→128, ReLU) on x ⊙ g_i, fused by 2-head bilinear InteractionAggregation
  straight to 128 (w_x with bias, w_y without: mixrank keeps one bias);
- experts 3, 4: MLP 113→256→128 (ReLU);
- per task a gate Linear(113→5) + softmax, the mixture Σ_e g_e·expert_e, a tower
  128→64 (ReLU) → 1;
- loss: Σ_t weight_t · masked weighted mean of the task's loss (BCE-with-logits for
  binary tasks, squared error for regression, label transforms, `mask` columns and task
  weights from the config: for the simulator click, save, dwell (log1p, mask click,
  weight 0.5, MSE), conversion (mask click));
- optimizers: Adam (lr, β = 0.9/0.999, eps 1e-8) on dense parameters; row-wise Adagrad
  (acc_row += mean(g_row²), w_row -= lr·g_row/(sqrt(acc_row)+1e-8), over the rows a batch
  touched, gradients of features sharing a table summed first) on the tables, from
  sparse gradients (nn.Embedding/EmbeddingBag sparse=True);
- init: Xavier-uniform weights, zero biases, LayerNorm γ=1 β=0, tables N(0, 0.01²)
  (mixrank's defaults; init does not change the cost).

Differences from mixrank (everything else is the same computation):
- categorical values are hashed exactly as mixrank does (XXH3 of the value's text, seed
  "mixrank1", mod buckets) when the `xxhash` package is installed, else with a stand-in
  hash (same table sizes; only which row a value lands in changes);
- the training rows are shuffled by one global permutation, not mixrank's 65,536-row
  shuffle buffer; dense statistics (log1p / clip / standardize with the population std
  of the observed training values, missing → `missing` then transformed) are computed
  here with numpy;
- the bilinear fusion's sum Σ_h Σ_ij x_hi W_h[i, o, j] y_hj has three spellings here, all
  the same value and the same multiply count: `--fusion outer` (the default, and the
  fastest on CPU) is mixrank's: the per-head outer product Z_h = x_h ⊗ y_h ([B, hx·hy])
  and one GEMM of k = hx·hy per head; `--fusion bmm`: [H, B, hx] @ [H, hx, d_out·hy] then
  a multiply-reduce over hy; `--fusion fuxictr`: FuxiCTR's InteractionAggregation
  verbatim (a broadcast `matmul` of [B, H, 1, hx] by [H, hx, d_out·hy], then by
  [B, H, hy, 1]). PyTorch (2.x, CPU) executes the verbatim form by materialising the
  weight once per example (B·H·hx·d_out·hy floats: 8.6 GB at batch 2048) and takes
  seconds per step, so it is reported separately and not used as the twin's figure.
"""
import argparse
import glob
import json
import math
import os
import statistics
import sys
import time
import tomllib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HASH_SEED = int.from_bytes(b"mixrank1", "big")


# ----------------------------------------------------------------------------- data


def _hash_keys(keys):
    """mixrank's categorical hash (crates/mixrank-data/src/hash.rs) of text keys."""
    try:
        import xxhash
    except ImportError:  # stand-in: same table sizes, different rows
        import zlib

        return np.array([zlib.crc32(k.encode()) for k in keys], dtype=np.uint64)
    return np.array([xxhash.xxh3_64_intdigest(k.encode(), seed=HASH_SEED) for k in keys], dtype=np.uint64)


def _encode_values(values, table):
    """Row ids of a flat numpy array of values (ints or strings) in a table."""
    if "vocabulary" in table:
        index = {v: i for i, v in enumerate(table["vocabulary"])}
        oov = len(table["vocabulary"])
        return np.array([index.get(str(v), oov) for v in values], dtype=np.int64)
    uniq, inv = np.unique(values, return_inverse=True)
    keys = [str(int(u)) if np.issubdtype(uniq.dtype, np.integer) else str(u) for u in uniq]
    rows = (_hash_keys(keys) % np.uint64(table["buckets"])).astype(np.int64)
    return rows[inv]


def load_config(path):
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    base = os.path.dirname(os.path.abspath(path))
    tables, feats = {}, []
    for name, t in cfg.get("tables", {}).items():
        tables[name] = {"buckets": t.get("buckets"), "dim": t["dim"], **({"vocabulary": t["vocabulary"]} if "vocabulary" in t else {})}
    for f in cfg["features"]["categorical"]:
        if "table" in f:
            tname = f["table"]
        else:
            tname = f["name"]
            t = {"dim": f["dim"]}
            if "vocabulary" in f:
                t["vocabulary"] = f["vocabulary"]
            else:
                t["buckets"] = f["buckets"]
            tables[tname] = t
        t = tables[tname]
        t["rows"] = len(t["vocabulary"]) + 1 if "vocabulary" in t else t["buckets"]
        pooling = f.get("multi_valued", {}).get("pooling") if isinstance(f.get("multi_valued"), dict) else None
        feats.append({"name": f["name"], "column": f.get("column", f["name"]), "table": tname, "pooling": pooling})
    dense = cfg["features"].get("dense", [])
    return cfg, base, tables, feats, dense


def split_files(cfg, base, split):
    s = cfg["data"]["splits"][split]
    files = sorted(p for pat in s["paths"] for p in glob.glob(os.path.join(base, pat)))
    if "days" in s:
        lo, hi = s["days"]["from"], s["days"]["to"]
        keep = []
        for p in files:
            day = [c[4:] for c in p.split(os.sep) if c.startswith("day=")]
            if day and lo <= day[0] <= hi:
                keep.append(p)
        files = keep
    return files


def read_split(cfg, base, split):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(p) for p in split_files(cfg, base, split)])


def dense_matrix(table, dense, stats=None):
    """[rows, values + indicators] as mixrank's encoder writes it; fits `stats` if None."""
    cols, inds, fit = [], [], stats is None
    stats = stats if stats is not None else []
    for j, d in enumerate(dense):
        raw = table.column(d.get("column", d["name"])).to_numpy(zero_copy_only=False).astype(np.float64)
        missing = ~np.isfinite(raw)
        v = np.where(missing, d.get("missing", 0.0), raw)
        if d.get("log1p"):
            v = np.sign(v) * np.log1p(np.abs(v))
        if "clip" in d:
            v = np.clip(v, d["clip"][0], d["clip"][1])
        if fit:
            obs = v[~missing]
            mean, std = (obs.mean(), obs.std()) if obs.size else (0.0, 1.0)
            stats.append((mean, std if std > 1e-12 else 1.0))
        mean, std = stats[j] if d.get("standardize") else (0.0, 1.0)
        cols.append((v - mean) / std)
        if d.get("missing_indicator"):
            inds.append(missing.astype(np.float64))
    return np.stack(cols + inds, axis=1).astype(np.float32), stats


def task_arrays(table, tasks):
    n = table.num_rows
    y = np.zeros((n, len(tasks)), np.float32)
    m = np.ones((n, len(tasks)), np.float32)
    for t, task in enumerate(tasks):
        v = table.column(task["label"]).to_numpy(zero_copy_only=False).astype(np.float64)
        if task.get("label_transform") == "log1p":
            v = np.log1p(v)
        y[:, t] = v
        if "mask" in task:
            m[:, t] = (table.column(task["mask"]).to_numpy(zero_copy_only=False) != 0).astype(np.float32)
    return y, m


def encode(table, feats, tables):
    """Per feature: [rows] ids, or (flat ids, per-row lengths) for a multi-valued one."""
    out = []
    for f in feats:
        col = table.column(f["column"])
        t = tables[f["table"]]
        if f["pooling"]:
            col = col.combine_chunks()
            lens = np.diff(col.offsets.to_numpy()).astype(np.int64)
            out.append((_encode_values(col.values.to_numpy(zero_copy_only=False), t), lens))
        else:
            out.append(_encode_values(col.to_numpy(zero_copy_only=False), t))
    return out


def make_batches(ids, dense, y, m, feats, bs, perm):
    """Every batch as tensors (the timed loop does no data work)."""
    starts = {}
    for i, f in enumerate(feats):
        if f["pooling"]:
            starts[i] = np.concatenate([[0], np.cumsum(ids[i][1])])
    batches = []
    for s in range(0, len(perm), bs):
        rows = perm[s : s + bs]
        b = {"ids": [], "dense": torch.from_numpy(dense[rows]), "y": torch.from_numpy(y[rows]), "m": torch.from_numpy(m[rows])}
        for i, f in enumerate(feats):
            if f["pooling"]:
                flat, lens = ids[i]
                st = starts[i]
                parts = [flat[st[r] : st[r + 1]] for r in rows]
                offs = np.concatenate([[0], np.cumsum(lens[rows])[:-1]])
                b["ids"].append((torch.from_numpy(np.concatenate(parts)), torch.from_numpy(offs)))
            else:
                b["ids"].append(torch.from_numpy(ids[i][rows]))
        batches.append(b)
    return batches


def to_device(b, dev):
    """A batch of [`make_batches`] on `dev` (uploaded before timing, as the data work is)."""
    ids = [tuple(x.to(dev) for x in i) if isinstance(i, tuple) else i.to(dev) for i in b["ids"]]
    return {"ids": ids, **{k: b[k].to(dev) for k in ("dense", "y", "m")}}


# ---------------------------------------------------------------------------- layers


def xavier_(lin):
    nn.init.xavier_uniform_(lin.weight)
    if lin.bias is not None:
        nn.init.zeros_(lin.bias)
    return lin


class MLPBlock(nn.Module):
    """FuxiCTR's MLP_Block: Linear → activation per hidden width, optional output Linear."""

    def __init__(self, d_in, hidden, d_out=None, out_act=None):
        super().__init__()
        layers, w = [], d_in
        for h in hidden:
            layers += [xavier_(nn.Linear(w, h)), nn.ReLU()]
            w = h
        if d_out is not None:
            layers.append(xavier_(nn.Linear(w, d_out)))
            if out_act is not None:
                layers.append(out_act)
        self.mlp = nn.Sequential(*layers)

    def forward(self, x):
        return self.mlp(x)


class CrossNetV2(nn.Module):
    """FuxiCTR's CrossNetV2 (X_{i+1} = X_i + X_0 ⊙ layer_i(X_i)) with each layer low rank:
    layer(x) = U (Vᵀ x) + b, as mixrank's `CrossRank::LowRank` (no nonlinearity, unlike
    FuxiCTR's CrossNetMix)."""

    def __init__(self, d, layers, rank):
        super().__init__()
        self.v = nn.ModuleList([xavier_(nn.Linear(d, rank, bias=False)) for _ in range(layers)])
        self.u = nn.ModuleList([xavier_(nn.Linear(rank, d)) for _ in range(layers)])

    def forward(self, x0):
        x = x0
        for v, u in zip(self.v, self.u):
            x = x + x0 * u(v(x))
        return x


class DCNv2(nn.Module):
    """Stacked DCN-V2: deep(cross(x))."""

    def __init__(self, d_in, layers, rank, hidden):
        super().__init__()
        self.cross = CrossNetV2(d_in, layers, rank)
        self.deep = MLPBlock(d_in, hidden)

    def forward(self, x):
        return self.deep(self.cross(x))


class MaskBlock(nn.Module):
    """FuxiCTR's MaskBlock with layer_norm on the hidden input (mixrank normalises the whole
    input row, one LayerNorm per block)."""

    def __init__(self, d_emb, d_hidden, d_mask, d_out):
        super().__init__()
        self.mask_layer = nn.Sequential(xavier_(nn.Linear(d_emb, d_mask)), nn.ReLU(), xavier_(nn.Linear(d_mask, d_hidden)))
        self.ln_in = nn.LayerNorm(d_hidden)
        self.hidden_layer = nn.Sequential(xavier_(nn.Linear(d_hidden, d_out, bias=False)), nn.LayerNorm(d_out), nn.ReLU())

    def forward(self, v_hidden, v_emb):
        return self.hidden_layer(self.mask_layer(v_emb) * self.ln_in(v_hidden))


class ParallelMaskNet(nn.Module):
    def __init__(self, d_in, blocks, block_dim, ratio, d_out):
        super().__init__()
        d_mask = max(1, round(d_in * ratio))
        self.blocks = nn.ModuleList([MaskBlock(d_in, d_in, d_mask, block_dim) for _ in range(blocks)])
        self.proj = xavier_(nn.Linear(blocks * block_dim, d_out))  # mixrank's projection to expert_dim

    def forward(self, x):
        return self.proj(torch.cat([b(x, x) for b in self.blocks], dim=1))


class InteractionAggregation(nn.Module):
    """FuxiCTR's multi-head bilinear fusion; w_y has no bias (mixrank keeps one)."""

    def __init__(self, d_x, d_y, d_out, heads, fusion):
        super().__init__()
        self.heads, self.d_out, self.fusion = heads, d_out, fusion
        self.hx, self.hy = d_x // heads, d_y // heads
        self.w_x = xavier_(nn.Linear(d_x, d_out))
        self.w_y = xavier_(nn.Linear(d_y, d_out, bias=False))
        # Storage [heads·hx, d_out·hy] (mixrank's and FuxiCTR's view), Xavier over those fans.
        self.w_xy = nn.Parameter(torch.empty(heads * self.hx, d_out * self.hy))
        nn.init.xavier_uniform_(self.w_xy)

    def forward(self, x, y):
        out = self.w_x(x) + self.w_y(y)
        H, hx, hy, o = self.heads, self.hx, self.hy, self.d_out
        head_x = x.view(-1, H, hx)
        head_y = y.view(-1, H, hy)
        w = self.w_xy.view(H, hx, o * hy)
        if self.fusion == "fuxictr":
            xy = torch.matmul(torch.matmul(head_x.unsqueeze(2), w).view(-1, H, o, hy), head_y.unsqueeze(-1)).squeeze(-1)
            return out + xy.sum(dim=1)
        if self.fusion == "outer":
            # mixrank's form: Z_h = x_h ⊗ y_h ([B, hx·hy]), one GEMM of k = hx·hy per head
            # against W'_h[i·hy + j, o] = W_h[i, o, j].
            z = (head_x.unsqueeze(3) * head_y.unsqueeze(2)).reshape(-1, H, hx * hy).transpose(0, 1)
            w_r = self.w_xy.view(H, hx, o, hy).permute(0, 1, 3, 2).reshape(H, hx * hy, o)
            return out + torch.bmm(z, w_r).sum(dim=0)
        # bmm: [H, B, hx] @ [H, hx, o·hy] → [H, B, o, hy], times y_h, summed over hy and heads.
        t = torch.bmm(head_x.transpose(0, 1), w).view(H, -1, o, hy)
        xy = (t * head_y.transpose(0, 1).unsqueeze(2)).sum(dim=3)
        return out + xy.sum(dim=0)


class FinalMLP(nn.Module):
    """FuxiCTR's FinalMLP with the input as the gates' context: FeatureSelection (gates
    2·σ(MLP)), two MLP streams, InteractionAggregation to d_out."""

    def __init__(self, d_in, hidden1, hidden2, heads, d_out, fusion):
        super().__init__()
        gate_hidden = [min(d_in, 64)]
        self.fs1_gate = MLPBlock(d_in, gate_hidden, d_in, nn.Sigmoid())
        self.fs2_gate = MLPBlock(d_in, gate_hidden, d_in, nn.Sigmoid())
        self.mlp1 = MLPBlock(d_in, hidden1)
        self.mlp2 = MLPBlock(d_in, hidden2)
        self.fusion = InteractionAggregation(hidden1[-1], hidden2[-1], d_out, heads, fusion)

    def forward(self, x):
        f1 = x * (self.fs1_gate(x) * 2)
        f2 = x * (self.fs2_gate(x) * 2)
        return self.fusion(self.mlp1(f1), self.mlp2(f2))


def build_expert(s, d_in, expert_dim, fusion):
    kind = s["kind"]
    if kind == "mlp":
        net, w = MLPBlock(d_in, s["hidden"]), s["hidden"][-1]
    elif kind == "dcnv2":
        hidden = s.get("hidden") or [expert_dim]
        if s.get("structure", "stacked") != "stacked" or "low_rank" not in s:
            raise SystemExit("the twin implements the stacked low-rank DCNv2 only")
        net, w = DCNv2(d_in, s.get("cross_layers", 3), s["low_rank"], hidden), hidden[-1]
    elif kind == "masknet":
        if s.get("structure", "stacked") != "parallel" or s.get("hidden"):
            raise SystemExit("the twin implements the parallel MaskNet without an MLP only")
        blocks, bd = s.get("blocks", 2), s.get("block_dim", expert_dim)
        return ParallelMaskNet(d_in, blocks, bd, s.get("reduction_ratio", 2.0), expert_dim)
    elif kind == "finalmlp":
        h2 = s.get("stream2") or s["hidden"]
        return FinalMLP(d_in, s["hidden"], h2, s.get("heads", 1), expert_dim, fusion)
    else:
        raise SystemExit(f"unknown expert kind {kind}")
    if w != expert_dim:
        net = nn.Sequential(net, xavier_(nn.Linear(w, expert_dim)))
    return net


class MMoE(nn.Module):
    """Embeddings → x → experts; per task a Linear+softmax gate, the mixture, a tower
    (FuxiCTR's MMoE_Layer)."""

    def __init__(self, feats, tables, d_dense, model, n_tasks, fusion):
        super().__init__()
        self.feats = feats
        self.table_names = list(dict.fromkeys(f["table"] for f in feats))
        self.tables = nn.ParameterList()
        for n in self.table_names:
            t = tables[n]
            self.tables.append(nn.Parameter(torch.randn(t["rows"], t["dim"]) * 0.01))
        self.table_of = [self.table_names.index(f["table"]) for f in feats]
        d_in = sum(tables[f["table"]]["dim"] for f in feats) + d_dense
        self.d_in = d_in
        ed = model["expert_dim"]
        specs = [e for e in model["experts"] for _ in range(e.get("count", 1))]
        self.expert_kinds = [e["kind"] for e in specs]
        self.experts = nn.ModuleList([build_expert(e, d_in, ed, fusion) for e in specs])
        self.gates = nn.ModuleList([xavier_(nn.Linear(d_in, len(specs))) for _ in range(n_tasks)])
        self.towers = nn.ModuleList([MLPBlock(ed, model["tower"]["hidden"], 1) for _ in range(n_tasks)])

    def forward(self, ids, dense):
        emb = []
        for f, t, i in zip(self.feats, self.table_of, ids):
            w = self.tables[t]
            if f["pooling"]:
                emb.append(F.embedding_bag(i[0], w, i[1], mode=f["pooling"], sparse=True))
            else:
                emb.append(F.embedding(i, w, sparse=True))
        x = torch.cat(emb + [dense], dim=1)
        e = torch.stack([ex(x) for ex in self.experts], dim=1)  # [B, E, expert_dim]
        out = []
        for g, tw in zip(self.gates, self.towers):
            w = torch.softmax(g(x), dim=-1)
            out.append(tw(torch.sum(w.unsqueeze(-1) * e, dim=1)))
        return torch.cat(out, dim=1)  # [B, tasks]


# ------------------------------------------------------------------------- optimizer


class RowWiseAdagrad(torch.optim.Optimizer):
    """mixrank's row-wise Adagrad (crates/mixrank-engine/src/optim.rs) on sparse gradients:
    per touched row (gradients of features sharing a table summed), acc += mean(g²),
    w -= lr · g / (sqrt(acc) + eps). State: one accumulator per row."""

    def __init__(self, params, lr=0.05, eps=1e-8):
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if "acc" not in st:
                    st["acc"] = torch.zeros(p.shape[0], device=p.device)
                g = p.grad.coalesce()
                idx, val = g.indices()[0], g.values()
                acc = st["acc"].index_select(0, idx) + val.pow(2).mean(dim=1)
                st["acc"].index_copy_(0, idx, acc)
                p.index_add_(0, idx, val * (-lr / (acc.sqrt() + eps)).unsqueeze(1))


def make_adam(params, lr, impl):
    kw = {"fused": True} if impl == "fused" else {"foreach": True} if impl == "foreach" else {}
    return torch.optim.Adam(params, lr=lr, **kw)


def task_loss(logits, y, m, tasks):
    total = logits.new_zeros(())
    for t, task in enumerate(tasks):
        z, yt, mt = logits[:, t], y[:, t], m[:, t]
        if task["kind"] == "binary":
            l = F.binary_cross_entropy_with_logits(z, yt, reduction="none")
        else:
            l = (z - yt) ** 2
        ws = mt.sum()
        total = total + task.get("weight", 1.0) * torch.where(ws > 0, (l * mt).sum() / ws.clamp_min(1e-30), ws)
    return total


# ----------------------------------------------------------------------------- FLOPs


def linear_flops(lin):
    return 2 * lin.in_features * lin.out_features


def forward_flops(model):
    """Multiply-adds ×2 of every matrix product of one example's forward, from the shapes
    (mixrank's `Counting` convention: GEMMs 2·m·n·k, the fusion's per-row outer product
    2·hx·hy per head; elementwise ops, norms, softmax not counted), per expert kind."""
    per = {}
    for kind, ex in zip(model.expert_kinds, model.experts):
        f = sum(linear_flops(l) for l in ex.modules() if isinstance(l, nn.Linear))
        for mod in ex.modules():
            if isinstance(mod, InteractionAggregation):
                k = mod.hx * mod.hy
                f += mod.heads * (2 * k * mod.d_out + 2 * k)  # GEMM k = hx·hy per head + outer product
        per.setdefault(kind, []).append(f)
    gates = sum(linear_flops(g) for g in model.gates)
    towers = sum(linear_flops(l) for t in model.towers for l in t.modules() if isinstance(l, nn.Linear))
    n_exp = len(model.experts)
    ed = model.towers[0].mlp[0].in_features
    mixtures = len(model.gates) * 2 * n_exp * ed
    total = sum(sum(v) for v in per.values()) + gates + towers + mixtures
    return {"experts": per, "gates": gates, "towers": towers, "mixtures": mixtures, "forward": total}


# ----------------------------------------------------------------------------- train


def auc(score, label):
    order = np.argsort(score, kind="mergesort")
    s, l = score[order], label[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2 + 1
        i = j + 1
    pos = l.sum()
    neg = len(l) - pos
    return float((ranks[l == 1].sum() - pos * (pos + 1) / 2) / (pos * neg)) if pos and neg else float("nan")


def windows(step_times, step_rows, warmup, window):
    """Examples/s over consecutive windows of `window` steps after `warmup` steps (full
    windows only)."""
    out = []
    for s in range(warmup, len(step_times) - window + 1, window):
        out.append(sum(step_rows[s : s + window]) / sum(step_times[s : s + window]))
    return out


def train(model, batches, tasks, lr, sparse_lr, adam_impl, warmup, window, sparse_opt="rowwise_adagrad"):
    dense_params = [p for n, p in model.named_parameters() if not n.startswith("tables.")]
    opt_d = make_adam(dense_params, lr, adam_impl)
    tables = list(model.tables)
    opt_s = RowWiseAdagrad(tables, lr=sparse_lr) if sparse_opt == "rowwise_adagrad" else torch.optim.SparseAdam(tables, lr=sparse_lr)
    times, rows, losses = [], [], []
    for b in batches:
        t = time.perf_counter()
        opt_d.zero_grad(set_to_none=True)
        opt_s.zero_grad(set_to_none=True)
        logits = model(b["ids"], b["dense"])
        loss = task_loss(logits, b["y"], b["m"], tasks)
        loss.backward()
        opt_d.step()
        opt_s.step()
        times.append(time.perf_counter() - t)
        rows.append(b["dense"].shape[0])
        losses.append(float(loss.detach()))
    w = windows(times, rows, warmup, window)
    return {
        "steps": len(times),
        "examples": sum(rows),
        "step_s_total": sum(times),
        "window_examples_per_s": w,
        "examples_per_s": statistics.median(w) if w else float("nan"),
        "first_loss": losses[0],
        "last_loss": statistics.mean(losses[-10:]),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", help="the simulator's mixrank.toml (features, tasks, splits)")
    ap.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "..", "configs/models/mmoe_heterogeneous.toml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps before the first window")
    ap.add_argument("--window", type=int, default=10, help="steps per timed window")
    ap.add_argument("--fusion", choices=["outer", "bmm", "fuxictr"], default="outer",
                    help="how the bilinear fusion is computed (same value; see the module docs)")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: the whole epoch)")
    ap.add_argument("--adam", choices=["default", "foreach", "fused"], default="default")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eval", action="store_true", help="AUC on the validation split after the epoch")
    ap.add_argument("--flops-only", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (the twin of `mixrank … --device cuda`)")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)
    cfg, base, tables, feats, dense = load_config(a.config)
    with open(a.model, "rb") as f:
        mcfg = tomllib.load(f)
    model_sec = mcfg["model"]
    if model_sec.get("architecture") != "mmoe":
        raise SystemExit("the twin is an MMoE")
    train_sec = {**cfg.get("train", {}), **mcfg.get("train", {})}
    if train_sec.get("sparse_optimizer", "rowwise_adagrad") != "rowwise_adagrad":
        raise SystemExit("the twin implements rowwise_adagrad for the tables")
    tasks = cfg["tasks"]
    n_dense = len(dense) + sum(1 for d in dense if d.get("missing_indicator"))
    model = MMoE(feats, tables, n_dense, model_sec, len(tasks), a.fusion)
    fl = forward_flops(model)
    model.to(dev)
    res = {"torch": torch.__version__, "threads": a.threads, "device": str(dev), "d_in": model.d_in, "fusion": a.fusion, "adam": a.adam,
           "flops_per_example": {**fl, "train_step": 3 * fl["forward"]}}
    print(f"d_in {model.d_in}; experts {model.expert_kinds}; forward {fl['forward'] / 1e6:.3f} MFLOP/ex "
          f"(experts {{{', '.join(f'{k}: {sum(v) / 1e6:.3f}' for k, v in fl['experts'].items())}}}), "
          f"training step ≈ 3× = {3 * fl['forward'] / 1e6:.3f} MFLOP/ex")
    if a.flops_only:
        print(json.dumps(res["flops_per_example"]))
        return
    t0 = time.perf_counter()
    tab = read_split(cfg, base, "train")
    dmat, stats = dense_matrix(tab, dense)
    y, m = task_arrays(tab, tasks)
    ids = encode(tab, feats, tables)
    perm = np.random.default_rng(a.seed).permutation(tab.num_rows)
    bs = cfg["data"].get("batch_size", 2048)
    if a.max_steps:
        perm = perm[: a.max_steps * bs]
    batches = [to_device(b, dev) for b in make_batches(ids, dmat, y, m, feats, bs, perm)]
    prep_s = time.perf_counter() - t0
    r = train(model, batches, tasks, train_sec.get("lr", 1e-3), train_sec.get("sparse_lr", 0.05), a.adam, a.warmup, a.window)
    res.update(r, batch_size=bs, data_prep_s=prep_s)
    print(f"train {r['examples']} rows, batch {bs}: {r['steps']} steps; median of {len(r['window_examples_per_s'])} windows "
          f"of {a.window} steps after {a.warmup}: {r['examples_per_s']:.0f} ex/s "
          f"({r['examples_per_s'] * 3 * fl['forward'] / 1e9:.1f} GFLOP/s); loss {r['first_loss']:.3f} → {r['last_loss']:.3f} "
          f"(data prep {prep_s:.1f} s, untimed)")
    if a.eval:
        model.eval()
        vt = read_split(cfg, base, "validation")
        vd, _ = dense_matrix(vt, dense, stats)
        vy, vm = task_arrays(vt, tasks)
        vids = encode(vt, feats, tables)
        vb = [to_device(b, dev) for b in make_batches(vids, vd, vy, vm, feats, 8192, np.arange(vt.num_rows))]
        with torch.no_grad():
            logits = torch.cat([model(b["ids"], b["dense"]) for b in vb]).cpu().numpy()
        res["validation_auc"] = {}
        for t, task in enumerate(tasks):
            if task["kind"] == "binary":
                keep = vm[:, t] > 0
                res["validation_auc"][task["name"]] = auc(logits[keep, t], vy[keep, t])
        print("validation AUC:", {k: round(v, 4) for k, v in res["validation_auc"].items()})
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
