"""How high can test AUC go on the issue's Frappe split? A decomposition of the test set.

Frappe's negatives are random apps paired with a real (user, context); positives are logged
uses. So a test row whose (user, item) pair is a positive in the training split is a positive
itself (nothing else can be), and every such row can be ranked first by pure memorisation.
The remaining rows have to be ranked by generalisation. If a fraction s of the test positives
is memorisable and a model ranks the rest with AUC a, its overall AUC is about s + (1 - s) * a.
This script prints s, the AUC of logistic regression on one-hot fields overall and on the
non-memorisable rows, and the AUC of LR with perfect memorisation added (the memorisable rows
scored above everything): an estimate of the ceiling for models that generalise like LR.

Split: bench/frappe_split.py.
Usage: python bench/frappe_ceiling.py [SHARED_DATA_DIR]   (needs numpy, scipy, scikit-learn)
"""

import sys

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from frappe_split import split

data = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/frappe"


fs = split(data)
xtr, ytr, xt, yt, vocab = fs.xtr, fs.ytr, fs.xt, fs.yt, fs.vocab
ntr = len(ytr)
seen_pos = fs.test_rows_in(fs.train_pairs(1))
seen_neg = fs.test_rows_in(fs.train_pairs(0))
s = seen_pos[yt == 1].mean()
print(f"training rows {ntr}, test rows {len(yt)}, test label rate {yt.mean():.4f}")
print(f"test rows whose (user, item) is a training positive: {seen_pos.mean():.4f} of rows, "
      f"label rate among them {yt[seen_pos].mean():.4f}; = {s:.4f} of the test positives")
print(f"test rows whose (user, item) is a training negative: {seen_neg.mean():.4f}")
print(f"label rate of the other test rows: {yt[~seen_pos].mean():.4f}")
print(f"non-memorisable AUC needed for overall 0.975: {(0.975 - s) / (1 - s):.4f}")


def onehot(x):
    n = len(x)
    rows = np.repeat(np.arange(n), x.shape[1])
    return sp.csr_matrix((np.ones(x.size), (rows, x.ravel())), shape=(n, vocab))


for c in [0.1, 1.0, 10.0]:
    lr = LogisticRegression(C=c, max_iter=3000).fit(onehot(xtr), ytr)
    p = lr.predict_proba(onehot(xt))[:, 1]
    print(f"LR C={c:<4}: test AUC {roc_auc_score(yt, p):.4f}, "
          f"on non-memorisable rows {roc_auc_score(yt[~seen_pos], p[~seen_pos]):.4f}, "
          f"with perfect memorisation added {roc_auc_score(yt, p + 2.0 * seen_pos):.4f}")
