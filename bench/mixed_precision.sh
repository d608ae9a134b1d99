#!/usr/bin/env bash
# Issue 14 item 2: bf16 mixed-precision training ([train] precision = "bf16": bf16 GEMM
# operands, f32 accumulation, f32 master weights) against f32 training of the demo's
# heterogeneous MMoE (configs/models/mmoe_position_tower.toml) on the demo's data, over
# several seeds (`--seed`: initialisation and data order), each pair compared on the
# validation day with `mixrank compare` (paired bootstrap over requests). Runs on the CPU
# backend, whose bf16 GEMM is the f32 GEMM of bf16-rounded operands: a GPU's bf16
# numerics, not its speed.
# Usage: bench/mixed_precision.sh DEMO_DATA_CONFIG OUT_DIR [SEEDS...]
#   (DEMO_DATA_CONFIG: `mixrank demo`'s mixrank-demo/data/mixrank.toml; needs a release build)
set -euo pipefail
data=${1:?usage: bench/mixed_precision.sh DEMO_DATA_CONFIG OUT_DIR [SEEDS...]}
out=${2:?usage: bench/mixed_precision.sh DEMO_DATA_CONFIG OUT_DIR [SEEDS...]}
shift 2
seeds=("${@:-1 2 3}")
root=$(cd "$(dirname "$0")/.." && pwd)
m=${MIXRANK:-$root/target/release/mixrank}
mkdir -p "$out"
model=$root/configs/models/mmoe_position_tower.toml
grep -q '^\[train\]' "$model" || { echo "$model has no [train] section"; exit 1; }
sed 's/^\[train\]$/[train]\nprecision = "bf16"/' "$model" > "$out/bf16.toml"
cp "$model" "$out/f32.toml"
for seed in ${seeds[@]}; do
  mkdir -p "$out/seed$seed"
  for arm in f32 bf16; do
    r=$out/seed$seed/$arm
    [ -f "$r/metrics.json" ] || "$m" train "$data" --model "$out/$arm.toml" --seed "$seed" --out "$r" --overwrite > "$r.log" 2>&1
  done
  c=$out/seed$seed/compare.txt
  [ -s "$c" ] || "$m" compare "$out/seed$seed/f32" "$out/seed$seed/bf16" --split validation --resamples 200 > "$c" 2>&1
  grep -E "^(click|save|dwell|conversion) +all +(auc|exp_auc|logloss|rmse) " "$c" | sed "s/^/seed $seed /"
  for arm in f32 bf16; do
    python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(f'seed {sys.argv[2]} {sys.argv[3]} train_s {m[\"train_seconds\"]:.1f} ex_per_s {m[\"examples_per_second\"]:.0f}')" "$out/seed$seed/$arm/metrics.json" "$seed" "$arm"
  done
done
