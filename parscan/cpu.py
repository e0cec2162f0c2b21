"""The ``cpu`` backend: Numba ``njit`` kernels, parallel over channels and, for few channels, over time.

Work is cut into tasks of (a block of channels) x (a chunk of time):

- *time-inner* (time is the operand's fast axis, e.g. (B, C, T)): a block is one channel and each task
  runs the loop ``h = a[t] * h + x[t]`` over its chunk, four steps at a time: the block's own prefix
  pairs (P_m, S_m) = (a[t+m]...a[t], local scan) are computed off the critical path and
  ``h[t+m] = P_m h + S_m``, so the loop-carried chain is one fused multiply-add per four steps, not
  per step (the plain loop is bound by that chain's latency, not by memory);
- *channel-inner* (channels are the fast axis, e.g. (T, B, C)): a block is a run of neighbouring
  channels of ``C2`` (whole rows up to ``WHOLE_ROW`` channels, else up to ``MAX_BLOCK``), and each task
  walks its chunk row by row, updating the block's states together (contiguous, vectorisable access);
- when there are too few blocks to occupy every thread, time is cut into ``nchunks`` chunks and a
  three-phase scan runs: (1) chunk 0 is scanned from h0 and every later chunk but the last is folded
  to its transfer pair ``(A, H) = (prod a, local scan end)``, in parallel; (2) the pairs are chained per
  channel into each chunk's incoming state ``h_in[k+1] = A[k] * h_in[k] + H[k]``; (3) chunks 1.. rescan
  from their incoming states and write.  Folded chunks read a and x twice; everything else once.

The backward is the same machinery run backwards in time on
``g[t] = grad_h[t] + conj(a[t+1]) g[t+1]``, with the chunk pair ``(A, H) = (prod conj(a), conj(a[s]) g_local[s])``
(the last chunk is the one scanned in phase 1) and ``grad_a`` / ``grad_h0`` computed in the same pass.
float16 accumulates in float32 (see ``_half``).  Results depend only on the problem and the thread
count (no atomics): they are bitwise repeatable.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from ._half import conj, host_view, load, load_as, store

MAX_BLOCK = 4096  # channels per channel-inner task (states live in a small local array)
WHOLE_ROW = 2048  # channel-inner rows up to this many channels are never split between tasks
MIN_CHUNK = 4096  # time steps below which cutting time into chunks does not pay
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


@njit
def _block(blk, C1, C2, nb, bs):
    i = blk // (C1 * nb)
    r = blk - i * (C1 * nb)
    j = r // nb
    k0 = (r - j * nb) * bs
    return i, j, k0, min(C2, k0 + bs)


def task_plan(shape, x_strides, nthreads):
    """``(block, nchunks)`` for a problem of ``shape`` (C0, C1, C2, T) whose x has ``x_strides``.

    ``block == 1`` means time-inner tasks.  Channel-inner blocks keep whole rows up to ``WHOLE_ROW``
    channels: two threads sharing every cache line pair of a short row waste the prefetcher's
    bandwidth.  With ``nchunks > 1`` each phase runs ``blocks * (nchunks - 1)`` tasks, so the chunk
    count makes that a multiple of the thread count.  Plain Python so that it is unit-tested directly.
    """
    C0, C1, C2, T = shape
    chan_inner = C2 > 1 and abs(x_strides[2]) < abs(x_strides[3])
    if not chan_inner:
        bs = 1
    elif C2 <= WHOLE_ROW:
        bs = C2
    else:
        bs = min(C2, MAX_BLOCK, max(WHOLE_ROW, -(-C2 // nthreads)))
    nblk = C0 * C1 * -(-C2 // bs)
    if nblk >= 4 * nthreads or nblk % nthreads == 0:
        nch = 1  # enough (or evenly divisible) channel work
    else:
        nch = 1 + nthreads // math.gcd(nblk, nthreads)
    nch = max(1, min(nch, T // MIN_CHUNK))
    return bs, nch


# ------------------------------------------------------------------------------------------- forward

@njit(fastmath=_FM)
def _fwd_fold_time(a, ao, as_, x, xo, xs, i, j, k, t0, t1, one, zero):
    """Fold steps t0..t1-1 of one channel into its transfer pair (A, H): h_out = A * h_in + H.

    Four steps at a time: their own pair is built off the critical path, so the loop-carried chain is
    one multiply and one fused multiply-add per four steps instead of per step."""
    ab, sa = _base(ao, as_, i, j, k)
    xb, sx = _base(xo, xs, i, j, k)
    A, H = one, zero
    t = t0
    while t + 4 <= t1:
        a0, a1, a2, a3 = _load4(a, ab, sa, t, H)
        x0, x1, x2, x3 = _load4(x, xb, sx, t, H)
        p = a3 * a2
        p = p * (a1 * a0)
        s = a3 * (a2 * (a1 * x0 + x1) + x2) + x3
        A = A * p
        H = p * H + s
        t += 4
    while t < t1:
        av = load(a[_u(ab + t * sa)])
        A = A * av
        H = av * H + load(x[_u(xb + t * sx)])
        t += 1
    return A, H


@njit(fastmath=_FM)
def _fwd_scan_time(a, ao, as_, x, xo, xs, o, oo, os_, i, j, k, t0, t1, h):
    """Scan steps t0..t1-1 of one channel from state h, writing every state; returns the last.

    Blocked by four like ``_fwd_fold_time``: h[t+m] = P_m h + S_m with (P_m, S_m) the block's own
    prefix pairs, so only ``h = P_3 h + S_3`` sits on the loop-carried chain."""
    ab, sa = _base(ao, as_, i, j, k)
    xb, sx = _base(xo, xs, i, j, k)
    ob, so = _base(oo, os_, i, j, k)
    t = t0
    while t + 4 <= t1:
        a0, a1, a2, a3 = _load4(a, ab, sa, t, h)
        x0, x1, x2, x3 = _load4(x, xb, sx, t, h)
        p1 = a1 * a0
        s1 = a1 * x0 + x1
        p2 = a2 * p1
        s2 = a2 * s1 + x2
        p3 = a3 * p2
        s3 = a3 * s2 + x3
        o[_u(ob + t * so)] = store(a0 * h + x0, o)
        o[_u(ob + (t + 1) * so)] = store(p1 * h + s1, o)
        o[_u(ob + (t + 2) * so)] = store(p2 * h + s2, o)
        h = p3 * h + s3
        o[_u(ob + (t + 3) * so)] = store(h, o)
        t += 4
    while t < t1:
        h = load(a[_u(ab + t * sa)]) * h + load(x[_u(xb + t * sx)])
        o[_u(ob + t * so)] = store(h, o)
        t += 1
    return h


@njit(fastmath=_FM)
def _fwd_channels_time(a, ao, as_, x, xo, xs, o, oo, os_, C1, C2, T, c0, c1, hin):
    """Time-inner scans of whole channels c0..c1-1 (flat index), walking (i, j, k) without divisions:
    with many short channels the per-task index arithmetic would otherwise cost as much as the scan."""
    i = c0 // (C1 * C2)
    j = (c0 // C2) % C1
    k = c0 % C2
    for c in range(c0, c1):
        _fwd_scan_time(a, ao, as_, x, xo, xs, o, oo, os_, i, j, k, 0, T, hin[c, 0])
        k += 1
        if k == C2:
            k = 0
            j += 1
            if j == C1:
                j = 0
                i += 1


@njit(fastmath=_FM)
def _fwd_fold_rows(a, ao, as_, x, xo, xs, i, j, k0, k1, t0, t1, Av, Hv):
    """Channel-inner fold of channels k0..k1-1 over steps t0..t1-1 into the pairs Av, Hv."""
    for t in range(t0, t1):
        for k in range(k0, k1):
            av = load(a[_at(ao, as_, i, j, k, t)])
            Av[k - k0] = Av[k - k0] * av
            Hv[k - k0] = av * Hv[k - k0] + load(x[_at(xo, xs, i, j, k, t)])


@njit(fastmath=_FM)
def _fwd_scan_rows(a, ao, as_, x, xo, xs, o, oo, os_, i, j, k0, k1, t0, t1, hv):
    """Channel-inner scan of channels k0..k1-1 over steps t0..t1-1 from the states hv (updated)."""
    for t in range(t0, t1):
        for k in range(k0, k1):
            v = load(a[_at(ao, as_, i, j, k, t)]) * hv[k - k0] + load(x[_at(xo, xs, i, j, k, t)])
            hv[k - k0] = v
            o[_at(oo, os_, i, j, k, t)] = store(v, o)


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


@njit(fastmath=_FM)
def _fwd_task(a, ao, as_, x, xo, xs, o, oo, os_, C1, C2, nb, bs, blk, t0, t1, hin, col, scan, A, H):
    """One task: block ``blk`` over steps t0..t1-1; scans from hin[:, col] into H[:, col] when ``scan``,
    else folds into (A, H)[:, col]."""
    i, j, k0, k1 = _block(blk, C1, C2, nb, bs)
    cbase = (i * C1 + j) * C2
    if bs == 1:
        c = cbase + k0
        if scan:
            H[c, col] = _fwd_scan_time(a, ao, as_, x, xo, xs, o, oo, os_, i, j, k0, t0, t1, hin[c, col])
        else:
            A[c, col], H[c, col] = _fwd_fold_time(a, ao, as_, x, xo, xs, i, j, k0, t0, t1,
                                                  A[c, col], H[c, col])
        return
    n, b = k1 - k0, cbase + k0
    if scan:
        hv = _take(hin, b, n, col)
        _fwd_scan_rows(a, ao, as_, x, xo, xs, o, oo, os_, i, j, k0, k1, t0, t1, hv)
        _put(H, b, col, hv)
    else:
        Av, Hv = _take(A, b, n, col), _take(H, b, n, col)
        _fwd_fold_rows(a, ao, as_, x, xo, xs, i, j, k0, k1, t0, t1, Av, Hv)
        _put(A, b, col, Av)
        _put(H, b, col, Hv)


@njit(parallel=True, cache=True, fastmath=_FM)
def _forward(a, ao, as_, x, xo, xs, h0, ho, hs, has_h0, o, oo, os_, shape, zero, one, bs, nch, nparts):
    C0, C1, C2, T = shape
    nb = (C2 + bs - 1) // bs
    nblk = C0 * C1 * nb
    L = (T + nch - 1) // nch
    nchan = C0 * C1 * C2
    hin = np.full((nchan, nch), zero)   # state entering each chunk
    A = np.full((nchan, nch), one)      # chunk transfer pairs; H[:, 0] is chunk 0's final state
    H = np.full((nchan, nch), zero)
    if has_h0:
        for c in prange(nchan):
            i = c // (C1 * C2)
            j = (c // C2) % C1
            hin[c, 0] = load(h0[_at(ho, hs, i, j, c % C2, 0)])
    if bs == 1 and nch == 1:  # many time-inner channels: contiguous runs of whole channels per task
        for p in prange(nparts):
            _fwd_channels_time(a, ao, as_, x, xo, xs, o, oo, os_, C1, C2, T, p * nchan // nparts,
                               (p + 1) * nchan // nparts, hin)
        return
    first = 0
    if nch > 1:
        # phase 1: chunk 0 is scanned (its incoming state is known), chunks 1..nch-2 are folded
        for task in prange(nblk * (nch - 1)):
            blk = task // (nch - 1)
            ck = task - blk * (nch - 1)
            _fwd_task(a, ao, as_, x, xo, xs, o, oo, os_, C1, C2, nb, bs, blk, ck * L,
                      min(T, ck * L + L), hin, ck, ck == 0, A, H)
        # phase 2: chain the pairs into each chunk's incoming state
        for c in prange(nchan):
            hin[c, 1] = H[c, 0]
            for ck in range(1, nch - 1):
                hin[c, ck + 1] = A[c, ck] * hin[c, ck] + H[c, ck]
        first = 1
    # phase 3 (the only phase when nch == 1): scan the remaining chunks from their incoming states
    for task in prange(nblk * (nch - first)):
        blk = task // (nch - first)
        ck = first + task - blk * (nch - first)
        _fwd_task(a, ao, as_, x, xo, xs, o, oo, os_, C1, C2, nb, bs, blk, ck * L,
                  min(T, ck * L + L), hin, ck, True, A, H)


# ------------------------------------------------------------------------------------------ backward

@njit(fastmath=_FM)
def _bwd_fold_time(a, ao, as_, gh, go, gs, i, j, k, t0, t1, A, H):
    """Fold steps t1-1 .. t0 of one channel, right to left, into (A, H): cg_out = A * cg_in + H, where
    cg is ``conj(a[t]) g[t]`` flowing out of the chunk's left end.  Blocked by four (see forward)."""
    ab, sa = _base(ao, as_, i, j, k)
    gb, sg = _base(go, gs, i, j, k)
    t = t1 - 1
    while t - 3 >= t0:
        b3, b2, b1, b0 = _load4(a, ab, sa, t - 3, H)  # b0 = a[t], ..., b3 = a[t-3]
        g3, g2, g1, g0 = _load4(gh, gb, sg, t - 3, H)
        b0, b1, b2, b3 = conj(b0), conj(b1), conj(b2), conj(b3)
        p = (b0 * b1) * (b2 * b3)
        s = b3 * (g3 + b2 * (g2 + b1 * (g1 + b0 * g0)))
        A = A * p
        H = p * H + s
        t -= 4
    while t >= t0:
        ca = conj(load_as(a[_u(ab + t * sa)], H))
        H = ca * (load_as(gh[_u(gb + t * sg)], H) + H)
        A = A * ca
        t -= 1
    return A, H


@njit(fastmath=_FM)
def _bwd_scan_time(a, ao, as_, h, hO, hS, gh, go, gs, gx, xo, xs, ga, ao2, as2, i, j, k, t0, t1, cg,
                   hprev0, zero):
    """One channel, steps t1-1 .. t0 from the incoming ``cg``: writes grad_x and grad_a (or sums grad_a
    when a is constant in time); returns (conj(a[t0]) g[t0], the grad_a sum).

    Blocked by four: with b = conj(a), g[t-m] = S_m + P_m cg for the block's own prefix pairs, and only
    ``cg = (b[t-3] P_3) cg + b[t-3] S_3`` sits on the loop-carried chain."""
    ab, sa = _base(ao, as_, i, j, k)
    hb, sh = _base(hO, hS, i, j, k)
    gb, sg = _base(go, gs, i, j, k)
    xb, sx = _base(xo, xs, i, j, k)
    qb, sq = _base(ao2, as2, i, j, k)
    summed = sq == 0
    total = zero
    t = t1 - 1
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
        cg = (b3 * p3) * cg + b3 * s3
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


@njit(fastmath=_FM)
def _bwd_fold_rows(a, ao, as_, gh, go, gs, i, j, k0, k1, t0, t1, Av, Hv):
    """Channel-inner fold of channels k0..k1-1 over steps t1-1 .. t0 into the pairs Av, Hv."""
    for t in range(t1 - 1, t0 - 1, -1):
        for k in range(k0, k1):
            ca = conj(load(a[_at(ao, as_, i, j, k, t)]))
            Hv[k - k0] = ca * (load(gh[_at(go, gs, i, j, k, t)]) + Hv[k - k0])
            Av[k - k0] = Av[k - k0] * ca


@njit(fastmath=_FM)
def _bwd_scan_rows(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0, gx, xo, xs, ga, ao2, as2,
                   i, j, k0, k1, t0, t1, cg, tot, zero):
    """Channel-inner backward of channels k0..k1-1 over steps t1-1 .. t0 from ``cg`` (updated); grad_a
    terms are written, or added into ``tot`` when a is constant in time."""
    summed = as2[3] == 0
    for t in range(t1 - 1, t0 - 1, -1):
        for k in range(k0, k1):
            g = load(gh[_at(go, gs, i, j, k, t)]) + cg[k - k0]
            gx[_at(xo, xs, i, j, k, t)] = store(g, gx)
            if t > 0:
                hp = load(h[_at(hO, hS, i, j, k, t - 1)])
            elif has_h0:
                hp = load(h0[_at(h0o, h0s, i, j, k, 0)])
            else:
                hp = zero
            v = g * conj(hp)
            if summed:
                tot[k - k0] += v
            else:
                ga[_at(ao2, as2, i, j, k, t)] = store(v, ga)
            cg[k - k0] = conj(load(a[_at(ao, as_, i, j, k, t)])) * g


@njit(fastmath=_FM)
def _bwd_task(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0, gx, xo, xs, ga, ao2, as2,
              C1, C2, nb, bs, blk, t0, t1, cin, col, scan, A, H, parts, zero):
    """One backward task: block ``blk`` over steps t1-1 .. t0.  ``scan``: from cin[:, col], writing
    grad_x / grad_a, the outgoing cg into H[:, col] and the grad_a sums into parts[:, col]; else a fold
    into (A, H)[:, col]."""
    i, j, k0, k1 = _block(blk, C1, C2, nb, bs)
    cbase = (i * C1 + j) * C2
    n = k1 - k0
    if bs == 1:
        c = cbase + k0
        if scan:
            hp0 = load_as(h0[_at(h0o, h0s, i, j, k0, 0)], zero) if has_h0 else zero
            H[c, col], parts[c, col] = _bwd_scan_time(a, ao, as_, h, hO, hS, gh, go, gs, gx, xo, xs,
                                                      ga, ao2, as2, i, j, k0, t0, t1, cin[c, col], hp0, zero)
        else:
            A[c, col], H[c, col] = _bwd_fold_time(a, ao, as_, gh, go, gs, i, j, k0, t0, t1,
                                                  A[c, col], H[c, col])
    elif scan:
        cg = _take(cin, cbase + k0, n, col)
        tot = np.zeros(n, cin.dtype)
        _bwd_scan_rows(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0, gx, xo, xs, ga, ao2,
                       as2, i, j, k0, k1, t0, t1, cg, tot, zero)
        _put(H, cbase + k0, col, cg)
        _put(parts, cbase + k0, col, tot)
    else:
        Av, Hv = _take(A, cbase + k0, n, col), _take(H, cbase + k0, n, col)
        _bwd_fold_rows(a, ao, as_, gh, go, gs, i, j, k0, k1, t0, t1, Av, Hv)
        _put(A, cbase + k0, col, Av)
        _put(H, cbase + k0, col, Hv)


@njit(parallel=True, cache=True, fastmath=_FM)
def _backward(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0,
              gx, xo, xs, ga, ao2, as2, gh0, g0o, g0s, shape, zero, one, bs, nch):
    C0, C1, C2, T = shape
    nb = (C2 + bs - 1) // bs
    nblk = C0 * C1 * nb
    L = (T + nch - 1) // nch
    nchan = C0 * C1 * C2
    last = nch - 1
    cin = np.full((nchan, nch), zero)    # conj(a[e]) g[e] flowing into chunk k from its right
    A = np.full((nchan, nch), one)       # chunk transfer pairs; H[:, k] is chunk k's outgoing cg once scanned
    H = np.full((nchan, nch), zero)
    parts = np.full((nchan, nch), zero)  # per-chunk sums of grad_a when a is constant in time
    summed = as2[3] == 0
    if nch > 1:
        # phase 1: the last chunk is scanned (nothing flows into it), chunks 1..nch-2 are folded
        for task in prange(nblk * (nch - 1)):
            blk = task // (nch - 1)
            ck = 1 + task - blk * (nch - 1)
            _bwd_task(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0, gx, xo, xs, ga, ao2, as2,
                      C1, C2, nb, bs, blk, ck * L, min(T, ck * L + L), cin, ck, ck == last, A, H, parts, zero)
        # phase 2: chain the pairs right to left into each chunk's incoming cg
        for c in prange(nchan):
            cin[c, last - 1] = H[c, last]
            for ck in range(last - 1, 0, -1):
                cin[c, ck - 1] = A[c, ck] * cin[c, ck] + H[c, ck]
    # phase 3 (the only one when nch == 1): the remaining chunks from their incoming cg
    rest = nch - 1 if nch > 1 else 1
    for task in prange(nblk * rest):
        blk = task // rest
        ck = task - blk * rest
        _bwd_task(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0, gx, xo, xs, ga, ao2, as2,
                  C1, C2, nb, bs, blk, ck * L, min(T, ck * L + L), cin, ck, True, A, H, parts, zero)
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


# ----------------------------------------------------------------------------------- the interface

def _args(s):
    return host_view(s.buf), s.off, tuple(int(v) for v in s.strides)


def _scalars(problem):
    acc = problem.acc_dtype.type
    return acc(0), acc(1)


def _dummy(problem):
    return (np.zeros(1, problem.dtype if problem.dtype != np.float16 else np.uint16), 0, (0, 0, 0, 0))


def forward(problem):
    nthreads = numba.get_num_threads()
    bs, nch = task_plan(problem.shape, problem.x.strides, nthreads)
    nparts = max(1, min(math.prod(problem.shape[:3]), 8 * nthreads))
    h0 = _args(problem.h0) if problem.h0 is not None else _dummy(problem)
    _forward(*_args(problem.a), *_args(problem.x), *h0, problem.h0 is not None, *_args(problem.out),
             problem.shape, *_scalars(problem), bs, nch, nparts)


def backward(problem):
    bs, nch = task_plan(problem.shape, problem.grad_h.strides, numba.get_num_threads())
    has_h0 = problem.h0 is not None
    h0 = _args(problem.h0) if has_h0 else _dummy(problem)
    gh0 = _args(problem.grad_h0) if problem.grad_h0 is not None else _dummy(problem)
    _backward(*_args(problem.a), *_args(problem.h), *_args(problem.grad_h), *h0, has_h0,
              *_args(problem.grad_x), *_args(problem.grad_a), *gh0, problem.shape, *_scalars(problem),
              bs, nch)
