// parscan: single-pass tiled linear scans for the CuPy backend (forward and fused backward).
//
// The same algorithm as the Numba kernels in numba_scan.py, line for line; the tiling and the launch
// are planned in launch.py.  Per tile of `chans` channels x `lanes * ITEMS` steps:
//   1. each thread loads its ITEMS steps into registers (identity past the end) and folds them to a
//      transfer pair (A, H): h_out = A * h_in + H.  The backward runs time backwards on
//      (conj(a[t+1]), grad_h[t]): g[t] = grad_h[t] + conj(a[t+1]) g[t+1] is a forward scan in reversed time;
//   2. a Hillis-Steele scan of each channel's lane pairs in shared memory, in a fixed order;
//   3. when a channel spans several tiles, its last lane publishes the tile aggregate, looks back for
//      the nearest predecessor holding an inclusive prefix, and applies the aggregates in between in
//      time order (every inclusive prefix is the same expression A_u * inc_{u-1} + H_u whoever
//      evaluates it, so results are bitwise repeatable), then publishes its own inclusive prefix;
//   4. every thread rescans its steps from its incoming state and writes h, or grad_x / grad_a /
//      grad_h0 (grad_a, when a is constant in time, as one partial sum per (channel, tile), summed
//      over the tile's lanes in the block and over tiles by sum_parts, both in a fixed order; with one
//      tile in time, the block's sum is grad_a itself and sum_parts does not run).
// Resets (r, one byte a step, optional): where r[t] is set the carried state is dropped (a[t] reads as
// 0), in the forward and in every formula of the backward (grad_a[t] = 0 there).  Dropped, not
// multiplied by 0: the step selects x[t] (0 * inf would be NaN), and a transfer pair carries a flag
// "holds a reset" (h_out = H then, whatever h_in is), so a non-finite state never crosses a reset.
// Non-finite inputs give the sequential loop's IEEE result (inf stays inf, NaN only where the loop has
// NaN): pairs compose without inf * 0 (Acc::prod, scale, and the first step's missing state dropped,
// see there).  One limit: an infinite a[t] meets the state h[t - 1] = A h + H in two parts here, so
// where those parts have opposite signs the result can be NaN or the other infinity where the loop
// has one sign (complex data: which parts of a non-finite value are inf or NaN can differ too).
// Tiles take virtual ids from an atomic counter (time tiles fastest), so a tile's predecessors have
// always started.  64-bit indexing throughout.  float16 is stored as its bit pattern and accumulated
// in float32; complex values are (re, im) pairs as NumPy stores them.

typedef long long i64;

struct half_t { unsigned short bits; };

// aligned as a pair, so that one element is one vector access (ld.v2), as CuPy's thrust::complex is
template <class R> struct alignas(2 * sizeof(R)) cplx { R re, im; };

template <class R> __device__ __forceinline__ cplx<R> operator*(cplx<R> a, cplx<R> b) {
    return {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re};
}
template <class R> __device__ __forceinline__ cplx<R> operator+(cplx<R> a, cplx<R> b) {
    return {a.re + b.re, a.im + b.im};
}

// ---- accumulator traits: identity values, conjugate, status publication (L1-bypassing) ----------
template <class R> struct Lim;
template <> struct Lim<float> {
    static __device__ __forceinline__ float tiny() { return 0x1p-149f; }  // the least subnormal
    static __device__ __forceinline__ float huge() { return 0x1.fffffep127f; }  // the greatest finite
};
template <> struct Lim<double> {
    static __device__ __forceinline__ double tiny() { return 0x1p-1074; }
    static __device__ __forceinline__ double huge() { return 0x1.fffffffffffffp1023; }
};
template <class R> struct Acc {  // float, double
    typedef R real;
    static __device__ __forceinline__ R one() { return R(1); }
    static __device__ __forceinline__ R zero() { return R(0); }
    static __device__ __forceinline__ R conj(R v) { return v; }
    // a pair's decay product: nonzero finite factors give a nonzero finite product (an underflow is
    // kept as the least subnormal, an overflow as the greatest finite value, with the product's sign),
    // so a product is 0 only when a factor is, and an infinite state times it stays infinite, as in
    // the sequential loop (0.5 * inf at every step), rather than inf * 0 = NaN
    static __device__ __forceinline__ R prod(R p, R q) {
        const R r = p * q;
        if (r == R(0) && p != R(0) && q != R(0)) return (p < R(0)) != (q < R(0)) ? -Lim<R>::tiny() : Lim<R>::tiny();
        if ((r > Lim<R>::huge() || r < -Lim<R>::huge()) && p - p == R(0) && q - q == R(0))
            return r > R(0) ? Lim<R>::huge() : -Lim<R>::huge();
        return r;
    }
    static __device__ __forceinline__ bool is_zero(R v) { return v == R(0); }
    static __device__ __forceinline__ bool is_nan(R v) { return v != v; }
    static __device__ __forceinline__ void put(R* p, i64 i, R v) { __stcg(p + i, v); }
    static __device__ __forceinline__ R get(const R* p, i64 i) { return __ldcg(p + i); }
};
template <class R> struct Acc<cplx<R> > {
    typedef R real;
    static __device__ __forceinline__ cplx<R> one() { return {R(1), R(0)}; }
    static __device__ __forceinline__ cplx<R> zero() { return {R(0), R(0)}; }
    static __device__ __forceinline__ cplx<R> conj(cplx<R> v) { return {v.re, -v.im}; }
    static __device__ __forceinline__ cplx<R> prod(cplx<R> p, cplx<R> q) { return p * q; }
    static __device__ __forceinline__ bool is_zero(cplx<R> v) { return v.re == R(0) && v.im == R(0); }
    static __device__ __forceinline__ bool is_nan(cplx<R> v) { return v.re != v.re || v.im != v.im; }
    static __device__ __forceinline__ void put(R* p, i64 i, cplx<R> v) {
        __stcg(p + 2 * i, v.re);
        __stcg(p + 2 * i + 1, v.im);
    }
    static __device__ __forceinline__ cplx<R> get(const R* p, i64 i) {
        return {__ldcg(p + 2 * i), __ldcg(p + 2 * i + 1)};
    }
};

// A2 * H1, the offset a pair passes on when composed (h_out = A2 (A1 h + H1) + H2): selected as 0 where
// H1 is 0 (the identity's, or a fold that has seen no input yet), so an infinite decay in A2 meets the
// state A1 h itself, as in the sequential loop, not inf * 0 = NaN; a NaN decay still gives NaN
template <class A> __device__ __forceinline__ A scale(A a, A h) {
    return Acc<A>::is_zero(h) && !Acc<A>::is_nan(a) ? Acc<A>::zero() : a * h;
}

// ---- storage <-> accumulator conversions --------------------------------------------------------
// float16 <-> float32 by PTX cvt on the device; the tests' CPU harness (tests/cuda_cpu) compiles this file
// with a host compiler, which gets its own conversions (round to nearest even, as cvt.rn).
// Every operand is read in its own storage type (a mixed-precision call casts nothing): any real
// storage into a real or complex accumulator, complex storage into a complex one.
__device__ __forceinline__ float real_of(half_t v) {
    float out;
#ifdef __CUDA_ARCH__
    asm("cvt.f32.f16 %0, %1;" : "=f"(out) : "h"(v.bits));
#else
    out = parscan_half_to_float(v.bits);
#endif
    return out;
}
__device__ __forceinline__ float real_of(float v) { return v; }
__device__ __forceinline__ double real_of(double v) { return v; }
template <class S> __device__ __forceinline__ void widen(S v, float& out) { out = (float)real_of(v); }
template <class S> __device__ __forceinline__ void widen(S v, double& out) { out = (double)real_of(v); }
template <class R, class S> __device__ __forceinline__ void widen(S v, cplx<R>& out) { out = {(R)real_of(v), R(0)}; }
template <class R, class Q> __device__ __forceinline__ void widen(cplx<Q> v, cplx<R>& out) { out = {(R)v.re, (R)v.im}; }

template <class A, class S> __device__ __forceinline__ A load(const S* p, i64 i) {
    A v;
    widen(p[i], v);
    return v;
}

__device__ __forceinline__ void narrow(float v, half_t& out) {
#ifdef __CUDA_ARCH__
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(out.bits) : "f"(v));
#else
    out.bits = parscan_float_to_half(v);
#endif
}
__device__ __forceinline__ void narrow(float v, float& out) { out = v; }
__device__ __forceinline__ void narrow(double v, double& out) { out = v; }
template <class R> __device__ __forceinline__ void narrow(cplx<R> v, cplx<R>& out) { out = v; }

template <class S, class A> __device__ __forceinline__ void store(S* p, i64 i, A v) {
    narrow(v, p[i]);
}

// ---- operands: a pointer, an element offset and four element strides (C0, C1, C2, T) ------------
#define OPERAND(T, n) T n, i64 n##_o, i64 n##_s0, i64 n##_s1, i64 n##_s2, i64 n##_st
#define AT(n, i, j, k, t) (n##_o + (i) * n##_s0 + (j) * n##_s1 + (k) * n##_s2 + (t) * n##_st)

enum { EMPTY = 0, AGGREGATE = 1, INCLUSIVE = 2 };
#define THREADS 256

// Status entries are tile-major: entry (channel c, time tile u) is at u * nch + c, so the last lanes of
// neighbouring channels (one warp in the channel-fast order) publish and poll neighbouring words.
// A tile holding a reset (agg_r) publishes its inclusive prefix, agg_h, at once (it does not depend on
// the tiles before), so the aggregates a tile walks over never hold a reset; it still looks back for
// its own incoming state (its steps before the reset need it).
template <class A>
__device__ A look_back(int* flags, typename Acc<A>::real* st_a, typename Acc<A>::real* st_h,
                       typename Acc<A>::real* st_i, i64 c, i64 nch, i64 tt, A agg_a, A agg_h, bool agg_r) {
    typedef Acc<A> T;
    i64 s = tt - 1;
    if (agg_r) {
        T::put(st_i, tt * nch + c, agg_h);
        __threadfence();
        atomicExch(flags + tt * nch + c, INCLUSIVE);
    } else if (atomicAdd(flags + s * nch + c, 0) != INCLUSIVE) {
        // the aggregate is published for successors to walk over, unless the predecessor is already
        // inclusive (the common case): then this tile goes straight to its own inclusive prefix
        T::put(st_a, tt * nch + c, agg_a);
        T::put(st_h, tt * nch + c, agg_h);
        __threadfence();
        atomicExch(flags + tt * nch + c, AGGREGATE);
    }
    while (true) {
        int f = atomicAdd(flags + s * nch + c, 0);
        if (f == INCLUSIVE) break;
        if (f == AGGREGATE) s -= 1;
    }
    __threadfence();
    A h = T::get(st_i, s * nch + c);
    for (i64 u = s + 1; u < tt; ++u) h = T::get(st_a, u * nch + c) * h + T::get(st_h, u * nch + c);
    if (!agg_r) {
        T::put(st_i, tt * nch + c, agg_a * h + agg_h);
        __threadfence();
        atomicExch(flags + tt * nch + c, INCLUSIVE);
    }
    return h;
}

// ---- a thread's ITEMS steps of one operand, coalesced -------------------------------------------
// In the time-fast order each thread owns ITEMS consecutive steps, so a direct load would have the
// lanes of a warp ITEMS elements apart (1/ITEMS of every sector used).  Instead step q of the
// channel's tile (q = m * lanes + lane: neighbouring lanes, neighbouring steps) is read by lane
// q % lanes and handed to its owner, lane q / ITEMS, through shared memory, padded by one element in
// 32.  Its bank pattern (32 four-byte banks; an 8-byte access served a half-warp at a time, a 16-byte
// one a quarter-warp): 4-byte elements (float32, and float16 data, held as float32) are conflict-free
// in the thread-order phase (stride ITEMS = 8) and, when a channel has 32 lanes or more, in the
// coalesced-order phase; with 2 to 16 lanes a warp spans several channels and that phase is up to
// 4-way conflicted.  8-byte elements (float64, complex64) are 2-way conflicted in the thread-order
// phase at every lane count (and up to 4-way in the other below 16 lanes); 16-byte ones (complex128,
// ITEMS = 4) 4-way in the thread-order phase (and in the other below 8 lanes).  (The layout of the
// transpose is issue #25's.)  get(u) / put(u, v) read and write step u of the channel (they check the
// bounds).  With SHIFT = -1 / +1, v[m] is step u - 1's / u + 1's value: the tile is still read
// aligned (coalesced) and shifted by one in shared memory, only the step past the tile's edge read by
// its one thread itself.
// `coalesce` is the same for the whole block, so the barriers are never divergent.
__device__ __forceinline__ int slot(int cl, int lanes, int items, int q) {
    const int g = cl * lanes * items + q;
    return g + g / 32;
}
template <int SHIFT = 0, int ITEMS, class A, class F>
__device__ __forceinline__ void tile_load(A (&v)[ITEMS], A* sT, bool coalesce, int cl, int lane, int lanes, i64 base,
                                          F get) {
    if (!coalesce) {
#pragma unroll
        for (int m = 0; m < ITEMS; ++m) v[m] = get(base + (i64)lane * ITEMS + m + SHIFT);
        return;
    }
#pragma unroll
    for (int m = 0; m < ITEMS; ++m) sT[slot(cl, lanes, ITEMS, m * lanes + lane)] = get(base + m * lanes + lane);
    __syncthreads();
#pragma unroll
    for (int m = 0; m < ITEMS; ++m) {
        const int q = lane * ITEMS + m + SHIFT;
        v[m] = q < 0 || q >= lanes * ITEMS ? get(base + q) : sT[slot(cl, lanes, ITEMS, q)];
    }
    __syncthreads();
}
template <int ITEMS, class A, class F>
__device__ __forceinline__ void tile_store(const A (&v)[ITEMS], A* sT, bool coalesce, int cl, int lane, int lanes,
                                           i64 base, F put) {
    if (!coalesce) {
#pragma unroll
        for (int m = 0; m < ITEMS; ++m) put(base + (i64)lane * ITEMS + m, v[m]);
        return;
    }
#pragma unroll
    for (int m = 0; m < ITEMS; ++m) sT[slot(cl, lanes, ITEMS, lane * ITEMS + m)] = v[m];
    __syncthreads();
#pragma unroll
    for (int m = 0; m < ITEMS; ++m) put(base + m * lanes + lane, sT[slot(cl, lanes, ITEMS, m * lanes + lane)]);
    __syncthreads();
}

// ---- resets: a thread's flags as a bit mask --------------------------------------------------
// The flags of the tile's steps are read once per block, in coalesced order, into shared memory (one
// byte a step and channel; one row for the whole block when they are broadcast over channels, r_s2 ==
// 0, as resets of shape (T,) or (B, 1, T) are), and each thread gathers its own: bit m + 1 is step
// t0 + m, bit 0 step t0 - 1 (the backward's a[t + 1]).  Steps outside [0, T) and dead channels read 0.
// `has_r` is the same for the whole block, so the barrier is never divergent.
template <int ITEMS, bool BACKWARD>
__device__ __forceinline__ unsigned reset_bits(OPERAND(const unsigned char*, r), unsigned char* sF, i64 i, i64 j,
                                               i64 k_first, i64 C2, i64 T, int chans, int lanes, int chan_fast,
                                               int tid, int cl, int lane, bool live, i64 base) {
    const int tile = lanes * ITEMS;
    const int rows = r_s2 == 0 ? 1 : chans;
    for (int s = tid; s < rows * tile; s += chans * lanes) {  // neighbouring threads, neighbouring bytes
        const int c = chan_fast ? s % rows : s / tile, q = chan_fast ? s / rows : s % tile;
        const i64 kc = k_first + c, w = base + q;
        sF[c * tile + q] = kc < C2 && w < T && r[AT(r, i, j, kc, BACKWARD ? T - 1 - w : w)] != 0;
    }
    __syncthreads();
    if (!live) return 0u;
    const int row = (rows == 1 ? 0 : cl) * tile + lane * ITEMS;
    unsigned bits = 0;
#pragma unroll
    for (int m = 0; m < ITEMS; ++m) bits |= (unsigned)sF[row + m] << (m + 1);
    if (BACKWARD) {  // step t0 - 1: the row's previous byte, or (a tile's first lane) read here
        const i64 w = base + (i64)lane * ITEMS - 1;
        const bool f = lane > 0 ? sF[row - 1] != 0 : w >= 0 && r[AT(r, i, j, k_first + cl, T - 1 - w)] != 0;
        bits |= (unsigned)f;
    }
    return bits;
}

// Storage types, each operand's own: SA of a, SX of x (the backward's grad_h), SH of hh (the backward's
// forward h; the forward's unused slot: SO), S0 of h0 (SO without one), SO of out / grad_x (the
// result), SG of grad_a (SO or A; the forward's unused slot: SO); A: accumulator, also grad_h0's
// storage.  Forward: x is x, out is h (hh, ga, gh0 unused).
// Backward: x is grad_h, hh is the forward's h, out is grad_x, ga is grad_a (or parts), gh0 is grad_h0.
// r: the resets (bool bytes), read only when has_r.
template <class SA, class SX, class SH, class S0, class SO, class SG, class A, int ITEMS, bool BACKWARD>
__global__ void __launch_bounds__(THREADS, 1)  // registers over occupancy: no spills (tune on a device)
scan_kernel(OPERAND(const SA*, a), OPERAND(const SX*, x), OPERAND(const SH*, hh), OPERAND(const S0*, h0),
            int has_h0, OPERAND(const unsigned char*, r), int has_r, OPERAND(SO*, o), OPERAND(SG*, ga),
            OPERAND(A*, gh0),
            typename Acc<A>::real* parts, i64 C0, i64 C1, i64 C2, i64 T, int chans, int lanes,
            int chan_fast, i64 time_tiles, unsigned long long* counter, int* flags,
            typename Acc<A>::real* st_a, typename Acc<A>::real* st_h, typename Acc<A>::real* st_i) {
    typedef Acc<A> Ops;
    __shared__ A sA[THREADS];
    __shared__ A sH[THREADS];
    __shared__ A sC[THREADS];
    __shared__ A sT[THREADS * ITEMS + THREADS * ITEMS / 32];  // the coalescing transpose
    __shared__ unsigned char sF[THREADS * ITEMS];             // the tile's reset flags
    __shared__ unsigned char sP[THREADS];                     // each lane pair's "holds a reset" (drops)
    __shared__ i64 sV;
    A la[ITEMS], lx[ITEMS], lh[ITEMS];
    const int tid = threadIdx.x;
    // one tile in time: no look-back, so the tiles need no order and the counter (and every status
    // word) is left untouched (the host passes one-element stand-ins)
    if (tid == 0) sV = time_tiles == 1 ? (i64)blockIdx.x : (i64)atomicAdd(counter, 1ULL);
    __syncthreads();
    const i64 v = sV;
    const i64 cgrp = v / time_tiles;
    const i64 tt = v - cgrp * time_tiles;
    int cl, lane, step;
    if (chan_fast) { cl = tid % chans; lane = tid / chans; step = chans; }   // tid = lane * chans + cl
    else { cl = tid / lanes; lane = tid % lanes; step = 1; }                 // tid = cl * lanes + lane
    const i64 nkb = (C2 + chans - 1) / chans;
    const i64 i = cgrp / (C1 * nkb);
    const i64 j = (cgrp / nkb) % C1;
    const i64 k = (cgrp % nkb) * chans + cl;
    const bool live = k < C2;
    const i64 kk = live ? k : 0;
    const i64 base = tt * lanes * (i64)ITEMS;  // the tile's first step
    const i64 t0 = base + (i64)lane * ITEMS;   // this thread's first step
    const bool coalesce = !chan_fast;          // time-fast order: load and store through shared memory
    const A one = Ops::one(), zero = Ops::zero();
    // 0. the resets' flags of this thread's steps (see reset_bits): bit m + 1 step t0 + m, bit 0 step t0 - 1
    const unsigned rb = has_r ? reset_bits<ITEMS, BACKWARD>(r, r_o, r_s0, r_s1, r_s2, r_st, sF, i, j,
                                                            (cgrp % nkb) * chans, C2, T, chans, lanes, chan_fast,
                                                            tid, cl, lane, live, base)
                              : 0u;
    // the steps whose carried state is dropped: the forward's r[t] (bit m + 1), the backward's r[t + 1] (bit m)
    unsigned dm = BACKWARD ? rb & ((1u << ITEMS) - 1u) : rb >> 1;
    // The sequence's first step has no carried state (g[T] = 0 in the backward, h[-1] = 0 in a forward
    // without h0): it is dropped too, as a reset is, its value a[0] * 0 + x[0] (NaN for a non-finite
    // a[0], as in the loop), so that no decay product is ever applied to that 0 (inf * 0 = NaN where
    // the loop has inf).  With resets or in the first time tile, pairs carry "holds a reset" (`drops`:
    // the same for the whole block).
    const bool first = tt == 0 && (BACKWARD || !has_h0);
    const bool drops = has_r || first;

    // 1. load (identity past the end and in dead channels) and fold.  An a constant in time (stride 0)
    // is read once.  The backward runs reversed time, step u is t = T - 1 - u: (conj(a[t + 1]), grad_h[t]),
    // where a[t + 1] = a[T - 1 - w] at w = u - 1: a is read aligned with grad_h and taken one step back.
    const bool a_const = a_st == 0;
    const A a0 = live && a_const ? load<A>(a, AT(a, i, j, kk, 0)) : one;
    if (BACKWARD) {
        tile_load<-1>(la, sT, coalesce, cl, lane, lanes, base, [&](i64 w) {
            return !(live && w >= 0 && w < T) ? one : a_const ? a0 : load<A>(a, AT(a, i, j, kk, T - 1 - w));
        });
#pragma unroll
        for (int m = 0; m < ITEMS; ++m) {  // conj, and the identities of steps outside the sequence
            const i64 u = t0 + m;
            la[m] = !(live && u < T) ? one : u == 0 ? zero : Ops::conj(la[m]);
        }
        tile_load(lx, sT, coalesce, cl, lane, lanes, base,
                  [&](i64 u) { return live && u < T ? load<A>(x, AT(x, i, j, kk, T - 1 - u)) : zero; });
    } else {
        tile_load(la, sT, coalesce, cl, lane, lanes, base,
                  [&](i64 u) { return !(live && u < T) ? one : a_const ? a0 : load<A>(a, AT(a, i, j, kk, u)); });
        tile_load(lx, sT, coalesce, cl, lane, lanes, base,
                  [&](i64 u) { return live && u < T ? load<A>(x, AT(x, i, j, kk, u)) : zero; });
    }
    if (first && lane == 0 && live) {
        if (!BACKWARD && !(dm & 1u)) lx[0] = la[0] * zero + lx[0];
        dm |= 1u;
    }
    // the fold to (fa, fh) and ff, "holds a reset": at a dropped step the pair restarts at (0, x);
    // composed by Ops::prod and scale (see there): no inf * 0 from the identity or an underflow
    A fa = one, fh = zero;
    bool ff = false;
#pragma unroll
    for (int m = 0; m < ITEMS; ++m) {
        if (dm >> m & 1u) {
            fa = zero;
            fh = lx[m];
            ff = true;
        } else {
            fa = Ops::prod(fa, la[m]);
            fh = scale(la[m], fh) + lx[m];
        }
    }
    // 2. inclusive scan of each channel's lane pairs (a pair holding a reset keeps its own (A, H))
    sA[tid] = fa;
    sH[tid] = fh;
    if (drops) sP[tid] = ff;
    __syncthreads();
    for (int d = 1; d < lanes; d *= 2) {
        A pa = one, ph = zero;
        bool pf = false;
        if (lane >= d) {
            pa = sA[tid - d * step];
            ph = sH[tid - d * step];
            if (drops) pf = sP[tid - d * step] != 0;
        }
        __syncthreads();
        if (lane >= d) {
            if (!ff) {
                fh = scale(fa, ph) + fh;
                fa = Ops::prod(fa, pa);
                ff = pf;
            }
            sA[tid] = fa;
            sH[tid] = fh;
            if (drops) sP[tid] = ff;
        }
        __syncthreads();
    }
    // 3. the channel's incoming state; across tiles by look-back
    if (lane == lanes - 1) {
        A hin = zero;
        if (!BACKWARD && has_h0 && live) hin = load<A>(h0, AT(h0, i, j, kk, 0));
        if (time_tiles > 1 && live) {
            const i64 c = (i * C1 + j) * C2 + k, nch = C0 * C1 * C2;
            if (tt == 0) {
                Ops::put(st_i, c, ff ? fh : fa * hin + fh);
                __threadfence();
                atomicExch(flags + c, INCLUSIVE);
            } else {
                hin = look_back<A>(flags, st_a, st_h, st_i, c, nch, tt, fa, fh, ff);
            }
        }
        sC[cl] = hin;
    }
    __syncthreads();
    A h = sC[cl];
    if (lane > 0) h = drops && sP[tid - step] ? sH[tid - step] : sA[tid - step] * h + sH[tid - step];
    // 4. rescan from registers and write: h (forward) or grad_x = g and grad_a = g conj(h[t - 1])
    // (backward; h[-1] = h0).  Every thread, dead channels included, reaches every barrier.
    const bool summed = ga_st == 0;
    A total = zero;
    if (BACKWARD) {  // h[t - 1] = h[T - 1 - w] at w = u + 1: read aligned with grad_h, taken one step on
        tile_load<1>(lh, sT, coalesce, cl, lane, lanes, base, [&](i64 w) {
            return !(live && w <= T) ? zero : w < T ? load<A>(hh, AT(hh, i, j, kk, T - 1 - w))
                                          : has_h0 ? load<A>(h0, AT(h0, i, j, kk, 0)) : zero;
        });
    }
#pragma unroll
    for (int m = 0; m < ITEMS; ++m) {
        const i64 u = t0 + m;
        if (live && u < T) {
            h = dm >> m & 1u ? lx[m] : la[m] * h + lx[m];
            lx[m] = h;
            if (BACKWARD) {
                const bool reset = rb >> (m + 1) & 1u;  // at t = T - 1 - u: a[t] reads as 0, grad_a[t] = 0
                const A gv = reset ? zero : h * Ops::conj(lh[m]);
                if (summed) total = total + gv;
                else lh[m] = gv;
                if (u == T - 1 && has_h0)
                    store(gh0, AT(gh0, i, j, k, 0),
                          reset ? zero : Ops::conj(a_const ? a0 : load<A>(a, AT(a, i, j, k, 0))) * h);
            }
        }
    }
    if (BACKWARD) {
        tile_store(lx, sT, coalesce, cl, lane, lanes, base, [&](i64 u, A v) {
            if (live && u < T) store(o, AT(o, i, j, kk, T - 1 - u), v);
        });
        if (!summed)
            tile_store(lh, sT, coalesce, cl, lane, lanes, base, [&](i64 u, A v) {
                if (live && u < T) store(ga, AT(ga, i, j, kk, T - 1 - u), v);
            });
    } else {
        tile_store(lx, sT, coalesce, cl, lane, lanes, base, [&](i64 u, A v) {
            if (live && u < T) store(o, AT(o, i, j, kk, u), v);
        });
    }
    if (BACKWARD && summed) {  // the tile's grad_a sum per channel, over its lanes in a fixed order
        __shared__ A sR[THREADS];
        sR[tid] = total;
        __syncthreads();
        if (live && lane == lanes - 1) {
            A s = zero;
            for (int q = 0; q < lanes; ++q) s = s + sR[tid - (lanes - 1 - q) * step];
            if (time_tiles == 1) store(ga, AT(ga, i, j, k, 0), s);  // the only tile: grad_a itself
            else Ops::put(parts, tt * (C0 * C1 * C2) + (i * C1 + j) * C2 + k, s);  // tile-major, as the status
        }
    }
}

// Backward with a constant in time: grad_a of each channel is the sum of its `width` tile parts
// (tile-major: part p of channel c at p * nch + c, so neighbouring threads read neighbouring words), in order.
template <class SG, class A>
__global__ void sum_parts(const typename Acc<A>::real* parts, OPERAND(SG*, ga), i64 C0, i64 C1, i64 C2,
                          i64 width) {
    const i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x, nch = C0 * C1 * C2;
    if (c >= nch) return;
    A s = Acc<A>::zero();
    for (i64 p = 0; p < width; ++p) s = s + Acc<A>::get(parts, p * nch + c);
    store(ga, AT(ga, c / (C1 * C2), (c / C2) % C1, c % C2, 0), s);
}

// ---- the matrix scan h_t = A_t h_{t-1} + x_t (n x n coefficients), one pass of the chunked scan ----
// The time axis is cut into chunks of L steps (matrix_launch.py plans them and drives the passes).
// Work is a set of *columns*: n-vectors v that step as v <- M_t v + f_t, one thread per entry, a
// block holding cpb = THREADS / n columns side by side in shared memory (entry i of column q at
// tile[i * cpb + q]), every column of the block stepping in lockstep.
//   aggregate (pass 1): per (batch row b, chunk c < nch) the n + 1 columns of [P | s]: P starts as the
//     identity and steps with f = 0 (P = A_last ... A_first over the chunk), s starts at 0 and steps
//     with f = x; written to out[b, c, i, j], j = n for s.  The chunks' (P, s) pairs are then scanned
//     (recursively, by the same passes) into the state at every chunk's end.
//   final (pass 3): per (b, c) one column, the state, from h0 (c = 0) or the end of chunk c - 1
//     (carry[b, c - 1], contiguous (B, nch - 1, n)), writing h_t to out at every step.
// Neighbouring columns take neighbouring batch rows when batch_fast (time-major data, as DEER's), else
// neighbouring chunks.  The coefficient at step t is A[t + shift] (none outside [0, T)), conjugated when conj_a: the
// backward passes the transposed view, conj_a = 1 and shift = +-1 to run g_t = grad_h_t + A_{t+1}^H g_{t+1}.
// Resets (has_r; R one byte a step, batch row b at (b / R_bin) * R_so + (b % R_bin) * R_si, time stride R_st,
// zero strides where broadcast): where R[t + shift] is set the step has no coefficient either, v = f_t (the
// state is dropped, not multiplied by 0), so P_c is 0 after a reset and s_c the scan from the chunk's last
// reset; the aggregate pass also writes rc[b * nch + c], "chunk c dropped its incoming state", the resets
// of the carry scan (H_c = s_c there, whatever H_{c-1} is).
template <class S>
__global__ void __launch_bounds__(THREADS)
matrix_pass(int aggregate, const S* __restrict__ A, i64 A_sb, i64 A_st, i64 A_si, i64 A_sk, int conj_a,
            i64 shift, const S* __restrict__ x, i64 x_sb, i64 x_st, i64 x_si, const S* __restrict__ h0, i64 h0_sb,
            i64 h0_si, int has_h0, const unsigned char* __restrict__ R, i64 R_so, i64 R_si, i64 R_bin, i64 R_st,
            int has_r, unsigned char* __restrict__ rc, const S* __restrict__ carry, S* __restrict__ out, i64 o_sb,
            i64 o_st, i64 o_si, i64 o_sj, i64 B, i64 T, int n, i64 L, i64 nch, int reverse, int batch_fast) {
    typedef Acc<S> Ops;
    __shared__ S tile[2][THREADS];  // double-buffered: step s reads tile[s & 1], writes the other
    const int cpb = THREADS / n;
    const int tid = threadIdx.x;
    const int q = tid % cpb, i = tid / cpb;
    const int ncols = aggregate ? n + 1 : 1;
    const i64 gc = (i64)blockIdx.x * cpb + q;
    const bool live = i < n && gc < B * nch * ncols;
    i64 b = 0, c = 0;
    int j = 0;
    if (live) {
        j = (int)(gc % ncols);
        const i64 bc = gc / ncols;
        if (batch_fast) { b = bc % B; c = bc / B; }  // time-major data: neighbouring batch rows are close
        else { c = bc % nch; b = bc / nch; }
    }
    const bool state = !aggregate || j == n;  // the column driven by x
    S v = Ops::zero();
    if (live) {
        if (aggregate) v = j == i ? Ops::one() : Ops::zero();
        else if (c > 0) v = carry[(b * (nch - 1) + c - 1) * n + i];
        else if (has_h0) v = h0[b * h0_sb + i * h0_si];
    }
    tile[0][tid] = v;
    __syncthreads();
    const i64 r_row = has_r && live ? (b / R_bin) * R_so + (b % R_bin) * R_si : 0;
    bool dropped = false;  // a step of the chunk without its coefficient
    // A column is active for a prefix of the steps, so an inactive column's stale buffer is never read.
    for (i64 s = 0; s < L; ++s) {
        const S* cur = tile[s & 1];
        const i64 p = c * L + s;
        const bool act = live && p < T;
        if (act) {
            const i64 t = reverse ? T - 1 - p : p;
            S acc = state ? x[b * x_sb + t * x_st + i * x_si] : Ops::zero();
            const i64 te = t + shift;
            const bool coef = te >= 0 && te < T && !(has_r && R[r_row + te * R_st]);
            dropped = dropped || !coef;
            if (coef) {
                const S* row = A + b * A_sb + te * A_st + i * A_si;
                if (conj_a) {
#pragma unroll 2
                    for (int k = 0; k < n; ++k) acc = acc + Ops::conj(row[k * A_sk]) * cur[k * cpb + q];
                } else {
#pragma unroll 2
                    for (int k = 0; k < n; ++k) acc = acc + row[k * A_sk] * cur[k * cpb + q];
                }
            }
            v = acc;
            tile[(s + 1) & 1][tid] = v;
            if (!aggregate) out[b * o_sb + t * o_st + i * o_si] = v;
        }
        __syncthreads();
    }
    if (live && aggregate) out[b * o_sb + c * o_st + i * o_si + j * o_sj] = v;
    if (live && aggregate && has_r && j == n && i == 0) rc[b * nch + c] = dropped;
}
