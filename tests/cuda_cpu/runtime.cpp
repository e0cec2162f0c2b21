// The CPU harness's runtime: CUDA's execution model on one host thread (test-only, see __init__.py).
//
// Every CUDA thread is a fiber with a stack of its own; a scheduler switches between them at the
// points where CUDA threads can observe each other: __syncthreads (a barrier over the block's
// blockDim threads), atomics, __threadfence and __ldcg/__stcg.  Blocks start in the order the caller
// gives; up to `in_flight` blocks are resident at once.  With a seed the scheduler picks the next
// fiber at random among the runnable ones of every resident block and a fiber yields at an atomic or
// a fence with probability 1/yield_every, so blocks interleave out of order, deterministically per
// seed.  Without one it runs each block's threads in turn (the in-order fast path), yielding at every
// atomic and fence.  A wait that never ends (a spin on a flag nobody sets) ends the launch with an
// error after max_switches scheduling steps instead of hanging.
//
// This file is compiled without instrumentation.  The kernels' translation unit is compiled with
// GCC's -fsanitize=kernel-address in call mode, so every load and store it makes calls one of the
// __asan_* hooks below: they check that the address lies in memory the launch may touch (a kernel
// argument's allocation, a fiber stack, the block's shared memory, the runtime's own variables) and,
// when recording, log each global access for the traffic model.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>
#include <sys/mman.h>
#include <ucontext.h>

struct parscan_dim3 { unsigned x, y, z; };

extern "C" {
parscan_dim3 parscan_threadIdx, parscan_blockIdx, parscan_blockDim, parscan_gridDim;
}

namespace {

constexpr size_t STACK = 64 << 10;        // per fiber
constexpr size_t SHARED = 48 << 10;       // static shared memory per block, CUDA's limit
constexpr int MAX_SHARED_IDS = 64;

enum State { RUNNABLE, AT_BARRIER, DONE };

struct Slot;

struct Fiber {
    ucontext_t ctx;
    char* stack;
    Slot* slot;
    parscan_dim3 tid;
    unsigned linear;   // thread index in the block
    State state;
    uint64_t seq;      // accesses recorded so far (program order within the thread)
};

struct Slot {
    bool used = false;
    parscan_dim3 bid;
    unsigned block_linear = 0;
    char* arena = nullptr;
    size_t arena_used = 0;
    long shared_off[MAX_SHARED_IDS];
    int live = 0, arrived = 0, done = 0;
    std::vector<Fiber> fibers;
};

struct Region { uintptr_t lo, hi; };

struct Rec {                 // one recorded global access
    uint64_t addr;
    uint64_t pc;             // the instruction site (return address of the hook)
    uint64_t seq;            // the thread's access number
    uint32_t block, thread;
    uint32_t size, store;
};

// ---- launch state ----
void (*g_entry)(void**) = nullptr;
void** g_args = nullptr;
std::vector<Slot> g_slots;
std::vector<Fiber*> g_runnable;
Fiber* g_cur = nullptr;
ucontext_t g_sched;
std::mt19937_64 g_rng;
bool g_random = false;
unsigned g_yield_every = 4;
std::string g_error;
bool g_abort = false;
uint64_t g_switches = 0, g_limit = 0;
long g_polls[4] = {0, 0, 0, 0};   // status polls by the value read (EMPTY, AGGREGATE, INCLUSIVE, other)

char* g_stack_base = nullptr; size_t g_stack_bytes = 0;
char* g_arena_base = nullptr; size_t g_arena_bytes = 0;
std::vector<Region> g_regions;      // the kernel arguments' allocations (sorted)
bool g_check = false, g_record = false;
std::vector<Rec> g_recs;

void fail(const std::string& msg) {
    if (g_error.empty()) g_error = msg;
    g_abort = true;
}

std::string where() {
    if (!g_cur) return "outside a kernel";
    char b[96];
    snprintf(b, sizeof b, "block %u thread %u", g_cur->slot->block_linear, g_cur->linear);
    return b;
}

void set_builtins(Fiber* f) {
    parscan_threadIdx = f->tid;
    parscan_blockIdx = f->slot->bid;
}

// back to the scheduler; it returns here when this fiber is picked again
void to_scheduler() {
    Fiber* f = g_cur;
    g_cur = nullptr;
    swapcontext(&f->ctx, &g_sched);
    g_cur = f;
    set_builtins(f);
    if (g_abort) {  // the launch failed while we were away: never run this fiber on
        f->state = DONE;
        g_cur = nullptr;
        setcontext(&g_sched);
    }
}

void fiber_main(unsigned lo, unsigned hi) {
    Fiber* f = reinterpret_cast<Fiber*>((uintptr_t(hi) << 32) | lo);
    g_cur = f;
    set_builtins(f);
    g_entry(g_args);
    f->state = DONE;
    f->slot->done += 1;
    f->slot->live -= 1;
    g_cur = nullptr;
    setcontext(&g_sched);
}

bool in(uintptr_t a, size_t n, uintptr_t lo, size_t bytes) { return a >= lo && a + n <= lo + bytes; }

bool global_region(uintptr_t a, size_t n) {
    auto it = std::upper_bound(g_regions.begin(), g_regions.end(), a,
                               [](uintptr_t v, const Region& r) { return v < r.lo; });
    if (it == g_regions.begin()) return false;
    --it;
    return a >= it->lo && a + n <= it->hi;
}

void note(void* p, size_t n, bool store, void* pc) {
    if (!g_check || !g_cur) return;
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if (global_region(a, n)) {
        if (g_record) {
            Fiber* f = g_cur;
            g_recs.push_back({a, reinterpret_cast<uint64_t>(pc), f->seq++,
                              f->slot->block_linear, f->linear, uint32_t(n), store});
        }
        return;
    }
    if (in(a, n, uintptr_t(g_stack_base), g_stack_bytes) || in(a, n, uintptr_t(g_arena_base), g_arena_bytes))
        return;
    if (in(a, n, uintptr_t(&parscan_threadIdx), sizeof(parscan_dim3)) ||
        in(a, n, uintptr_t(&parscan_blockIdx), sizeof(parscan_dim3)) ||
        in(a, n, uintptr_t(&parscan_blockDim), sizeof(parscan_dim3)) ||
        in(a, n, uintptr_t(&parscan_gridDim), sizeof(parscan_dim3)))
        return;
    char b[160];
    snprintf(b, sizeof b, "invalid global %s of %zu bytes at %p (outside every argument's allocation) by ",
             store ? "write" : "read", n, p);
    fail(b + where());
    to_scheduler();  // never returns: the launch is aborted
}

void start_block(Slot& s, unsigned linear) {
    const parscan_dim3 bd = parscan_blockDim, gd = parscan_gridDim;
    s.used = true;
    s.block_linear = linear;
    s.bid = {linear % gd.x, (linear / gd.x) % gd.y, linear / (gd.x * gd.y)};
    s.arena_used = 0;
    for (long& o : s.shared_off) o = -1;
    memset(s.arena, 0xff, SHARED);  // uninitialised shared memory reads as NaN / -1
    const unsigned n = bd.x * bd.y * bd.z;
    s.live = n;
    s.arrived = 0;
    s.done = 0;
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = s.fibers[t];
        f.slot = &s;
        f.linear = t;
        f.tid = {t % bd.x, (t / bd.x) % bd.y, t / (bd.x * bd.y)};
        f.state = RUNNABLE;
        f.seq = 0;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = STACK;
        f.ctx.uc_link = nullptr;
        uintptr_t fp = reinterpret_cast<uintptr_t>(&f);
        makecontext(&f.ctx, reinterpret_cast<void (*)()>(fiber_main), 2, unsigned(fp & 0xffffffffu),
                    unsigned(fp >> 32));
        g_runnable.push_back(&f);
    }
}

}  // namespace

// ---- the built-ins the header forwards to ---------------------------------------------------------
extern "C" void parscan_syncthreads() {
    Fiber* f = g_cur;
    Slot& s = *f->slot;
    if (s.done) {
        fail("__syncthreads reached by " + where() + " after other threads of its block exited "
             "(a barrier in divergent code)");
        to_scheduler();
    }
    f->state = AT_BARRIER;
    s.arrived += 1;
    if (s.arrived == s.live) {  // the last to arrive releases the block
        s.arrived = 0;
        for (Fiber& o : s.fibers)
            if (o.state == AT_BARRIER) {
                o.state = RUNNABLE;
                if (&o != f) g_runnable.push_back(&o);
            }
        if (!g_random) return;  // in order: the last thread goes straight on
        g_runnable.push_back(f);
    }
    to_scheduler();
}

extern "C" void parscan_yield_point() {
    if (!g_cur) return;
    if (g_random && g_rng() % g_yield_every) return;
    g_runnable.push_back(g_cur);
    to_scheduler();
}

extern "C" void parscan_note_poll(int value) { g_polls[value >= 0 && value < 3 ? value : 3] += 1; }

extern "C" void* parscan_shared_slot(int id, size_t size, size_t align) {
    Slot& s = *g_cur->slot;
    if (id < 0 || id >= MAX_SHARED_IDS) { fail("too many __shared__ declarations"); to_scheduler(); }
    if (s.shared_off[id] < 0) {
        size_t off = (s.arena_used + align - 1) / align * align;
        if (off + size > SHARED) {
            fail("static shared memory over 48 KB in " + where());
            to_scheduler();
        }
        s.shared_off[id] = long(off);
        s.arena_used = off + size;
    }
    return s.arena + s.shared_off[id];
}

// ---- instrumentation hooks (GCC -fsanitize=kernel-address, call mode) ---------------------------
#define PARSCAN_HOOK(n)                                                           \
    extern "C" void __asan_load##n##_noabort(void* p) { note(p, n, false, __builtin_return_address(0)); } \
    extern "C" void __asan_store##n##_noabort(void* p) { note(p, n, true, __builtin_return_address(0)); }
PARSCAN_HOOK(1)
PARSCAN_HOOK(2)
PARSCAN_HOOK(4)
PARSCAN_HOOK(8)
PARSCAN_HOOK(16)
extern "C" void __asan_loadN_noabort(void* p, long n) { note(p, size_t(n), false, __builtin_return_address(0)); }
extern "C" void __asan_storeN_noabort(void* p, long n) { note(p, size_t(n), true, __builtin_return_address(0)); }
extern "C" void __asan_handle_no_return() {}

// ---- the launch ------------------------------------------------------------------------------------
// order: block ids in start order (gx*gy*gz of them); regions: (lo, hi) byte pairs the kernel may
// touch; seed 0 = in order.  Returns 0, or 1 with the reason in parscan_error().
extern "C" int parscan_launch(void (*entry)(void**), void** args, unsigned gx, unsigned gy, unsigned gz,
                              unsigned bx, unsigned by, unsigned bz, const unsigned* order, int in_flight,
                              uint64_t seed, unsigned yield_every, const uint64_t* regions, int nregions,
                              int record, uint64_t max_switches) {
    g_error.clear();
    g_abort = false;
    g_switches = 0;
    g_limit = max_switches;
    for (long& p : g_polls) p = 0;
    g_recs.clear();
    const unsigned threads = bx * by * bz;
    const unsigned long nblocks = (unsigned long)gx * gy * gz;
    if (threads == 0 || threads > 1024 || nblocks == 0) {
        g_error = "invalid launch configuration (block of " + std::to_string(threads) + " threads, " +
                  std::to_string(nblocks) + " blocks)";
        return 1;
    }
    in_flight = std::max(1, std::min<int>(in_flight, int(std::min<unsigned long>(nblocks, 64))));
    // stacks and arenas: one mapping each, reused between launches
    const size_t sb = size_t(in_flight) * threads * STACK, ab = size_t(in_flight) * SHARED;
    if (sb > g_stack_bytes) {
        if (g_stack_base) munmap(g_stack_base, g_stack_bytes);
        g_stack_base = static_cast<char*>(mmap(nullptr, sb, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS |
                                               MAP_NORESERVE, -1, 0));
        g_stack_bytes = sb;
    }
    if (ab > g_arena_bytes) {
        if (g_arena_base) munmap(g_arena_base, g_arena_bytes);
        g_arena_base = static_cast<char*>(mmap(nullptr, ab, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                                               -1, 0));
        g_arena_bytes = ab;
    }
    g_slots.assign(in_flight, Slot());
    for (int k = 0; k < in_flight; ++k) {
        g_slots[k].arena = g_arena_base + k * SHARED;
        g_slots[k].fibers.resize(threads);
        for (unsigned t = 0; t < threads; ++t) g_slots[k].fibers[t].stack = g_stack_base + (size_t(k) * threads + t) * STACK;
    }
    g_regions.clear();
    for (int r = 0; r < nregions; ++r) g_regions.push_back({uintptr_t(regions[2 * r]), uintptr_t(regions[2 * r + 1])});
    std::sort(g_regions.begin(), g_regions.end(), [](const Region& p, const Region& q) { return p.lo < q.lo; });
    g_entry = entry;
    g_args = args;
    g_random = seed != 0;
    g_rng.seed(seed);
    g_yield_every = std::max(1u, yield_every);
    g_record = record != 0;
    g_check = true;
    parscan_blockDim = {bx, by, bz};
    parscan_gridDim = {gx, gy, gz};
    g_runnable.clear();

    unsigned long next = 0;
    auto fill = [&]() {
        for (Slot& s : g_slots)
            if (!s.used && next < nblocks) start_block(s, order[next++]);
    };
    fill();
    while (!g_runnable.empty() && !g_abort) {
        size_t pick = g_random ? size_t(g_rng() % g_runnable.size()) : 0;
        Fiber* f = g_runnable[pick];
        if (g_random) {
            g_runnable[pick] = g_runnable.back();
            g_runnable.pop_back();
        } else {
            g_runnable.erase(g_runnable.begin());  // in order: first come, first run
        }
        if (++g_switches > g_limit) {
            fail("the launch did not finish within " + std::to_string(g_limit) +
                 " scheduling steps (a wait that never ends?)");
            break;
        }
        g_cur = f;
        set_builtins(f);
        swapcontext(&g_sched, &f->ctx);
        g_cur = nullptr;
        Slot& s = *f->slot;
        if (f->state == DONE && s.live == 0) {  // the block is finished
            if (s.arrived) fail("a block finished while threads waited at __syncthreads");
            s.used = false;
            fill();
        } else if (f->state == DONE && s.live > 0 && s.arrived == s.live) {
            // the others wait at a barrier this thread will never reach
            fail("block " + std::to_string(s.block_linear) + ": threads wait at __syncthreads that other "
                 "threads of the block exited without reaching (a barrier in divergent code)");
        }
    }
    if (!g_abort) {
        for (Slot& s : g_slots)
            if (s.used) {
                fail("deadlock: block " + std::to_string(s.block_linear) + " cannot make progress");
                break;
            }
        if (!g_abort && next < nblocks) fail("not every block ran");
    }
    g_check = false;
    g_cur = nullptr;
    return g_abort ? 1 : 0;
}

extern "C" const char* parscan_error() { return g_error.c_str(); }
extern "C" uint64_t parscan_switches() { return g_switches; }
extern "C" long parscan_polls(int which) { return g_polls[which]; }
extern "C" uint64_t parscan_records(void** data) {
    *data = g_recs.data();
    return g_recs.size();
}
