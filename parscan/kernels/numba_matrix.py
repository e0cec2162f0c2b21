"""The matrix scan's pass (see :mod:`parscan.kernels.matrix_launch`) as a Numba ``cuda.jit`` kernel,
line for line the ``matrix_pass`` of ``scan.cu``.

Columns of n entries step in lockstep, a block holding ``threads // n`` of them side by side in
shared memory (entry i of column q at ``tile[i * cpb + q]``, so a warp reads neighbouring words); a
thread owns one entry and computes ``v_i <- sum_k M_t[i, k] v_k (+ x_t[i])`` each step.  With resets the
flag of the coefficient's step (one byte, broadcast by zero strides) drops the sum (``v_i <- x_t[i]``), and
the aggregate pass writes each chunk's "dropped its incoming state" flag for the carry scan.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import cuda

from .._problem import flat_buffer
from . import matrix_launch
from .numba_scan import _Launcher, _numba_type, _sim_array, _xp


@lru_cache(maxsize=None)
def matrix_kernel(acc_name: str, threads: int):
    """The pass kernel for accumulator (and storage) dtype ``acc_name``, ``threads`` a block."""
    acc = _numba_type(np.dtype(acc_name))
    cplx = np.dtype(acc_name).kind == "c"
    THREADS = threads
    TILE = 2 * threads

    if cplx:
        @cuda.jit(device=True, inline=True)
        def conj(v):
            return v.conjugate()
    else:
        @cuda.jit(device=True, inline=True)
        def conj(v):
            return v

    @cuda.jit
    def matrix_pass(aggregate, A, Ao, As, conj_a, shift, x, xo, xs, h0, h0o, h0s, has_h0, R, Ro, Rs, R_bin, has_r,
                    rc, carry, o, oo, os_, B, T, n, L, nch, reverse, batch_fast):
        tile = cuda.shared.array(TILE, acc)  # double-buffered: step s reads half s % 2
        cpb = THREADS // n
        tid = cuda.threadIdx.x
        q = tid % cpb
        i = tid // cpb
        ncols = n + 1 if aggregate else 1
        gc = cuda.blockIdx.x * cpb + q
        live = i < n and gc < B * nch * ncols
        b = 0
        c = 0
        j = 0
        if live:
            j = gc % ncols
            bc = gc // ncols
            if batch_fast:  # time-major data: neighbouring batch rows are close in memory
                b = bc % B
                c = bc // B
            else:
                c = bc % nch
                b = bc // nch
        state = (not aggregate) or j == n  # the column driven by x
        v = acc(0)
        if live:
            if aggregate:
                v = acc(1) if j == i else acc(0)
            elif c > 0:
                v = carry[(b * (nch - 1) + c - 1) * n + i]
            elif has_h0:
                v = h0[h0o + b * h0s[0] + i * h0s[1]]
        tile[tid] = v
        cuda.syncthreads()
        r_row = Ro
        if has_r and live:
            r_row = Ro + (b // R_bin) * Rs[0] + (b % R_bin) * Rs[1]
        dropped = False  # a step of the chunk without its coefficient
        # a column is active for a prefix of the steps, so an inactive column's stale half is never read
        for s in range(L):
            cur = (s % 2) * THREADS
            p = c * L + s
            if live and p < T:
                t = T - 1 - p if reverse else p
                total = x[xo + b * xs[0] + t * xs[1] + i * xs[2]] if state else acc(0)
                te = t + shift
                coef = te >= 0 and te < T
                if coef and has_r:
                    if R[r_row + te * Rs[2]]:
                        coef = False
                if not coef:
                    dropped = True
                if coef:
                    row = Ao + b * As[0] + te * As[1] + i * As[2]
                    if conj_a:
                        for k in range(n):
                            total += conj(A[row + k * As[3]]) * tile[cur + k * cpb + q]
                    else:
                        for k in range(n):
                            total += A[row + k * As[3]] * tile[cur + k * cpb + q]
                v = total
                tile[THREADS - cur + tid] = v
                if not aggregate:
                    o[oo + b * os_[0] + t * os_[1] + i * os_[2]] = v
            cuda.syncthreads()
        if live and aggregate:
            o[oo + b * os_[0] + c * os_[1] + i * os_[2] + j * os_[3]] = v
            if has_r and j == n and i == 0:
                rc[b * nch + c] = dropped

    return matrix_pass


def _flat(xp, v, written=False):
    buf, off = flat_buffer(xp, v, written)
    return _sim_array(buf), off, tuple(int(s) // v.itemsize for s in v.strides)


def matrix_pass(aggregate, A, conj, shift, x, h0, resets, rc, carry, out, L, nch, reverse):
    """Launch one pass (arguments as in :func:`parscan.kernels.matrix_launch.scan`).  ``resets``: a bool
    (Bo, Bi, T) view (batch row b at [b // Bi, b % Bi]) or None; ``rc``: the aggregate pass's chunk
    flags, a contiguous bool (B, nch) array (with resets)."""
    xp = _xp(out)
    B, T, n = x.shape
    threads = matrix_launch.sizes()[0]
    kernel = matrix_kernel(out.dtype.name, threads)
    pad4 = lambda s: s + (0,) * (4 - len(s))  # noqa: E731
    with _Launcher(out, xp) as run:
        none = xp.zeros(1, out.dtype)
        no_r = xp.zeros(1, np.bool_)
        h0a = _flat(xp, h0) if h0 is not None else (none, 0, (0, 0))
        ra = (*_flat(xp, resets), resets.shape[1]) if resets is not None else (no_r, 0, (0, 0, 0), 1)
        ob, oo, os_ = _flat(xp, out, True)
        cols = B * nch * (n + 1 if aggregate else 1)
        run(kernel, matrix_launch.blocks_for(cols, n, threads), threads,
            bool(aggregate), *_flat(xp, A), bool(conj), int(shift), *_flat(xp, x), *h0a, h0 is not None,
            *ra, resets is not None, _sim_array(rc.reshape(-1)) if rc is not None else no_r,
            _sim_array(carry.reshape(-1)) if carry is not None else none, ob, oo, pad4(os_), B, T, n, L, nch,
            bool(reverse), matrix_launch.batch_fast(x))
