#!/bin/bash
# Issue 15's CPU comparisons in alternating rounds: two mixrank binaries (before/after a
# change) and PyTorch, on the same machine in the same run. Per round:
#   1. the DESIGN.md bench model, training (`bench train`, batch 2048, 30 steps) against
#      bench/torch_bench_model.py's best CPU configuration (sparse embeddings + SparseAdam);
#   2. the small MMoE of bench/small_mmoe.toml, `mixrank train` end to end on its Parquet
#      data (median of 20-step windows of train_log.jsonl from step 20) against the tuned
#      PyTorch twin (one table, fused Adam);
#   3. the demo's heterogeneous MMoE, `mixrank train` (median of 10-step windows from
#      step 10) against bench/torch_mmoe_heterogeneous.py;
#   4. inference of the bench model, f32 and bf16, batch 512 and 2048 (`bench infer`)
#      against PyTorch's f32 and bf16 autocast.
#
#   PY=/work/torchenv/bin/python bench/cpu_rounds.sh OLD_BIN NEW_BIN ROUNDS [OUT]
#
# Needs: /tmp/small_mmoe (python bench/bench_model_data.py /tmp/small_mmoe 409600 --cat 32
# --buckets 10000 --dense 7) and $OUT/sim (made here with `mixrank simulate` when absent).
# Prints each round's figures and the medians; every figure also goes to $OUT/rounds.jsonl.
set -euo pipefail
old=$1 new=$2 rounds=$3 out=${4:-/tmp/cpu_rounds}
py=${PY:-python3}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
[ -d "$out/sim" ] || "$new" simulate --out "$out/sim" --days 4 --requests-per-day 10000 >/dev/null
lscpu | grep -E "Model name" | sed 's/  */ /g'
: > "$out/rounds.jsonl"
record() { echo "{\"round\": $1, \"what\": \"$2\", \"impl\": \"$3\", \"value\": $4}" >> "$out/rounds.jsonl"; }

# Median window rate of a train_log.jsonl from step $2.
log_rate() {
    python3 - "$1" "$2" <<'PY'
import json, statistics, sys
tr = [json.loads(l) for l in open(sys.argv[1])]
tr = [l for l in tr if l.get("event") == "train" and l["step"] >= int(sys.argv[2])]
print(int(statistics.median((b["examples"] - a["examples"]) / (b["train_s"] - a["train_s"]) for a, b in zip(tr, tr[1:]))))
PY
}

for r in $(seq "$rounds"); do
    for side in old new; do
        bin=${!side}
        "$bin" bench train --steps 30 --json "$out/bt.json" >/dev/null 2>&1
        record "$r" bench_train "$side" "$(python3 -c "import json; print(int(json.load(open('$out/bt.json'))['examples_per_s']))")"
        "$bin" train "$here/small_mmoe.toml" --out "$out/small" --log-every 20 --overwrite >/dev/null 2>&1
        record "$r" small_train "$side" "$(log_rate "$out/small/train_log.jsonl" 20)"
        "$bin" train "$out/sim/mixrank.toml" --model "$here/../configs/models/mmoe_heterogeneous.toml" \
            --out "$out/het" --log-every 10 --overwrite >/dev/null 2>&1
        record "$r" het_train "$side" "$(log_rate "$out/het/train_log.jsonl" 10)"
        "$bin" bench infer --batches 512,2048 --reps 30 --json "$out/bi.json" >/dev/null 2>&1
        python3 - "$out/bi.json" "$r" "$side" >> "$out/rounds.jsonl" <<'PY'
import json, sys
for x in json.load(open(sys.argv[1])):
    print(json.dumps({"round": int(sys.argv[2]), "what": f"infer_{x['precision']}@{x['batch']}_ms", "impl": sys.argv[3], "value": x["p50_ms"]}))
PY
    done
    "$py" "$here/torch_bench_model.py" --threads 2 --steps 30 --sparse-only --batches 512,2048 --json "$out/tb.json" >/dev/null 2>&1
    python3 - "$out/tb.json" "$r" >> "$out/rounds.jsonl" <<'PY'
import json, sys
d, r = json.load(open(sys.argv[1])), int(sys.argv[2])
print(json.dumps({"round": r, "what": "bench_train", "impl": "torch", "value": int(d["train"]["sparse_sparseadam"]["examples_per_s"])}))
for k, v in d["infer"].items():
    prec, b = k.split("@")
    print(json.dumps({"round": r, "what": f"infer_{prec}@{b}_ms", "impl": "torch", "value": v["median_ms"]}))
PY
    "$py" "$here/torch_small_mmoe.py" "$here/small_mmoe.toml" --threads 2 --tables one --adam fused --json "$out/ts.json" >/dev/null 2>&1
    record "$r" small_train torch "$(python3 -c "import json; d=json.load(open('$out/ts.json')); print(int(d.get('examples_per_s') or d['train']['examples_per_s']))")"
    "$py" "$here/torch_mmoe_heterogeneous.py" "$out/sim/mixrank.toml" --threads 2 --json "$out/th.json" >/dev/null 2>&1
    record "$r" het_train torch "$(python3 -c "import json; d=json.load(open('$out/th.json')); print(int(d.get('examples_per_s') or d['train']['examples_per_s']))")"
    grep "\"round\": $r," "$out/rounds.jsonl" | python3 -c "
import json, sys
rows = [json.loads(l) for l in sys.stdin]
print('round $r:', '  '.join(f\"{x['what']}/{x['impl']}={x['value']:.4g}\" for x in rows))"
done

python3 - "$out/rounds.jsonl" <<'PY'
import collections, json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = collections.defaultdict(dict)
for x in rows:
    by[(x["what"], x["round"])][x["impl"]] = x["value"]
for what in sorted({x["what"] for x in rows}):
    rs = sorted(r for (w, r) in by if w == what)
    med = {i: statistics.median(by[(what, r)][i] for r in rs) for i in ("old", "new", "torch")}
    # Times (ms): smaller is better, so the ratios are torch/ours; rates: ours/torch.
    inv = what.endswith("_ms")
    ratio = lambda i, r: (by[(what, r)]["torch"] / by[(what, r)][i]) if inv else (by[(what, r)][i] / by[(what, r)]["torch"])
    new_old = statistics.median((by[(what, r)]["old"] / by[(what, r)]["new"]) if inv else (by[(what, r)]["new"] / by[(what, r)]["old"]) for r in rs)
    print(f"{what:<22} medians old {med['old']:.4g} new {med['new']:.4g} torch {med['torch']:.4g} | "
          f"speed vs torch (median of rounds): old {statistics.median(ratio('old', r) for r in rs):.2f}x "
          f"new {statistics.median(ratio('new', r) for r in rs):.2f}x | new vs old {new_old:.2f}x")
PY
