#!/usr/bin/env bash
# The MMoE paper's synthetic experiment (Ma et al., KDD 2018, §3.2; ../shared/DESIGN.md):
# for task correlation p in {1.0, 0.9, 0.5} and seeds 1..5, simulate the two-task
# regression data, train Shared-Bottom (113 bottom units) and MMoE (8 experts × 16
# units), towers of 8 units, and score the test split. Writes OUT/results.tsv
# (p, seed, model, task, test RMSE); each run's training loss every LOG_EVERY steps is in
# its train_log.jsonl. bench/mmoe_paper_plot.py OUT_DIR draws the curves and the gap.
# Usage: bench/mmoe_paper_sweep.sh MIXRANK_BINARY OUT_DIR [ROWS] [EPOCHS] [SEEDS] [LOG_EVERY]
set -euo pipefail
BIN=$1; OUT=$2; ROWS=${3:-10000}; EPOCHS=${4:-40}; SEEDS=${5:-5}; LOG_EVERY=${6:-20}
mkdir -p "$OUT"
cat > "$OUT/shared_bottom.toml" <<EOT
[model]
architecture = "shared_bottom"
expert_dim = 113
tower = { hidden = [8] }
[[model.experts]]
kind = "mlp"
hidden = [113]
[train]
epochs = $EPOCHS
lr = 0.002
EOT
cat > "$OUT/mmoe.toml" <<EOT
[model]
architecture = "mmoe"
expert_dim = 16
tower = { hidden = [8] }
[[model.experts]]
kind = "mlp"
count = 8
hidden = [16]
[train]
epochs = $EPOCHS
lr = 0.002
EOT
printf "p\tseed\tmodel\ttask\ttest_rmse\n" > "$OUT/results.tsv"
for p in 1.0 0.9 0.5; do
  for seed in $(seq 1 "$SEEDS"); do
    d="$OUT/p$p-s$seed"
    "$BIN" simulate --kind mmoe-paper --correlation "$p" --seed "$seed" --rows "$ROWS" --out "$d/data" > /dev/null
    for m in shared_bottom mmoe; do
      "$BIN" train "$d/data/mixrank.toml" --model "$OUT/$m.toml" --out "$d/$m" --log-every "$LOG_EVERY" > /dev/null 2>&1
      "$BIN" eval "$d/$m" --split test --json "$d/$m/test.json" > /dev/null
      python3 - "$d/$m/test.json" "$p" "$seed" "$m" >> "$OUT/results.tsv" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
for t in j["f32"]:
    print(f"{sys.argv[2]}\t{sys.argv[3]}\t{sys.argv[4]}\t{t['task']}\t{t['overall']['rmse']:.6f}")
PY
    done
  done
done
# Summary: per p, mean test RMSE over tasks and seeds, and MMoE's relative improvement.
python3 - "$OUT/results.tsv" <<'PY'
import sys, statistics as st, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
by = collections.defaultdict(dict)
for p, seed, m, task, r in rows:
    by[(p, seed)].setdefault(m, []).append(float(r))
print("| p | Shared-Bottom test RMSE | MMoE test RMSE | MMoE better by (mean ± sd over seeds) | seeds where MMoE is better |")
print("|---|---|---|---|---|")
for p in ["1.0", "0.9", "0.5"]:
    keys = [k for k in by if k[0] == p]
    sb = [st.mean(by[k]["shared_bottom"]) for k in keys]
    mm = [st.mean(by[k]["mmoe"]) for k in keys]
    gain = [(a - b) / a * 100 for a, b in zip(sb, mm)]
    wins = sum(g > 0 for g in gain)
    print(f"| {p} | {st.mean(sb):.4f} | {st.mean(mm):.4f} | {st.mean(gain):+.2f}% ± {st.stdev(gain):.2f} | {wins}/{len(gain)} |")
PY
