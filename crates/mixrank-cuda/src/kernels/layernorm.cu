// Layer norm: forward and dx one block per row; dgamma/dbeta one thread per column,
// rows in order (the reference's accumulation order, so the parameter gradients match it
// bit for bit given the same mean and rstd).

extern "C" __global__ void layer_norm_forward(u64 rows, u64 cols, float eps, const float* x, const float* gamma,
                                              const float* beta, float* y, float* mean, float* rstd) {
    __shared__ float sh[BLOCK];
    float inv_c = 1.0f / (float)cols;
    ROW_STRIDE(r, rows) {
        u64 o = r * cols;
        float acc = 0.0f;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) acc += x[o + c];
        float m = block_sum_f(acc, sh) * inv_c;
        acc = 0.0f;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) acc += (x[o + c] - m) * (x[o + c] - m);
        float var = block_sum_f(acc, sh) * inv_c;
        float s = 1.0f / sqrtf(var + eps);
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) y[o + c] = (x[o + c] - m) * s * gamma[c] + beta[c];
        if (threadIdx.x == 0) {
            mean[r] = m;
            rstd[r] = s;
        }
    }
}

extern "C" __global__ void layer_norm_backward_dx(u64 rows, u64 cols, const float* x, const float* gamma,
                                                  const float* mean, const float* rstd, const float* dy, float* dx) {
    __shared__ float sh[BLOCK];
    float inv_c = 1.0f / (float)cols;
    ROW_STRIDE(r, rows) {
        u64 o = r * cols;
        float mr = mean[r], sr = rstd[r];
        float ag = 0.0f, agx = 0.0f;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) {
            float g = dy[o + c] * gamma[c];
            ag += g;
            agx += g * ((x[o + c] - mr) * sr);
        }
        float g_mean = block_sum_f(ag, sh) * inv_c;
        float gx_mean = block_sum_f(agx, sh) * inv_c;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) {
            float g = dy[o + c] * gamma[c];
            float xhat = (x[o + c] - mr) * sr;
            dx[o + c] = sr * (g - g_mean - xhat * gx_mean);
        }
    }
}

extern "C" __global__ void layer_norm_backward_params(u64 rows, u64 cols, const float* x, const float* mean,
                                                      const float* rstd, const float* dy, float* dgamma,
                                                      float* dbeta) {
    GRID_STRIDE(c, cols) {
        float dg = dgamma[c], db = dbeta[c];
        for (u64 r = 0; r < rows; r++) {
            u64 i = r * cols + c;
            dg += dy[i] * ((x[i] - mean[r]) * rstd[r]);
            db += dy[i];
        }
        dgamma[c] = dg;
        dbeta[c] = db;
    }
}
