// Shared by every kernel file (prepended to each source before NVRTC compiles it, so no
// include path is needed). The formulas mirror crates/mixrank-engine: activation.rs,
// mask.rs, loss.rs. Compiled with --fmad=false so `a * b + c` rounds twice, as in Rust.
typedef unsigned long long u64;
typedef unsigned int u32;

#define BLOCK 256
#define MASKED (-1e30f)
#define NO_POS 0xFFFFFFFFu

#define GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)
#define ROW_STRIDE(r, rows) for (u64 r = blockIdx.x; r < (rows); r += gridDim.x)

// activation.rs `sigmoid`: never exp of a large positive number.
__device__ __forceinline__ float sigmoid_f(float z) {
    if (z >= 0.0f) {
        return 1.0f / (1.0f + expf(-z));
    }
    float e = expf(z);
    return e / (1.0f + e);
}

#define GELU_C 0.7978845608028654f
#define GELU_A 0.044715f

// Activation ids: Identity 0, Relu 1, Sigmoid 2, Tanh 3, GeluTanh 4, Silu 5
// (`act_id` in src/backend.rs).
__device__ __forceinline__ float act_forward(int act, float z) {
    switch (act) {
    case 1: return z > 0.0f ? z : 0.0f;
    case 2: return sigmoid_f(z);
    case 3: return tanhf(z);
    case 4: {
        float inner = GELU_C * (z + GELU_A * z * z * z);
        return 0.5f * z * (1.0f + tanhf(inner));
    }
    case 5: return z * sigmoid_f(z);
    default: return z;
    }
}

__device__ __forceinline__ float act_derivative(int act, float z) {
    switch (act) {
    case 1: return z > 0.0f ? 1.0f : 0.0f;
    case 2: {
        float s = sigmoid_f(z);
        return s * (1.0f - s);
    }
    case 3: {
        float t = tanhf(z);
        return 1.0f - t * t;
    }
    case 4: {
        float t = tanhf(GELU_C * (z + GELU_A * z * z * z));
        float dinner = GELU_C * (1.0f + 3.0f * GELU_A * z * z);
        return 0.5f * (1.0f + t) + 0.5f * z * (1.0f - t * t) * dinner;
    }
    case 5: {
        float s = sigmoid_f(z);
        return s * (1.0f + z * (1.0f - s));
    }
    default: return 1.0f;
    }
}

// loss.rs `softplus`.
__device__ __forceinline__ float softplus_f(float z) {
    return fmaxf(z, 0.0f) + log1pf(expf(-fabsf(z)));
}

// Block-wide reductions over BLOCK (a power of two) threads: a fixed tree, so the result
// does not depend on scheduling. Every thread of the block must call them; all get the
// total.
__device__ float block_sum_f(float v, float* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

__device__ double block_sum_d(double v, double* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

// Maximum as Rust's `if x > max { max = x }` fold: NaNs are skipped unless first.
__device__ float block_max_f(float v, float* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float o = sh[threadIdx.x + s];
            if (o > sh[threadIdx.x]) sh[threadIdx.x] = o;
        }
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

// mask.rs: SplitMix64's finaliser and the counter-based uniform stream.
__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ double uniform01(u64 base, u64 i) {
    return (double)(mix64(base + i) >> 11) * (1.0 / 9007199254740992.0);
}
