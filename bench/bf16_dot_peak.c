// The peak of one core's AVX-512 f32 FMA (vfmadd231ps zmm) against AVX512-BF16's
// dot product (vdpbf16ps zmm): 20 independent accumulator chains each, so the loop is
// bound by throughput, not latency. A vfmadd231ps is 16 multiply-adds (32 flop), a
// vdpbf16ps 32 (64 flop). On a CPU with AVX512-BF16 but no AMX this says whether bf16
// arithmetic can beat f32 at compute-bound batch sizes at all (docs/BENCHMARKS.md,
// "Issue 15: the workers kept awake").
//
//   gcc -O2 -mavx512f -mavx512bf16 -o /tmp/bf16_dot_peak bench/bf16_dot_peak.c && /tmp/bf16_dot_peak
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) \
                  X(10) X(11) X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19)
#define DECL(i) __m512 a##i = _mm512_set1_ps(1e-9f);
#define FMA(i) a##i = _mm512_fmadd_ps(x, y, a##i);
#define DOT(i) a##i = _mm512_dpbf16_ps(a##i, bx, by);
// Keeps every accumulator live in a register through each iteration.
#define KEEP                                                                              \
    __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5),   \
                     "+v"(a6), "+v"(a7), "+v"(a8), "+v"(a9));                           \
    __asm__ volatile("" : "+v"(a10), "+v"(a11), "+v"(a12), "+v"(a13), "+v"(a14),        \
                     "+v"(a15), "+v"(a16), "+v"(a17), "+v"(a18), "+v"(a19));

int main(void) {
    const long n = 100000000;
    CHAINS(DECL)
    __m512 x = _mm512_set1_ps(1.0001f), y = _mm512_set1_ps(0.9999f);
    __m512bh bx = (__m512bh)_mm512_set1_epi16(0x3f80), by = bx;
    double t = now();
    for (long i = 0; i < n; i++) {
        CHAINS(FMA)
        KEEP
    }
    double fma = now() - t;
    t = now();
    for (long i = 0; i < n; i++) {
        CHAINS(DOT)
        KEEP
    }
    double dot = now() - t;
    double instr = n * 20.0;
    printf("vfmadd231ps zmm: %.2f G instr/s, %.1f GFLOP/s per core\n", instr / fma / 1e9, instr * 32 / fma / 1e9);
    printf("vdpbf16ps   zmm: %.2f G instr/s, %.1f GFLOP/s per core (%.2fx the f32 FMA rate)\n", instr / dot / 1e9,
           instr * 64 / dot / 1e9, (instr * 64 / dot) / (instr * 32 / fma));
    float s[16];
    _mm512_storeu_ps(s, _mm512_add_ps(a0, a19));
    return s[0] == 12345.0f;  // uses the result
}
