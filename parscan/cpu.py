"""The ``cpu`` backend: Numba ``njit`` kernels, parallel over channels and, for few channels, over time.

Work is cut into tasks of (a block of channels) x (a chunk of time):

- *time-inner* (time is the operand's fast axis, e.g. (B, C, T)): a block is one channel and each task
  runs the plain loop ``h = a[t] * h + x[t]`` over its chunk;
- *channel-inner* (channels are the fast axis, e.g. (T, B, C)): a block is a run of up to
  ``MAX_BLOCK`` neighbouring channels of ``C2``, and each task walks its chunk row by row, updating the
  block's states together (contiguous, vectorisable memory access);
- when there are too few blocks to occupy every thread, time is cut into ``nchunks`` chunks and the
  classic three-phase scan runs: (1) each chunk but the last folds to its transfer pair
  ``(A, H) = (prod a, local scan end)``, (2) the pairs are chained per channel into each chunk's
  incoming state ``h_in[k+1] = A[k] * h_in[k] + H[k]``, (3) each chunk rescans from its incoming state
  and writes.  Phase 1 reads a and x once more; the others touch every element exactly once.

The backward is the same machinery run backwards in time on
``g[t] = grad_h[t] + conj(a[t+1]) g[t+1]``, with the chunk pair ``(A, H) = (prod conj(a), conj(a[s]) g_local[s])``
and ``grad_a`` / ``grad_h0`` computed in the same pass.  float16 accumulates in float32 (see ``_half``).
Results depend only on the problem and the thread count (no atomics): they are bitwise repeatable.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from ._half import conj, host_view, load, store

MAX_BLOCK = 4096  # channels per channel-inner task (states live in a small local array)
MIN_CHUNK = 4096  # time steps below which cutting time into chunks does not pay
_FM = {"contract"}  # allow fused multiply-add; nothing else of fast-math


@njit
def _at(off, s, i, j, k, t):
    return np.uint64(off + i * s[0] + j * s[1] + k * s[2] + t * s[3])


@njit
def _block(blk, C1, C2, nb, bs):
    i = blk // (C1 * nb)
    r = blk - i * (C1 * nb)
    j = r // nb
    k0 = (r - j * nb) * bs
    return i, j, k0, min(C2, k0 + bs)


def task_plan(shape, x_strides, nthreads):
    """``(block, nchunks)`` for a problem of ``shape`` (C0, C1, C2, T) whose x has ``x_strides``.

    ``block == 1`` means time-inner tasks.  Plain Python so that it is unit-tested directly.
    """
    C0, C1, C2, T = shape
    chan_inner = C2 > 1 and abs(x_strides[2]) < abs(x_strides[3])
    bs = min(C2, MAX_BLOCK, max(16, -(-C2 // nthreads))) if chan_inner else 1
    nblk = C0 * C1 * -(-C2 // bs)
    if nblk >= 4 * nthreads or nblk % nthreads == 0:
        nch = 1  # enough (or evenly divisible) channel work
    elif nblk < nthreads:
        nch = -(-nthreads // nblk)
    else:
        nch = nthreads // math.gcd(nblk, nthreads)  # balance the last round of tasks
    nch = max(1, min(nch, T // MIN_CHUNK))
    return bs, nch


# ------------------------------------------------------------------------------------------- forward

@njit(fastmath=_FM)
def _fwd_fold_time(a, ao, as_, x, xo, xs, i, j, k, t0, t1, one, zero):
    A, H = one, zero
    for t in range(t0, t1):
        av = load(a[_at(ao, as_, i, j, k, t)])
        A = A * av
        H = av * H + load(x[_at(xo, xs, i, j, k, t)])
    return A, H


@njit(fastmath=_FM)
def _fwd_scan_time(a, ao, as_, x, xo, xs, o, oo, os_, i, j, k, t0, t1, h):
    for t in range(t0, t1):
        h = load(a[_at(ao, as_, i, j, k, t)]) * h + load(x[_at(xo, xs, i, j, k, t)])
        o[_at(oo, os_, i, j, k, t)] = store(h, o)


@njit(parallel=True, cache=True, fastmath=_FM)
def _forward(a, ao, as_, x, xo, xs, h0, ho, hs, has_h0, o, oo, os_, shape, zero, one, bs, nch):
    C0, C1, C2, T = shape
    nb = (C2 + bs - 1) // bs
    nblk = C0 * C1 * nb
    L = (T + nch - 1) // nch
    nchan = C0 * C1 * C2
    hin = np.full((nchan, nch), zero)
    if has_h0:
        for c in prange(nchan):
            i = c // (C1 * C2)
            j = (c // C2) % C1
            hin[c, 0] = load(h0[_at(ho, hs, i, j, c % C2, 0)])
    if nch > 1:
        A = np.full((nchan, nch), one)
        H = np.full((nchan, nch), zero)
        for task in prange(nblk * (nch - 1)):
            blk = task // (nch - 1)
            ck = task - blk * (nch - 1)
            i, j, k0, k1 = _block(blk, C1, C2, nb, bs)
            t0 = ck * L
            t1 = min(T, t0 + L)
            cbase = (i * C1 + j) * C2
            if bs == 1:
                A[cbase + k0, ck], H[cbase + k0, ck] = _fwd_fold_time(a, ao, as_, x, xo, xs, i, j, k0,
                                                                      t0, t1, one, zero)
            else:
                Av = np.full(k1 - k0, one)
                Hv = np.full(k1 - k0, zero)
                for t in range(t0, t1):
                    for k in range(k0, k1):
                        av = load(a[_at(ao, as_, i, j, k, t)])
                        Av[k - k0] = Av[k - k0] * av
                        Hv[k - k0] = av * Hv[k - k0] + load(x[_at(xo, xs, i, j, k, t)])
                for k in range(k0, k1):
                    A[cbase + k, ck] = Av[k - k0]
                    H[cbase + k, ck] = Hv[k - k0]
        for c in prange(nchan):
            for ck in range(nch - 1):
                hin[c, ck + 1] = A[c, ck] * hin[c, ck] + H[c, ck]
    for task in prange(nblk * nch):
        blk = task // nch
        ck = task - blk * nch
        i, j, k0, k1 = _block(blk, C1, C2, nb, bs)
        t0 = ck * L
        t1 = min(T, t0 + L)
        cbase = (i * C1 + j) * C2
        if bs == 1:
            _fwd_scan_time(a, ao, as_, x, xo, xs, o, oo, os_, i, j, k0, t0, t1, hin[cbase + k0, ck])
        else:
            hv = np.empty(k1 - k0, hin.dtype)
            for k in range(k0, k1):
                hv[k - k0] = hin[cbase + k, ck]
            for t in range(t0, t1):
                for k in range(k0, k1):
                    v = load(a[_at(ao, as_, i, j, k, t)]) * hv[k - k0] + load(x[_at(xo, xs, i, j, k, t)])
                    hv[k - k0] = v
                    o[_at(oo, os_, i, j, k, t)] = store(v, o)


# ------------------------------------------------------------------------------------------ backward

@njit(fastmath=_FM)
def _bwd_fold_time(a, ao, as_, gh, go, gs, i, j, k, t0, t1, one, zero):
    A, cg = one, zero
    for t in range(t1 - 1, t0 - 1, -1):
        ca = conj(load(a[_at(ao, as_, i, j, k, t)]))
        cg = ca * (load(gh[_at(go, gs, i, j, k, t)]) + cg)
        A = A * ca
    return A, cg


@njit(fastmath=_FM)
def _bwd_scan_time(a, ao, as_, h, hO, hS, gh, go, gs, gx, xo, xs, ga, ao2, as2, i, j, k, t0, t1, cg,
                   hprev0, zero):
    """One channel, steps t1-1 .. t0; returns (conj(a[t0]) g[t0], sum of grad_a terms if summed)."""
    total = zero
    summed = as2[3] == 0
    for t in range(t1 - 1, t0 - 1, -1):
        g = load(gh[_at(go, gs, i, j, k, t)]) + cg
        gx[_at(xo, xs, i, j, k, t)] = store(g, gx)
        hp = load(h[_at(hO, hS, i, j, k, t - 1)]) if t > 0 else hprev0
        v = g * conj(hp)
        if summed:
            total += v
        else:
            ga[_at(ao2, as2, i, j, k, t)] = store(v, ga)
        cg = conj(load(a[_at(ao, as_, i, j, k, t)])) * g
    return cg, total


@njit(parallel=True, cache=True, fastmath=_FM)
def _backward(a, ao, as_, h, hO, hS, gh, go, gs, h0, h0o, h0s, has_h0,
              gx, xo, xs, ga, ao2, as2, gh0, g0o, g0s, shape, zero, one, bs, nch):
    C0, C1, C2, T = shape
    nb = (C2 + bs - 1) // bs
    nblk = C0 * C1 * nb
    L = (T + nch - 1) // nch
    nchan = C0 * C1 * C2
    cin = np.full((nchan, nch), zero)   # conj(a[e]) * g[e] flowing into chunk k from its right
    parts = np.full((nchan, nch), zero)  # per-chunk sums of grad_a when a is constant in time
    summed = as2[3] == 0
    if nch > 1:
        A = np.full((nchan, nch), one)
        H = np.full((nchan, nch), zero)
        for task in prange(nblk * (nch - 1)):
            blk = task // (nch - 1)
            ck = 1 + task - blk * (nch - 1)
            i, j, k0, k1 = _block(blk, C1, C2, nb, bs)
            t0 = ck * L
            t1 = min(T, t0 + L)
            cbase = (i * C1 + j) * C2
            if bs == 1:
                A[cbase + k0, ck], H[cbase + k0, ck] = _bwd_fold_time(a, ao, as_, gh, go, gs, i, j, k0,
                                                                      t0, t1, one, zero)
            else:
                for t in range(t1 - 1, t0 - 1, -1):
                    for k in range(k0, k1):
                        ca = conj(load(a[_at(ao, as_, i, j, k, t)]))
                        H[cbase + k, ck] = ca * (load(gh[_at(go, gs, i, j, k, t)]) + H[cbase + k, ck])
                        A[cbase + k, ck] = A[cbase + k, ck] * ca
        for c in prange(nchan):
            for ck in range(nch - 1, 0, -1):
                cin[c, ck - 1] = A[c, ck] * cin[c, ck] + H[c, ck]
    for task in prange(nblk * nch):
        blk = task // nch
        ck = task - blk * nch
        i, j, k0, k1 = _block(blk, C1, C2, nb, bs)
        t0 = ck * L
        t1 = min(T, t0 + L)
        cbase = (i * C1 + j) * C2
        if bs == 1:
            k = k0
            hp0 = load(h0[_at(h0o, h0s, i, j, k, 0)]) if has_h0 else zero
            cg, tot = _bwd_scan_time(a, ao, as_, h, hO, hS, gh, go, gs, gx, xo, xs, ga, ao2, as2,
                                     i, j, k, t0, t1, cin[cbase + k, ck], hp0, zero)
            parts[cbase + k, ck] = tot
            if ck == 0 and has_h0:
                gh0[_at(g0o, g0s, i, j, k, 0)] = store(cg, gh0)
        else:
            n = k1 - k0
            cg = np.empty(n, cin.dtype)
            tot = np.full(n, zero)
            for k in range(k0, k1):
                cg[k - k0] = cin[cbase + k, ck]
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
            for k in range(k0, k1):
                parts[cbase + k, ck] = tot[k - k0]
                if ck == 0 and has_h0:
                    gh0[_at(g0o, g0s, i, j, k, 0)] = store(cg[k - k0], gh0)
    if summed:
        for c in prange(nchan):
            i = c // (C1 * C2)
            j = (c // C2) % C1
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
    bs, nch = task_plan(problem.shape, problem.x.strides, numba.get_num_threads())
    h0 = _args(problem.h0) if problem.h0 is not None else _dummy(problem)
    _forward(*_args(problem.a), *_args(problem.x), *h0, problem.h0 is not None, *_args(problem.out),
             problem.shape, *_scalars(problem), bs, nch)


def backward(problem):
    bs, nch = task_plan(problem.shape, problem.grad_h.strides, numba.get_num_threads())
    has_h0 = problem.h0 is not None
    h0 = _args(problem.h0) if has_h0 else _dummy(problem)
    gh0 = _args(problem.grad_h0) if problem.grad_h0 is not None else _dummy(problem)
    _backward(*_args(problem.a), *_args(problem.h), *_args(problem.grad_h), *h0, has_h0,
              *_args(problem.grad_x), *_args(problem.grad_a), *gh0, problem.shape, *_scalars(problem),
              bs, nch)
