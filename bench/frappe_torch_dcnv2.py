"""PyTorch reference on the issue's Frappe split: FuxiCTR/BARS's DCNv2 recipe.

Parallel DCNv2 (3 full-rank cross layers beside an MLP 400-400-400 with batch norm and
dropout 0.2), embeddings N(0, 1e-4) with L2 (EMB_L2 / 2) * ||E||^2 over the whole table,
Adam 1e-3, batch 4096, learning rate x0.1 whenever validation AUC does not improve, stop
after 2 epochs without improvement (BARS's Frappe_x1 settings). Prints validation and test
AUC per epoch, and test AUC on the rows whose (user, item) pair is not a training positive
(see bench/frappe_ceiling.py).

Split: bench/frappe_split.py.
Usage: python bench/frappe_torch_dcnv2.py [EMB_DIM=10] [EMB_L2=0.05] [dcn|dnn] [SHARED_DATA_DIR]
"""

import sys

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import roc_auc_score

from frappe_split import split

dim = int(sys.argv[1]) if len(sys.argv) > 1 else 10
emb_l2 = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05
kind = sys.argv[3] if len(sys.argv) > 3 else "dcn"
data = sys.argv[4] if len(sys.argv) > 4 else "../shared/data/frappe"
torch.set_num_threads(2)
torch.manual_seed(0)


fs = split(data)
xtr, ytr, xva, yva, xt, yt, vocab = fs.xtr, fs.ytr, fs.xva, fs.yva, fs.xt, fs.yt, fs.vocab
ntr = len(ytr)
unseen = ~fs.test_rows_in(fs.train_pairs(1))
xtr, ytr, xva, xt_t = map(torch.tensor, (xtr, ytr.astype(np.float32), xva, xt))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        nn.init.normal_(self.emb.weight, std=1e-4)
        d0 = 10 * dim
        layers, d = [], d0
        for h in [400, 400, 400]:
            layers += [nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(0.2)]
            d = h
        self.mlp = nn.Sequential(*layers)
        self.cross = nn.ModuleList([nn.Linear(d0, d0) for _ in range(3)]) if kind == "dcn" else None
        self.out = nn.Linear(d + (d0 if kind == "dcn" else 0), 1)

    def forward(self, x):
        x0 = self.emb(x).flatten(1)
        h = self.mlp(x0)
        if self.cross is not None:
            xi = x0
            for layer in self.cross:
                xi = x0 * layer(xi) + xi
            h = torch.cat([xi, h], 1)
        return self.out(h).squeeze(1)


model = Model()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
bce = nn.BCEWithLogitsLoss()


def predict(x):
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(model(x)).numpy()
    model.train()
    return p


best, bad = 0.0, 0
for epoch in range(100):
    idx = torch.randperm(ntr)
    for i in range(0, ntr, 4096):
        b = idx[i:i + 4096]
        loss = bce(model(xtr[b]), ytr[b]) + emb_l2 / 2 * model.emb.weight.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    val = roc_auc_score(yva, predict(xva))
    p = predict(xt_t)
    print(f"epoch {epoch} val AUC {val:.4f} test AUC {roc_auc_score(yt, p):.4f} "
          f"test AUC on non-memorisable rows {roc_auc_score(yt[unseen], p[unseen]):.4f}", flush=True)
    if val > best:
        best, bad = val, 0
    else:
        bad += 1
        for g in opt.param_groups:
            g["lr"] *= 0.1
        if bad >= 2:
            break
