"""The Frappe split of bench/frappe_ceiling.py and bench/frappe_torch_dcnv2.py.

Like configs/frappe.toml (90% of frappe.validation.libfm to train, the rest to validate,
test on frappe.test.libfm), but the 90% is a seeded random one rather than mixrank's hash
of (file, row): same sizes, not the same rows.
"""

from dataclasses import dataclass

import numpy as np


def load(path):
    """Feature indices `[rows, 10]` and 0/1 labels of a libfm file."""
    xs, ys = [], []
    for line in open(path):
        t = line.split()
        ys.append(1.0 if t[0] == "1" else 0.0)
        xs.append([int(a.split(":")[0]) for a in t[1:]])
    return np.array(xs), np.array(ys)


@dataclass
class FrappeSplit:
    xtr: np.ndarray
    ytr: np.ndarray
    xva: np.ndarray
    yva: np.ndarray
    xt: np.ndarray
    yt: np.ndarray
    vocab: int

    def train_pairs(self, label):
        """The (user, item) pairs of the training rows with this label."""
        return set(map(tuple, self.xtr[self.ytr == label][:, :2]))

    def test_rows_in(self, pairs):
        """Whether each test row's (user, item) pair is in `pairs`."""
        return np.array([tuple(p) in pairs for p in self.xt[:, :2]])


def split(data):
    xv, yv = load(f"{data}/frappe.validation.libfm")
    xt, yt = load(f"{data}/frappe.test.libfm")
    perm = np.random.default_rng(0).permutation(len(yv))
    ntr = int(0.9 * len(yv))
    tr, va = perm[:ntr], perm[ntr:]
    return FrappeSplit(xv[tr], yv[tr], xv[va], yv[va], xt, yt, int(max(xv.max(), xt.max())) + 1)
