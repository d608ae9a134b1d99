// Fused bias + activation, elementwise ops, strided column copies, column and row sums,
// per-row block products (block.rs). One thread per element unless noted.

extern "C" __global__ void bias_act_forward(int act, u64 rows, u64 cols, const float* bias, int has_bias,
                                            float* z, float* y) {
    GRID_STRIDE(i, rows * cols) {
        float v = z[i];
        if (has_bias) {
            v = v + bias[i % cols];
            z[i] = v;
        }
        y[i] = act_forward(act, v);
    }
}

extern "C" __global__ void bias_act_inplace(int act, u64 rows, u64 cols, const float* bias, int has_bias, float* x) {
    GRID_STRIDE(i, rows * cols) {
        float b = has_bias ? bias[i % cols] : 0.0f;
        x[i] = act_forward(act, x[i] + b);
    }
}

extern "C" __global__ void bias_act_backward(int act, u64 n, const float* z, const float* dy, float* dz) {
    GRID_STRIDE(i, n) { dz[i] = dy[i] * act_derivative(act, z[i]); }
}

// out[c] (+)= sum_r x[r, c], rows in order (one thread per column): the bits of the
// reference's `db[c] += dz[r, c]` loop.
extern "C" __global__ void col_sum(u64 rows, u64 cols, const float* x, float* out, int accumulate) {
    GRID_STRIDE(c, cols) {
        float acc = accumulate ? out[c] : 0.0f;
        for (u64 r = 0; r < rows; r++) acc += x[r * cols + c];
        out[c] = acc;
    }
}

// out[r] = sum_c x[r, c] (one block per row, tree order).
extern "C" __global__ void row_sum(u64 rows, u64 cols, const float* x, float* out) {
    __shared__ float sh[BLOCK];
    ROW_STRIDE(r, rows) {
        float acc = 0.0f;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) acc += x[r * cols + c];
        float total = block_sum_f(acc, sh);
        if (threadIdx.x == 0) out[r] = total;
    }
}

extern "C" __global__ void add_f32(u64 n, const float* a, const float* b, float* out) {
    GRID_STRIDE(i, n) { out[i] = a[i] + b[i]; }
}

extern "C" __global__ void mul_f32(u64 n, const float* a, const float* b, float* out) {
    GRID_STRIDE(i, n) { out[i] = a[i] * b[i]; }
}

extern "C" __global__ void mul_acc_f32(u64 n, const float* a, const float* b, float* out) {
    GRID_STRIDE(i, n) { out[i] += a[i] * b[i]; }
}

extern "C" __global__ void mul_backward_f32(u64 n, const float* a, const float* b, const float* dout, float* da,
                                            float* db) {
    GRID_STRIDE(i, n) {
        da[i] = dout[i] * b[i];
        db[i] = dout[i] * a[i];
    }
}

extern "C" __global__ void scale_f32(u64 n, float alpha, float* x) {
    GRID_STRIDE(i, n) { x[i] *= alpha; }
}

extern "C" __global__ void axpy_f32(u64 n, float alpha, const float* x, float* y) {
    GRID_STRIDE(i, n) { y[i] += alpha * x[i]; }
}

extern "C" __global__ void fill_f32(u64 n, float value, float* x) {
    GRID_STRIDE(i, n) { x[i] = value; }
}

extern "C" __global__ void copy_cols_f32(u64 rows, u64 cols, u64 src_ld, u64 src_col, u64 dst_ld, u64 dst_col,
                                         int accumulate, const float* src, float* dst) {
    GRID_STRIDE(i, rows * cols) {
        u64 r = i / cols, c = i % cols;
        float v = src[r * src_ld + src_col + c];
        float* d = &dst[r * dst_ld + dst_col + c];
        *d = accumulate ? *d + v : v;
    }
}

// A GEMM with k = 0: C = alpha * 0 (+ beta * C), C being [m, n] at `c` with row stride ldc.
extern "C" __global__ void gemm_k0(u64 m, u64 n, u64 ldc, float alpha, float beta, float* c) {
    GRID_STRIDE(i, m * n) {
        float* p = &c[(i / n) * ldc + i % n];
        *p = beta == 0.0f ? alpha * 0.0f : alpha * 0.0f + beta * *p;
    }
}

// block.rs: out[r, k] (+)= sum_j t[r, k*w + j] * y[r, j].
extern "C" __global__ void block_dot(u64 rows, u64 blocks, u64 w, const float* t, const float* y, float* out,
                                     int accumulate) {
    GRID_STRIDE(i, rows * blocks) {
        u64 r = i / blocks, k = i % blocks;
        const float* tr = t + r * blocks * w + k * w;
        const float* yr = y + r * w;
        float acc = 0.0f;
        for (u64 j = 0; j < w; j++) acc += tr[j] * yr[j];
        out[i] = accumulate ? out[i] + acc : acc;
    }
}

// out[r, k*w + j] = d[r, k] * y[r, j].
extern "C" __global__ void block_outer(u64 rows, u64 blocks, u64 w, const float* d, const float* y, float* out) {
    GRID_STRIDE(i, rows * blocks * w) {
        u64 r = i / (blocks * w), rest = i % (blocks * w);
        u64 k = rest / w, j = rest % w;
        out[i] = d[r * blocks + k] * y[r * w + j];
    }
}

// out[r, j] = sum_k d[r, k] * t[r, k*w + j], k in order.
extern "C" __global__ void block_dot_t(u64 rows, u64 blocks, u64 w, const float* d, const float* t, float* out) {
    GRID_STRIDE(i, rows * w) {
        u64 r = i / w, j = i % w;
        float acc = 0.0f;
        for (u64 k = 0; k < blocks; k++) acc += d[r * blocks + k] * t[r * blocks * w + k * w + j];
        out[i] = acc;
    }
}

// y[i] = x[i] rounded to bf16 (ties to even) as an f32; NaN stays NaN (mixed-precision
// training's GEMM operands; mixrank_engine::round_bf16, the `half` crate's rounding).
extern "C" __global__ void round_bf16(u64 n, const float* x, float* y) {
    GRID_STRIDE(i, n) {
        unsigned int b = __float_as_uint(x[i]);
        if ((b & 0x7fffffffu) > 0x7f800000u) {
            y[i] = __uint_as_float((b | 0x00400000u) & 0xffff0000u);  // NaN: quiet, as `half` does
        } else {
            b += 0x7fffu + ((b >> 16) & 1u);
            y[i] = __uint_as_float(b & 0xffff0000u);
        }
    }
}
