"""The ``cpu`` backend: Numba ``njit`` kernels, parallel over channels and, for few channels, over time.

Work is cut into tasks of (a block of channels) x (a chunk of time):

- *time-inner* (time is the operand's fast axis, e.g. (B, C, T)): a block is one channel and each task
  runs the loop ``h = a[t] * h + x[t]`` over its chunk, four steps at a time: the block's own prefix
  pairs (P_m, S_m) = (a[t+m]...a[t], local scan) are computed off the critical path and
  ``h[t+m] = P_m h + S_m``, so the loop-carried chain is one fused multiply-add per four steps, not
  per step (the plain loop is bound by that chain's latency, not by memory);
- *channel-inner* (channels are the fast axis, e.g. (T, B, C)): a block is a run of neighbouring
  channels of ``C2`` (whole rows up to ``WHOLE_ROW`` channels, else equal parts of at most that), and each task
  walks its chunk row by row, updating the block's states together (contiguous, vectorisable access);
- when there are fewer than ``TASKS`` blocks, time is cut into ``nchunks`` chunks and a
  three-phase scan runs: (1) chunk 0 is scanned from h0 and every later chunk but the last is folded
  to its transfer pair ``(A, H) = (prod a, local scan end)``, in parallel; (2) the pairs are chained per
  channel into each chunk's incoming state ``h_in[k+1] = A[k] * h_in[k] + H[k]``; (3) chunks 1.. rescan
  from their incoming states and write.  Folded chunks read a and x twice; everything else once.

The backward is the same machinery run backwards in time on
``g[t] = grad_h[t] + conj(a[t+1]) g[t+1]``, with the chunk pair ``(A, H) = (prod conj(a), conj(a[s]) g_local[s])``
(the last chunk is the one scanned in phase 1) and ``grad_a`` / ``grad_h0`` computed in the same pass.
float16 accumulates in float32 (see ``_half``).  Results depend only on the problem (no atomics, and a
task plan made without the thread count): the same inputs give the same bits on any number of threads.

Non-finite values give the sequential loop's IEEE result (inf stays inf; NaN only where the loop makes
one): a blocked step or a chunk chain that comes out inf or NaN is not trusted, since regrouped products
can make NaN of what the loop keeps inf (0 * inf, an underflowed decay product times an infinite
state); the run goes on step by step from there, and a channel whose chain of chunk pairs stops is
rescanned in order from that chunk (phase 4).  Finite results take the fast path unchanged.  Parallel
launches are safe from many threads under every Numba threading layer (``_threads``).

Resets (issue #18) are read in the kernels, one byte a step (``r[rb + t * rs]``, broadcast by zero
strides, never materialised): where set, a is never read (it counts as 0: inf or nan in a there cannot
leak), h = x, a folded chunk's A is 0 after a reset in it, nothing flows back across it, and grad_a is
0 there.  Time-inner runs are cut at their resets into segments that the blocked loops scan unchanged;
channel-inner rows take one flag a row when the resets are shared by the block's channels, and go
channel by channel otherwise.  Without resets a one-byte zero with zero strides stands in: one compiled
signature per dtype, and one flag load a run.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange
from numba.extending import overload

from ._half import conj, host_view, load, load_as, store
from ._problem import run_backward, run_forward
from ._threads import parallel_launch

WHOLE_ROW = 2048  # channel-inner rows up to this many channels are never split between tasks
TASKS = 4  # tasks a phase that few channels' time chunks make (up to this many threads share them)
MIN_CHUNK = 4096  # time steps below which cutting time into chunks does not pay
NARROW = 8  # channel-inner blocks up to this many channels run channel by channel (``_fwd_narrow``)
TILE = 8192  # elements of a narrow block's tile in time, which its channels' runs share in cache
_FM = {"contract"}  # allow fused multiply-add; nothing else of fast-math


@njit
def _at(off, s, i, j, k, t):
    return np.uint64(off + i * s[0] + j * s[1] + k * s[2] + t * s[3])


@njit
def _u(i):
    return np.uint64(i)


@njit
def _base(off, s, i, j, k):
    """Index of (i, j, k, 0) and the time stride: element t of the channel is at base + t * stride."""
    return off + i * s[0] + j * s[1] + k * s[2], s[3]


@njit
def _load4(arr, b, s, t, like):
    """Elements t..t+3 of a channel, in the accumulator type of ``like`` (blocked products must not
    run in a narrower input type)."""
    return (load_as(arr[_u(b + t * s)], like), load_as(arr[_u(b + (t + 1) * s)], like),
            load_as(arr[_u(b + (t + 2) * s)], like), load_as(arr[_u(b + (t + 3) * s)], like))


def _zero(v):
    """0 of v's type."""


@overload(_zero)
def _zero_impl(v):
    ty = v
    return lambda v: ty(0)


def _ftz(v):
    """v, or 0 where |v| is below the smallest normal number of its type (both parts, for complex)."""


@overload(_ftz)
def _ftz_impl(v):
    ty = v
    if isinstance(v, numba.types.Complex):
        tiny = float(np.finfo(np.dtype(str(v.underlying_float))).tiny)
        return lambda v: ty(0) if abs(v.real) < tiny and abs(v.imag) < tiny else v
    tiny = float(np.finfo(np.dtype(str(v))).tiny)
    return lambda v: ty(0) if abs(v) < tiny else v  # NaN compares false: kept


def _finite(v):
    """Whether v is finite (both parts, for complex)."""


@overload(_finite)
def _finite_impl(v):
    if isinstance(v, numba.types.Complex):
        return lambda v: math.isfinite(v.real) and math.isfinite(v.imag)
    return lambda v: math.isfinite(v)


# The blocked loops' chains multiply a carried state by a block's decay product.  Rounded to float32, that
# product's error repeats block after block and a decay close to 1 amplifies it by 1 / (1 - a) (at
# a = 0.9995 float32 blocks were several times less accurate than a plain float32 loop, whose a is
# exact), so float32 (complex64) chains carry the state and the product in float64 (complex128): a
# product of four float32 factors is exact there to 2**-53.  The rest of a block stays in the data's
# type; the state is rounded back for the block's outputs and at the end of a run.

_WIDE = {numba.types.float32: numba.types.float64, numba.types.complex64: numba.types.complex128}


def _wide(v):
    """v in the type its chains run in (float64 for float32, complex128 for complex64, else v's)."""


@overload(_wide)
def _wide_impl(v):
    ty = _WIDE.get(v)
    if ty is None:
        return lambda v: v
    return lambda v: ty(v)


def _decay4(p, v0, v1, v2, v3):
    """The product of v0..v3 in the chains' type: ``p`` (the same product, rounded in v's type) where
    that type is the chains' own."""


@overload(_decay4)
def _decay4_impl(p, v0, v1, v2, v3):
    if _WIDE.get(p) is None:
        return lambda p, v0, v1, v2, v3: p
    return lambda p, v0, v1, v2, v3: (_wide(v0) * _wide(v1)) * (_wide(v2) * _wide(v3))


# A folded chunk's decay product A = prod a is the factor of its incoming state only.  With |a| < 1 it
# underflows, and in binary floating point a product of the smallest subnormal and any a in (1/2, 1)
# rounds back to that subnormal: A would stay subnormal for the rest of the chunk, every multiply taking
# the CPU's slow path for subnormal operands, many times slower on x86.  So the folds
# flush A to 0 once it falls below the smallest normal number (``_ftz``, per block of four steps): the
# incoming state's weight is then 0 instead of a subnormal that is itself already wrong by orders of
# magnitude (the true product is far smaller).  The scans are IEEE arithmetic throughout.

@njit
def _block(blk, C1, C2, nb, bs):
    i = blk // (C1 * nb)
    r = blk - i * (C1 * nb)
    j = r // nb
    k0 = (r - j * nb) * bs
    return i, j, k0, min(C2, k0 + bs)


def task_plan(shape, x_strides):
    """``(block, nchunks)`` for a problem of ``shape`` (C0, C1, C2, T) whose x has ``x_strides``.

    ``block == 1`` means time-inner tasks.  Channel-inner blocks keep whole rows up to ``WHOLE_ROW``
    channels (two threads sharing every cache line pair of a short row waste the prefetcher's
    bandwidth); longer rows are cut into the fewest equal blocks of at most ``WHOLE_ROW``.  With fewer
    than ``TASKS`` blocks, time is cut into chunks so that each phase runs at least ``TASKS`` tasks.
    The plan depends on the problem only, never on the thread count: chunk boundaries decide the
    rounding, so the same inputs give the same bits on any number of threads (which only decides how
    many tasks run at once).  Plain Python so that it is unit-tested directly.
    """
    C0, C1, C2, T = shape
    chan_inner = C2 > 1 and abs(x_strides[2]) < abs(x_strides[3])
    if not chan_inner:
        bs = 1
    else:
        bs = -(-C2 // -(-C2 // WHOLE_ROW))
    nblk = C0 * C1 * -(-C2 // bs)
    nch = 1 if nblk >= TASKS else 1 + -(-TASKS // nblk)
    return bs, max(1, min(nch, T // MIN_CHUNK))


# --------------------------------------------------------------------------------- time-inner runs
#
# One channel, a run of steps, the operand at ``arr[base + t * stride]``.  The backward's scan touches
# five operands at four steps a block: written with a stride per operand, LLVM keeps twenty addresses
# and spills them (~110 instructions a block; 1.2 ns a step in cache on one thread, against 0.5 when
# the offsets are shared), so the layouts the planner makes go through ``_bwd_scan_shared``.  The
# forward scan and both folds (three and two operands) run as fast with a stride per operand.

@njit(fastmath=_FM, inline="always")
def _fwd_fold_seg(a, ab, sa, x, xb, sx, t0, t1, A, H):
    """Fold steps t0..t1-1 into the transfer pair (A, H): h_out = A * h_in + H.

    Four steps at a time: their own pair is built off the critical path, so the loop-carried chain is
    one multiply and one fused multiply-add per four steps instead of per step."""
    t = t0
    Aw, Hw = _wide(A), _wide(H)
    while t + 4 <= t1:
        a0, a1, a2, a3 = _load4(a, ab, sa, t, H)
        x0, x1, x2, x3 = _load4(x, xb, sx, t, H)
        p = _decay4(a3 * a2 * (a1 * a0), a0, a1, a2, a3)
        s = a3 * (a2 * (a1 * x0 + x1) + x2) + x3
        Aw = _ftz(Aw * p)
        Hw = p * Hw + _wide(s)
        t += 4
    A, H = load_as(Aw, A), load_as(Hw, H)
    while t < t1:
        av = load_as(a[_u(ab + t * sa)], H)
        A = _ftz(A * av)
        H = av * H + load_as(x[_u(xb + t * sx)], H)
        t += 1
    return A, H


@njit(fastmath=_FM, inline="always")
def _fwd_scan_seg(a, ab, sa, x, xb, sx, o, ob, so, t0, t1, h):
    """Scan steps t0..t1-1 from state h, writing every state; returns the last.

    Blocked by four like ``_fwd_fold_seg``: h[t+m] = P_m h + S_m with (P_m, S_m) the block's own
    prefix pairs, so only ``h = P_3 h + S_3`` sits on the loop-carried chain."""
    t = t0
    hw = _wide(h)
    while t + 4 <= t1:
        a0, a1, a2, a3 = _load4(a, ab, sa, t, h)
        x0, x1, x2, x3 = _load4(x, xb, sx, t, h)
        p1 = a1 * a0
        s1 = a1 * x0 + x1
        p2 = a2 * p1
        s2 = a2 * s1 + x2
        s3 = a3 * s2 + x3
        h3 = _decay4(a3 * p2, a0, a1, a2, a3) * hw + _wide(s3)
        if not _finite(h3):  # the steps one by one from here: the reference's IEEE result
            break
        o[_u(ob + t * so)] = store(a0 * h + x0, o)
        o[_u(ob + (t + 1) * so)] = store(p1 * h + s1, o)
        o[_u(ob + (t + 2) * so)] = store(p2 * h + s2, o)
        hw = h3
        h = load_as(hw, h)
        o[_u(ob + (t + 3) * so)] = store(h, o)
        t += 4
    while t < t1:
        h = load_as(a[_u(ab + t * sa)], h) * h + load_as(x[_u(xb + t * sx)], h)
        o[_u(ob + t * so)] = store(h, o)
        t += 1
    return h


@njit(fastmath=_FM, inline="always")
def _bwd_fold_seg(a, ab, sa, gh, gb, sg, t0, t1, A, H):
    """Fold steps t1-1 .. t0, right to left, into (A, H): cg_out = A * cg_in + H, where cg is
    ``conj(a[t]) g[t]`` flowing out of the run's left end.  Blocked by four (see the forward)."""
    t = t1 - 1
    Aw, Hw = _wide(A), _wide(H)
    while t - 3 >= t0:
        b3, b2, b1, b0 = _load4(a, ab, sa, t - 3, H)  # b0 = a[t], ..., b3 = a[t-3]
        g3, g2, g1, g0 = _load4(gh, gb, sg, t - 3, H)
        b0, b1, b2, b3 = conj(b0), conj(b1), conj(b2), conj(b3)
        p = _decay4((b0 * b1) * (b2 * b3), b0, b1, b2, b3)
        s = b3 * (g3 + b2 * (g2 + b1 * (g1 + b0 * g0)))
        Aw = _ftz(Aw * p)
        Hw = p * Hw + _wide(s)
        t -= 4
    A, H = load_as(Aw, A), load_as(Hw, H)
    while t >= t0:
        ca = conj(load_as(a[_u(ab + t * sa)], H))
        H = ca * (load_as(gh[_u(gb + t * sg)], H) + H)
        A = _ftz(A * ca)
        t -= 1
    return A, H


@njit(fastmath=_FM, inline="always")
def _bwd_scan_run(a, ab, sa, h, hb, sh, gh, gb, sg, gx, xb, sx, ga, qb, sq, t0, t1, cg, hprev0, zero):
    """Steps t1-1 .. t0 from the incoming ``cg``: writes grad_x and grad_a (or sums grad_a when a is
    constant in time, ``sq == 0``); returns (conj(a[t0]) g[t0], the grad_a sum).  ``hprev0`` is h[-1].

    Blocked by four: with b = conj(a), g[t-m] = S_m + P_m cg for the block's own prefix pairs, and only
    ``cg = (b[t-3] P_3) cg + b[t-3] S_3`` sits on the loop-carried chain."""
    summed = sq == 0
    total = zero
    t = t1 - 1
    cw = _wide(cg)
    while t - 3 >= max(t0, 1):  # h[t-4] exists
        b3, b2, b1, b0 = _load4(a, ab, sa, t - 3, cg)
        s3, s2, s1, s0 = _load4(gh, gb, sg, t - 3, cg)
        h4, h3, h2, h1 = _load4(h, hb, sh, t - 4, cg)  # h1 = h[t-1] ... h4 = h[t-4]
        b0, b1, b2, b3 = conj(b0), conj(b1), conj(b2), conj(b3)
        s1 = s1 + b0 * s0
        p2 = b0 * b1
        s2 = s2 + b1 * s1
        p3 = p2 * b2
        s3 = s3 + b2 * s2
        g0 = s0 + cg
        g1 = s1 + b0 * cg
        g2 = s2 + p2 * cg
        g3 = s3 + p3 * cg
        cn = _decay4(b3 * p3, b0, b1, b2, b3) * cw + _wide(b3 * s3)
        if not _finite(cn):  # the steps one by one from here (see _fwd_scan_seg)
            break
        cw = cn
        cg = load_as(cw, cg)
        gx[_u(xb + t * sx)] = store(g0, gx)
        gx[_u(xb + (t - 1) * sx)] = store(g1, gx)
        gx[_u(xb + (t - 2) * sx)] = store(g2, gx)
        gx[_u(xb + (t - 3) * sx)] = store(g3, gx)
        v0, v1, v2, v3 = g0 * conj(h1), g1 * conj(h2), g2 * conj(h3), g3 * conj(h4)
        if summed:
            total += (v0 + v1) + (v2 + v3)
        else:
            ga[_u(qb + t * sq)] = store(v0, ga)
            ga[_u(qb + (t - 1) * sq)] = store(v1, ga)
            ga[_u(qb + (t - 2) * sq)] = store(v2, ga)
            ga[_u(qb + (t - 3) * sq)] = store(v3, ga)
        t -= 4
    while t >= t0:
        g = load_as(gh[_u(gb + t * sg)], cg) + cg
        gx[_u(xb + t * sx)] = store(g, gx)
        hp = load_as(h[_u(hb + (t - 1) * sh)], cg) if t > 0 else hprev0
        v = g * conj(hp)
        if summed:
            total += v
        else:
            ga[_u(qb + t * sq)] = store(v, ga)
        cg = conj(load_as(a[_u(ab + t * sa)], cg)) * g
        t -= 1
    return cg, total


@njit(fastmath=_FM, inline="always")
def _bwd_scan_shared(a, ab, h, hb, gh, gb, gx, xb, ga, qb, s, sa, t0, t1, cg, hprev0, zero):
    """``_bwd_scan_run`` when h, grad_h and grad_x share the time stride ``s`` and a, grad_a share ``sa``
    (every layout the planner makes: contiguous, reversed, channel-contiguous rows, a constant in time):
    each block's four element offsets are computed once and shared by the operands, so that LLVM keeps
    five bases and a few offsets in registers instead of twenty addresses (see the section's comment)."""
    summed = sa == 0
    total = zero
    t = t1 - 1
    cw = _wide(cg)
    while t - 3 >= max(t0, 1):  # h[t-4] exists
        o0 = t * s
        o1 = o0 - s
        o2 = o1 - s
        o3 = o2 - s
        o4 = o3 - s
        q0 = t * sa
        q1 = q0 - sa
        q2 = q1 - sa
        q3 = q2 - sa
        b0 = conj(load_as(a[_u(ab + q0)], cg))
        b1 = conj(load_as(a[_u(ab + q1)], cg))
        b2 = conj(load_as(a[_u(ab + q2)], cg))
        b3 = conj(load_as(a[_u(ab + q3)], cg))
        s0 = load_as(gh[_u(gb + o0)], cg)
        s1 = load_as(gh[_u(gb + o1)], cg)
        s2 = load_as(gh[_u(gb + o2)], cg)
        s3 = load_as(gh[_u(gb + o3)], cg)
        s1 = s1 + b0 * s0
        p2 = b0 * b1
        s2 = s2 + b1 * s1
        p3 = p2 * b2
        s3 = s3 + b2 * s2
        g0 = s0 + cg
        g1 = s1 + b0 * cg
        g2 = s2 + p2 * cg
        g3 = s3 + p3 * cg
        cn = _decay4(b3 * p3, b0, b1, b2, b3) * cw + _wide(b3 * s3)
        if not _finite(cn):  # the steps one by one from here (see _fwd_scan_seg)
            break
        cw = cn
        cg = load_as(cw, cg)
        gx[_u(xb + o0)] = store(g0, gx)
        gx[_u(xb + o1)] = store(g1, gx)
        gx[_u(xb + o2)] = store(g2, gx)
        gx[_u(xb + o3)] = store(g3, gx)
        v0 = g0 * conj(load_as(h[_u(hb + o1)], cg))
        v1 = g1 * conj(load_as(h[_u(hb + o2)], cg))
        v2 = g2 * conj(load_as(h[_u(hb + o3)], cg))
        v3 = g3 * conj(load_as(h[_u(hb + o4)], cg))
        if summed:
            total += (v0 + v1) + (v2 + v3)
        else:
            ga[_u(qb + q0)] = store(v0, ga)
            ga[_u(qb + q1)] = store(v1, ga)
            ga[_u(qb + q2)] = store(v2, ga)
            ga[_u(qb + q3)] = store(v3, ga)
        t -= 4
    while t >= t0:
        g = load_as(gh[_u(gb + t * s)], cg) + cg
        gx[_u(xb + t * s)] = store(g, gx)
        hp = load_as(h[_u(hb + (t - 1) * s)], cg) if t > 0 else hprev0
        v = g * conj(hp)
        if summed:
            total += v
        else:
            ga[_u(qb + t * sa)] = store(v, ga)
        cg = conj(load_as(a[_u(ab + t * sa)], cg)) * g
        t -= 1
    return cg, total


# Resets in time-inner runs: a run is cut at its reset steps into segments that the loops above scan as
# they are (a select of a inside their blocks costs more than the blocks themselves: masked loads fed
# by the flags; x3 on the plain scan), and each reset step is one step of its own.  The segment loops
# are inlined (Numba IR) into their one caller each: a call per segment passes some thirty arguments.  The next reset is found by a byte scan,
# 256 steps a test, then by halves from 128 (vector loads where the flags are contiguous);
# with a time stride of 0 (no resets: the one-byte stand-in, or a flag constant in time) it is one load
# a run.

@njit
def _or_run(r, lo, n):
    """The or of the n contiguous flags from r[lo] (unsigned indices and a byte accumulator: vectorised)."""
    acc = np.uint8(0)
    for m in range(n):
        acc |= r[_u(lo + m)]
    return acc


@njit
def _none_set(r, p, rs, n):
    """Whether no flag of the n steps from the one at ``p`` (step stride ``rs`` != 0) is set."""
    if rs == 1:
        return _or_run(r, p, n) == 0
    if rs == -1:
        return _or_run(r, p - (n - 1), n) == 0
    for m in range(n):
        if r[_u(p + m * rs)] != 0:
            return False
    return True


@njit
def _next_reset(r, rb, rs, t, t1):
    """The first step in t..t1-1 whose reset flag ``r[rb + t * rs]`` is set, or t1."""
    if rs == 0:
        return t if r[_u(rb)] != 0 else t1
    while t + 256 <= t1 and _none_set(r, rb + t * rs, rs, 256):
        t += 256
    n = 128  # then a binary descent: the first set flag is within 256 steps (or t1 is)
    while n >= 1:
        if t + n <= t1 and _none_set(r, rb + t * rs, rs, n):
            t += n
        n //= 2
    return t


@njit
def _prev_reset(r, rb, rs, t0, t):
    """The last step in t0..t-1 whose reset flag is set, or t0 - 1."""
    if rs == 0:
        return t - 1 if r[_u(rb)] != 0 and t > t0 else t0 - 1
    while t - 256 >= t0 and _none_set(r, rb + (t - 256) * rs, rs, 256):
        t -= 256
    n = 128
    while n >= 1:
        if t - n >= t0 and _none_set(r, rb + (t - n) * rs, rs, n):
            t -= n
        n //= 2
    return t - 1


@njit(fastmath=_FM)
def _fwd_fold_run(a, ab, sa, x, xb, sx, r, rb, rs, t0, t1, A, H):
    """``_fwd_fold_seg`` over steps t0..t1-1 with resets: at a reset step a reads as 0, (A, H) = (0, x)."""
    t = t0
    while True:
        e = _next_reset(r, rb, rs, t, t1)
        A, H = _fwd_fold_seg(a, ab, sa, x, xb, sx, t, e, A, H)
        if e >= t1:
            return A, H
        A = _zero(A)
        H = load_as(x[_u(xb + e * sx)], H)
        t = e + 1


@njit(fastmath=_FM)
def _fwd_scan_run(a, ab, sa, x, xb, sx, o, ob, so, r, rb, rs, t0, t1, h):
    """``_fwd_scan_seg`` over steps t0..t1-1 with resets: at a reset step h = x."""
    t = t0
    while True:
        e = _next_reset(r, rb, rs, t, t1)
        h = _fwd_scan_seg(a, ab, sa, x, xb, sx, o, ob, so, t, e, h)
        if e >= t1:
            return h
        h = load_as(x[_u(xb + e * sx)], h)
        o[_u(ob + e * so)] = store(h, o)
        t = e + 1


@njit(fastmath=_FM)
def _bwd_fold_run(a, ab, sa, gh, gb, sg, r, rb, rs, t0, t1, A, H):
    """``_bwd_fold_seg`` over steps t1-1 .. t0 with resets: at a reset step conj(a) reads as 0, so
    (A, H) = (0, 0) there."""
    t = t1
    while True:
        e = _prev_reset(r, rb, rs, t0, t)
        A, H = _bwd_fold_seg(a, ab, sa, gh, gb, sg, e + 1, t, A, H)
        if e < t0:
            return A, H
        A, H = _zero(A), _zero(H)
        t = e


@njit(fastmath=_FM)
def _bwd_scan_chan(a, ab, sa, h, hb, sh, gh, gb, sg, gx, xb, sx, ga, qb, sq, r, rb, rs, t0, t1, cg, hprev0, zero):
    """The backward of one channel's run: ``_bwd_scan_shared`` where the strides allow, else the
    general ``_bwd_scan_run``, segment by segment between resets; at a reset step g = grad_h + cg is
    written, grad_a is 0 and nothing flows on (cg = 0)."""
    total = zero
    t = t1
    while True:
        e = _prev_reset(r, rb, rs, t0, t)
        if sg == sh and sx == sh and sq == sa:
            cg, v = _bwd_scan_shared(a, ab, h, hb, gh, gb, gx, xb, ga, qb, sh, sa, e + 1, t, cg, hprev0, zero)
        else:
            cg, v = _bwd_scan_run(a, ab, sa, h, hb, sh, gh, gb, sg, gx, xb, sx, ga, qb, sq, e + 1, t, cg, hprev0,
                                  zero)
        total += v
        if e < t0:
            return cg, total
        g = load_as(gh[_u(gb + e * sg)], cg) + cg
        gx[_u(xb + e * sx)] = store(g, gx)
        if sq != 0:
            ga[_u(qb + e * sq)] = store(zero, ga)
        cg = zero
        t = e


# ------------------------------------------------------------------------------ channel-inner rows
#
# A block of neighbouring channels k0..k1-1 over a run of steps, row by row: channel k of row t is at
# ``base + k * sk + t * st``.  The channel strides are passed as literals for the common layouts (1,
# and 0 for a shared by the channels), so that the row loops vectorise.  Resets reach the rows only
# when they are shared by the block's channels (channel stride 0: shape (T,), (B, 1, T), ...): one flag
# a row, ``r[rb + t * rt]``, and a reset row takes its own short loop (the state dropped), so the row
# loops themselves are unchanged.  Resets that vary across a block's channels go channel by channel
# (``_fwd_narrow`` / ``_bwd_narrow``).

@njit(fastmath=_FM)
def _fwd_fold_rows(a, ab, sak, sat, x, xb, sxk, sxt, r, rb, rt, n, t0, t1, Av, Hv):
    for t in range(t0, t1):
        pa, px = ab + t * sat, xb + t * sxt
        if r[_u(rb + t * rt)]:  # a reads as 0: A = 0, H = x
            for k in range(n):
                Av[k] = 0
                Hv[k] = load(x[_u(px + k * sxk)])
            continue
        for k in range(n):
            av = load(a[_u(pa + k * sak)])
            Av[k] = _ftz(Av[k] * av)
            Hv[k] = av * Hv[k] + load(x[_u(px + k * sxk)])


@njit(fastmath=_FM)
def _fwd_scan_rows(a, ab, sak, sat, x, xb, sxk, sxt, o, ob, sok, sot, r, rb, rt, n, t0, t1, hv):
    for t in range(t0, t1):
        pa, px, po = ab + t * sat, xb + t * sxt, ob + t * sot
        if r[_u(rb + t * rt)]:  # a reads as 0: h = x
            for k in range(n):
                v = load(x[_u(px + k * sxk)])
                hv[k] = v
                o[_u(po + k * sok)] = store(v, o)
            continue
        for k in range(n):
            v = load(a[_u(pa + k * sak)]) * hv[k] + load(x[_u(px + k * sxk)])
            hv[k] = v
            o[_u(po + k * sok)] = store(v, o)


# The backward's rows run down in time, so their operands fall in memory from row to row.  LLVM (22)
# vectorises a row loop behind a check that its operands do not overlap, and hoists that check out of
# the time loop as one check over the whole run of rows, which it builds only for pointers that rise
# from row to row: falling ones fail it and leave the scalar loop.  So the backward's row loops keep the
# row counter in memory (``nxt``), which the row's stores might change as far as LLVM knows: the check
# then stays per row (a few compares a row) and passes.  Within a row the channels are walked downwards
# too (``k = n - 1 - m``), so that every operand is one falling stream for the prefetcher, and the
# local arrays are indexed unsigned (no wraparound test, which would stop the vectoriser).

@njit(fastmath=_FM)
def _bwd_fold_rows_run(a, ab, sak, sat, gh, gb, sgk, sgt, r, rb, rt, n, t0, t1, Av, Hv):
    nxt = np.empty(1, np.int64)
    nxt[0] = t1 - 1
    while True:
        t = nxt[0]
        if t < t0:
            break
        nxt[0] = t - 1
        pa, pg = ab + t * sat, gb + t * sgt
        if r[_u(rb + t * rt)]:  # conj(a) reads as 0: nothing flows out of this row
            for k in range(n):
                Av[k] = 0
                Hv[k] = 0
            continue
        for m in range(n):
            k = n - 1 - m
            ca = conj(load(a[_u(pa + k * sak)]))
            Hv[_u(k)] = ca * (load(gh[_u(pg + k * sgk)]) + Hv[_u(k)])
            Av[_u(k)] = _ftz(Av[_u(k)] * ca)


@njit(fastmath=_FM)
def _bwd_scan_rows_run(a, ab, sak, sat, h, hb, shk, sht, gh, gb, sgk, sgt, gx, xb, sxk, sxt, ga, qb, sqk, sqt,
                       r, rb, rt, n, t0, t1, cg, tot):
    """Rows t1-1 .. t0 (t0 >= 1: h[t-1] is in h); grad_a summed into ``tot`` when a is constant in time."""
    summed = sqt == 0
    nxt = np.empty(1, np.int64)
    nxt[0] = t1 - 1
    while True:
        t = nxt[0]
        if t < t0:
            break
        nxt[0] = t - 1
        pa, ph, pg, px, pq = ab + t * sat, hb + (t - 1) * sht, gb + t * sgt, xb + t * sxt, qb + t * sqt
        if r[_u(rb + t * rt)]:
            _bwd_reset_row(gh, pg, sgk, gx, px, sxk, ga, pq, sqk, summed, n, cg)
            continue
        if summed:
            for m in range(n):
                k = n - 1 - m
                g = load(gh[_u(pg + k * sgk)]) + cg[_u(k)]
                gx[_u(px + k * sxk)] = store(g, gx)
                tot[_u(k)] += g * conj(load(h[_u(ph + k * shk)]))
                cg[_u(k)] = conj(load(a[_u(pa + k * sak)])) * g
        else:
            for m in range(n):
                k = n - 1 - m
                g = load(gh[_u(pg + k * sgk)]) + cg[_u(k)]
                gx[_u(px + k * sxk)] = store(g, gx)
                ga[_u(pq + k * sqk)] = store(g * conj(load(h[_u(ph + k * shk)])), ga)
                cg[_u(k)] = conj(load(a[_u(pa + k * sak)])) * g


@njit(fastmath=_FM)
def _bwd_fold_rows(a, ab, sak, sat, gh, gb, sgk, sgt, r, rb, rt, n, t0, t1, Av, Hv):
    """Channel-inner fold of n channels over steps t1-1 .. t0 into the pairs Av, Hv."""
    if sgk == 1 and sak == 1:
        _bwd_fold_rows_run(a, ab, 1, sat, gh, gb, 1, sgt, r, rb, rt, n, t0, t1, Av, Hv)
    elif sgk == 1 and sak == 0:
        _bwd_fold_rows_run(a, ab, 0, sat, gh, gb, 1, sgt, r, rb, rt, n, t0, t1, Av, Hv)
    else:
        _bwd_fold_rows_run(a, ab, sak, sat, gh, gb, sgk, sgt, r, rb, rt, n, t0, t1, Av, Hv)


@njit(fastmath=_FM)
def _bwd_reset_row(gh, pg, sgk, gx, px, sxk, ga, pq, sqk, summed, n, cg):
    """A reset row of the backward rows: g = grad_h + cg is written, grad_a is 0, and nothing flows on
    (conj(a) reads as 0)."""
    for k in range(n):
        g = load(gh[_u(pg + k * sgk)]) + cg[k]
        gx[_u(px + k * sxk)] = store(g, gx)
        if not summed:
            ga[_u(pq + k * sqk)] = store(_zero(g), ga)
        cg[k] = 0


@njit(fastmath=_FM)
def _bwd_scan_rows(a, ab, sak, sat, h, hb, shk, sht, gh, gb, sgk, sgt, gx, xb, sxk, sxt, ga, qb, sqk, sqt,
                   r, rb, rt, n, t0, t1, cg, tot):
    """Channel-inner backward of n channels over steps t1-1 .. t0 (t0 >= 1) from ``cg`` (updated)."""
    if shk == 1 and sgk == 1 and sxk == 1 and sqk == 1:
        if sak == 1:
            _bwd_scan_rows_run(a, ab, 1, sat, h, hb, 1, sht, gh, gb, 1, sgt, gx, xb, 1, sxt, ga, qb, 1, sqt,
                               r, rb, rt, n, t0, t1, cg, tot)
            return
        if sak == 0:
            _bwd_scan_rows_run(a, ab, 0, sat, h, hb, 1, sht, gh, gb, 1, sgt, gx, xb, 1, sxt, ga, qb, 1, sqt,
                               r, rb, rt, n, t0, t1, cg, tot)
            return
    _bwd_scan_rows_run(a, ab, sak, sat, h, hb, shk, sht, gh, gb, sgk, sgt, gx, xb, sxk, sxt, ga, qb, sqk, sqt,
                       r, rb, rt, n, t0, t1, cg, tot)


@njit(fastmath=_FM)
def _bwd_row0(a, ab, sak, h0, h0b, h0k, has_h0, gh, gb, sgk, gx, xb, sxk, ga, qb, sqk, summed, n, cg, tot, zero,
              reset):
    """Row t = 0 of a channel-inner block: h[-1] is h0 (at h0b + k * h0k) or zero; ``reset``: the row's
    flag (grad_a 0, nothing flows to h0)."""
    if reset:
        _bwd_reset_row(gh, gb, sgk, gx, xb, sxk, ga, qb, sqk, summed, n, cg)
        return
    for k in range(n):
        g = load(gh[_u(gb + k * sgk)]) + cg[k]
        gx[_u(xb + k * sxk)] = store(g, gx)
        v = g * conj(load_as(h0[_u(h0b + k * h0k)], zero)) if has_h0 else zero * g
        if summed:
            tot[k] += v
        else:
            ga[_u(qb + k * sqk)] = store(v, ga)
        cg[k] = conj(load(a[_u(ab + k * sak)])) * g


@njit
def _touch(arr, base, sk, st, n, t0, t1, zero):
    """Write zero once per 4 KiB page (at most) over channels 0..n-1 (stride sk) x steps t0..t1-1
    (stride st) of a fresh output: its pages are then mapped before the real values are written."""
    item = arr.itemsize
    ts = max(1, 4096 // max(1, item * abs(st)))
    ks = max(1, 4096 // max(1, item * abs(sk))) if sk != 0 else n
    z = store(zero, arr)
    for t in range(t0, t1, ts):
        for k in range(0, n, ks):
            arr[_u(base + k * sk + t * st)] = z


@njit(fastmath=_FM)
def _fwd_narrow(a, ab, sak, sat, x, xb, sxk, sxt, o, ob, sok, sot, r, rb, rk, rt, n, t0, t1, hin, A, H, b, col,
                scan):
    """A narrow channel-inner block (n <= NARROW channels of table rows b..b+n-1) over steps t0..t1-1,
    channel by channel as time-inner runs: a row of a few channels would put each state through memory
    once a row (store, reload: a chain of ~10 cycles for a few elements), a run keeps it in a register
    and blocks four steps.  Tile by tile of TILE // n steps, so that the block's channels after the
    first find the tile's cache lines loaded.  Also the path of blocks whose resets vary across their
    channels (any ``rk``)."""
    L = max(4, TILE // n)
    for s0 in range(t0, t1, L):
        s1 = min(t1, s0 + L)
        for k in range(n):
            c = b + k
            if scan:
                h = hin[c, col] if s0 == t0 else H[c, col]
                H[c, col] = _fwd_scan_run(a, ab + k * sak, sat, x, xb + k * sxk, sxt, o, ob + k * sok, sot,
                                          r, rb + k * rk, rt, s0, s1, h)
            else:
                A[c, col], H[c, col] = _fwd_fold_run(a, ab + k * sak, sat, x, xb + k * sxk, sxt, r, rb + k * rk,
                                                     rt, s0, s1, A[c, col], H[c, col])


@njit(fastmath=_FM)
def _bwd_narrow(a, ab, sak, sat, h, hb, shk, sht, gh, gb, sgk, sgt, gx, xb, sxk, sxt, ga, qb, sqk, sqt,
                r, rb, rk, rt, h0, h0b, h0k, has_h0, n, t0, t1, cin, A, H, parts, b, col, scan, zero):
    """The backward of a narrow channel-inner block over steps t1-1 .. t0, as ``_fwd_narrow``: tiles
    from the right, channel by channel; a scan adds its grad_a sums into parts[:, col]."""
    L = max(4, TILE // n)
    s1 = t1
    while s1 > t0:
        s0 = max(t0, s1 - L)
        for k in range(n):
            c = b + k
            if scan:
                cg = cin[c, col] if s1 == t1 else H[c, col]
                hp0 = load_as(h0[_u(h0b + k * h0k)], zero) if has_h0 else zero
                H[c, col], v = _bwd_scan_chan(a, ab + k * sak, sat, h, hb + k * shk, sht, gh, gb + k * sgk,
                                                sgt, gx, xb + k * sxk, sxt, ga, qb + k * sqk, sqt, r, rb + k * rk,
                                                rt, s0, s1, cg, hp0, zero)
                parts[c, col] += v
            else:
                A[c, col], H[c, col] = _bwd_fold_run(a, ab + k * sak, sat, gh, gb + k * sgk, sgt, r, rb + k * rk,
                                                     rt, s0, s1, A[c, col], H[c, col])
        s1 = s0


# ------------------------------------------------------------------------------------------ tasks

@njit
def _mark_resets(r, rb, rs, rk, n, t0, t1, Z, b, col):
    """Z[b + k, col] = whether channel k (< n) of a block, flags at ``rb + k * rk``, has a reset in
    steps t0..t1-1: a folded chunk holding one passes no incoming state on (its A, 0 or whatever the
    steps after the reset made of it, must not multiply that state: 0 * inf is NaN)."""
    if rk == 0:
        v = _next_reset(r, rb, rs, t0, t1) < t1
        for k in range(n):
            Z[b + k, col] = v
    else:
        for k in range(n):
            Z[b + k, col] = _next_reset(r, rb + k * rk, rs, t0, t1) < t1


@njit
def _any_other(F, v):
    """Whether some entry of F is not v (a serial scan: no parallel launch for phase 4 where none is)."""
    for c in range(F.shape[0]):
        if F[c] != v:
            return True
    return False


@njit
def _take(M, base, n, col):
    """Rows base..base+n-1 of column ``col`` of a per-(channel, chunk) table, as a local array."""
    v = np.empty(n, M.dtype)
    for k in range(n):
        v[k] = M[base + k, col]
    return v


@njit
def _put(M, base, col, v):
    for k in range(v.shape[0]):
        M[base + k, col] = v[k]


@njit
def _step(i, j, k, C1, C2, down):
    """The next channel (i, j, k) of a walk over whole channels, up or down."""
    if down:
        k -= 1
        if k < 0:
            k = C2 - 1
            j -= 1
            if j < 0:
                j = C1 - 1
                i -= 1
    else:
        k += 1
        if k == C2:
            k = 0
            j += 1
            if j == C1:
                j = 0
                i += 1
    return i, j, k


@njit(fastmath=_FM, inline="always")
def _fwd_chan(a, ao, as_, x, xo, xs, o, oo, os_, r, ro, rs_, i, j, k, t0, t1, h):
    """Channel (i, j, k) over steps t0..t1-1 from state h, as one time-inner run; returns the last state."""
    ab, sa = _base(ao, as_, i, j, k)
    xb, sx = _base(xo, xs, i, j, k)
    ob, so = _base(oo, os_, i, j, k)
    rb, rs = _base(ro, rs_, i, j, k)
    return _fwd_scan_run(a, ab, sa, x, xb, sx, o, ob, so, r, rb, rs, t0, t1, h)


@njit(fastmath=_FM)
def _fwd_channels_time(a, ao, as_, x, xo, xs, o, oo, os_, r, ro, rs_, C1, C2, T, c0, c1, hin, down):
    """Time-inner scans of whole channels c0..c1-1 (flat index), walking (i, j, k) without divisions
    (with many short channels the per-task index arithmetic would otherwise cost as much as the scan),
    upwards or ``down`` so that consecutive channels continue one memory stream per operand."""
    c = c1 - 1 if down else c0
    i = c // (C1 * C2)
    j = (c // C2) % C1
    k = c % C2
    for _ in range(c1 - c0):
        _fwd_chan(a, ao, as_, x, xo, xs, o, oo, os_, r, ro, rs_, i, j, k, 0, T, hin[c, 0])
        i, j, k = _step(i, j, k, C1, C2, down)
        c += -1 if down else 1


@njit(fastmath=_FM)
def _fwd_task(a, ao, as_, x, xo, xs, o, oo, os_, r, ro, rs_, C1, C2, nb, bs, blk, t0, t1, hin, col, scan, A, H,
              Z):
    """One task: block ``blk`` over steps t0..t1-1; scans from hin[:, col] into H[:, col] when ``scan``,
    else folds into (A, H)[:, col] and marks Z[:, col] where the chunk holds a reset."""
    i, j, k0, k1 = _block(blk, C1, C2, nb, bs)
    ab, sa = _base(ao, as_, i, j, k0)
    xb, sx = _base(xo, xs, i, j, k0)
    ob, so = _base(oo, os_, i, j, k0)
    rb, rs = _base(ro, rs_, i, j, k0)
    b = (i * C1 + j) * C2 + k0
    if not scan:
        _mark_resets(r, rb, rs, rs_[2], k1 - k0, t0, t1, Z, b, col)
    if bs == 1:
        if scan:
            H[b, col] = _fwd_scan_run(a, ab, sa, x, xb, sx, o, ob, so, r, rb, rs, t0, t1, hin[b, col])
        else:
            A[b, col], H[b, col] = _fwd_fold_run(a, ab, sa, x, xb, sx, r, rb, rs, t0, t1, A[b, col], H[b, col])
        return
    n = k1 - k0
    if n <= NARROW or rs_[2] != 0:  # rows take one reset flag a row
        _fwd_narrow(a, ab, as_[2], sa, x, xb, xs[2], sx, o, ob, os_[2], so, r, rb, rs_[2], rs, n, t0, t1, hin, A, H,
                    b, col, scan)
    elif scan:
        hv = _take(hin, b, n, col)
        _fwd_scan_rows(a, ab, as_[2], sa, x, xb, xs[2], sx, o, ob, os_[2], so, r, rb, rs, n, t0, t1, hv)
        _put(H, b, col, hv)
    else:
        Av, Hv = _take(A, b, n, col), _take(H, b, n, col)
        _fwd_fold_rows(a, ab, as_[2], sa, x, xb, xs[2], sx, r, rb, rs, n, t0, t1, Av, Hv)
        _put(A, b, col, Av)
        _put(H, b, col, Hv)


@njit(parallel=True, cache=True, fastmath=_FM)
def _forward(a, ao, as_, x, xo, xs, h0, ho, hs, has_h0, o, oo, os_, r, ro, rs_, shape, zero, one, bs, nch, nparts,
             down):
    C0, C1, C2, T = shape
    nb = (C2 + bs - 1) // bs
    nblk = C0 * C1 * nb
    L = (T + nch - 1) // nch
    nchan = C0 * C1 * C2
    hin = np.full((nchan, nch), zero)   # state entering each chunk
    if has_h0:
        for c in prange(nchan):
            i = c // (C1 * C2)
            j = (c // C2) % C1
            hin[c, 0] = load(h0[_at(ho, hs, i, j, c % C2, 0)])
    if bs == 1 and nch == 1:  # many time-inner channels: contiguous runs of whole channels per task
        for p in prange(nparts):
            _fwd_channels_time(a, ao, as_, x, xo, xs, o, oo, os_, r, ro, rs_, C1, C2, T, p * nchan // nparts,
                               (p + 1) * nchan // nparts, hin, down)
        return
    A = np.full((nchan, nch), one)      # chunk transfer pairs; H[:, 0] is chunk 0's final state
    H = np.full((nchan, nch), zero)
    Z = np.zeros((nchan, nch), np.uint8)  # the folded chunks that hold a reset
    F = np.full(nchan, nch, np.int64)     # per channel, the first chunk whose incoming state the chain left unknown
    first = 0
    if nch > 1:
        # phase 1: chunk 0 is scanned (its incoming state is known), chunks 1..nch-2 are folded
        for task in prange(nblk * (nch - 1)):
            blk = task // (nch - 1)
            ck = task - blk * (nch - 1)
            _fwd_task(a, ao, as_, x, xo, xs, o, oo, os_, r, ro, rs_, C1, C2, nb, bs, blk, ck * L,
                      min(T, ck * L + L), hin, ck, ck == 0, A, H, Z)
        # phase 2: chain the pairs into each chunk's incoming state, up to the first that is not finite
        for c in prange(nchan):
            hin[c, 1] = H[c, 0]
            for ck in range(1, nch - 1):
                v = H[c, ck] if Z[c, ck] else A[c, ck] * hin[c, ck] + H[c, ck]
                if not _finite(v):
                    F[c] = ck + 1
                    break
                hin[c, ck + 1] = v
        first = 1
    # phase 3 (the only phase when nch == 1): scan the remaining chunks from their incoming states
    for task in prange(nblk * (nch - first)):
        blk = task // (nch - first)
        ck = first + task - blk * (nch - first)
        _fwd_task(a, ao, as_, x, xo, xs, o, oo, os_, r, ro, rs_, C1, C2, nb, bs, blk, ck * L,
                  min(T, ck * L + L), hin, ck, True, A, H, Z)
    if _any_other(F, nch):
        # phase 4: the channels whose chain stopped, rescanned in order from the first chunk it left unknown
        for c in prange(nchan):
            if F[c] < nch:
                _fwd_chan(a, ao, as_, x, xo, xs, o, oo, os_, r, ro, rs_, c // (C1 * C2), (c // C2) % C1, c % C2,
                          F[c] * L, T, H[c, F[c] - 1])


@njit(fastmath=_FM)
def _bwd_channels_time(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0, gx, xo, xs, ga, ao2, as2,
                       gh0, g0o, g0s, r, ro, rs_, C1, C2, T, c0, c1, zero, down):
    """Time-inner backward of whole channels c0..c1-1, walked like ``_fwd_channels_time``; writes
    grad_h0 and the grad_a sums (a constant in time) directly."""
    summed = as2[3] == 0
    c = c1 - 1 if down else c0
    i = c // (C1 * C2)
    j = (c // C2) % C1
    k = c % C2
    for _ in range(c1 - c0):
        cg, tot = _bwd_chan(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0, gx, xo, xs, ga, ao2, as2,
                            r, ro, rs_, i, j, k, T, zero, zero)
        if has_h0:
            gh0[_at(g0o, g0s, i, j, k, 0)] = store(cg, gh0)
        if summed:
            ga[_at(ao2, as2, i, j, k, 0)] = store(tot, ga)
        i, j, k = _step(i, j, k, C1, C2, down)


@njit(fastmath=_FM, inline="always")
def _bwd_chan(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0, gx, xo, xs, ga, ao2, as2, r, ro, rs_,
              i, j, k, t1, cg, zero):
    """The backward of channel (i, j, k) over steps t1-1 .. 0 from the incoming ``cg``, as one time-inner
    run: (conj(a[0]) g[0], the grad_a sum)."""
    ab, sa = _base(ao, as_, i, j, k)
    hb, sh = _base(hO, hS, i, j, k)
    gb, sg = _base(go, gs, i, j, k)
    xb, sx = _base(xo, xs, i, j, k)
    qb, sq = _base(ao2, as2, i, j, k)
    rb, rs = _base(ro, rs_, i, j, k)
    hp0 = load_as(h0[_at(h0o, h0s, i, j, k, 0)], zero) if has_h0 else zero
    return _bwd_scan_chan(a, ab, sa, h, hb, sh, gh, gb, sg, gx, xb, sx, ga, qb, sq, r, rb, rs, 0, t1, cg, hp0, zero)


@njit(fastmath=_FM)
def _bwd_task(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0, gx, xo, xs, ga, ao2, as2, r, ro, rs_,
              C1, C2, nb, bs, blk, t0, t1, cin, col, scan, A, H, parts, zero, Z):
    """One backward task: block ``blk`` over steps t1-1 .. t0.  ``scan``: from cin[:, col], writing
    grad_x / grad_a, the outgoing cg into H[:, col] and the grad_a sums into parts[:, col]; else a fold
    into (A, H)[:, col], marking Z[:, col] where the chunk holds a reset (nothing crosses it)."""
    i, j, k0, k1 = _block(blk, C1, C2, nb, bs)
    ab, sa = _base(ao, as_, i, j, k0)
    gb, sg = _base(go, gs, i, j, k0)
    rb, rs = _base(ro, rs_, i, j, k0)
    b = (i * C1 + j) * C2 + k0
    n = k1 - k0
    if not scan:
        _mark_resets(r, rb, rs, rs_[2], n, t0, t1, Z, b, col)
        # a fold runs beside the scan of the last chunk, and is the lighter of the two (two operands read
        # against three read and two written): it first-touches the pages of the fresh gradient arrays
        # that phase 3 will write (its own chunk, and chunk 0 for the first fold), so that the kernel's
        # zeroing of new pages happens here instead of on the phase 3 scans.
        xb, sx = _base(xo, xs, i, j, k0)
        qb, sq = _base(ao2, as2, i, j, k0)
        lo = 0 if col == 1 else t0
        _touch(gx, xb, xs[2], sx, n, lo, t1, zero)
        if sq != 0:
            _touch(ga, qb, as2[2], sq, n, lo, t1, zero)
    if bs > 1 and (n <= NARROW or rs_[2] != 0):  # rows take one reset flag a row
        hb, sh = _base(hO, hS, i, j, k0)
        xb, sx = _base(xo, xs, i, j, k0)
        qb, sq = _base(ao2, as2, i, j, k0)
        _bwd_narrow(a, ab, as_[2], sa, h, hb, hS[2], sh, gh, gb, gs[2], sg, gx, xb, xs[2], sx, ga, qb, as2[2], sq,
                    r, rb, rs_[2], rs, h0, _base(h0o, h0s, i, j, k0)[0], h0s[2], has_h0, n, t0, t1, cin, A, H, parts,
                    b, col, scan, zero)
        return
    if not scan:
        if bs == 1:
            A[b, col], H[b, col] = _bwd_fold_run(a, ab, sa, gh, gb, sg, r, rb, rs, t0, t1, A[b, col], H[b, col])
        else:
            Av, Hv = _take(A, b, n, col), _take(H, b, n, col)
            _bwd_fold_rows(a, ab, as_[2], sa, gh, gb, gs[2], sg, r, rb, rs, n, t0, t1, Av, Hv)
            _put(A, b, col, Av)
            _put(H, b, col, Hv)
        return
    hb, sh = _base(hO, hS, i, j, k0)
    xb, sx = _base(xo, xs, i, j, k0)
    qb, sq = _base(ao2, as2, i, j, k0)
    if bs == 1:
        hp0 = load_as(h0[_at(h0o, h0s, i, j, k0, 0)], zero) if has_h0 else zero
        H[b, col], parts[b, col] = _bwd_scan_chan(a, ab, sa, h, hb, sh, gh, gb, sg, gx, xb, sx, ga, qb, sq,
                                                  r, rb, rs, t0, t1, cin[b, col], hp0, zero)
        return
    cg = _take(cin, b, n, col)
    tot = np.zeros(n, cin.dtype)
    _bwd_scan_rows(a, ab, as_[2], sa, h, hb, hS[2], sh, gh, gb, gs[2], sg, gx, xb, xs[2], sx, ga, qb, as2[2], sq,
                   r, rb, rs, n, max(t0, 1), t1, cg, tot)
    if t0 == 0:
        h0b = _base(h0o, h0s, i, j, k0)[0]
        _bwd_row0(a, ab, as_[2], h0, h0b, h0s[2], has_h0, gh, gb, gs[2], gx, xb, xs[2], ga, qb, as2[2], sq == 0,
                  n, cg, tot, zero, r[_u(rb)])
    _put(H, b, col, cg)
    _put(parts, b, col, tot)


@njit(parallel=True, cache=True, fastmath=_FM)
def _backward(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0,
              gx, xo, xs, ga, ao2, as2, gh0, g0o, g0s, r, ro, rs_, shape, zero, one, bs, nch, nparts, down):
    C0, C1, C2, T = shape
    nchan = C0 * C1 * C2
    if bs == 1 and nch == 1:  # many time-inner channels: contiguous runs of whole channels per task
        for p in prange(nparts):
            _bwd_channels_time(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0, gx, xo, xs, ga, ao2,
                               as2, gh0, g0o, g0s, r, ro, rs_, C1, C2, T, p * nchan // nparts,
                               (p + 1) * nchan // nparts, zero, down)
        return
    nb = (C2 + bs - 1) // bs
    nblk = C0 * C1 * nb
    L = (T + nch - 1) // nch
    last = nch - 1
    cin = np.full((nchan, nch), zero)    # conj(a[e]) g[e] flowing into chunk k from its right
    A = np.full((nchan, nch), one)       # chunk transfer pairs; H[:, k] is chunk k's outgoing cg once scanned
    H = np.full((nchan, nch), zero)
    parts = np.full((nchan, nch), zero)  # per-chunk sums of grad_a when a is constant in time
    Z = np.zeros((nchan, nch), np.uint8)  # the folded chunks that hold a reset
    F = np.full(nchan, -1, np.int64)      # per channel, the last chunk whose incoming cg the chain left unknown
    summed = as2[3] == 0
    if nch > 1:
        # phase 1: the last chunk is scanned (nothing flows into it), chunks 1..nch-2 are folded
        for task in prange(nblk * (nch - 1)):
            blk = task // (nch - 1)
            ck = 1 + task - blk * (nch - 1)
            _bwd_task(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0, gx, xo, xs, ga, ao2, as2, r, ro, rs_,
                      C1, C2, nb, bs, blk, ck * L, min(T, ck * L + L), cin, ck, ck == last, A, H, parts, zero, Z)
        # phase 2: chain the pairs right to left into each chunk's incoming cg, down to the first that is
        # not finite
        for c in prange(nchan):
            cin[c, last - 1] = H[c, last]
            for ck in range(last - 1, 0, -1):
                v = H[c, ck] if Z[c, ck] else A[c, ck] * cin[c, ck] + H[c, ck]
                if not _finite(v):
                    F[c] = ck - 1
                    break
                cin[c, ck - 1] = v
    # phase 3 (the only one when nch == 1): the remaining chunks from their incoming cg
    rest = nch - 1 if nch > 1 else 1
    for task in prange(nblk * rest):
        blk = task // rest
        ck = task - blk * rest
        _bwd_task(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0, gx, xo, xs, ga, ao2, as2, r, ro, rs_,
                  C1, C2, nb, bs, blk, ck * L, min(T, ck * L + L), cin, ck, True, A, H, parts, zero, Z)
    if _any_other(F, -1):
        # phase 4: the channels whose chain stopped, rescanned in order from the first chunk it left unknown
        for c in prange(nchan):
            f = F[c]
            if f >= 0:
                H[c, 0], parts[c, 0] = _bwd_chan(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0, gx, xo,
                                                 xs, ga, ao2, as2, r, ro, rs_, c // (C1 * C2), (c // C2) % C1,
                                                 c % C2, (f + 1) * L, H[c, f + 1], zero)
                for ck in range(1, f + 1):
                    parts[c, ck] = zero
    for c in prange(nchan):
        i = c // (C1 * C2)
        j = (c // C2) % C1
        if has_h0:
            gh0[_at(g0o, g0s, i, j, c % C2, 0)] = store(H[c, 0], gh0)
        if summed:
            s = zero
            for ck in range(nch):
                s += parts[c, ck]
            ga[_at(ao2, as2, i, j, c % C2, 0)] = store(s, ga)


# --------------------------------------------------------------------------------- small problems
#
# Below ``SMALL`` elements a parallel launch (thread wake-up, the per-chunk tables) costs more than
# the scan: a single thread runs every channel whole, by the same runs as ``_fwd_channels_time`` /
# ``_bwd_channels_time``.  These kernels have no parallel loops, so they also compile in a fraction
# of the time of the big ones.

SMALL = 1 << 14


@njit(cache=True, fastmath=_FM)
def _forward_small(a, ao, as_, x, xo, xs, h0, ho, hs, has_h0, o, oo, os_, r, ro, rs_, shape, zero):
    C0, C1, C2, T = shape
    nchan = C0 * C1 * C2
    hin = np.full((nchan, 1), zero)
    if has_h0:
        for c in range(nchan):
            hin[c, 0] = load(h0[_at(ho, hs, c // (C1 * C2), (c // C2) % C1, c % C2, 0)])
    _fwd_channels_time(a, ao, as_, x, xo, xs, o, oo, os_, r, ro, rs_, C1, C2, T, 0, nchan, hin, False)


@njit(cache=True, fastmath=_FM)
def _backward_small(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0,
                    gx, xo, xs, ga, ao2, as2, gh0, g0o, g0s, r, ro, rs_, shape, zero):
    C0, C1, C2, T = shape
    _bwd_channels_time(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0, gx, xo, xs, ga, ao2, as2,
                       gh0, g0o, g0s, r, ro, rs_, C1, C2, T, 0, C0 * C1 * C2, zero, False)


# ----------------------------------------------------------------------------------- the interface
#
# ``forward_launcher(problem)`` makes every decision that depends only on the problem's geometry
# (kernel, task plan, offsets, strides, scalars) once and returns ``run(a, x, h0, out, resets)`` taking
# the operands' flat buffers: the plan cache (``parscan._plans``) keeps the launcher, so a repeated call
# costs the kernel's own dispatch and little else.  ``forward(problem)`` is the one-off call.
#
# Resets reach the kernels as the bool buffer's bytes (a read-only uint8 view) with their canonical
# geometry; without resets, a one-byte zero with zero strides stands in: every step reads "no reset",
# and there is one compiled signature per dtype either way.

RESETS = True  # implements ``resets`` (see parscan.scan)

_NO_RESETS = np.zeros(1, np.uint8)
_NO_RESETS.flags.writeable = False

def _geo(s):
    return s.off, tuple(int(v) for v in s.strides)


def _args(s):
    return (host_view(s.buf),) + _geo(s)


def _scalars(problem):
    acc = problem.acc_dtype.type
    return acc(0), acc(1)


def _resets_geo(problem):
    """(offset, strides) of the problem's resets, or the stand-in's (0, zeros)."""
    return (0, (0, 0, 0, 0)) if problem.resets is None else _geo(problem.resets)


def _flags(buf):
    """The kernels' view of a resets buffer: its bytes, read-only (one signature), or the stand-in."""
    if buf is None:
        return _NO_RESETS
    v = buf.view(np.uint8)
    if v.flags.writeable:
        v = v.view()
        v.flags.writeable = False
    return v


def _dummy(problem):
    buf = np.zeros(1, problem.dtype if problem.dtype != np.float16 else np.uint16)
    buf.flags.writeable = False  # typed like the read-only operands it stands in for (one compile)
    return buf


def walk_down(shape, strides, backward):
    """Whether whole-channel tasks walk their channels downwards: so that each channel starts where the
    previous one ended in memory (one stream per operand for the prefetcher) when time runs up in memory
    (the forward with a positive time stride, the backward with a negative one) while the channel walk
    runs down, or the reverse."""
    step = next((s for n, s in zip(shape[2::-1], strides[2::-1]) if n > 1), 0)
    time_up = (strides[3] > 0) != backward
    return (step > 0) != time_up


def _small(problem):
    return math.prod(problem.shape) <= SMALL


def forward_launcher(problem):
    """``run(a, x, h0, out, resets)`` (flat buffers, h0 / resets None when the problem has none) for
    ``problem``'s geometry."""
    view = host_view  # float16 buffers as their uint16 bit patterns (a's dtype may differ from x's)
    (ao, as_), (xo, xs), (oo, os_) = _geo(problem.a), _geo(problem.x), _geo(problem.out)
    ro, rs_ = _resets_geo(problem)
    has_h0 = problem.h0 is not None
    ho, hs = _geo(problem.h0) if has_h0 else (0, (0, 0, 0, 0))
    dummy = _dummy(problem)
    shape = tuple(int(n) for n in problem.shape)
    zero, one = _scalars(problem)
    if _small(problem):
        def run(a, x, h0, out, resets=None):
            _forward_small(view(a), ao, as_, view(x), xo, xs, dummy if h0 is None else view(h0), ho, hs, has_h0,
                           view(out), oo, os_, _flags(resets), ro, rs_, shape, zero)
        return run
    bs, nch = task_plan(shape, xs)
    nchan = math.prod(shape[:3])
    down = walk_down(shape, xs, False)

    def run(a, x, h0, out, resets=None):
        nparts = max(1, min(nchan, 8 * numba.get_num_threads()))  # whole-channel runs: any split, the same bits
        with parallel_launch():
            _forward(view(a), ao, as_, view(x), xo, xs, dummy if h0 is None else view(h0), ho, hs, has_h0,
                     view(out), oo, os_, _flags(resets), ro, rs_, shape, zero, one, bs, nch, nparts, down)
    return run


def backward_launcher(problem):
    """``run(a, h, grad_h, h0, grad_x, grad_a, grad_h0, resets)`` (flat buffers; h0 and grad_h0 None when
    the problem has none, resets None without resets) for ``problem``'s geometry."""
    view = host_view  # float16 buffers as their uint16 bit patterns (a's dtype may differ from x's)
    geo = [None if s is None else _geo(s) for s in (problem.a, problem.h, problem.grad_h, problem.h0,
                                                    problem.grad_x, problem.grad_a, problem.grad_h0)]
    none = (0, (0, 0, 0, 0))
    (ao, as_), (hO, hS), (go, gs), (h0o, h0s), (xo, xs), (ao2, as2), (g0o, g0s) = [g or none for g in geo]
    ro, rs_ = _resets_geo(problem)
    has_h0 = problem.h0 is not None
    dummy = _dummy(problem)
    wdummy = np.zeros(1, dummy.dtype)  # the writable stand-in for grad_h0
    shape = tuple(int(n) for n in problem.shape)
    zero, one = _scalars(problem)
    if _small(problem):
        def run(a, h, grad_h, h0, grad_x, grad_a, grad_h0, resets=None):
            _backward_small(view(a), ao, as_, view(h), hO, hS, view(grad_h), go, gs,
                            dummy if h0 is None else view(h0), h0o, h0s, has_h0, view(grad_x), xo, xs,
                            view(grad_a), ao2, as2, wdummy if grad_h0 is None else view(grad_h0), g0o, g0s,
                            _flags(resets), ro, rs_, shape, zero)
        return run
    bs, nch = task_plan(shape, gs)
    nchan = math.prod(shape[:3])
    down = walk_down(shape, gs, True)

    def run(a, h, grad_h, h0, grad_x, grad_a, grad_h0, resets=None):
        nparts = max(1, min(nchan, 8 * numba.get_num_threads()))
        with parallel_launch():
            _backward(view(a), ao, as_, view(h), hO, hS, view(grad_h), go, gs, dummy if h0 is None else view(h0),
                      h0o, h0s, has_h0, view(grad_x), xo, xs, view(grad_a), ao2, as2,
                      wdummy if grad_h0 is None else view(grad_h0), g0o, g0s, _flags(resets), ro, rs_, shape, zero,
                      one, bs, nch, nparts, down)
    return run


def forward(problem):
    run_forward(forward_launcher, problem)


def backward(problem):
    run_backward(backward_launcher, problem)
