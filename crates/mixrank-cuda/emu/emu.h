// Host emulation of the CUDA C subset the kernels in ../src/kernels use, for running
// them on a CPU (see README.md here). Each CUDA thread of a block is a fiber
// (ucontext) on one OS thread; __syncthreads switches to the next fiber, so every
// thread reaches the barrier before any passes it.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline unsigned int __float_as_uint(float x) {
    unsigned int u;
    memcpy(&u, &x, sizeof u);
    return u;
}
static inline float __uint_as_float(unsigned int u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

struct dim3 {
    unsigned x, y, z;
};
extern dim3 threadIdx, blockIdx, gridDim, blockDim;
void __syncthreads();

#define __global__
#define __device__ static
#define __forceinline__ inline
#define __shared__ static

typedef void (*emu_caller)(void** params);
void emu_register(const char* name, emu_caller caller);
