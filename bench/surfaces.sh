#!/usr/bin/env bash
# Issue 12 item 3: one unified model vs one model per surface (Pinterest's segregated ad
# scenarios, seed 002), surface-aware gating and per-surface towers. Per seed: simulate
# 5 days x 20,000 requests x 10 candidates (train on days 1-3, validate on day 4, test on
# day 5), and train the small MMoE of configs/experiments/surfaces/ four ways:
#   (a) unified: one MMoE on every surface (unified.toml; the surface is a feature);
#   (b) gated: the same with surface-aware gating, the gates reading the surface's
#       embedding beside the experts' input (gated.toml, `[model.gate] inputs`);
#   (c) per surface: unified.toml trained on one surface's rows only, one model per
#       surface. The rows come from `mixrank simulate --only-surface S`: the same
#       simulation (same seed, same random streams) with only that surface's rows
#       written, so (c)'s test rows are exactly the unified test split's rows of S;
#   (d) per-surface towers: unified.toml with one tower per task and surface, a row's
#       logit from its surface's tower (per_surface_towers.toml, `[model.tower]
#       per_surface`); experts and gates shared.
# Then `mixrank compare` with paired bootstrap CIs over requests (RESAMPLES, default 200):
# (b) and (d) against (a) on all rows, and for each surface S, (a), (b) and (d) against
# (c_S) on S's rows (A = c_S, so the split is S's; B reads the same rows). Training cost:
# metrics.json's training seconds and examples per second.
# Usage: bench/surfaces.sh OUT_DIR [SEEDS...]   (needs a release build: cargo build --release)
set -euo pipefail
out=${1:?usage: bench/surfaces.sh OUT_DIR [SEEDS...]}
shift
seeds=("${@:-1 2 3}")
root=$(cd "$(dirname "$0")/.." && pwd)
m=${MIXRANK:-$root/target/release/mixrank}
models=$root/configs/experiments/surfaces
surfaces=(home_feed related_pins search)
sim=(--days 5 --requests-per-day 20000)
mkdir -p "$out"
# Each step is skipped when its output exists, so an interrupted run resumes.
train() { # DATA_CONFIG MODEL_FILE SEED RUN
  [ -f "$4/metrics.json" ] || "$m" train "$1" --model "$2" --seed "$3" --out "$4" --overwrite > "$4.log" 2>&1
}
compare() { # A B OUT
  if [ ! -s "$3" ]; then
    "$m" compare "$1" "$2" --resamples "$resamples" > "$3.tmp" 2>&1
    mv "$3.tmp" "$3"
  fi
}
resamples=${RESAMPLES:-200}
for seed in ${seeds[@]}; do
  d=$out/seed$seed
  mkdir -p "$d"
  [ -f "$d/sim/mixrank.toml" ] || "$m" simulate --out "$d/sim" --seed "$seed" "${sim[@]}" > /dev/null
  train "$d/sim/mixrank.toml" "$models/unified.toml" "$seed" "$d/unified"
  train "$d/sim/mixrank.toml" "$models/gated.toml" "$seed" "$d/gated"
  compare "$d/unified" "$d/gated" "$d/unified_vs_gated.txt"
  train "$d/sim/mixrank.toml" "$models/per_surface_towers.toml" "$seed" "$d/per_surface_towers"
  compare "$d/unified" "$d/per_surface_towers" "$d/unified_vs_per_surface_towers.txt"
  for s in "${surfaces[@]}"; do
    [ -f "$d/sim_$s/mixrank.toml" ] || "$m" simulate --out "$d/sim_$s" --seed "$seed" "${sim[@]}" --only-surface "$s" > /dev/null
    train "$d/sim_$s/mixrank.toml" "$models/unified.toml" "$seed" "$d/only_$s"
    compare "$d/only_$s" "$d/unified" "$d/only_${s}_vs_unified.txt"
    compare "$d/only_$s" "$d/gated" "$d/only_${s}_vs_gated.txt"
    compare "$d/only_$s" "$d/per_surface_towers" "$d/only_${s}_vs_per_surface_towers.txt"
  done
done
# Per seed: AUC lines (task, segment, metric, A, B, lift, CI, sig) of each comparison,
# and the training cost of each run.
for seed in ${seeds[@]}; do
  d=$out/seed$seed
  for b in gated per_surface_towers; do
    awk -v s="$seed" -v c="unified_vs_$b" '$3 == "auc" && $1 != "dwell" {print "seed " s, c, $0}' "$d/unified_vs_$b.txt"
  done
  for s in "${surfaces[@]}"; do
    for b in unified gated per_surface_towers; do
      awk -v s="$seed" -v c="only_${s}_vs_$b" -v g="$s" '$3 == "auc" && $2 == g {print "seed " s, c, $0}' "$d/only_${s}_vs_$b.txt"
    done
  done
  for r in unified gated per_surface_towers only_home_feed only_related_pins only_search; do
    python3 - "$d/$r/metrics.json" "$seed" "$r" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"seed {sys.argv[2]} cost {sys.argv[3]} examples {m['examples']} train_s {m['train_seconds']:.1f} "
      f"wall_s {m['seconds']:.1f} ex_per_s {m['examples_per_second']:.0f}")
PY
  done
done
