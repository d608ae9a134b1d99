// Optimizer updates (optim.rs): the dense Adam step with the clip factor read from the
// norm accumulator in place, row-wise Adagrad and lazy Adam over the rows a sparse
// gradient touched (or every row). The norm accumulator holds an f64 in the buffer's
// first two f32 slots, low word first: the host backends' layout (`store_acc_f32`).

// acc += sum x[i]^2 in f64 (one block; tree order).
extern "C" __global__ void sq_norm_acc(u64 n, const float* x, double* acc) {
    __shared__ double sh[BLOCK];
    double s = 0.0;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) s += (double)x[i] * (double)x[i];
    double total = block_sum_d(s, sh);
    if (threadIdx.x == 0) acc[0] += total;
}

extern "C" __global__ void adam_update(u64 n, float lr, float beta1, float beta2, float eps, float step_size,
                                       float bc2_sqrt, float l2, float decoupled, int has_clip, float clip_norm,
                                       const double* acc, float* w, const float* g, float* m, float* v) {
    double norm = sqrt(acc[0]);
    double cs_d = (has_clip && norm > (double)clip_norm) ? (double)clip_norm / norm : 1.0;
    float cs = (float)cs_d;
    GRID_STRIDE(j, n) {
        float wj = w[j];
        float gj = g[j] * cs + l2 * wj;
        float mj = beta1 * m[j] + (1.0f - beta1) * gj;
        float vj = beta2 * v[j] + (1.0f - beta2) * gj * gj;
        m[j] = mj;
        v[j] = vj;
        float denom = sqrtf(vj) / bc2_sqrt + eps;
        w[j] = wj - step_size * mj / denom - lr * decoupled * wj;
    }
}

// pos[r] = NO_POS for every row, then pos[ids[i]] = i (ids distinct): the gradient row of
// each table row, for the updates that walk every row.
extern "C" __global__ void fill_u32(u64 n, u32 value, u32* x) {
    GRID_STRIDE(i, n) { x[i] = value; }
}

extern "C" __global__ void row_positions(u64 len, u64 table_rows, const u32* ids, u32* pos) {
    GRID_STRIDE(i, len) {
        u64 id = ids[i];
        if (id < table_rows) pos[id] = (u32)i;
    }
}

// The walked row `k` of an update: `all` = 0 walks the gradient's rows (row ids[k],
// gradient row k), `all` = 1 every table row (row k, gradient row pos[k] or none).
__device__ __forceinline__ bool walked_row(int all, u64 k, u64 table_rows, const u32* ids, const u32* pos,
                                           u64* row, long long* grow) {
    if (all) {
        *row = k;
        *grow = pos[k] == NO_POS ? -1 : (long long)pos[k];
        return true;
    }
    *row = ids[k];
    *grow = (long long)k;
    return *row < table_rows;
}

// FBGEMM's ROWWISE_ADAGRAD, as optim.rs `rowwise_adagrad_row`: one block per row.
extern "C" __global__ void rowwise_adagrad(u64 walked, u64 table_rows, u64 dim, int all, float lr, float eps,
                                           float weight_decay, const u32* ids, const u32* pos, const float* grows,
                                           float* table, float* acc) {
    __shared__ double sh[BLOCK];
    int decay = weight_decay != 0.0f;
    ROW_STRIDE(k, walked) {
        u64 row;
        long long gr;
        if (!walked_row(all, k, table_rows, ids, pos, &row, &gr)) continue;
        float* w = table + row * dim;
        double s = 0.0;
        for (u64 j = threadIdx.x; j < dim; j += blockDim.x) {
            float g = gr >= 0 ? grows[(u64)gr * dim + j] : 0.0f;
            float gd = decay ? g + weight_decay * w[j] : g;
            s += (double)gd * (double)gd;
        }
        double mean_sq = block_sum_d(s, sh) / (double)dim;
        float a = acc[row] + (float)mean_sq;
        float step = lr / (sqrtf(a) + eps);
        for (u64 j = threadIdx.x; j < dim; j += blockDim.x) {
            float g = gr >= 0 ? grows[(u64)gr * dim + j] : 0.0f;
            float wj = w[j];
            float gd = decay ? g + weight_decay * wj : g;
            w[j] = wj - step * gd;
        }
        __syncthreads();
        if (threadIdx.x == 0) acc[row] = a;
    }
}

// compiler-rt's __powidf2, which Rust's `f64::powi` lowers to: the same bits.
__device__ double powi_d(double a, int b) {
    int recip = b < 0;
    double r = 1.0;
    while (1) {
        if (b & 1) r *= a;
        b /= 2;
        if (b == 0) break;
        a *= a;
    }
    return recip ? 1.0 / r : r;
}

// Lazy Adam, as optim.rs `lazy_adam_row`: one block per row; the row's step count is
// incremented once.
extern "C" __global__ void lazy_adam(u64 walked, u64 table_rows, u64 dim, int all, float lr, float beta1, float beta2,
                                     float eps, float weight_decay, int has_global, u64 global_step, const u32* ids,
                                     const u32* pos, const float* grows, float* table, float* m, float* v,
                                     u32* steps) {
    ROW_STRIDE(k, walked) {
        u64 row;
        long long gr;
        if (!walked_row(all, k, table_rows, ids, pos, &row, &gr)) continue;
        u32 step = steps[row] + 1;
        int kk = has_global ? (int)global_step : (int)step;
        double bc1 = 1.0 - powi_d((double)beta1, kk);
        float bc2_sqrt = (float)sqrt(1.0 - powi_d((double)beta2, kk));
        float step_size = (float)((double)lr / bc1);
        u64 o = row * dim;
        for (u64 j = threadIdx.x; j < dim; j += blockDim.x) {
            float g = gr >= 0 ? grows[(u64)gr * dim + j] : 0.0f;
            float gj = g + weight_decay * table[o + j];
            float mj = beta1 * m[o + j] + (1.0f - beta1) * gj;
            float vj = beta2 * v[o + j] + (1.0f - beta2) * gj * gj;
            m[o + j] = mj;
            v[o + j] = vj;
            table[o + j] = table[o + j] - step_size * mj / (sqrtf(vj) / bc2_sqrt + eps);
        }
        __syncthreads();
        if (threadIdx.x == 0) steps[row] = step;
    }
}
