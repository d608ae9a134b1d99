#!/usr/bin/env bash
# Issue 17 item 6: data-parallel scaling on one machine, and the gradient traffic per step.
# Simulates 5 days x 20,000 requests x 10 candidates (train on days 1-3: 600,000 rows) and
# trains the small MMoE of configs/experiments/surfaces/unified.toml for one epoch, REPS
# times per arm (medians reported):
#   one_t1 / one_t2      one process, [train] threads = 1 / 2
#   inproc2_replicated   --ranks-in-process 2, threads = 1 per rank, every rank reads all rows
#   inproc2_sharded      the same with [data] distributed_reading = "sharded"
#   mpi2_replicated      mpirun -n 2 (loopback), threads = 1 per rank
#   mpi2_sharded         the same, sharded reading
#   inproc2_tables       --ranks-in-process 2 with [train] embedding_sharding = "rows"
#   mpi2_tables          mpirun -n 2 with [train] embedding_sharding = "rows"
#   inproc2_mixed        --ranks-in-process 2, "rows" with tables under 1,000 rows and the
#                        shared category table whole on every rank (per-table placement)
#   mpi2_mixed           mpirun -n 2, the same placement
# ARMS (environment) picks a subset, e.g. ARMS="one_t1 mpi2_replicated mpi2_tables".
# Prints per run: examples/s over training time (metrics.json), and for the
# data-parallel runs the payload rank 0 contributed per step to the dense all-reduce and
# the sparse all-gather. The mpi arms need a build with MPI (MIXRANK_MPI, default
# target/release/mixrank: `cargo build --release --features mixrank/mpi`).
# Usage: bench/distributed.sh OUT_DIR [REPS]
set -euo pipefail
out=${1:?usage: bench/distributed.sh OUT_DIR [REPS]}
reps=${2:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
m=${MIXRANK:-$root/target/release/mixrank}
mpi_bin=${MIXRANK_MPI:-$m}
mkdir -p "$out"
[ -f "$out/sim/mixrank.toml" ] || "$m" simulate --out "$out/sim" --seed 1 --days 5 --requests-per-day 20000 > /dev/null
grep -q 'distributed_reading' "$out/sim/mixrank.toml" && { echo "unexpected distributed_reading in the simulator's config" >&2; exit 1; }
sed 's/^batch_size = \(.*\)$/batch_size = \1\ndistributed_reading = "sharded"/' "$out/sim/mixrank.toml" > "$out/sim/sharded.toml"
for t in 1 2; do
  sed -e 's/^epochs = .*/epochs = 1/' "$root/configs/experiments/surfaces/unified.toml" > "$out/model_t$t.toml"
  printf 'threads = %s\n' "$t" >> "$out/model_t$t.toml"
done
cp "$out/model_t1.toml" "$out/model_t1_tables.toml"
printf 'embedding_sharding = "rows"\n' >> "$out/model_t1_tables.toml"
cp "$out/model_t1_tables.toml" "$out/model_t1_mixed.toml"
printf 'replicated_tables = ["category"]\nreplicate_tables_under_rows = 1000\n' >> "$out/model_t1_mixed.toml"
mpirun_=(mpirun -n 2 --oversubscribe --bind-to none)
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
# Loopback; ranks yield the CPU while they wait in a collective (Open MPI spins by default,
# which on a machine with no core to spare takes it from the rank still computing: measured
# 33k against 59k examples/s here).
export OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_mpi_yield_when_idle=1
run() { # ARM REP
  local d=$out/runs/$1_$2
  case $1 in
    one_t1) "$m" train "$out/sim/mixrank.toml" --model "$out/model_t1.toml" --out "$d" --overwrite ;;
    one_t2) "$m" train "$out/sim/mixrank.toml" --model "$out/model_t2.toml" --out "$d" --overwrite ;;
    inproc2_replicated) "$m" train "$out/sim/mixrank.toml" --model "$out/model_t1.toml" --out "$d" --overwrite --ranks-in-process 2 ;;
    inproc2_sharded) "$m" train "$out/sim/sharded.toml" --model "$out/model_t1.toml" --out "$d" --overwrite --ranks-in-process 2 ;;
    mpi2_replicated) "${mpirun_[@]}" "$mpi_bin" train "$out/sim/mixrank.toml" --model "$out/model_t1.toml" --out "$d" --overwrite ;;
    mpi2_sharded) "${mpirun_[@]}" "$mpi_bin" train "$out/sim/sharded.toml" --model "$out/model_t1.toml" --out "$d" --overwrite ;;
    inproc2_tables) "$m" train "$out/sim/mixrank.toml" --model "$out/model_t1_tables.toml" --out "$d" --overwrite --ranks-in-process 2 ;;
    mpi2_tables) "${mpirun_[@]}" "$mpi_bin" train "$out/sim/mixrank.toml" --model "$out/model_t1_tables.toml" --out "$d" --overwrite ;;
    inproc2_mixed) "$m" train "$out/sim/mixrank.toml" --model "$out/model_t1_mixed.toml" --out "$d" --overwrite --ranks-in-process 2 ;;
    mpi2_mixed) "${mpirun_[@]}" "$mpi_bin" train "$out/sim/mixrank.toml" --model "$out/model_t1_mixed.toml" --out "$d" --overwrite ;;
  esac > "$d.log" 2>&1
  python3 - "$d/metrics.json" "$1" "$2" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
r = m.get("replicas") or {}
extra = f" dense_bytes_per_step {r['dense_bytes_per_step']:.0f} sparse_bytes_per_step {r['sparse_bytes_per_step']:.0f}" if r else ""
print(f"{sys.argv[2]} rep {sys.argv[3]} examples {m['examples']} train_s {m['train_seconds']:.2f} ex_per_s {m['examples_per_second']:.0f}{extra}")
PY
}
mkdir -p "$out/runs"
read -r -a arms <<< "${ARMS:-one_t1 one_t2 inproc2_replicated inproc2_sharded mpi2_replicated mpi2_sharded inproc2_tables mpi2_tables inproc2_mixed mpi2_mixed}"
for rep in $(seq 1 "$reps"); do
  for a in "${arms[@]}"; do run "$a" "$rep"; done
done | tee "$out/results.txt"
echo "medians (examples/s):"
for a in "${arms[@]}"; do
  awk -v a="$a" '$1 == a {print $9}' "$out/results.txt" | sort -n | awk -v a="$a" '{v[NR]=$1} END {printf "%-20s %s\n", a, v[int((NR+1)/2)]}'
done
