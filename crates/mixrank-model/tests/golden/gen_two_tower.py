#!/usr/bin/env python3
"""PyTorch twin of mixrank's two-tower light ranker, written as the golden file
`two_tower.safetensors` for `crates/mixrank-model/tests/two_tower_golden.rs`.

Re-run (from the repository root; needs torch and numpy):

    /work/torchenv/bin/python crates/mixrank-model/tests/golden/gen_two_tower.py

The output is a pure function of the seed below (NumPy PCG64 draws, float64 maths on the
CPU). Inputs and parameters are drawn in float32 and stored as float32; results are
float64, computed in float64 from those values. The Rust test runs mixrank in float64
(`RefOpsF64`), so the two sides differ only by summation order.

The model (the test's config, `CONFIG` below, in mixrank's names and layouts: a weight is
`[d_in, d_out]`, `y = x·W + b`):
- embeddings: `user` [6, 3], `cat` [4, 2] (read by `ad_category` and by the mean-pooled
  `interests`), `ad` [5, 2], `device` [3, 2] (2 values + the out-of-vocabulary row);
  dense `bid` (with its missing indicator) and `age`;
- user tower (groups user = [user, interests, age], context = [device]; input
  [user 3 | interests 2 | age 1 | device 2]): MMoE, two MLP experts 8 -> [3] tanh,
  linear gates + softmax per task, towers [3] -> [4] tanh -> 2;
- item tower (group ad = [ad, ad_category, bid]; input [ad 2 | ad_category 2 | bid 1 |
  bid's indicator 1]): shared-bottom, one MLP expert 6 -> [4] tanh, projected to 3,
  towers [3] -> [2] tanh -> 2;
- logit_t = <u_t, v_t> + b_t for tasks click and save (`two_tower.safetensors`);
- the cosine case (`two_tower_cosine.safetensors`, config `score = "cosine"`,
  `temperature = 0.25`): the same draws, and
  logit_t = <u_t/n(u_t), v_t/n(v_t)> / 0.25 + b_t with n(x) = sqrt(sum x^2 + eps),
  eps = float32(1e-12) (mixrank's COSINE_EPS).
"""

import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
OUT = os.path.dirname(os.path.abspath(__file__))
F64 = torch.float64
ROWS, DIM, TASKS = 5, 2, 2


def write_safetensors(path, tensors, metadata):
    """Keys sorted, header padded to 8 bytes: deterministic bytes."""
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.uint32): "U32"}
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtypes[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


COSINE_TEMPERATURE = 0.25
COSINE_EPS = float(np.float32(1e-12))


def unit(x):
    return x / torch.sqrt((x * x).sum(dim=1, keepdim=True) + COSINE_EPS)


def case(cosine):
    rng = np.random.default_rng(2026)
    out = {}
    params = {}

    def draw(shape, lo=-1.0, hi=1.0):
        return rng.uniform(lo, hi, size=shape).astype(np.float32)

    def param(name, shape, lo=-0.8, hi=0.8):
        v = draw(shape, lo, hi)
        out["param." + name] = v
        t = torch.tensor(v, dtype=F64, requires_grad=True)
        params[name] = t
        return t

    def linear(prefix, d_in, d_out, x):
        return x @ param(prefix + "weight", (d_in, d_out)) + param(prefix + "bias", (d_out,))

    def mlp(prefix, d_in, hidden, x, d_out=None):
        for i, h in enumerate(hidden):
            x = torch.tanh(linear(f"{prefix}blocks.{i}.linear.", d_in, h, x))
            d_in = h
        if d_out is not None:
            x = linear(prefix + "output.", d_in, d_out, x)
        return x

    # Tables (leaves) and the batch.
    shapes = {"user": (6, 3), "ad": (5, 2), "cat": (4, 2), "device": (3, 2)}
    tables = {}
    for k, s in shapes.items():
        v = draw(s)
        out["table." + k] = v
        tables[k] = torch.tensor(v, dtype=F64, requires_grad=True)
    ids = {
        "user": np.array([0, 5, 2, 2, 4], dtype=np.uint32),
        "ad": np.array([1, 4, 0, 3, 1], dtype=np.uint32),
        "ad_category": np.array([3, 0, 1, 1, 2], dtype=np.uint32),
        "device": np.array([0, 1, 2, 1, 0], dtype=np.uint32),
        "interests": np.array([1, 2, 0, 3, 3, 1, 2], dtype=np.uint32),
    }
    offsets = np.array([0, 2, 3, 3, 6, 7], dtype=np.uint32)  # bag 2 is empty
    for k, v in ids.items():
        out["ids." + k] = v
    out["offsets.interests"] = offsets
    # Dense matrix in config order: bid, age, then bid's missing indicator (0/1).
    dense = np.stack([draw((ROWS,)), draw((ROWS,)), np.array([0, 1, 0, 0, 1], dtype=np.float32)], axis=1)
    out["dense"] = dense.astype(np.float32)
    d = torch.tensor(dense, dtype=F64)
    lt = lambda a: torch.tensor(a.astype(np.int64))
    e_user = F.embedding(lt(ids["user"]), tables["user"])
    e_ad = F.embedding(lt(ids["ad"]), tables["ad"])
    e_cat = F.embedding(lt(ids["ad_category"]), tables["cat"])
    e_int = F.embedding_bag(lt(ids["interests"]), tables["cat"], lt(offsets), mode="mean", include_last_offset=True)
    e_dev = F.embedding(lt(ids["device"]), tables["device"])
    x_user = torch.cat([e_user, e_int, d[:, 1:2], e_dev], dim=1)  # [5, 8]
    x_item = torch.cat([e_ad, e_cat, d[:, 0:1], d[:, 2:3]], dim=1)  # [5, 6]

    # User tower: MMoE.
    experts = [mlp(f"user.experts.{e}.", 8, [3], x_user) for e in range(2)]
    gates = [torch.softmax(linear(f"user.gates.{t}.", 8, 2, x_user), dim=1) for t in range(TASKS)]
    u = []
    for t in range(TASKS):
        mix = gates[t][:, 0:1] * experts[0] + gates[t][:, 1:2] * experts[1]
        u.append(mlp(f"user.towers.{t}.", 3, [4], mix, DIM))
    # Item tower: shared-bottom.
    bottom = linear("item.experts.0.proj.", 4, 3, mlp("item.experts.0.", 6, [4], x_item))
    v = [mlp(f"item.towers.{t}.", 3, [2], bottom, DIM) for t in range(TASKS)]
    if cosine:
        logits = [
            (unit(u[t]) * unit(v[t])).sum(dim=1) / COSINE_TEMPERATURE + param(f"score.{t}.bias", (1,))
            for t in range(TASKS)
        ]
    else:
        logits = [(u[t] * v[t]).sum(dim=1) + param(f"score.{t}.bias", (1,)) for t in range(TASKS)]

    total = 0
    for t in range(TASKS):
        dy = draw((ROWS,))
        out[f"d_logit.{t}"] = dy
        out[f"logit.{t}"] = logits[t].detach().numpy()
        total = total + (logits[t] * torch.tensor(dy, dtype=F64)).sum()
    total.backward()
    for n, p in params.items():
        assert p.grad is not None and bool((p.grad != 0).any()), f"{n} got no gradient"
        out["grad." + n] = p.grad.numpy()
    for k, t in tables.items():
        out["grad.table." + k] = t.grad.numpy()
    name = "two_tower_cosine" if cosine else "two_tower"
    meta = {"case": name, "generator": "gen_two_tower.py", "torch": torch.__version__}
    path = os.path.join(OUT, name + ".safetensors")
    write_safetensors(path, out, meta)
    print(f"{name}.safetensors: {len(out)} tensors, {os.path.getsize(path)} bytes")


def main():
    case(cosine=False)
    case(cosine=True)


if __name__ == "__main__":
    sys.exit(main())
