"""Non-finite values before a reset (issue #18): the reset drops the state, so what came before it,
inf or NaN included, must not reach past it.  Shared by the host backends' tests (test_resets.py), the
CUDA C kernels on the CPU (test_cuda_cpu.py) and the Numba kernels in the simulator (tests/sim).

A backend that multiplies a carried state by 0 at a reset (``0 * inf = NaN``), or chains a tile's or
chunk's transfer pair holding a reset into a non-finite incoming state, makes everything after the
reset NaN; :func:`assert_same_nonfinite` then fails.
"""

import numpy as np

from conftest import assert_close, rand

POISON = (np.inf, np.nan, -np.inf)


def reset_steps(T):
    """Where the state restarts: t = 0, two steps inside (with resets-free stretches between, so tiles
    and chunks without a reset carry the poison into the ones with one), and t = T - 1."""
    return sorted({0, int(0.456 * T), int(0.6826 * T), T - 1})


def _steps(T, fractions, mirror):
    steps = [int(f * T) + (1 if f < 0.05 else 0) for f in fractions]
    return [T - 1 - t for t in steps] if mirror else steps


def poisoned(rng, shape, axis, dtype, a_kind="full", mirror=False):
    """``(a, x, h0, resets, grad_h)`` for the elementwise scan along ``axis``: resets at
    :func:`reset_steps` (shape (T,) broadcast along ``axis``), x poisoned (inf, NaN, -inf) in every
    channel between them, a full ``a`` NaN or inf at the reset steps (it reads as 0 there: never read
    as a number), h0 NaN (dropped by the reset at t = 0, or at T - 1 in reverse), grad_h
    poisoned at two steps (so g is non-finite down to the previous reset, grad_h0 included, which the
    reset at t = 0 must zero).  ``mirror``: every step t of the pattern at T - 1 - t instead (what
    either direction meets first, the other meets last)."""
    axis %= len(shape)
    T = shape[axis]
    x = rand(rng, shape, dtype)
    gh = rand(rng, shape, dtype)
    if a_kind == "full":
        a = rand(rng, shape, dtype, "a")
    else:  # constant in time
        a = rand(rng, tuple(1 if d == axis else n for d, n in enumerate(shape)), dtype, "a")
    idx = lambda t: (slice(None),) * axis + (t,)  # noqa: E731
    for t, v in zip(_steps(T, (0.011, 0.556, 0.778), mirror), POISON):
        x[idx(t)] = v
    for t, v in zip(_steps(T, (0.333, 0.889), mirror), POISON[1:]):
        gh[idx(t)] = v
    h0 = np.full(shape[:axis] + shape[axis + 1:], np.nan, dtype)
    r = np.zeros(T, bool)
    r[reset_steps(T)] = True
    if mirror:
        r = r[::-1].copy()
    if a_kind == "full":
        for k, t in enumerate(np.flatnonzero(r)):
            a[idx(t)] = POISON[k % 2]
    rshape = [1] * (len(shape) - axis)
    rshape[0] = T
    return a, x, h0, r.reshape(rshape), gh


def poisoned_matrix(rng, xs, As, dtype, rshape=None):
    """``(A, x, h0, resets, grad_h)`` for the matrix scan (x (..., T, n), A ``As``): as :func:`poisoned`,
    the poison in one state component (A spreads it), A NaN at the reset steps when it has a time axis,
    resets of shape ``rshape`` (default (T,)) set at :func:`reset_steps` in every batch row."""
    T, n = xs[-2], xs[-1]
    x, gh = rand(rng, xs, dtype), rand(rng, xs, dtype)
    wide = "complex128" if np.dtype(dtype).kind == "c" else "float64"
    A = (rand(rng, As, wide) * (0.7 / np.sqrt(n))).astype(dtype)
    for t, v, i in zip(_steps(T, (0.011, 0.556, 0.778), False), POISON, range(3)):
        x[..., t, i % n] = v
    for t, v in zip(_steps(T, (0.333, 0.889), False), POISON[1:]):
        gh[..., t, 0] = v
    h0 = np.full(xs[:-2] + (n,), np.nan, dtype)
    rshape = (T,) if rshape is None else tuple(rshape)
    r = np.zeros(rshape, bool)
    r[..., reset_steps(T)] = True
    if As[-3] == T:
        A[..., reset_steps(T), :, :] = np.nan
    return A, x, h0, r, gh


def assert_same_nonfinite(got, want, dtype):
    """``got`` is non-finite exactly where the reference ``want`` is, and close to it elsewhere; the
    reference has both (else the case proves nothing)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    fin = np.isfinite(want)
    bad = np.isfinite(got) != fin
    assert not bad.any(), f"{bad.sum()} entries non-finite in one and not the other, first at {np.argwhere(bad)[0]}"
    assert_close(np.where(fin, got, 0), np.where(fin, want, 0), dtype)


def assert_some_of_both(v):
    v = np.asarray(v)
    fin = np.isfinite(v)
    assert fin.any() and not fin.all(), "the case needs finite and non-finite entries"
