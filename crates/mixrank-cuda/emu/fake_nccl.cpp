// A fake libnccl.so: the NCCL calls mixrank-dist's `Nccl` collective makes, for ranks
// that are threads of one process (the in-process bootstrap group), over host memory
// (the fake driver's device pointers are host pointers). Each collective is a rendezvous
// of the communicator's ranks: every rank copies its input into the group's slot,
// waits for all, computes its own output from the slots (sums in rank order from rank 0's
// value, as the in-process group sums), and waits
// again before the slots are reused. Point-to-point calls between ncclGroupStart and
// ncclGroupEnd are queued and run at ncclGroupEnd: sends are posted (copied) first, then
// each receive waits for its message, so a group never deadlocks. Streams are ignored
// (the fake driver is synchronous). Ranks whose counts differ fail (every one of them);
// an aborted or destroyed communicator makes its peers' waits fail rather than hang.
// What this checks: the Rust side's use of the API (counts, types, roots, grouping,
// staging). What it cannot: real NCCL (processes,
// GPUs, rings, its own summation order).
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <vector>

typedef int ncclResult_t;
static const ncclResult_t SUCCESS = 0, SYSTEM_ERROR = 2, INVALID_ARGUMENT = 4, INVALID_USAGE = 5,
                          REMOTE_ERROR = 6;
struct ncclUniqueId { char internal[128]; };

static size_t type_size(int t) {
    switch (t) {
        case 0: case 1: return 1;           // int8, uint8
        case 2: case 3: return 4;           // int32, uint32
        case 4: case 5: return 8;           // int64, uint64
        case 6: case 9: return 2;           // float16, bfloat16
        case 7: return 4;                   // float32
        case 8: return 8;                   // float64
    }
    return 0;
}

struct Group {
    int n;
    int joined = 0;
    std::mutex m;
    std::condition_variable cv;
    int arrived = 0;
    unsigned long generation = 0;
    // A rank's communicator was aborted or destroyed: whoever waits for it fails instead
    // of waiting forever (a failing test rank makes the others fail, not hang).
    bool aborted = false;
    std::vector<std::vector<char>> slot;
    // Point-to-point messages by (from, to), in posting order.
    std::map<std::pair<int, int>, std::deque<std::vector<char>>> mail;
    explicit Group(int n) : n(n), slot(n) {}
    // False when the group was aborted before every rank arrived.
    bool barrier() {
        std::unique_lock<std::mutex> lk(m);
        unsigned long g = generation;
        if (++arrived == n) {
            arrived = 0;
            generation++;
            cv.notify_all();
            return true;
        }
        cv.wait(lk, [&] { return generation != g || aborted; });
        return generation != g;
    }
    void abort() {
        std::lock_guard<std::mutex> lk(m);
        aborted = true;
        cv.notify_all();
    }
};

struct Comm {
    Group* g;
    int rank;
};

struct Pending {
    bool send;
    void* buf;
    size_t bytes;
    int peer;
    Comm* comm;
};

static std::mutex registry_m;
static std::map<std::string, Group*> registry;
static thread_local int group_depth = 0;
static thread_local std::vector<Pending> pending;

// Every rank deposits `bytes` of `in`; when every rank deposited as many bytes as the
// root (`root`'s, or every rank's when `root` < 0), `compute` writes this rank's output
// from the slots; otherwise every rank fails (as NCCL's mismatched counts are a bug).
template <class F>
static ncclResult_t rendezvous(Comm* c, const void* in, size_t bytes, int root, F compute) {
    if (group_depth > 0) return INVALID_USAGE;  // collectives inside a group: not emulated
    Group* g = c->g;
    g->slot[c->rank].assign((const char*)in, (const char*)in + bytes);
    if (!g->barrier()) return REMOTE_ERROR;
    bool same = true;
    for (int r = 0; r < g->n; r++) same = same && g->slot[r].size() == (root < 0 ? bytes : g->slot[root].size());
    if (same) compute(g);
    else fprintf(stderr, "fake nccl: rank %d: the ranks' counts differ\n", c->rank);
    if (!g->barrier()) return REMOTE_ERROR;
    return same ? SUCCESS : INVALID_USAGE;
}

extern "C" {
ncclResult_t ncclGetVersion(int* v) { *v = 22200; return SUCCESS; }
ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
    static std::mutex m;
    static unsigned long counter = 0;
    std::lock_guard<std::mutex> lk(m);
    memset(id->internal, 0, sizeof id->internal);
    snprintf(id->internal, sizeof id->internal, "fake-nccl-%lu", ++counter);
    return SUCCESS;
}
ncclResult_t ncclCommInitRank(Comm** comm, int nranks, ncclUniqueId id, int rank) {
    if (nranks < 1 || rank < 0 || rank >= nranks) return INVALID_ARGUMENT;
    Group* g;
    {
        std::lock_guard<std::mutex> lk(registry_m);
        std::string key(id.internal, sizeof id.internal);
        auto it = registry.find(key);
        if (it == registry.end()) it = registry.emplace(key, new Group(nranks)).first;
        g = it->second;
        if (g->n != nranks) return INVALID_USAGE;
        g->joined++;
    }
    *comm = new Comm{g, rank};
    // As NCCL: initialisation returns once every rank has joined.
    return g->barrier() ? SUCCESS : REMOTE_ERROR;
}
ncclResult_t ncclCommAbort(Comm* c) {
    c->g->abort();
    delete c;
    return SUCCESS;
}
ncclResult_t ncclCommDestroy(Comm* c) { return ncclCommAbort(c); }
ncclResult_t ncclCommFinalize(Comm*) { return SUCCESS; }
ncclResult_t ncclCommCount(const Comm* c, int* n) { *n = c->g->n; return SUCCESS; }
ncclResult_t ncclCommUserRank(const Comm* c, int* r) { *r = c->rank; return SUCCESS; }
const char* ncclGetErrorString(ncclResult_t r) {
    static char buf[64];
    snprintf(buf, sizeof buf, "emulated NCCL error %d", r);
    return buf;
}
const char* ncclGetLastError(Comm*) { return ""; }

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, int type, int op, Comm* c, void*) {
    if (op != 0 || (type != 7 && type != 8 && type != 5)) return INVALID_ARGUMENT;  // sums of f32, f64, u64
    size_t bytes = count * type_size(type);
    return rendezvous(c, send, bytes, -1, [&](Group* g) {
        for (size_t i = 0; i < count; i++) {
            if (type == 7) {
                float s = ((const float*)g->slot[0].data())[i];
                for (int r = 1; r < g->n; r++) s += ((const float*)g->slot[r].data())[i];
                ((float*)recv)[i] = s;
            } else if (type == 8) {
                double s = ((const double*)g->slot[0].data())[i];
                for (int r = 1; r < g->n; r++) s += ((const double*)g->slot[r].data())[i];
                ((double*)recv)[i] = s;
            } else {
                uint64_t s = 0;
                for (int r = 0; r < g->n; r++) s += ((const uint64_t*)g->slot[r].data())[i];
                ((uint64_t*)recv)[i] = s;
            }
        }
    });
}
ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, int type, Comm* c, void*) {
    size_t bytes = count * type_size(type);
    if (bytes == 0 && count) return INVALID_ARGUMENT;
    return rendezvous(c, send, bytes, -1, [&](Group* g) {
        for (int r = 0; r < g->n; r++) memcpy((char*)recv + r * bytes, g->slot[r].data(), bytes);
    });
}
ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, int type, int root, Comm* c, void*) {
    size_t bytes = count * type_size(type);
    if (root < 0 || root >= c->g->n) return INVALID_ARGUMENT;
    return rendezvous(c, c->rank == root ? send : recv, bytes, root,
                      [&](Group* g) { memcpy(recv, g->slot[root].data(), bytes); });
}
ncclResult_t ncclGroupStart() { group_depth++; return SUCCESS; }
ncclResult_t ncclSend(const void* buf, size_t count, int type, int peer, Comm* c, void*) {
    if (group_depth == 0) return INVALID_USAGE;  // outside a group: not emulated
    pending.push_back({true, (void*)buf, count * type_size(type), peer, c});
    return SUCCESS;
}
ncclResult_t ncclRecv(void* buf, size_t count, int type, int peer, Comm* c, void*) {
    if (group_depth == 0) return INVALID_USAGE;
    pending.push_back({false, buf, count * type_size(type), peer, c});
    return SUCCESS;
}
ncclResult_t ncclGroupEnd() {
    if (group_depth == 0) return INVALID_USAGE;
    if (--group_depth > 0) return SUCCESS;
    std::vector<Pending> ops;
    ops.swap(pending);
    for (auto& p : ops) {
        if (!p.send) continue;
        Group* g = p.comm->g;
        std::lock_guard<std::mutex> lk(g->m);
        g->mail[{p.comm->rank, p.peer}].emplace_back((const char*)p.buf, (const char*)p.buf + p.bytes);
        g->cv.notify_all();
    }
    for (auto& p : ops) {
        if (p.send) continue;
        Group* g = p.comm->g;
        std::unique_lock<std::mutex> lk(g->m);
        auto& box = g->mail[{p.peer, p.comm->rank}];
        g->cv.wait(lk, [&] { return !box.empty() || g->aborted; });
        if (box.empty()) return REMOTE_ERROR;
        std::vector<char> msg = std::move(box.front());
        box.pop_front();
        if (msg.size() != p.bytes) {
            fprintf(stderr, "fake nccl: rank %d expected %zu bytes from %d, got %zu\n", p.comm->rank, p.bytes, p.peer,
                    msg.size());
            return INVALID_USAGE;
        }
        memcpy(p.buf, msg.data(), p.bytes);
    }
    return SUCCESS;
}
}
