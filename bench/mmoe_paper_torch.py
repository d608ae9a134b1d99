"""PyTorch twin of bench/mmoe_paper_sweep.sh: is the MMoE paper's finding a property of the
data as DESIGN.md specifies it, independent of mixrank?

Same generator (d = 100, orthonormal u1, u2, w1 = c·u1, w2 = c·(p·u1 + sqrt(1 − p²)·u2),
m = 5 sin terms with α, β ~ N(0, 1), noise std 0.1), the paper's models (Shared-Bottom: one
113-unit ReLU layer; MMoE: 8 experts of 16 ReLU units, a softmax gate per task; towers of
8 units), Adam 2e-3, batch 128. Prints per p the final training loss (MSE summed over
the two tasks, whole training set) and test RMSE, mean over seeds, and MMoE's relative gain.
Usage: python bench/mmoe_paper_torch.py [C=0.3] [ROWS=10000] [EPOCHS=40] [SEEDS=10]
"""

import statistics as st
import sys

import numpy as np
import torch
import torch.nn as nn

c = float(sys.argv[1]) if len(sys.argv) > 1 else 0.3
rows = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 40
seeds = int(sys.argv[4]) if len(sys.argv) > 4 else 10
torch.set_num_threads(1)


def simulate(p, n, rng, truth=None):
    d = 100
    if truth is None:
        u1 = rng.standard_normal(d)
        u1 /= np.linalg.norm(u1)
        u2 = rng.standard_normal(d)
        u2 -= (u2 @ u1) * u1
        u2 /= np.linalg.norm(u2)
        truth = (c * u1, c * (p * u1 + np.sqrt(1 - p * p) * u2), rng.standard_normal(5), rng.standard_normal(5))
    w1, w2, a, b = truth
    x = rng.standard_normal((n, d))
    f = lambda w: x @ w + np.sin(np.outer(x @ w, a) + b).sum(1)
    y = np.stack([f(w1), f(w2)], 1) + 0.1 * rng.standard_normal((n, 2))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), truth


def tower(k):
    return nn.Sequential(nn.Linear(k, 8), nn.ReLU(), nn.Linear(8, 1))


class SharedBottom(nn.Module):
    def __init__(self):
        super().__init__()
        self.bottom = nn.Sequential(nn.Linear(100, 113), nn.ReLU())
        self.towers = nn.ModuleList([tower(113) for _ in range(2)])

    def forward(self, x):
        h = self.bottom(x)
        return torch.cat([t(h) for t in self.towers], 1)


class Mmoe(nn.Module):
    def __init__(self):
        super().__init__()
        self.experts = nn.ModuleList([nn.Sequential(nn.Linear(100, 16), nn.ReLU()) for _ in range(8)])
        self.gates = nn.ModuleList([nn.Linear(100, 8) for _ in range(2)])
        self.towers = nn.ModuleList([tower(16) for _ in range(2)])

    def forward(self, x):
        e = torch.stack([m(x) for m in self.experts], 1)
        return torch.cat([t((torch.softmax(g(x), 1).unsqueeze(2) * e).sum(1)) for g, t in zip(self.gates, self.towers)], 1)


for p in [1.0, 0.9, 0.5]:
    res = {"SharedBottom": ([], []), "Mmoe": ([], [])}
    for seed in range(1, seeds + 1):
        rng = np.random.default_rng(seed)
        x, y, truth = simulate(p, rows, rng)
        xt, yt, _ = simulate(p, rows // 10, rng, truth)
        mean = y.mean(0)
        for model_cls in [SharedBottom, Mmoe]:
            torch.manual_seed(seed)
            model = model_cls()
            opt = torch.optim.Adam(model.parameters(), lr=2e-3)
            for _ in range(epochs):
                for idx in torch.randperm(rows).split(128):
                    loss = ((model(x[idx]) - (y[idx] - mean)) ** 2).mean(0).sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            with torch.no_grad():
                train_loss = ((model(x) - (y - mean)) ** 2).mean(0).sum().item()
                test_rmse = ((model(xt) - (yt - mean)) ** 2).mean(0).sqrt().mean().item()
            res[model_cls.__name__][0].append(train_loss)
            res[model_cls.__name__][1].append(test_rmse)
    sb, mm = res["SharedBottom"], res["Mmoe"]
    gl = [(a - b) / a * 100 for a, b in zip(sb[0], mm[0])]
    gt = [(a - b) / a * 100 for a, b in zip(sb[1], mm[1])]
    print(f"p={p}: train loss SB {st.mean(sb[0]):.4f} MMoE {st.mean(mm[0]):.4f} (MMoE lower by {st.mean(gl):+.1f}% ± "
          f"{1.96 * st.stdev(gl) / seeds ** 0.5:.1f}); test RMSE SB {st.mean(sb[1]):.4f} MMoE {st.mean(mm[1]):.4f} "
          f"(MMoE lower by {st.mean(gt):+.1f}% ± {1.96 * st.stdev(gt) / seeds ** 0.5:.1f}), {seeds} seeds", flush=True)
