// Embedding lookups and their sparse table gradients. Ids past the table (which the
// host backends reject with IdOutOfRange before touching anything) are not read: the
// output element is written as 0. The sparse gradient is a deterministic segmented sum:
// the host sorts the (id, position) pairs, and each distinct id's row is the sum of its
// occurrences in batch order (no atomics), the reference's order.

extern "C" __global__ void gather_rows(u64 batch, u64 dim, u64 table_rows, u64 out_cols, u64 col_offset,
                                       const u32* ids, const float* table, float* out) {
    GRID_STRIDE(i, batch * dim) {
        u64 b = i / dim, j = i % dim;
        u64 id = ids[b];
        out[b * out_cols + col_offset + j] = id < table_rows ? table[id * dim + j] : 0.0f;
    }
}

// pooling: 0 sum, 1 mean (weight (float)(1.0 / max(count, 1)) computed in double, as
// reference.rs `bag_weight`).
// Offsets are not validated (that would need a readback): ids past `nids` are not read.
extern "C" __global__ void gather_pooled(u64 batch, u64 dim, u64 table_rows, u64 out_cols, u64 col_offset,
                                         int pooling, const u32* offsets, const u32* ids, u64 nids,
                                         const float* table, float* out) {
    GRID_STRIDE(i, batch * dim) {
        u64 b = i / dim, j = i % dim;
        u32 start = offsets[b], end = offsets[b + 1];
        if ((u64)end > nids) end = (u32)nids;
        u32 count = end > start ? end - start : 0;
        float w = pooling == 1 ? (float)(1.0 / (double)(count > 1 ? count : 1)) : 1.0f;
        float acc = 0.0f;
        for (u32 p = start; p < end; p++) {
            u64 id = ids[p];
            acc += id < table_rows ? table[id * dim + j] : 0.0f;
        }
        out[b * out_cols + col_offset + j] = acc * w;
    }
}

// rows[s, j] = sum_{k in segment s} weight[k] * dout[src_row[k] * out_cols + col_offset + j]
// for the `segments` segments `seg_start[s] .. seg_start[s + 1]` of the sorted occurrences.
extern "C" __global__ void scatter_segments(u64 segments, u64 dim, u64 out_cols, u64 col_offset,
                                            const u32* seg_start, const u32* src_row, const float* weight,
                                            const float* dout, float* rows) {
    GRID_STRIDE(i, segments * dim) {
        u64 s = i / dim, j = i % dim;
        float acc = 0.0f;
        for (u32 k = seg_start[s]; k < seg_start[s + 1]; k++)
            acc += weight[k] * dout[(u64)src_row[k] * out_cols + col_offset + j];
        rows[i] = acc;
    }
}

// The merge of two sparse gradients by a host plan: output row k is a's row from_a[k],
// b's row from_b[k], or their sum `a + b` (NO_POS: absent).
extern "C" __global__ void merge_rows(u64 len, u64 dim, const u32* from_a, const u32* from_b, const float* ra,
                                      const float* rb, float* out) {
    GRID_STRIDE(i, len * dim) {
        u64 k = i / dim, j = i % dim;
        u32 ia = from_a[k], ib = from_b[k];
        float v;
        if (ia != NO_POS && ib != NO_POS) {
            v = ra[(u64)ia * dim + j] + rb[(u64)ib * dim + j];
        } else if (ia != NO_POS) {
            v = ra[(u64)ia * dim + j];
        } else {
            v = rb[(u64)ib * dim + j];
        }
        out[i] = v;
    }
}
