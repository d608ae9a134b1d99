// A plain tiled SGEMM, the fallback when libcublas is absent (or asked for by name):
// C = alpha * op(A) * op(B) (+ beta * C), row-major with leading dimensions, as
// GemmSpec says (the views start at the operands' offsets). One 16 x 16 tile of C per
// block (blockDim = 256), k in order, so each element is the reference's sequential dot
// product: bit for bit RefOps' gemm. Not tuned: cuBLAS is the fast path.

#define TILE 16

extern "C" __global__ void gemm_tiled(u64 m, u64 n, u64 k, int ta, int tb, float alpha, float beta, const float* a,
                                      u64 lda, const float* b, u64 ldb, float* c, u64 ldc) {
    __shared__ float sa[TILE][TILE + 1];
    __shared__ float sb[TILE][TILE + 1];
    u64 tiles_n = (n + TILE - 1) / TILE;
    u64 tiles = ((m + TILE - 1) / TILE) * tiles_n;
    unsigned tx = threadIdx.x % TILE, ty = threadIdx.x / TILE;
    for (u64 t = blockIdx.x; t < tiles; t += gridDim.x) {
        u64 row = (t / tiles_n) * TILE + ty, col = (t % tiles_n) * TILE + tx;
        float acc = 0.0f;
        for (u64 p0 = 0; p0 < k; p0 += TILE) {
            u64 pa = p0 + tx, pb = p0 + ty;
            sa[ty][tx] = (row < m && pa < k) ? (ta ? a[pa * lda + row] : a[row * lda + pa]) : 0.0f;
            sb[ty][tx] = (pb < k && col < n) ? (tb ? b[col * ldb + pb] : b[pb * ldb + col]) : 0.0f;
            __syncthreads();
            u64 q_end = k - p0 < TILE ? k - p0 : TILE;
            for (u64 q = 0; q < q_end; q++) acc += sa[ty][q] * sb[q][tx];
            __syncthreads();
        }
        if (row < m && col < n) {
            float* cp = &c[row * ldc + col];
            *cp = beta == 0.0f ? alpha * acc : alpha * acc + beta * *cp;
        }
    }
}
