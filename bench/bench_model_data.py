# Writes Parquet data in the schema of the DESIGN.md bench model (26 categorical ids
# uniform in [0, 100000), 13 dense N(0,1) values, two 0/1 labels) for measuring
# `mixrank train` end to end against the engine's training benchmark on the same model.
# Usage: python3 bench/bench_model_data.py OUT_DIR ROWS   (needs pyarrow and numpy)
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
out, rows = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
cols = {f"c{i}": rng.integers(0, 100_000, rows, dtype=np.int64) for i in range(26)}
cols |= {f"d{i}": rng.standard_normal(rows).astype(np.float32) for i in range(13)}
cols["y1"] = (rng.random(rows) < 0.2).astype(np.float32)
cols["y2"] = (rng.random(rows) < 0.1).astype(np.float32)
pq.write_table(pa.table(cols), f"{out}/train.parquet", row_group_size=65536)
