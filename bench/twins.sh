#!/usr/bin/env bash
# mixrank vs its PyTorch twins (issue 15 items 1-2), back to back on this machine:
#   - the demo's heterogeneous MMoE (configs/models/mmoe_heterogeneous.toml) on the
#     simulator's data vs bench/torch_mmoe_heterogeneous.py;
#   - the small MMoE (bench/small_mmoe.toml) vs bench/torch_small_mmoe.py, in two PyTorch
#     configurations: per-field tables + default Adam (as bench/torch_bench_model.py), and
#     one table + fused Adam (the fastest found).
# RUNS alternating rounds (each round: mixrank het, torch het, mixrank small, torch small
# x2); beside every run the 1-minute load before it and the share of the CPUs other
# processes took just before and during it (bench/twins_measure.py); then medians and
# ratios. Training-only figures on both sides: mixrank = examples / train_s between
# consecutive `train` lines of train_log.jsonl (steps 11-90 of the heterogeneous run,
# 21-400 of the small one), PyTorch = the same steps timed one by one, median of windows.
#
# Usage: bench/twins.sh [MIXRANK_BINARY] [RUNS]      (defaults: mixrank, 3)
# Env:   PY (python with torch, pyarrow, numpy; xxhash optional), OUT (default /tmp/twins),
#        QUIET_PCT/QUIET_WAIT (wait for a quiet machine before each run),
#        FUXICTR=1 also times FuxiCTR's verbatim bilinear fusion once (12 steps, ~9 GB, ~2 min).
set -euo pipefail
BIN=${1:-mixrank}
RUNS=${2:-3}
PY=${PY:-python3}
OUT=${OUT:-/tmp/twins}
QUIET_PCT=${QUIET_PCT:-0}     # e.g. 15: before each run wait until others use < 15% of the CPUs
QUIET_WAIT=${QUIET_WAIT:-600} # ... for at most this many seconds
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
RES="$OUT/results.jsonl"
: >"$RES"

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

M() { "$PY" bench/twins_measure.py --results "$RES" --quiet-pct "$QUIET_PCT" --quiet-wait "$QUIET_WAIT" "$@"; }

for i in $(seq 1 "$RUNS"); do
  M --model heterogeneous --impl mixrank --run "$i" --log "$OUT/het_mixrank_$i.txt" \
    --mixrank-log "$OUT/het_mixrank_$i/train_log.jsonl" --from-step 10 -- \
    "$BIN" train "$OUT/sim/mixrank.toml" --model configs/models/mmoe_heterogeneous.toml \
    --out "$OUT/het_mixrank_$i" --log-every 10 --overwrite
  M --model heterogeneous --impl torch --run "$i" --log "$OUT/het_torch_$i.txt" --torch-json "$OUT/het_torch_$i.json" -- \
    "$PY" bench/torch_mmoe_heterogeneous.py "$OUT/sim/mixrank.toml" --threads 2 --json "$OUT/het_torch_$i.json"
  M --model small --impl mixrank --run "$i" --log "$OUT/small_mixrank_$i.txt" \
    --mixrank-log "$OUT/small_mixrank_$i/train_log.jsonl" --from-step 20 -- \
    "$BIN" train bench/small_mmoe.toml --out "$OUT/small_mixrank_$i" --log-every 20 --overwrite
  M --model small --impl torch --run "$i" --log "$OUT/small_torch_$i.txt" --torch-json "$OUT/small_torch_$i.json" -- \
    "$PY" bench/torch_small_mmoe.py bench/small_mmoe.toml --threads 2 --json "$OUT/small_torch_$i.json"
  M --model small --impl torch_one_table_fused_adam --run "$i" --log "$OUT/small_torch_tuned_$i.txt" \
    --torch-json "$OUT/small_torch_tuned_$i.json" -- \
    "$PY" bench/torch_small_mmoe.py bench/small_mmoe.toml --threads 2 --tables one --adam fused \
    --json "$OUT/small_torch_tuned_$i.json"
done

if [ "${FUXICTR:-0}" = 1 ]; then
  M --model heterogeneous --impl torch_fuxictr_verbatim_fusion --run 1 --log "$OUT/het_torch_fuxictr.txt" \
    --torch-json "$OUT/het_torch_fuxictr.json" -- \
    "$PY" bench/torch_mmoe_heterogeneous.py "$OUT/sim/mixrank.toml" --threads 2 --fusion fuxictr \
    --max-steps 12 --warmup 2 --window 10 --json "$OUT/het_torch_fuxictr.json"
fi

"$PY" - "$RES" "$OUT/het_torch_1.json" "$OUT/small_torch_1.json" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
flops = {"heterogeneous": json.load(open(sys.argv[2]))["flops_per_example"]["train_step"],
         "small": json.load(open(sys.argv[3]))["flops_per_example"]["train_step"]}
by = {}
for r in rows:
    by.setdefault((r["model"], r["impl"]), []).append(r)
med = {k: statistics.median(x["examples_per_s"] for x in v) for k, v in by.items()}
print("\n| model | implementation | runs: ex/s (others' CPU % before / during) | median ex/s | mixrank ÷ this | train MFLOP/ex | GFLOP/s |")
print("|---|---|---|---:|---:|---:|---:|")
for (m, impl), v in by.items():
    runs = "; ".join(f"{x['examples_per_s']:,.0f} ({x['others_busy_before']:.0f}/{x['others_busy_during']:.0f})" for x in v)
    print(f"| {m} | {impl} | {runs} | {med[(m, impl)]:,.0f} | {med[(m, 'mixrank')] / med[(m, impl)]:.2f}× "
          f"| {flops[m] / 1e6:.3f} | {med[(m, impl)] * flops[m] / 1e9:.1f} |")
EOF
