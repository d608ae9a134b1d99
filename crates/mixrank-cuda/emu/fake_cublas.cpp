// A fake libcublas.so.12: the handle calls and cublasSgemm_v2 (column-major, as cuBLAS),
// computed naively in f32 on the host.
#include <cstddef>
extern "C" {
typedef int cublasStatus_t;
static int dummy_handle;
cublasStatus_t cublasCreate_v2(void** h) { *h = &dummy_handle; return 0; }
cublasStatus_t cublasDestroy_v2(void*) { return 0; }
cublasStatus_t cublasSetStream_v2(void*, void*) { return 0; }
cublasStatus_t cublasSetMathMode(void*, int) { return 0; }
cublasStatus_t cublasSetPointerMode_v2(void*, int) { return 0; }
// op: 0 N, 1 T.
cublasStatus_t cublasSgemm_v2(void*, int ta, int tb, int m, int n, int k, const float* alpha, const float* A, int lda,
                              const float* B, int ldb, const float* beta, float* C, int ldc) {
    if (m < 0 || n < 0 || k < 0) return 7;
    if (lda < (ta == 0 ? (m > 1 ? m : 1) : (k > 1 ? k : 1))) return 7;  // CUBLAS_STATUS_INVALID_VALUE
    if (ldb < (tb == 0 ? (k > 1 ? k : 1) : (n > 1 ? n : 1))) return 7;
    if (ldc < (m > 1 ? m : 1)) return 7;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float acc = 0.0f;
            for (int p = 0; p < k; p++) {
                float a = ta == 0 ? A[i + (size_t)p * lda] : A[p + (size_t)i * lda];
                float b = tb == 0 ? B[p + (size_t)j * ldb] : B[j + (size_t)p * ldb];
                acc += a * b;
            }
            float* c = &C[i + (size_t)j * ldc];
            *c = *beta == 0.0f ? *alpha * acc : *alpha * acc + *beta * *c;
        }
    return 0;
}
}
