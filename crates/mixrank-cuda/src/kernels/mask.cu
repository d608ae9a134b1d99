// Masks made on the device (mask.rs), bit for bit the host formulas: the stream base
// `dropout_base(seed, step)` (plus the first element or row offset) is computed on the
// host by mixrank_engine::mask::dropout_base and passed in.

extern "C" __global__ void dropout_mask(u64 n, double p, float keep_scale, u64 base, float* mask) {
    GRID_STRIDE(i, n) { mask[i] = uniform01(base, i) < p ? 0.0f : keep_scale; }
}

// One thread per row: 0 at the k largest values (ties to the lower index), MASKED elsewhere.
extern "C" __global__ void top_k_mask(u64 rows, u64 cols, u64 k, const float* x, float* mask) {
    GRID_STRIDE(r, rows) {
        const float* row = x + r * cols;
        float* m = mask + r * cols;
        for (u64 j = 0; j < cols; j++) m[j] = MASKED;
        u64 kk = k < cols ? k : cols;
        for (u64 t = 0; t < kk; t++) {
            long long best = -1;
            for (u64 j = 0; j < cols; j++)
                if (m[j] == MASKED && (best < 0 || row[j] > row[best])) best = (long long)j;
            if (best >= 0) m[best] = 0.0f;
        }
    }
}

// One thread per row; `base` already includes first_row * cols.
extern "C" __global__ void gate_dropout_mask(u64 rows, u64 cols, double p, u64 base, float* mask) {
    GRID_STRIDE(r, rows) {
        float* m = mask + r * cols;
        int keeps_one = 0;
        for (u64 j = 0; j < cols; j++)
            if (m[j] == 0.0f && !(uniform01(base, r * cols + j) < p)) keeps_one = 1;
        if (!keeps_one) continue;
        for (u64 j = 0; j < cols; j++)
            if (m[j] == 0.0f && uniform01(base, r * cols + j) < p) m[j] = MASKED;
    }
}

// `base` already includes first_row * slots.
extern "C" __global__ void feature_dropout_mask(u64 rows, u64 cols, u64 slots, double p, u64 base,
                                                const u32* slot_of, float* mask) {
    GRID_STRIDE(i, rows * cols) {
        u64 r = i / cols, c = i % cols;
        u64 s = slot_of[c];
        int keep = s < slots && uniform01(base, r * slots + s) >= p;
        mask[i] = keep ? 1.0f : 0.0f;
    }
}
