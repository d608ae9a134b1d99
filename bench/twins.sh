#!/usr/bin/env bash
# mixrank vs its PyTorch twins (issue 15 items 1-2), back to back on this machine:
#   - the demo's heterogeneous MMoE (configs/models/mmoe_heterogeneous.toml) on the
#     simulator's data vs bench/torch_mmoe_heterogeneous.py;
#   - the small MMoE (bench/small_mmoe.toml) vs bench/torch_small_mmoe.py, in two PyTorch
#     configurations: per-field tables + default Adam (as bench/torch_bench_model.py), and
#     one table + fused Adam (the fastest found).
# RUNS alternating rounds (each round: mixrank het, torch het, mixrank small, torch small
# x2), `uptime`'s 1-minute load recorded before and after every run; then medians and
# ratios. Training-only figures on both sides: mixrank = examples / train_s between
# consecutive `train` lines of train_log.jsonl (steps 11-90 of the heterogeneous run,
# 21-400 of the small one), PyTorch = the same steps timed one by one, median of windows.
#
# Usage: bench/twins.sh [MIXRANK_BINARY] [RUNS]      (defaults: mixrank, 3)
# Env:   PY (python with torch, pyarrow, numpy; xxhash optional), OUT (default /tmp/twins),
#        FUXICTR=1 also times FuxiCTR's verbatim bilinear fusion once (25 steps, ~8.6 GB).
set -euo pipefail
BIN=${1:-mixrank}
RUNS=${2:-3}
PY=${PY:-python3}
OUT=${OUT:-/tmp/twins}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
RES="$OUT/results.jsonl"
: >"$RES"

load() { cut -d' ' -f1 /proc/loadavg; }

[ -f "$OUT/sim/mixrank.toml" ] || "$BIN" simulate --out "$OUT/sim" --days 4 --requests-per-day 10000
mkdir -p /tmp/small_mmoe   # the path bench/small_mmoe.toml names
[ -f /tmp/small_mmoe/train.parquet ] || "$PY" bench/bench_model_data.py /tmp/small_mmoe 409600 --cat 32 --buckets 10000 --dense 7

{
  date -u +"%Y-%m-%d %H:%M UTC"
  lscpu | grep 'Model name'
  echo "cpus: $(nproc); flags: $(grep -o -w -E 'avx2|fma|avx512f|avx512_bf16|amx_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  "$PY" -c 'import torch; print("torch", torch.__version__)'
  "$BIN" --version
} | tee "$OUT/machine.txt"
"$PY" bench/torch_gemm_peak.py --threads 2 | tee "$OUT/gemm.txt"

# examples/s of mixrank's train log between consecutive `train` lines after step FROM.
mixrank_windows() {
  "$PY" - "$1" "$2" <<'EOF'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
tr = [l for l in lines if l.get("event") == "train" and l["step"] >= int(sys.argv[2])]
w = [(b["examples"] - a["examples"]) / (b["train_s"] - a["train_s"]) for a, b in zip(tr, tr[1:])]
print(json.dumps({"examples_per_s": statistics.median(w), "windows": w, "steps": [tr[0]["step"], tr[-1]["step"]]}))
EOF
}

record() { # model impl run load_before json
  "$PY" -c 'import json,sys; r=json.loads(sys.argv[5]); print(json.dumps({"model":sys.argv[1],"impl":sys.argv[2],"run":int(sys.argv[3]),"load_before":float(sys.argv[4]),"load_after":float(sys.argv[6]),"examples_per_s":r["examples_per_s"]}))' \
    "$1" "$2" "$3" "$4" "$5" "$(load)" | tee -a "$RES"
}

for i in $(seq 1 "$RUNS"); do
  l=$(load)
  "$BIN" train "$OUT/sim/mixrank.toml" --model configs/models/mmoe_heterogeneous.toml \
    --out "$OUT/het_mixrank_$i" --log-every 10 --overwrite >"$OUT/het_mixrank_$i.txt" 2>&1
  record heterogeneous mixrank "$i" "$l" "$(mixrank_windows "$OUT/het_mixrank_$i/train_log.jsonl" 10)"

  l=$(load)
  "$PY" bench/torch_mmoe_heterogeneous.py "$OUT/sim/mixrank.toml" --threads 2 --json "$OUT/het_torch_$i.json" >"$OUT/het_torch_$i.txt"
  record heterogeneous torch "$i" "$l" "$(cat "$OUT/het_torch_$i.json")"

  l=$(load)
  "$BIN" train bench/small_mmoe.toml --out "$OUT/small_mixrank_$i" --log-every 20 --overwrite >"$OUT/small_mixrank_$i.txt" 2>&1
  record small mixrank "$i" "$l" "$(mixrank_windows "$OUT/small_mixrank_$i/train_log.jsonl" 20)"

  l=$(load)
  "$PY" bench/torch_small_mmoe.py bench/small_mmoe.toml --threads 2 --json "$OUT/small_torch_$i.json" >"$OUT/small_torch_$i.txt"
  record small torch "$i" "$l" "$(cat "$OUT/small_torch_$i.json")"

  l=$(load)
  "$PY" bench/torch_small_mmoe.py bench/small_mmoe.toml --threads 2 --tables one --adam fused \
    --json "$OUT/small_torch_tuned_$i.json" >"$OUT/small_torch_tuned_$i.txt"
  record small torch_one_table_fused_adam "$i" "$l" "$(cat "$OUT/small_torch_tuned_$i.json")"
done

if [ "${FUXICTR:-0}" = 1 ]; then
  l=$(load)
  "$PY" bench/torch_mmoe_heterogeneous.py "$OUT/sim/mixrank.toml" --threads 2 --fusion fuxictr \
    --max-steps 25 --warmup 5 --window 10 --json "$OUT/het_torch_fuxictr.json" >"$OUT/het_torch_fuxictr.txt"
  record heterogeneous torch_fuxictr_verbatim_fusion 1 "$l" "$(cat "$OUT/het_torch_fuxictr.json")"
fi

"$PY" - "$RES" "$OUT/het_torch_1.json" "$OUT/small_torch_1.json" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
flops = {"heterogeneous": json.load(open(sys.argv[2]))["flops_per_example"]["train_step"],
         "small": json.load(open(sys.argv[3]))["flops_per_example"]["train_step"]}
by = {}
for r in rows:
    by.setdefault((r["model"], r["impl"]), []).append(r)
print("\n| model | implementation | runs (ex/s; load before→after) | median ex/s | vs mixrank | train MFLOP/ex | GFLOP/s |")
print("|---|---|---|---:|---:|---:|---:|")
med = {k: statistics.median(x["examples_per_s"] for x in v) for k, v in by.items()}
for (m, impl), v in by.items():
    runs = "; ".join(f"{x['examples_per_s']:,.0f} ({x['load_before']:.2f}→{x['load_after']:.2f})" for x in v)
    ratio = med[(m, "mixrank")] / med[(m, impl)]
    print(f"| {m} | {impl} | {runs} | {med[(m, impl)]:,.0f} | mixrank {ratio:.2f}× | {flops[m] / 1e6:.3f} | {med[(m, impl)] * flops[m] / 1e9:.1f} |")
EOF
