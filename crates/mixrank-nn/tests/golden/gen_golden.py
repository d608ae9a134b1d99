#!/usr/bin/env python3
"""PyTorch twins of every mixrank-nn layer, loss and optimizer step, written as golden
files for `crates/mixrank-nn/tests/nn/golden.rs`.

Re-run (from the repository root; needs torch and numpy, nothing else):

    /work/torchenv/bin/python crates/mixrank-nn/tests/golden/gen_golden.py

It rewrites every `*.safetensors` file beside this script; the output is a pure function
of the fixed seeds below (same bytes on every run and machine: values are drawn with
NumPy's PCG64 and the maths is float64 on the CPU). See README.md for the file layout.

Each twin follows mixrank's documented math (the `///` docs in crates/mixrank-nn/src),
written with the standard PyTorch ops (`F.linear`, `F.layer_norm`, `F.softmax`,
`F.embedding_bag`, `F.binary_cross_entropy_with_logits`, `torch.optim.Adam`/`AdamW`, ...)
and FuxiCTR's tensor layouts where mixrank follows them. Inputs and parameters are drawn
in float32 and stored in float32; everything computed (outputs, gradients, updated
values) is float64, computed in float64 from those float32 values, so the Rust test can
compare mixrank's f32 results against (nearly) exact values with a derived rounding bound.
Constants mixrank rounds to f32 before use (layer-norm eps, optimizer betas and lr, the
gate's 1/T) are rounded the same way here.
"""

import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
OUT = os.path.dirname(os.path.abspath(__file__))
F64 = torch.float64


def f32(x):
    """The float32 rounding of a Python float, as a float (mixrank's f32 constants)."""
    return float(np.float32(x))


LN_EPS = f32(1e-5)


# ---- safetensors writer (the format is tiny; no extra dependency) ----------------------

def write_safetensors(path, tensors, metadata):
    """`tensors`: name -> np.ndarray (float32, float64 or uint32). Keys are sorted and the
    header is padded to 8 bytes, so the bytes are deterministic."""
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


# ---- one golden case --------------------------------------------------------------------

class Case:
    """Collects parameters (by mixrank name), inputs, and the computed results of one
    golden file."""

    def __init__(self, name, seed, description):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.description = description
        self.params = {}  # mixrank name -> leaf tensor
        self.inputs = []  # leaf tensors, in order
        self.out = {}  # stored arrays
        RELU_MARGIN[0] = math.inf

    def draw(self, shape, lo=-1.0, hi=1.0):
        return self.rng.uniform(lo, hi, size=shape).astype(np.float32)

    def param(self, name, shape, lo=None, hi=None):
        """A parameter stored under mixrank's name and layout. Default ranges: matrices
        U(-1, 1)·sqrt(3 / fan_in) (unit-variance outputs at unit-variance inputs);
        vectors U(-1, 1), norm scales U(0.5, 1.5), and ReLU-feeding shifts U(0.2, 1) so
        small shapes keep most units alive."""
        if lo is None:
            if len(shape) == 2:
                s = math.sqrt(3.0 / shape[0])
                lo, hi = -s, s
            elif name.endswith("gamma"):
                lo, hi = 0.5, 1.5
            elif name.endswith("norm_out.beta") or name.endswith("mask_agg.bias"):
                lo, hi = 0.2, 1.0
            else:
                lo, hi = -1.0, 1.0
        v = self.draw(shape, lo, hi)
        self.out["param." + name] = v
        t = torch.tensor(v, dtype=F64, requires_grad=True)
        self.params[name] = t
        return t

    def input(self, shape, lo=-1.0, hi=1.0):
        v = self.draw(shape, lo, hi)
        self.out[f"input.{len(self.inputs)}"] = v
        t = torch.tensor(v, dtype=F64, requires_grad=True)
        self.inputs.append(t)
        return t

    def backward(self, output):
        """Stores `output`, draws the upstream gradient `d_output`, backpropagates
        `Σ d_output ⊙ output`, and stores every input and parameter gradient."""
        dy = self.draw(tuple(output.shape))
        self.out["output"] = output.detach().numpy()
        self.out["d_output"] = dy
        output.backward(torch.tensor(dy, dtype=F64))
        for i, x in enumerate(self.inputs):
            self.out[f"d_input.{i}"] = x.grad.numpy()
        for n, p in self.params.items():
            assert p.grad is not None and bool((p.grad != 0).any()), f"{self.name}: {n} got no gradient (dead ReLUs?)"
            self.out["grad." + n] = p.grad.numpy()
        assert RELU_MARGIN[0] > 1e-3, f"{self.name}: a ReLU input is {RELU_MARGIN[0]:e} from 0; pick another seed"

    def save(self):
        meta = {"case": self.name, "description": self.description, "generator": "gen_golden.py",
                "torch": torch.__version__}
        write_safetensors(os.path.join(OUT, self.name + ".safetensors"), self.out, meta)
        size = os.path.getsize(os.path.join(OUT, self.name + ".safetensors"))
        print(f"{self.name}.safetensors: {len(self.out)} tensors, {size} bytes")


# ---- layer twins (mixrank layouts: weights are [d_in, d_out], y = x·W + b) ---------------

# Smallest |pre-activation| of any ReLU in the current case: a ReLU input within f32
# rounding of 0 could legitimately flip between backends, which makes the Rust test's
# rounding bound for everything upstream as large as the gradient itself.
RELU_MARGIN = [math.inf]


def act(name, z):
    if name == "relu":
        # Exact zeros (a bias-free map of an all-dead row) are exact in f32 as well.
        nz = z.detach().abs()[z.detach() != 0]
        if nz.numel():
            RELU_MARGIN[0] = min(RELU_MARGIN[0], float(nz.min()))
    return {
        "identity": lambda z: z,
        "relu": F.relu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
        "silu": F.silu,
    }[name](z)


def linear(c, prefix, d_in, d_out, x, bias=True, activation="identity"):
    """mixrank Linear: `act(x·W + b)`; `F.linear` takes nn.Linear's [out, in] weight."""
    w = c.param(prefix + "weight", (d_in, d_out))
    b = c.param(prefix + "bias", (d_out,)) if bias else None
    return act(activation, F.linear(x, w.t(), b))


def layer_norm(c, prefix, d, x, activation="identity"):
    g = c.param(prefix + "gamma", (d,))
    b = c.param(prefix + "beta", (d,))
    return act(activation, F.layer_norm(x, (d,), g, b, eps=LN_EPS))


def mlp(c, prefix, d_in, hidden, x, activation="relu", ln=False, d_out=None):
    """mixrank Mlp: blocks `act(LN(x·W))` (LN: no Linear bias) or `act(x·W + b)`, then an
    optional bias-carrying projection; dropout 0."""
    width = d_in
    for i, h in enumerate(hidden):
        p = f"{prefix}blocks.{i}."
        if ln:
            x = linear(c, p + "linear.", width, h, x, bias=False)
            x = layer_norm(c, p + "norm.", h, x, activation)
        else:
            x = linear(c, p + "linear.", width, h, x, activation=activation)
        width = h
    if d_out is not None:
        x = linear(c, prefix + "output.", width, d_out, x)
    return x


def cross_v2(c, prefix, d, layers, x0, rank=None):
    """DCN-V2 cross network (FuxiCTR CrossNetV2 / torchrec LowRankCrossNet):
    `x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l`, low rank `W = U Vᵀ`."""
    x = x0
    for l in range(layers):
        p = f"{prefix}layers.{l}."
        if rank is None:
            wx = x @ c.param(p + "w", (d, d))
        else:
            u = c.param(p + "u", (d, rank))
            v = c.param(p + "v", (d, rank))
            wx = (x @ v) @ u.t()
        x = x0 * (wx + c.param(p + "b", (d,))) + x
    return x


def gate(c, prefix, d_in, n_experts, x, temperature=1.0, top_k=None):
    """MMoE gate: `softmax((x·W + b)·fl(1/T) + M)`, M = 0 on the top k logits (ties to the
    lower index), -1e30 elsewhere."""
    z = linear(c, prefix, d_in, n_experts, x)
    if temperature != 1.0:
        z = z * f32(np.float32(1.0) / np.float32(temperature))
    if top_k is not None and top_k < n_experts:
        zd = z.detach().numpy()
        mask = np.full(zd.shape, -1e30)
        for r in range(zd.shape[0]):
            order = sorted(range(n_experts), key=lambda j: (-zd[r, j], j))
            mask[r, order[:top_k]] = 0.0
        z = z + torch.tensor(mask)
    return F.softmax(z, dim=1)


def moe_mix(experts, g):
    return sum(g[:, e:e + 1] * x for e, x in enumerate(experts))


def cross_mix(c, prefix, d, layers, rank, experts, x0, activation="relu"):
    """DCN-V2 mixture of low-rank experts (torchrec LowRankMixtureCrossNet), with a gate
    bias: `x_{l+1} = Σ_i G_i(x_l)·x0 ⊙ (U_i g(C_i g(V_iᵀ x_l)) + b_l) + x_l`."""
    x = x0
    for l in range(layers):
        p = f"{prefix}layers.{l}."
        outs = []
        for i in range(experts):
            e = f"{p}experts.{i}."
            a = linear(c, e + "v.", d, rank, x, bias=False, activation=activation)
            a = linear(c, e + "c.", rank, rank, a, bias=False, activation=activation)
            outs.append(linear(c, e + "u.", rank, d, a, bias=False))
        g = gate(c, p + "gate.", d, experts, x) if experts > 1 else None
        b = c.param(p + "b", (d,))
        outs = [x0 * (o + b) for o in outs]
        x = (moe_mix(outs, g) if g is not None else outs[0]) + x
    return x


def mask_block(c, prefix, d_emb, d_hidden, d_mask, d_out, emb, hidden, norm_hidden=True):
    """MaskNet MaskBlock: `m = W₂ ReLU(W₁ e + b₁) + b₂`,
    `y = ReLU(LN_out((m ⊙ LN_in(h))·W_h))`."""
    a = linear(c, prefix + "mask_agg.", d_emb, d_mask, emb, activation="relu")
    m = linear(c, prefix + "mask_proj.", d_mask, d_hidden, a)
    h = layer_norm(c, prefix + "norm_in.", d_hidden, hidden) if norm_hidden else hidden
    o = linear(c, prefix + "hidden.", d_hidden, d_out, m * h, bias=False)
    return layer_norm(c, prefix + "norm_out.", d_out, o, "relu")


def feature_gate(c, prefix, d_ctx, gate_hidden, d, ctx, x):
    """FinalMLP feature selection (FuxiCTR FeatureSelection): `x ⊙ 2σ(mlp(ctx))`."""
    return x * 2.0 * torch.sigmoid(mlp(c, prefix, d_ctx, gate_hidden, ctx, d_out=d))


def bilinear(c, prefix, d_x, d_y, heads, d_out, x, y):
    """FinalMLP InteractionAggregation, written exactly as FuxiCTR does it (w_xy viewed
    as [heads, hx, d_out·hy]); mixrank's w_y has no bias (w_x's bias covers it)."""
    hx, hy = d_x // heads, d_y // heads
    out = linear(c, prefix + "w_x.", d_x, d_out, x) + linear(c, prefix + "w_y.", d_y, d_out, y, bias=False)
    w_xy = c.param(prefix + "w_xy", (heads * hx, d_out * hy))
    b = x.shape[0]
    head_x = x.view(b, heads, hx)
    head_y = y.view(b, heads, hy)
    xy = torch.matmul(torch.matmul(head_x.unsqueeze(2), w_xy.view(heads, hx, -1)).view(-1, heads, d_out, hy),
                      head_y.unsqueeze(-1)).squeeze(-1)
    return out + xy.sum(dim=1)


# ---- cases -------------------------------------------------------------------------------

def single(name, seed, description, batch, d_in, body):
    c = Case(name, seed, description)
    x = c.input((batch, d_in))
    c.backward(body(c, x))
    c.save()


def layers():
    single("linear", 1, "Linear 5->3, bias, identity", 4, 5, lambda c, x: linear(c, "", 5, 3, x))
    single("linear_relu", 2, "Linear 6->4, bias, ReLU", 5, 6, lambda c, x: linear(c, "", 6, 4, x, activation="relu"))
    single("linear_nobias_silu", 3, "Linear 4->5, no bias, SiLU", 3, 4,
           lambda c, x: linear(c, "", 4, 5, x, bias=False, activation="silu"))
    single("layer_norm", 4, "LayerNorm d=7", 4, 7, lambda c, x: layer_norm(c, "", 7, x))
    single("layer_norm_relu", 5, "LayerNorm d=6 + ReLU", 5, 6, lambda c, x: layer_norm(c, "", 6, x, "relu"))
    single("mlp_relu", 6, "Mlp 6->[8,5]->3 ReLU", 4, 6, lambda c, x: mlp(c, "", 6, [8, 5], x, d_out=3))
    single("mlp_ln_gelu", 7, "Mlp 5->[7,6] LayerNorm GeluTanh", 4, 5,
           lambda c, x: mlp(c, "", 5, [7, 6], x, "gelu_tanh", ln=True))
    single("mlp_silu", 8, "Mlp 4->[6]->2 SiLU", 3, 4, lambda c, x: mlp(c, "", 4, [6], x, "silu", d_out=2))
    single("mlp_tanh", 9, "Mlp 5->[4,4] Tanh", 3, 5, lambda c, x: mlp(c, "", 5, [4, 4], x, "tanh"))
    single("mlp_sigmoid_ln", 10, "Mlp 4->[5]->2 LayerNorm Sigmoid", 3, 4,
           lambda c, x: mlp(c, "", 4, [5], x, "sigmoid", ln=True, d_out=2))
    single("tower", 11, "Tower 6->[5]->1 ReLU", 4, 6, lambda c, x: mlp(c, "", 6, [5], x, d_out=1))
    single("cross_full", 12, "CrossNetV2 d=6, 3 full layers", 4, 6, lambda c, x: cross_v2(c, "", 6, 3, x))
    single("cross_low_rank", 13, "CrossNetV2 d=6, 2 layers, rank 2", 4, 6,
           lambda c, x: cross_v2(c, "", 6, 2, x, rank=2))
    single("cross_mix", 14, "CrossNetMix d=5, 2 layers, rank 2, 3 experts, ReLU", 4, 5,
           lambda c, x: cross_mix(c, "", 5, 2, 2, 3, x))
    single("cross_mix_one_expert", 15, "CrossNetMix d=5, 2 layers, rank 3, 1 expert, Tanh", 3, 5,
           lambda c, x: cross_mix(c, "", 5, 2, 3, 1, x, "tanh"))
    single("dcn_stacked", 16, "Dcn stacked: CrossNetV2 d=5 2 layers, deep Mlp 5->[6,4]", 4, 5,
           lambda c, x: mlp(c, "deep.", 5, [6, 4], cross_v2(c, "cross.", 5, 2, x)))

    def dcn_parallel(c, x):
        cr = cross_v2(c, "cross.", 6, 2, x, rank=3)
        return torch.cat([cr, mlp(c, "deep.", 6, [5], x, d_out=3)], dim=1)

    single("dcn_parallel", 17, "Dcn parallel: CrossNetV2 d=6 2 layers rank 3 | Mlp 6->[5]->3", 3, 6, dcn_parallel)
    single("gate", 18, "Gate 5->4 experts, temperature 0.8", 4, 5, lambda c, x: gate(c, "", 5, 4, x, 0.8))
    single("gate_top_k", 19, "Gate 6->5 experts, top-3, temperature 1.5", 4, 6,
           lambda c, x: gate(c, "", 6, 5, x, 1.5, top_k=3))

    # MoeMix: inputs 0..2 are the experts [batch, d], input 3 the gate weights.
    c = Case("moe_mix", 20, "MoeMix 3 experts of width 4")
    xs = [c.input((3, 4)) for _ in range(3)]
    g = c.input((3, 3), 0.0, 1.0)
    c.backward(moe_mix(xs, g))
    c.save()

    # MaskBlock: input 0 the embedding, input 1 the hidden input.
    c = Case("mask_block", 21, "MaskBlock d_emb=6 d_hidden=6 d_mask=4 d_out=5, LN on hidden")
    e, h = c.input((4, 6)), c.input((4, 6))
    c.backward(mask_block(c, "", 6, 6, 4, 5, e, h))
    c.save()
    c = Case("mask_block_no_norm", 22, "MaskBlock d_emb=6 d_hidden=4 d_mask=3 d_out=5, no LN on hidden")
    e, h = c.input((3, 6)), c.input((3, 4))
    c.backward(mask_block(c, "", 6, 4, 3, 5, e, h, norm_hidden=False))
    c.save()

    def masknet_serial(c, x):
        h = mask_block(c, "blocks.0.", 8, 8, 4, 6, x, x)
        return mask_block(c, "blocks.1.", 8, 6, 4, 6, x, h, norm_hidden=False)

    single("masknet_serial", 123, "MaskNet serial: d_emb=8, 2 blocks of 6, d_mask 4", 3, 8, masknet_serial)

    def masknet_parallel(c, x):
        return torch.cat([mask_block(c, f"blocks.{i}.", 5, 5, 4, 3, x, x) for i in range(2)], dim=1)

    single("masknet_parallel", 24, "MaskNet parallel: d_emb=5, 2 blocks of 3, d_mask 4", 3, 5, masknet_parallel)

    # FeatureGate: input 0 the context, input 1 the gated input.
    c = Case("feature_gate", 25, "FeatureGate: context 4 -> Mlp [6] -> 5 gates on x of width 5")
    ctx, x = c.input((4, 4)), c.input((4, 5))
    c.backward(feature_gate(c, "", 4, [6], 5, ctx, x))
    c.save()

    # BilinearFusion: input 0 is x, input 1 is y.
    c = Case("bilinear_fusion", 26, "BilinearFusion d_x=6 d_y=4, 2 heads, d_out=2")
    x, y = c.input((4, 6)), c.input((4, 4))
    c.backward(bilinear(c, "", 6, 4, 2, 2, x, y))
    c.save()

    def final_mlp(context):
        def body(c, x):
            d_in = 6
            if context == "input":
                ctx, d_ctx = x, d_in
            elif context == "learned":
                d_ctx = 3
                ctx = c.param("context", (d_ctx,)).expand(x.shape[0], d_ctx)
            else:  # columns 1..4
                ctx, d_ctx = x[:, 1:4], 3
            x1 = feature_gate(c, "gate1.", d_ctx, [4], d_in, ctx, x)
            x2 = feature_gate(c, "gate2.", d_ctx, [4], d_in, ctx, x)
            o1 = mlp(c, "mlp1.", d_in, [4], x1)
            o2 = mlp(c, "mlp2.", d_in, [5, 2], x2)
            return bilinear(c, "fusion.", 4, 2, 2, 1, o1, o2)
        return body

    for i, context in enumerate(["input", "learned", "columns"]):
        single(f"final_mlp_{context}", [27, 128, 29][i],
               f"FinalMlp d_in=6, gate [4], mlp1 [4], mlp2 [5,2], 2 heads, d_out=1, context {context}", 3, 6,
               final_mlp(context))


def embeddings():
    """EmbeddingCollection: tables t0 [10, 3], t1 [7, 2]; features f0 single(t0),
    f1 pooled-sum(t0, shared), f2 pooled-mean(t1, one empty bag), f3 single(t1). Each
    feature reads its own leaf copy of the table so its gradient is separate (mixrank
    keeps one sparse gradient per feature; the optimizer merges shared tables)."""
    c = Case("embedding", 31, "EmbeddingCollection, 2 tables, 4 features (single, sum, mean with empty bag, single)")
    batch = 4
    tables = [c.draw((10, 3)), c.draw((7, 2))]
    c.out["table.0"], c.out["table.1"] = tables
    ids0 = np.array([3, 7, 3, 0], dtype=np.uint32)
    off1 = np.array([0, 2, 3, 3, 6], dtype=np.uint32)  # bag 2 is empty
    ids1 = np.array([1, 3, 7, 9, 3, 3], dtype=np.uint32)
    off2 = np.array([0, 3, 3, 5, 6], dtype=np.uint32)  # bag 1 is empty
    ids2 = np.array([0, 4, 4, 6, 2, 5], dtype=np.uint32)
    ids3 = np.array([6, 6, 1, 2], dtype=np.uint32)
    for k, v in [("ids.0", ids0), ("offsets.1", off1), ("ids.1", ids1), ("offsets.2", off2), ("ids.2", ids2),
                 ("ids.3", ids3)]:
        c.out[k] = v
    leaves = [torch.tensor(tables[t], dtype=F64, requires_grad=True) for t in (0, 0, 1, 1)]
    lt = lambda a: torch.tensor(a.astype(np.int64))
    outs = [
        F.embedding(lt(ids0), leaves[0]),
        F.embedding_bag(lt(ids1), leaves[1], lt(off1), mode="sum", include_last_offset=True),
        F.embedding_bag(lt(ids2), leaves[2], lt(off2), mode="mean", include_last_offset=True),
        F.embedding(lt(ids3), leaves[3]),
    ]
    out = torch.cat(outs, dim=1)
    assert out.shape == (batch, 3 + 3 + 2 + 2)
    dy = c.draw(tuple(out.shape))
    c.out["output"] = out.detach().numpy()
    c.out["d_output"] = dy
    out.backward(torch.tensor(dy, dtype=F64))
    for f, leaf in enumerate(leaves):
        c.out[f"grad.feature.{f}"] = leaf.grad.numpy()
    c.save()
    return c


def losses():
    """Weighted, masked mean BCE-with-logits and MSE, gradient scaled by `scale`:
    `L = Σ m w ℓ / Σ m w`, grad = `scale · ∂L/∂pred`. Masked targets are NaN (mixrank
    must skip them)."""
    for name, seed, scale in [("loss_bce", 40, 0.75), ("loss_mse", 41, 1.5)]:
        c = Case(name, seed, f"{name[5:]}: 12 examples, weights, mask with NaN targets, gradient scale {scale}")
        n = 12
        pred = c.input((n,), -3.0, 3.0)
        target = c.draw((n,), 0.0, 1.0) if name == "loss_bce" else c.draw((n,), -2.0, 2.0)
        weight = c.draw((n,), 0.2, 2.0)
        mask = (c.rng.uniform(size=n) > 0.3).astype(np.float32)
        mask[0], mask[1] = 1.0, 0.0
        target = np.where(mask == 0.0, np.float32(np.nan), target).astype(np.float32)
        c.out["target"], c.out["weight"], c.out["mask"] = target, weight, mask
        c.out["scale"] = np.array([scale], dtype=np.float32)
        m, w = torch.tensor(mask, dtype=F64), torch.tensor(weight, dtype=F64)
        t = torch.tensor(np.where(mask == 0.0, 0.0, target), dtype=F64)
        if name == "loss_bce":
            per = F.binary_cross_entropy_with_logits(pred, t, reduction="none")
        else:
            per = F.mse_loss(pred, t, reduction="none")
        loss = (per * w * m).sum() / (w * m).sum()
        (scale * loss).backward()
        c.out["loss"] = np.array([loss.item()])
        c.out["d_input.0"] = pred.grad.numpy()
        c.save()


def dense_optimizers():
    """One Adam (L2 decay) and one AdamW (decoupled decay, global-norm clipping) step with
    `torch.optim`, resumed at step 3 from stored moments, on the parameters of
    Mlp 4->[3] with LayerNorm ->2 (weights decay, norm scales/shifts and biases do not).
    Clipping follows mixrank: `g ·= min(1, max_norm / ‖g‖)` (torch's clip_grad_norm_
    divides by `‖g‖ + 1e-6`; here the norm is computed and applied by hand)."""
    shapes = [("blocks.0.linear.weight", (4, 3), True), ("blocks.0.norm.gamma", (3,), False),
              ("blocks.0.norm.beta", (3,), False), ("output.weight", (3, 2), True), ("output.bias", (2,), False)]
    for name, seed, cls, decay, clip in [("adam", 50, torch.optim.Adam, 0.01, None),
                                         ("adamw", 51, torch.optim.AdamW, 0.05, 0.5)]:
        c = Case(name, seed, f"{cls.__name__} step 4 from stored moments, weight decay {decay}, clip {clip}")
        lr, b1, b2, eps = f32(0.01), f32(0.9), f32(0.999), f32(1e-8)
        c.out["hyper"] = np.array([lr, b1, b2, eps, decay, clip or 0.0], dtype=np.float32)
        decay = f32(decay)
        params, groups = [], {True: [], False: []}
        for pname, shape, dec in shapes:
            p = c.param(pname, shape)
            g = c.draw(shape)
            m0 = c.draw(shape, -0.3, 0.3)
            v0 = c.draw(shape, 0.01, 0.5)
            c.out["grad." + pname], c.out["m0." + pname], c.out["v0." + pname] = g, m0, v0
            p.grad = torch.tensor(g, dtype=F64)
            params.append((pname, p, m0, v0))
            groups[dec].append(p)
        norm = math.sqrt(sum(float((p.grad ** 2).sum()) for _, p, _, _ in params))
        c.out["grad_norm"] = np.array([norm])
        if clip is not None and norm > clip:
            scale = f32(clip / norm)  # mixrank multiplies by the f32 factor
            for _, p, _, _ in params:
                p.grad.mul_(scale)
        opt = cls([{"params": groups[True], "weight_decay": decay}, {"params": groups[False], "weight_decay": 0.0}],
                  lr=lr, betas=(b1, b2), eps=eps, foreach=False)
        for _, p, m0, v0 in params:
            opt.state[p] = {"step": torch.tensor(3.0, dtype=F64), "exp_avg": torch.tensor(m0, dtype=F64),
                            "exp_avg_sq": torch.tensor(v0, dtype=F64)}
        with torch.no_grad():
            opt.step()
        for pname, p, _, _ in params:
            st = opt.state[p]
            c.out["value." + pname] = p.detach().numpy()
            c.out["m." + pname] = st["exp_avg"].numpy()
            c.out["v." + pname] = st["exp_avg_sq"].numpy()
        c.save()


def sparse_optimizers(emb):
    """Row-wise Adagrad (FBGEMM's ROWWISE_ADAGRAD) and lazy Adam (per-row and global-step
    bias correction) applied to the embedding golden's tables with its per-feature
    gradients (features sharing a table summed per row), from stored state. Only touched
    rows may change."""
    grads = [emb.out[f"grad.feature.{f}"] for f in range(4)]
    table_grads = [grads[0].astype(np.float64) + grads[1], grads[2].astype(np.float64) + grads[3]]
    touched = [sorted(set(emb.out["ids.0"].tolist()) | set(emb.out["ids.1"].tolist())),
               sorted(set(emb.out["ids.2"].tolist()) | set(emb.out["ids.3"].tolist()))]

    c = Case("rowwise_adagrad", 60, "RowWiseAdagrad lr 0.1 eps 1e-8 from stored accumulators")
    lr, eps = f32(0.1), f32(1e-8)
    c.out["hyper"] = np.array([lr, eps], dtype=np.float32)
    for t in range(2):
        w = torch.tensor(emb.out[f"table.{t}"], dtype=F64)
        s0 = c.draw((w.shape[0],), 0.05, 0.5)
        c.out[f"state0.{t}"] = s0
        s = torch.tensor(s0, dtype=F64)
        g = torch.tensor(table_grads[t])
        for r in touched[t]:
            s[r] += (g[r] ** 2).mean()
            w[r] -= lr * g[r] / (s[r].sqrt() + eps)
        c.out[f"value.{t}"], c.out[f"state.{t}"] = w.numpy(), s.numpy()
    c.save()

    for name, seed, per_row in [("lazy_adam_per_row", 61, True), ("lazy_adam_global", 62, False)]:
        # eps = 1e-3 (not 1e-8) so where eps enters the update is visible at f32 precision.
        c = Case(name, seed, f"LazyAdam lr 0.01 eps 1e-3, {'per-row' if per_row else 'global-step'} bias "
                             "correction, resumed at global step 5 from stored state")
        lr, b1, b2, eps = f32(0.01), f32(0.9), f32(0.999), f32(1e-3)
        c.out["hyper"] = np.array([lr, b1, b2, eps], dtype=np.float32)
        t_global = 5 + 1
        for t in range(2):
            w = torch.tensor(emb.out[f"table.{t}"], dtype=F64)
            rows, dim = w.shape
            m0, v0 = c.draw((rows, dim), -0.3, 0.3), c.draw((rows, dim), 0.01, 0.5)
            k0 = c.rng.integers(0, 5, size=rows).astype(np.uint32)
            c.out[f"m0.{t}"], c.out[f"v0.{t}"], c.out[f"steps0.{t}"] = m0, v0, k0
            m, v, k = torch.tensor(m0, dtype=F64), torch.tensor(v0, dtype=F64), k0.copy()
            g = torch.tensor(table_grads[t])
            for r in touched[t]:
                k[r] += 1
                n = int(k[r]) if per_row else t_global
                m[r] = b1 * m[r] + (1 - b1) * g[r]
                v[r] = b2 * v[r] + (1 - b2) * g[r] ** 2
                # mixrank: eps added after the bias correction of sqrt(v) (dense Adam's
                # placement); torch.optim.SparseAdam adds it before.
                w[r] -= lr / (1 - b1 ** n) * m[r] / ((v[r] / (1 - b2 ** n)).sqrt() + eps)
            c.out[f"value.{t}"], c.out[f"m.{t}"], c.out[f"v.{t}"] = w.numpy(), m.numpy(), v.numpy()
            c.out[f"steps.{t}"] = k
        c.save()


def main():
    layers()
    emb = embeddings()
    losses()
    dense_optimizers()
    sparse_optimizers(emb)


if __name__ == "__main__":
    sys.exit(main())
