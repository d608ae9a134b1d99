// A fake libcuda.so.1: the driver API subset cudarc's safe layer calls, over host
// memory (device pointers are host pointers), with kernels run by emu.h's fibers. One
// device, one context; streams and events are synchronous no-ops; module loading
// ignores the PTX and serves the kernels compiled into this library by name.
#include "emu.h"

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

dim3 threadIdx, blockIdx, gridDim, blockDim;

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
static const CUresult OK = 0, INVALID_VALUE = 1, INVALID_DEVICE = 101, NOT_FOUND = 500;

static std::map<std::string, emu_caller>& registry() {
    static std::map<std::string, emu_caller> r;
    return r;
}
void emu_register(const char* name, emu_caller caller) { registry()[name] = caller; }

// ---- fibers ------------------------------------------------------------------------------
static const size_t STACK = 256 * 1024;
static ucontext_t sched_ctx;
static std::vector<ucontext_t> fibers;
static std::vector<char*> stacks;
static std::vector<int> done;
static unsigned current;
static emu_caller cur_caller;
static void** cur_params;

void __syncthreads() { swapcontext(&fibers[current], &sched_ctx); }

static void trampoline() {
    cur_caller(cur_params);
    done[current] = 1;
    // returning switches to uc_link (the scheduler)
}

static void run_block(unsigned threads) {
    if (fibers.size() < threads) {
        fibers.resize(threads);
        while (stacks.size() < threads) stacks.push_back((char*)malloc(STACK));
    }
    done.assign(threads, 0);
    for (unsigned t = 0; t < threads; t++) {
        getcontext(&fibers[t]);
        fibers[t].uc_stack.ss_sp = stacks[t];
        fibers[t].uc_stack.ss_size = STACK;
        fibers[t].uc_link = &sched_ctx;
        makecontext(&fibers[t], trampoline, 0);
    }
    for (;;) {
        bool any = false;
        for (unsigned t = 0; t < threads; t++) {
            if (done[t]) continue;
            any = true;
            current = t;
            threadIdx = {t, 0, 0};
            swapcontext(&sched_ctx, &fibers[t]);
        }
        if (!any) break;
    }
}

// ---- driver API --------------------------------------------------------------------------
extern "C" {
static int dummy_ctx, dummy_stream, dummy_event, dummy_module;

CUresult cuInit(unsigned) { return OK; }
// libnvrtc dlopens libcuda.so.1 and asks for the driver's private export tables: this
// driver has none (as if it were too old), which NVRTC handles.
CUresult cuGetExportTable(const void** table, const void*) {
    *table = nullptr;
    return 801;  // CUDA_ERROR_NOT_SUPPORTED
}
CUresult cuDriverGetVersion(int* v) { *v = 12080; return OK; }
CUresult cuDeviceGetCount(int* n) { *n = 1; return OK; }
CUresult cuDeviceGet(int* d, int ordinal) {
    if (ordinal != 0) return INVALID_DEVICE;
    *d = 0;
    return OK;
}
// Memory pools (attribute 115): supported when EMU_MEMPOOLS is set, as on an H100
// (cudarc then allocates with cuMemAllocAsync), else not (cuMemAlloc_v2).
CUresult cuDeviceGetAttribute(int* v, int attrib, int) {
    const char* pools = getenv("EMU_MEMPOOLS");
    *v = (attrib == 115 && pools && *pools == '1') ? 1 : 0;
    return OK;
}
CUresult cuDeviceGetName(char* name, int len, int) {
    snprintf(name, len, "mixrank emulated device (host fibers)");
    return OK;
}
CUresult cuDeviceTotalMem_v2(size_t* b, int) { *b = (size_t)1 << 34; return OK; }
CUresult cuDevicePrimaryCtxRetain(void** ctx, int) { *ctx = &dummy_ctx; return OK; }
CUresult cuDevicePrimaryCtxRelease_v2(int) { return OK; }
CUresult cuCtxSetCurrent(void*) { return OK; }
CUresult cuCtxGetCurrent(void** ctx) { *ctx = &dummy_ctx; return OK; }
CUresult cuCtxSynchronize() { return OK; }
CUresult cuStreamCreate(void** s, unsigned) { *s = &dummy_stream; return OK; }
CUresult cuStreamCreateWithPriority(void** s, unsigned, int) { *s = &dummy_stream; return OK; }
CUresult cuStreamDestroy_v2(void*) { return OK; }
CUresult cuStreamSynchronize(void*) { return OK; }
CUresult cuStreamQuery(void*) { return OK; }
CUresult cuStreamWaitEvent(void*, void*, unsigned) { return OK; }
CUresult cuEventCreate(void** e, unsigned) { *e = &dummy_event; return OK; }
CUresult cuEventDestroy_v2(void*) { return OK; }
CUresult cuEventRecord(void*, void*) { return OK; }
CUresult cuEventRecordWithFlags(void*, void*, unsigned) { return OK; }
CUresult cuEventSynchronize(void*) { return OK; }
CUresult cuEventQuery(void*) { return OK; }
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    if (bytes == 0) return INVALID_VALUE;  // as the real driver
    void* m = malloc(bytes);
    memset(m, 0xFF, bytes);  // NaN / u32::MAX: reading what was never written shows up
    *p = (CUdeviceptr)m;
    return OK;
}
CUresult cuMemFree_v2(CUdeviceptr p) { free((void*)p); return OK; }
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void*) {
    static bool said = false;
    if (!said && getenv("EMU_TRACE")) fprintf(stderr, "emu: cuMemAllocAsync in use\n");
    said = true;
    return cuMemAlloc_v2(p, bytes);
}
CUresult cuMemFreeAsync(CUdeviceptr p, void*) { return cuMemFree_v2(p); }
CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, void*) { memset((void*)p, v, n); return OK; }
CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { memset((void*)p, v, n); return OK; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, void*) { memcpy((void*)d, h, n); return OK; }
CUresult cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, size_t n, void*) { memcpy(h, (void*)d, n); return OK; }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void*) { memmove((void*)d, (void*)s, n); return OK; }
CUresult cuMemGetInfo_v2(size_t* f, size_t* t) { *f = *t = (size_t)1 << 34; return OK; }
CUresult cuModuleLoadData(void** m, const void*) { *m = &dummy_module; return OK; }
CUresult cuModuleUnload(void*) { return OK; }
CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    auto it = registry().find(name);
    if (it == registry().end()) return NOT_FOUND;
    *f = (void*)it->second;
    return OK;
}
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void* stream, void** params, void** extra) {
    (void)shared, (void)stream, (void)extra;
    if (gy != 1 || gz != 1 || by != 1 || bz != 1 || gx == 0 || bx == 0) return INVALID_VALUE;
    gridDim = {gx, 1, 1};
    blockDim = {bx, 1, 1};
    cur_caller = (emu_caller)f;
    cur_params = params;
    for (unsigned b = 0; b < gx; b++) {
        blockIdx = {b, 0, 0};
        run_block(bx);
    }
    return OK;
}
CUresult cuGetErrorString(CUresult e, const char** s) {
    static char buf[64];
    snprintf(buf, sizeof buf, "emulated CUDA error %d", e);
    *s = buf;
    return OK;
}
CUresult cuGetErrorName(CUresult e, const char** s) { return cuGetErrorString(e, s); }
}
