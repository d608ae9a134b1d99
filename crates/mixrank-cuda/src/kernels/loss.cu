// Losses (loss.rs) and the f64 sum. Each writes its sums to `sums` (f64 [2]: the
// weighted loss sum and the weight sum) for the host to read back (the trait's host
// sync point); the gradient kernels read the weight sum in place. The pointwise losses
// reduce with a block tree in f64; the ranking losses run their loops serially in one
// thread (the reference's order exactly; correct, not fast).

// kind: 0 BCE with logits, 1 MSE, 2 Huber (threshold delta).
__device__ __forceinline__ void loss_term(int kind, float p, float t, float delta, float* l, float* d) {
    if (kind == 0) {
        *l = fmaxf(p, 0.0f) - p * t + log1pf(expf(-fabsf(p)));
        *d = sigmoid_f(p) - t;
    } else if (kind == 1) {
        float e = p - t;
        *l = e * e;
        *d = 2.0f * e;
    } else {
        float e = p - t;
        if (fabsf(e) <= delta) {
            *l = 0.5f * e * e;
            *d = e;
        } else {
            *l = delta * (fabsf(e) - 0.5f * delta);
            *d = e > 0.0f ? delta : 0.0f - delta;
        }
    }
}

// One block: sums[0] = sum w*l, sums[1] = sum w over the counted examples.
extern "C" __global__ void pointwise_loss_sums(int kind, u64 n, float delta, const float* pred, const float* target,
                                               const float* weight, int has_weight, const float* mask, int has_mask,
                                               double* sums) {
    __shared__ double sh[BLOCK];
    double ls = 0.0, ws = 0.0;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) {
        if (has_mask && mask[i] == 0.0f) continue;
        float w = has_weight ? weight[i] : 1.0f;
        float l, d;
        loss_term(kind, pred[i], target[i], delta, &l, &d);
        ls += (double)w * (double)l;
        ws += (double)w;
    }
    double lt = block_sum_d(ls, sh);
    double wt = block_sum_d(ws, sh);
    if (threadIdx.x == 0) {
        sums[0] = lt;
        sums[1] = wt;
    }
}

extern "C" __global__ void pointwise_loss_grad(int kind, u64 n, float delta, const float* pred, const float* target,
                                               const float* weight, int has_weight, const float* mask, int has_mask,
                                               float scale, int accumulate, const double* sums, float* grad) {
    double wsum = sums[1];
    float g_scale = wsum == 0.0 ? 0.0f : (float)((double)scale / wsum);
    GRID_STRIDE(i, n) {
        if (wsum == 0.0) {
            if (!accumulate) grad[i] = 0.0f;
            continue;
        }
        float gi = 0.0f;
        if (!(has_mask && mask[i] == 0.0f)) {
            float w = has_weight ? weight[i] : 1.0f;
            float l, d;
            loss_term(kind, pred[i], target[i], delta, &l, &d);
            gi = g_scale * w * d;
        }
        grad[i] = accumulate ? grad[i] + gi : gi;
    }
}

// sums[0] = sum x[..n] in f64 (one block).
extern "C" __global__ void sum_f64(u64 n, const float* x, double* sums) {
    __shared__ double sh[BLOCK];
    double s = 0.0;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) s += (double)x[i];
    double t = block_sum_d(s, sh);
    if (threadIdx.x == 0) sums[0] = t;
}

// sums[1] = sum w[..n] (one block).
extern "C" __global__ void xent_weight_sum(u64 n, const float* w, double* sums) {
    __shared__ double sh[BLOCK];
    double s = 0.0;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) s += (double)w[i];
    double t = block_sum_d(s, sh);
    if (threadIdx.x == 0) sums[1] = t;
}

// In-batch softmax cross-entropy with the diagonal as target, one block per row i:
// part[i] = w_i * (lse_i - s_ii) and the row's gradient.
extern "C" __global__ void softmax_xent_diag_rows(u64 n, const float* s, const float* w, float scale, int accumulate,
                                                  const double* sums, double* part, float* grad) {
    __shared__ float sh[BLOCK];
    double wsum = sums[1];
    ROW_STRIDE(i, n) {
        const float* row = s + i * n;
        float* g = grad + i * n;
        if (wsum == 0.0 || w[i] == 0.0f) {
            if (!accumulate)
                for (u64 j = threadIdx.x; j < n; j += blockDim.x) g[j] = 0.0f;
            if (threadIdx.x == 0) part[i] = 0.0;
            continue;
        }
        float m = row[0];
        for (u64 j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, row[j]);
        m = block_max_f(m, sh);
        float acc = 0.0f;
        for (u64 j = threadIdx.x; j < n; j += blockDim.x) acc += expf(row[j] - m);
        float total = block_sum_f(acc, sh);
        if (threadIdx.x == 0) {
            double lse = (double)m + log((double)total);
            part[i] = (double)w[i] * (lse - (double)row[i]);
        }
        float g_scale = (float)((double)scale * (double)w[i] / wsum);
        for (u64 j = threadIdx.x; j < n; j += blockDim.x) {
            float p = expf(row[j] - m) / total;
            float d = g_scale * (i == j ? p - 1.0f : p);
            g[j] = accumulate ? g[j] + d : d;
        }
    }
}

// sums[0] = sum part[..n] (one block).
extern "C" __global__ void sum_parts(u64 n, const double* part, double* sums) {
    __shared__ double sh[BLOCK];
    double s = 0.0;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) s += part[i];
    double t = block_sum_d(s, sh);
    if (threadIdx.x == 0) sums[0] = t;
}

// Pairwise RankNet (loss.rs `pairwise_ranknet`), serially in one thread. Pairs naming a
// row past `n` are skipped (the host backends reject them).
extern "C" __global__ void pairwise_ranknet(u64 n, u64 npairs, float tt, const u32* pairs, const float* s,
                                            const float* t, const float* weight, int has_weight, const float* mask,
                                            int has_mask, float scale, int accumulate, double* sums, float* grad) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
#define COUNTS(k) (!(has_mask && mask[k] == 0.0f))
#define WEIGHT(k) (has_weight ? weight[k] : 1.0f)
    double wsum = 0.0;
    for (u64 p = 0; p < npairs; p++) {
        u64 i = pairs[2 * p], j = pairs[2 * p + 1];
        if (i >= n || j >= n || !COUNTS(i) || !COUNTS(j)) continue;
        wsum += (double)(0.5f * (WEIGHT(i) + WEIGHT(j)));
    }
    if (!accumulate)
        for (u64 i = 0; i < n; i++) grad[i] = 0.0f;
    double loss = 0.0;
    if (wsum != 0.0) {
        float g_scale = (float)((double)scale / wsum);
        for (u64 p = 0; p < npairs; p++) {
            u64 i = pairs[2 * p], j = pairs[2 * p + 1];
            if (i >= n || j >= n || !COUNTS(i) || !COUNTS(j)) continue;
            float w = 0.5f * (WEIGHT(i) + WEIGHT(j));
            float d = (s[i] - s[j]) / tt;
            float pr = sigmoid_f((t[i] - t[j]) / tt);
            loss += (double)(w * tt * tt * (softplus_f(d) - pr * d));
            float g = g_scale * w * tt * (sigmoid_f(d) - pr);
            grad[i] += g;
            grad[j] -= g;
        }
    }
    sums[0] = loss;
    sums[1] = wsum;
}

// Listwise softmax cross-entropy (loss.rs `listwise_softmax`), serially in one thread.
// Members past `n` are skipped.
extern "C" __global__ void listwise_softmax(u64 n, u64 groups, float tt, const u32* offsets, const u32* members,
                                            const float* s, const float* t, const float* weight, int has_weight,
                                            const float* mask, int has_mask, float scale, int accumulate,
                                            double* sums, float* grad) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
#define MEMBER_OK(k) ((k) < n && COUNTS(k))
    double temp = (double)tt;
    double wsum = 0.0;
    for (u64 g = 0; g < groups; g++) {
        u64 len = 0;
        double ws = 0.0;
        for (u32 p = offsets[g]; p < offsets[g + 1]; p++) {
            u64 i = members[p];
            if (!MEMBER_OK(i)) continue;
            len++;
            ws += (double)WEIGHT(i);
        }
        if (len > 1) wsum += ws / (double)len;
    }
    if (!accumulate)
        for (u64 i = 0; i < n; i++) grad[i] = 0.0f;
    double loss = 0.0;
    if (wsum != 0.0) {
        for (u64 g = 0; g < groups; g++) {
            u64 len = 0;
            double ws = 0.0;
            float ms = 0.0f, mt = 0.0f;
            for (u32 p = offsets[g]; p < offsets[g + 1]; p++) {
                u64 i = members[p];
                if (!MEMBER_OK(i)) continue;
                float xs = s[i] / tt, xt = t[i] / tt;
                if (len == 0) {
                    ms = xs;
                    mt = xt;
                } else {
                    ms = fmaxf(ms, xs);
                    mt = fmaxf(mt, xt);
                }
                len++;
                ws += (double)WEIGHT(i);
            }
            if (len < 2) continue;
            double wg = ws / (double)len;
            float zs = 0.0f, zt = 0.0f;
            for (u32 p = offsets[g]; p < offsets[g + 1]; p++) {
                u64 i = members[p];
                if (!MEMBER_OK(i)) continue;
                zs += expf(s[i] / tt - ms);
                zt += expf(t[i] / tt - mt);
            }
            float lz_s = ms + logf(zs), lz_t = mt + logf(zt);
            float g_scale = (float)((double)scale * wg / wsum) * tt;
            double ce = 0.0;
            for (u32 p = offsets[g]; p < offsets[g + 1]; p++) {
                u64 i = members[p];
                if (!MEMBER_OK(i)) continue;
                float lp = s[i] / tt - lz_s;
                float q = expf(t[i] / tt - lz_t);
                ce -= (double)(q * lp);
                grad[i] += g_scale * (expf(lp) - q);
            }
            loss += wg * temp * temp * ce;
        }
    }
    sums[0] = loss;
    sums[1] = wsum;
}
