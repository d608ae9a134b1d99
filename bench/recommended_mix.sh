#!/usr/bin/env bash
# Issue 12 item 5: the recommended expert mix (configs/models/mmoe_recommended.toml, the
# demo's heterogeneous MMoE without FinalMLP) against the full mix
# (configs/models/mmoe_position_tower.toml) on the demo's data, over several seeds
# (`--seed`: initialisation and data order), each pair compared on the validation day
# with `mixrank compare` (paired bootstrap over requests). Training throughput from
# metrics.json.
# Usage: bench/recommended_mix.sh DEMO_DATA_CONFIG OUT_DIR [SEEDS...]
#   (DEMO_DATA_CONFIG: `mixrank demo`'s mixrank-demo/data/mixrank.toml; needs a release build)
set -euo pipefail
data=${1:?usage: bench/recommended_mix.sh DEMO_DATA_CONFIG OUT_DIR [SEEDS...]}
out=${2:?usage: bench/recommended_mix.sh DEMO_DATA_CONFIG OUT_DIR [SEEDS...]}
shift 2
seeds=("${@:-1 2 3}")
root=$(cd "$(dirname "$0")/.." && pwd)
m=${MIXRANK:-$root/target/release/mixrank}
mkdir -p "$out"
for seed in ${seeds[@]}; do
  for arm in mmoe_position_tower mmoe_recommended; do
    r=$out/seed$seed/$arm
    mkdir -p "$out/seed$seed"
    [ -f "$r/metrics.json" ] || "$m" train "$data" --model "$root/configs/models/$arm.toml" --seed "$seed" --out "$r" --overwrite > "$r.log" 2>&1
  done
  c=$out/seed$seed/compare.txt
  [ -s "$c" ] || "$m" compare "$out/seed$seed/mmoe_position_tower" "$out/seed$seed/mmoe_recommended" --split validation --resamples 200 > "$c" 2>&1
  grep -E "^(click|save|dwell|conversion) +all +(auc|exp_auc|logloss|rmse) " "$c" | sed "s/^/seed $seed /"
  for arm in mmoe_position_tower mmoe_recommended; do
    python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(f'seed {sys.argv[2]} cost {sys.argv[3]} train_s {m[\"train_seconds\"]:.1f} ex_per_s {m[\"examples_per_second\"]:.0f}')" "$out/seed$seed/$arm/metrics.json" "$seed" "$arm"
  done
done
