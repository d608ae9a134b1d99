// Row softmax and row L2 normalisation (normalize.rs), forward and backward: one block
// per row, block-tree sums.

extern "C" __global__ void softmax_rows(u64 rows, u64 cols, const float* x, float* y) {
    __shared__ float sh[BLOCK];
    ROW_STRIDE(r, rows) {
        const float* xr = x + r * cols;
        float* yr = y + r * cols;
        float m = xr[0];
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x)
            if (xr[c] > m) m = xr[c];
        m = block_max_f(m, sh);
        float acc = 0.0f;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) {
            float e = expf(xr[c] - m);
            yr[c] = e;
            acc += e;
        }
        float total = block_sum_f(acc, sh);
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = yr[c] / total;
    }
}

extern "C" __global__ void softmax_rows_backward(u64 rows, u64 cols, const float* y, const float* dy, float* dx) {
    __shared__ float sh[BLOCK];
    ROW_STRIDE(r, rows) {
        u64 o = r * cols;
        float acc = 0.0f;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) acc += dy[o + c] * y[o + c];
        float dot = block_sum_f(acc, sh);
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) dx[o + c] = y[o + c] * (dy[o + c] - dot);
    }
}

extern "C" __global__ void normalize_rows(u64 rows, u64 cols, float eps, const float* x, float* y, float* rnorm) {
    __shared__ float sh[BLOCK];
    ROW_STRIDE(r, rows) {
        u64 o = r * cols;
        float acc = 0.0f;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) acc += x[o + c] * x[o + c];
        float ss = block_sum_f(acc, sh);
        float s = 1.0f / sqrtf(ss + eps);
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) y[o + c] = x[o + c] * s;
        if (threadIdx.x == 0) rnorm[r] = s;
    }
}

extern "C" __global__ void normalize_rows_backward(u64 rows, u64 cols, const float* y, const float* rnorm,
                                                   const float* dy, float* dx) {
    __shared__ float sh[BLOCK];
    ROW_STRIDE(r, rows) {
        u64 o = r * cols;
        float acc = 0.0f;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) acc += dy[o + c] * y[o + c];
        float dot = block_sum_f(acc, sh);
        float s = rnorm[r];
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) dx[o + c] = s * (dy[o + c] - y[o + c] * dot);
    }
}
