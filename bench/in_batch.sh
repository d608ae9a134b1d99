#!/usr/bin/env bash
# Issue 13: the two-tower light ranker with the in-batch-negative softmax loss
# ([model.two_tower.in_batch] on click, temperature 0.05) beside its pointwise losses,
# against the pointwise-only light ranker, on the data of bench/distill_gap.sh (run it
# first: this reuses its OUT_DIR/seedS/sim and OUT_DIR/seedS/tt). Arms: ib1 (weight 1)
# and ib01 (weight 0.1). `mixrank compare tt ARM --split test`: AUC, expected AUC and
# NDCG@5 against the true probabilities, and calibration (mean prediction / label rate).
# Usage: bench/in_batch.sh DISTILL_OUT_DIR [SEEDS...]   (needs a release build)
set -euo pipefail
out=${1:?usage: bench/in_batch.sh DISTILL_OUT_DIR [SEEDS...]}
shift
seeds=("${@:-1 2 3}")
root=$(cd "$(dirname "$0")/.." && pwd)
m=${MIXRANK:-$root/target/release/mixrank}
for w in 1 01; do
  weight=$([ "$w" = 1 ] && echo 1.0 || echo 0.1)
  { cat "$root/configs/models/two_tower.toml"
    printf '\n[model.two_tower.in_batch]\ntask = "click"\ntemperature = 0.05\nweight = %s\n' "$weight"
  } > "$out/two_tower_ib$w.toml"
done
for seed in ${seeds[@]}; do
  d=$out/seed$seed
  for a in ib1 ib01; do
    [ -f "$d/$a/metrics.json" ] || "$m" train "$d/sim/mixrank.toml" --model "$out/two_tower_$a.toml" --seed "$seed" --out "$d/$a" --overwrite > "$d/$a.log" 2>&1
    c=$d/tt_vs_$a.txt
    [ -s "$c" ] || "$m" compare "$d/tt" "$d/$a" --split test --resamples 200 > "$c" 2>&1
    grep -E "^(click|save) +all +(auc|exp_auc|ndcg@5|calibration) " "$c" | sed "s/^/seed $seed $a /"
  done
done
