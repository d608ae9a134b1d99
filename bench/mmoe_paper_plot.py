"""Draws the MMoE paper sweep (bench/mmoe_paper_sweep.sh) as one SVG, standard library only.

Panels 1-3, one per task correlation p: training loss (sum of the two tasks' MSE over the
last LOG_EVERY steps) against steps, averaged over seeds, Shared-Bottom vs MMoE — the
paper's Figure 4 plots these curves. Panel 4: how much lower MMoE's test RMSE is than
Shared-Bottom's (relative, per seed), mean with a 95% interval (1.96 standard errors).
Usage: python3 bench/mmoe_paper_plot.py SWEEP_OUT_DIR OUT.svg [TITLE]
"""

import collections
import glob
import json
import math
import os
import statistics as st
import sys

out_dir, svg_path = sys.argv[1], sys.argv[2]
title = sys.argv[3] if len(sys.argv) > 3 else "MMoE paper synthetic data"
PS = ["1.0", "0.9", "0.5"]
MODELS = [("shared_bottom", "Shared-Bottom", "#d62728"), ("mmoe", "MMoE", "#1f77b4")]

curves = {}  # (p, model) -> step -> [loss per seed]
for p in PS:
    for m, _, _ in MODELS:
        by_step = collections.defaultdict(list)
        for log in sorted(glob.glob(os.path.join(out_dir, f"p{p}-s*", m, "train_log.jsonl"))):
            for line in open(log):
                e = json.loads(line)
                if e.get("event") == "train":
                    by_step[e["step"]].append(e["loss"])
        curves[(p, m)] = by_step

rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(out_dir, "results.tsv"))][1:]
rmse = collections.defaultdict(dict)
for p, seed, m, task, r in rows:
    rmse[(p, seed)].setdefault(m, []).append(float(r))
gain = {}
for p in PS:
    g = [(st.mean(v["shared_bottom"]) - st.mean(v["mmoe"])) / st.mean(v["shared_bottom"]) * 100
         for k, v in rmse.items() if k[0] == p]
    gain[p] = (st.mean(g), 1.96 * st.stdev(g) / math.sqrt(len(g)), len(g))

W, H, PW, PH, L, T = 1150, 330, 200, 220, 55, 60
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>']


def axes(x0, y0, xlo, xhi, ylo, yhi, xlabel, ylabel, head, xticks=True):
    svg.append(f'<rect x="{x0}" y="{y0}" width="{PW}" height="{PH}" fill="none" stroke="#444"/>')
    svg.append(f'<text x="{x0 + PW / 2}" y="{y0 - 6}" text-anchor="middle" font-size="12">{head}</text>')
    svg.append(f'<text x="{x0 + PW / 2}" y="{y0 + PH + 30}" text-anchor="middle">{xlabel}</text>')
    svg.append(f'<text transform="translate({x0 - 40},{y0 + PH / 2}) rotate(-90)" text-anchor="middle">{ylabel}</text>')
    for i in range(5):
        yv = ylo + (yhi - ylo) * i / 4
        y = y0 + PH - PH * i / 4
        svg.append(f'<line x1="{x0 - 3}" x2="{x0 + PW}" y1="{y}" y2="{y}" stroke="#eee"/>')
        svg.append(f'<text x="{x0 - 5}" y="{y + 4}" text-anchor="end">{yv:.3g}</text>')
    for i in range(3 if xticks else 0):
        xv = xlo + (xhi - xlo) * i / 2
        svg.append(f'<text x="{x0 + PW * i / 2}" y="{y0 + PH + 14}" text-anchor="middle">{xv:.3g}</text>')


all_means = [st.mean(v) for c in curves.values() for v in c.values()]
if all_means:
    # Skip the first logged window (large initial loss) when choosing the scale.
    late = sorted(all_means)
    ylo, yhi = late[0] * 0.95, late[int(len(late) * 0.9)] * 1.05
    for i, p in enumerate(PS):
        x0 = L + i * (PW + 70)
        steps = sorted({s for m, _, _ in MODELS for s in curves[(p, m)]})
        if not steps:
            continue
        xlo, xhi = 0, steps[-1]
        axes(x0, T, xlo, xhi, ylo, yhi, "step", "training loss (MSE y1 + y2)", f"p = {p}")
        for m, name, colour in MODELS:
            pts = []
            for s in sorted(curves[(p, m)]):
                v = min(max(st.mean(curves[(p, m)][s]), ylo), yhi)
                pts.append(f"{x0 + PW * s / xhi:.1f},{T + PH - PH * (v - ylo) / (yhi - ylo):.1f}")
            svg.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    for j, (m, name, colour) in enumerate(MODELS):
        lx = L + 10 + j * 130
        svg.append(f'<line x1="{lx}" x2="{lx + 20}" y1="{H - 12}" y2="{H - 12}" stroke="{colour}" stroke-width="2"/>')
        svg.append(f'<text x="{lx + 25}" y="{H - 8}">{name}</text>')

x0 = L + 3 * (PW + 70) + 20
lo = min(0.0, min(g - c for g, c, _ in gain.values()))
hi = max(g + c for g, c, _ in gain.values()) * 1.1
axes(x0, T, 0, 0, lo, hi, "task correlation p", "MMoE test RMSE lower by (%)", "MMoE vs Shared-Bottom, test",
     xticks=False)
zero = T + PH - PH * (0 - lo) / (hi - lo)
svg.append(f'<line x1="{x0}" x2="{x0 + PW}" y1="{zero}" y2="{zero}" stroke="#888" stroke-dasharray="3,3"/>')
for i, p in enumerate(PS):
    g, c, n = gain[p]
    x = x0 + PW * (i + 0.5) / 3
    y = lambda v: T + PH - PH * (v - lo) / (hi - lo)
    svg.append(f'<line x1="{x}" x2="{x}" y1="{y(g - c):.1f}" y2="{y(g + c):.1f}" stroke="#1f77b4" stroke-width="1.5"/>')
    svg.append(f'<circle cx="{x}" cy="{y(g):.1f}" r="3.5" fill="#1f77b4"/>')
    svg.append(f'<text x="{x}" y="{T + PH + 14}" text-anchor="middle">{p} (n={n})</text>')
svg.append("</svg>")
tmp = svg_path + ".tmp"
with open(tmp, "w") as f:
    f.write("\n".join(svg) + "\n")
os.replace(tmp, svg_path)
for p in PS:
    g, c, n = gain[p]
    print(f"p={p}: MMoE test RMSE lower by {g:+.2f}% (95% interval ±{c:.2f}, {n} seeds)")
# The paper's own yardstick: training loss at the end (mean over the last 10% of logged
# steps), per seed, Shared-Bottom relative to MMoE.
for p in PS:
    per_seed = collections.defaultdict(dict)
    for m, _, _ in MODELS:
        for log in glob.glob(os.path.join(out_dir, f"p{p}-s*", m, "train_log.jsonl")):
            seed = log.split(os.sep)[-3]
            losses = [json.loads(l) for l in open(log)]
            losses = [e["loss"] for e in losses if e.get("event") == "train"]
            if losses:
                tail = losses[-max(1, len(losses) // 10):]
                per_seed[seed][m] = st.mean(tail)
    g = [(v["shared_bottom"] - v["mmoe"]) / v["shared_bottom"] * 100 for v in per_seed.values() if len(v) == 2]
    if len(g) > 1:
        sb = st.mean(v["shared_bottom"] for v in per_seed.values() if len(v) == 2)
        mm = st.mean(v["mmoe"] for v in per_seed.values() if len(v) == 2)
        print(f"p={p}: final training loss Shared-Bottom {sb:.4f}, MMoE {mm:.4f}; MMoE lower by {st.mean(g):+.2f}% "
              f"(95% interval ±{1.96 * st.stdev(g) / math.sqrt(len(g)):.2f}, {len(g)} seeds)")
