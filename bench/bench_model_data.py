# Writes Parquet data in the schema of the DESIGN.md bench model (26 categorical ids
# uniform in [0, 100000), 13 dense N(0,1) values, two 0/1 labels) for measuring
# `mixrank train` end to end against the engine's training benchmark on the same model.
# Other shapes (e.g. the small MMoE of bench/small_mmoe.toml) with --cat/--buckets/--dense.
# Usage: python3 bench/bench_model_data.py OUT_DIR ROWS [--cat 26] [--buckets 100000] [--dense 13]
#        (needs pyarrow and numpy; the defaults write exactly the data they always did)
import argparse, numpy as np, pyarrow as pa, pyarrow.parquet as pq
ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("rows", type=int)
ap.add_argument("--cat", type=int, default=26, help="categorical columns c0.. (int64 ids)")
ap.add_argument("--buckets", type=int, default=100_000, help="ids are uniform in [0, buckets)")
ap.add_argument("--dense", type=int, default=13, help="dense columns d0.. (float32, N(0,1))")
a = ap.parse_args()
out, rows = a.out, a.rows
rng = np.random.default_rng(0)
cols = {f"c{i}": rng.integers(0, a.buckets, rows, dtype=np.int64) for i in range(a.cat)}
cols |= {f"d{i}": rng.standard_normal(rows).astype(np.float32) for i in range(a.dense)}
cols["y1"] = (rng.random(rows) < 0.2).astype(np.float32)
cols["y2"] = (rng.random(rows) < 0.1).astype(np.float32)
pq.write_table(pa.table(cols), f"{out}/train.parquet", row_group_size=65536)
