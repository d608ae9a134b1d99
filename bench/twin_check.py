#!/usr/bin/env python3
"""Checks that bench/torch_mmoe_heterogeneous.py computes what mixrank computes: loads a
trained mixrank run's weights (checkpoint/weights.safetensors) and dense statistics
(manifest.json) into the PyTorch twin, scores the validation split and compares with
`mixrank predict` on the same split.

    mixrank train SIM/mixrank.toml --model configs/models/mmoe_heterogeneous.toml --out RUN
    mixrank predict RUN --split validation --out RUN/val.parquet --keep user_id,position
    python bench/twin_check.py RUN RUN/val.parquet [--fusion outer|bmm|fuxictr]

Prints the largest absolute difference per task (probabilities for binary tasks, the
prediction for regression tasks) and fails when one exceeds --tol.
"""
import argparse
import json
import os
import struct
import sys
import tempfile
import tomllib

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_mmoe_heterogeneous as T  # noqa: E402


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        a, b = v["data_offsets"]
        out[k] = torch.from_numpy(np.frombuffer(data[a:b], dtype=np.float32).reshape(v["shape"]).copy())
    return out


def table_order(cfg):
    """mixrank's table numbering: [tables.*] in file order, then inline tables in feature order."""
    names = list(cfg.get("tables", {}))
    for f in cfg["features"]["categorical"]:
        if "table" not in f:
            names.append(f["name"])
    return names


def load_into(model, w, cfg):
    def lin(mod, prefix, bias=True):
        mod.weight.copy_(w[prefix + ".weight"].t())
        if bias:
            mod.bias.copy_(w[prefix + ".bias"])

    def ln(mod, prefix):
        mod.weight.copy_(w[prefix + ".gamma"])
        mod.bias.copy_(w[prefix + ".beta"])

    def mlp(block, prefix, n_hidden, output=False):
        for k in range(n_hidden):
            lin(block.mlp[2 * k], f"{prefix}.blocks.{k}.linear")
        if output:
            lin(block.mlp[2 * n_hidden], f"{prefix}.output")

    with torch.no_grad():
        for i, name in enumerate(table_order(cfg)):
            model.tables[model.table_names.index(name)].copy_(w[f"emb.tables.{i}"])
        for e, (kind, ex) in enumerate(zip(model.expert_kinds, model.experts)):
            p = f"head.experts.{e}"
            if kind == "dcnv2":
                for l, (v, u) in enumerate(zip(ex.cross.v, ex.cross.u)):
                    v.weight.copy_(w[f"{p}.cross.layers.{l}.v"].t())
                    u.weight.copy_(w[f"{p}.cross.layers.{l}.u"])
                    u.bias.copy_(w[f"{p}.cross.layers.{l}.b"])
                mlp(ex.deep, f"{p}.deep", len(ex.deep.mlp) // 2)
            elif kind == "masknet":
                for b, blk in enumerate(ex.blocks):
                    q = f"{p}.blocks.{b}"
                    lin(blk.mask_layer[0], f"{q}.mask_agg")
                    lin(blk.mask_layer[2], f"{q}.mask_proj")
                    ln(blk.ln_in, f"{q}.norm_in")
                    lin(blk.hidden_layer[0], f"{q}.hidden", bias=False)
                    ln(blk.hidden_layer[1], f"{q}.norm_out")
                lin(ex.proj, f"{p}.proj")
            elif kind == "finalmlp":
                mlp(ex.fs1_gate, f"{p}.gate1", 1, output=True)
                mlp(ex.fs2_gate, f"{p}.gate2", 1, output=True)
                mlp(ex.mlp1, f"{p}.mlp1", len(ex.mlp1.mlp) // 2)
                mlp(ex.mlp2, f"{p}.mlp2", len(ex.mlp2.mlp) // 2)
                lin(ex.fusion.w_x, f"{p}.fusion.w_x")
                lin(ex.fusion.w_y, f"{p}.fusion.w_y", bias=False)
                ex.fusion.w_xy.copy_(w[f"{p}.fusion.w_xy"])
            elif kind == "mlp":
                mlp(ex, p, len(ex.mlp) // 2)
        for t, (g, tw) in enumerate(zip(model.gates, model.towers)):
            lin(g, f"head.gates.{t}")
            mlp(tw, f"head.towers.{t}", (len(tw.mlp) - 1) // 2, output=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("predictions", help="`mixrank predict RUN --split validation --keep user_id,position` output")
    ap.add_argument("--fusion", choices=["outer", "bmm", "fuxictr"], default="outer")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    torch.set_num_threads(2)
    ck = os.path.join(a.run, "checkpoint")
    manifest = json.load(open(os.path.join(ck, "manifest.json")))
    cfg_text = manifest["config_toml"]
    with tempfile.NamedTemporaryFile("w", suffix=".toml", dir=os.path.dirname(manifest["config_path"]) or ".", delete=False) as f:
        f.write(cfg_text)
        cfg_path = f.name
    try:
        cfg, base, tables, feats, dense = T.load_config(cfg_path)
    finally:
        os.unlink(cfg_path)
    tasks = cfg["tasks"]
    n_dense = len(dense) + sum(1 for d in dense if d.get("missing_indicator"))
    model = T.MMoE(feats, tables, n_dense, cfg["model"], len(tasks), a.fusion).eval()
    load_into(model, read_safetensors(os.path.join(ck, "weights.safetensors")), cfg)
    st = manifest["dense_stats"]
    stats = list(zip(st["mean"], st["std"]))
    vt = T.read_split(cfg, base, "validation")
    vd, _ = T.dense_matrix(vt, dense, stats)
    vy, vm = T.task_arrays(vt, tasks)
    vids = T.encode(vt, feats, tables)
    batches = T.make_batches(vids, vd, vy, vm, feats, 4096, np.arange(vt.num_rows))
    with torch.no_grad():
        logits = torch.cat([model(b["ids"], b["dense"]) for b in batches]).double().numpy()
    import pyarrow.parquet as pq

    pred = pq.read_table(a.predictions)
    for c in ("user_id", "position"):
        if c in pred.column_names:
            same = np.array_equal(pred.column(c).to_numpy(), vt.column(c).to_numpy())
            print(f"rows aligned on {c}: {same}")
            if not same:
                raise SystemExit("prediction rows are not in the split's file order")
    worst = 0.0
    for t, task in enumerate(tasks):
        theirs = pred.column(f"pred_{task['name']}").to_numpy().astype(np.float64)
        ours = 1 / (1 + np.exp(-logits[:, t])) if task["kind"] == "binary" else logits[:, t]
        d = np.abs(ours - theirs)
        worst = max(worst, d.max())
        print(f"{task['name']:<12} max |twin − mixrank| {d.max():.2e}  mean {d.mean():.2e}  (values up to {np.abs(theirs).max():.3g})")
    print(f"{'OK' if worst <= a.tol else 'MISMATCH'}: largest difference {worst:.2e} (tolerance {a.tol:g})")
    sys.exit(0 if worst <= a.tol else 1)


if __name__ == "__main__":
    main()
