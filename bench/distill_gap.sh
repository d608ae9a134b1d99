#!/usr/bin/env bash
# Issue 13 item 2: how much of the gap between the two-tower light ranker and the full
# ranker distillation closes, per distillation setting, over several seeds.
# Per seed: simulate (defaults: 7 days x 10,000 requests x 10 candidates; train 5 days,
# validation and test one day each, the seed's own data), train
#   full  the demo's heterogeneous MMoE with the position tower (the teacher);
#   tt    the two-tower light ranker (configs/models/two_tower.toml), no distillation;
#   d1    tt distilled from full: pointwise_bce on click and save, weight 1 (the setting
#         of docs/ACCURACY.md's first table);
#   d3    the same with weight 3, and conversion distilled too;
#   dp    pairwise (RankNet) distillation on click and save, 4 partners per row drawn in
#         the batch, weight 1;
#   dpc   dp, and conversion distilled pointwise with weight 3;
# then `mixrank eval RUN --split test --json` of each. Prints per seed and arm the test AUC
# of click, save, conversion and the expected click AUC against the truth.
# Usage: bench/distill_gap.sh OUT_DIR [SEEDS...]   (needs a release build)
set -euo pipefail
out=${1:?usage: bench/distill_gap.sh OUT_DIR [SEEDS...]}
shift
seeds=("${@:-1 2 3}")
root=$(cd "$(dirname "$0")/.." && pwd)
m=${MIXRANK:-$root/target/release/mixrank}
mkdir -p "$out"
train() { # DATA_CONFIG MODEL SEED RUN
  [ -f "$4/metrics.json" ] || "$m" train "$1" --model "$2" --seed "$3" --out "$4" --overwrite > "$4.log" 2>&1
}
distill_config() { # SIM_DIR TEACHER NAME TASK:LOSS:WEIGHT...
  local sim=$1 teacher=$2 name=$3
  shift 3
  {
    cat "$sim/mixrank.toml"
    printf '\n[distill]\nsource = "checkpoint"\ncheckpoint = "%s"\n' "$teacher"
    for spec in "$@"; do
      IFS=: read -r t loss weight <<< "$spec"
      printf '\n[[distill.tasks]]\ntask = "%s"\nloss = "%s"\nweight = %s\n' "$t" "$loss" "$weight"
      if [ "$loss" = pairwise ]; then printf 'pairs = "batch"\npairs_per_row = 4\n'; fi
    done
  } > "$sim/$name.toml"
}
for seed in ${seeds[@]}; do
  d=$out/seed$seed
  mkdir -p "$d"
  [ -f "$d/sim/mixrank.toml" ] || "$m" simulate --out "$d/sim" --seed "$seed" > /dev/null
  train "$d/sim/mixrank.toml" "$root/configs/models/mmoe_position_tower.toml" "$seed" "$d/full"
  train "$d/sim/mixrank.toml" "$root/configs/models/two_tower.toml" "$seed" "$d/tt"
  distill_config "$d/sim" "$d/full" d1 click:pointwise_bce:1.0 save:pointwise_bce:1.0
  distill_config "$d/sim" "$d/full" d3 click:pointwise_bce:3.0 save:pointwise_bce:3.0 conversion:pointwise_bce:3.0
  distill_config "$d/sim" "$d/full" dp click:pairwise:1.0 save:pairwise:1.0
  distill_config "$d/sim" "$d/full" dpc click:pairwise:1.0 save:pairwise:1.0 conversion:pointwise_bce:3.0
  for a in d1 d3 dp dpc; do
    train "$d/sim/$a.toml" "$root/configs/models/two_tower.toml" "$seed" "$d/$a"
  done
  for a in full tt d1 d3 dp dpc; do
    [ -s "$d/$a.eval.json" ] || "$m" eval "$d/$a" --split test --json "$d/$a.eval.json" > "$d/$a.eval.log" 2>&1
  done
done
python3 - "$out" ${seeds[@]} <<'PY'
import json, sys
out, seeds = sys.argv[1], sys.argv[2:]
arms = ["full", "tt", "d1", "d3", "dp", "dpc"]
cols = [("click", "auc"), ("save", "auc"), ("conversion", "auc"), ("click", "expected_auc")]
def value(e, task, key):
    part = e["truth"] if key == "expected_auc" else e["f32"]
    return next(t["overall"][key] for t in part if t["task"] == task)
res = {}
print("seed arm " + " ".join(f"{t}_{k}" for t, k in cols))
for s in seeds:
    for a in arms:
        e = json.load(open(f"{out}/seed{s}/{a}.eval.json"))
        res[s, a] = [value(e, t, k) for t, k in cols]
        print(s, a, " ".join(f"{v:.5f}" for v in res[s, a]))
# Mean over seeds of the gap full - tt, and of each distilled arm's gain over tt, per column.
print("gap closed (mean gain / mean gap), per column:")
for a in arms[2:]:
    parts = []
    for i, (t, k) in enumerate(cols):
        gap = sum(res[s, "full"][i] - res[s, "tt"][i] for s in seeds) / len(seeds)
        gain = sum(res[s, a][i] - res[s, "tt"][i] for s in seeds) / len(seeds)
        parts.append(f"{t}_{k} gain {gain:+.4f} of gap {gap:.4f} = {100 * gain / gap if gap else float('nan'):.0f}%")
    print(a, "; ".join(parts))
PY
