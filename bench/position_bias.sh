#!/usr/bin/env bash
# Issue 12 item 2: does YouTube's shallow position tower beat "position as a plain feature,
# scored at position 1" and "no position feature" on the unbiased metrics (expected AUC and
# NDCG@5 against the simulator's true click and save probabilities)?
#
# Logs with selection bias: `--logged-ranking-noise 1.0` makes a production ranker order each
# request's candidates by a noisy estimate of their click logit, so better ads are shown
# higher (and examined more). Per seed: simulate 5 days x 20,000 requests x 10 candidates
# (train on days 1-3, test on day 5), train the shared-bottom DCNv2 three ways (3 epochs,
# configs/experiments/position_bias/), and compare on the test day with paired bootstrap
# CIs (resampling requests):
#   (a) plain: position_id a head feature (the simulator's config, plain.toml), scored at
#       position 1 (`compare --a-at-position 1`)
#   (b) no position: plain.toml on the data config without the position_id feature
#   (c) tower: tower.toml, the shallow position tower (off at evaluation), 10% dropout
#   (d) tower_dropout50.toml: the same tower with 50% feature dropout on its input
# and, for reference, (a) scored at the logged position, which the logged ranking makes
# a leak of the production ranker's estimate of appeal.
# Usage: bench/position_bias.sh OUT_DIR [SEEDS...]   (needs a release build: cargo build --release)
set -euo pipefail
out=${1:?usage: bench/position_bias.sh OUT_DIR [SEEDS...]}
shift
seeds=("${@:-1 2 3}")
root=$(cd "$(dirname "$0")/.." && pwd)
m=${MIXRANK:-$root/target/release/mixrank}
models=$root/configs/experiments/position_bias
mkdir -p "$out"
for seed in ${seeds[@]}; do
  d=$out/seed$seed
  mkdir -p "$d"
  "$m" simulate --out "$d/sim" --seed "$seed" --days 5 --requests-per-day 20000 --logged-ranking-noise 1.0
  # (b)'s data config: the simulator's, without the position_id feature.
  python3 - "$d/sim/mixrank.toml" "$d/sim/no_position.toml" <<'PY'
import sys
blocks = open(sys.argv[1]).read().split("\n[[")
kept = [b for b in blocks if 'name = "position_id"' not in b]
assert len(kept) == len(blocks) - 1, "expected exactly one position_id feature"
open(sys.argv[2], "w").write("\n[[".join(kept))
PY
  "$m" train "$d/sim/mixrank.toml" --model "$models/plain.toml" --seed "$seed" --out "$d/plain" > "$d/plain.log" 2>&1
  "$m" train "$d/sim/no_position.toml" --model "$models/plain.toml" --seed "$seed" --out "$d/no_position" > "$d/no_position.log" 2>&1
  "$m" train "$d/sim/mixrank.toml" --model "$models/tower.toml" --seed "$seed" --out "$d/tower" > "$d/tower.log" 2>&1
  "$m" train "$d/sim/mixrank.toml" --model "$models/tower_dropout50.toml" --seed "$seed" --out "$d/tower_dropout50" > "$d/tower_dropout50.log" 2>&1
  "$m" compare "$d/plain" "$d/tower" --a-at-position 1 > "$d/plain_at_1_vs_tower.txt" 2>&1
  "$m" compare "$d/no_position" "$d/tower_dropout50" > "$d/no_position_vs_tower_dropout50.txt" 2>&1
  "$m" compare "$d/plain" "$d/tower_dropout50" --a-at-position 1 > "$d/plain_at_1_vs_tower_dropout50.txt" 2>&1
  "$m" compare "$d/no_position" "$d/tower" > "$d/no_position_vs_tower.txt" 2>&1
  "$m" compare "$d/plain" "$d/no_position" --a-at-position 1 > "$d/plain_at_1_vs_no_position.txt" 2>&1
  "$m" compare "$d/plain" "$d/tower" > "$d/plain_at_logged_vs_tower.txt" 2>&1
done
# One line per seed, comparison and metric (task click and save, all surfaces).
for seed in ${seeds[@]}; do
  for c in plain_at_1_vs_tower no_position_vs_tower plain_at_1_vs_no_position plain_at_logged_vs_tower \
    no_position_vs_tower_dropout50 plain_at_1_vs_tower_dropout50; do
    sed -n '/against the true probabilities/,/^auction/p' "$out/seed$seed/$c.txt" \
      | awk -v s="$seed" -v c="$c" '$2 == "all" && ($1 == "click" || $1 == "save") {print "seed " s, c, $0}'
  done
done
