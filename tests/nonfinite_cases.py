"""inf / -inf / NaN inputs for the kernels' tests (issue #23): where they go and how results compare.

Each channel of a (C, T) problem (time on ``axis``) gets one poisoned step: the first, a thread's edge,
a tile's edge (``tile`` steps), the middle or the last, cycling +inf, -inf, NaN over the channels, in
x, a or h0 (three channels' h0 in four).  For a poisoned ``a`` the data are positive, so the state that
meets the infinite decay has one sign however it is summed (see parscan/kernels/scan.cu, ``scale``).
"""

import numpy as np

from conftest import assert_close, rand

VALUES = (np.inf, -np.inf, np.nan)


def positions(T, tile, items):
    """The poisoned steps: first, a thread's last and next first, a tile's, the middle, the last."""
    cand = [0, items - 1, items, tile - 1, tile, 2 * tile + 1, T // 2, T - 1]
    return sorted({p for p in cand if 0 <= p < T})


def problem(rng, shape, axis, dtype, where, tile, items):
    """(a, x, h0, grad_h) with time on ``axis`` of a 2-D ``shape``; ``where`` in "x", "a", "h0"."""
    T = shape[axis]
    x, a, gh = rand(rng, shape, dtype), rand(rng, shape, dtype, "a"), rand(rng, shape, dtype)
    h0 = rand(rng, (shape[1 - axis % 2],), dtype)
    if where == "a":  # positive states: an infinite decay meets one sign (see the module docstring)
        x, gh, h0 = (np.abs(v.real).astype(dtype) for v in (x, gh, h0))
        a = np.abs(a.real).astype(dtype)
    xt, at_, gt = (np.moveaxis(v, axis, -1) for v in (x, a, gh))  # views: (C, T)
    pos = positions(T, tile, items)
    for c in range(xt.shape[0]):
        v = VALUES[c % 3]
        if where == "h0":
            if c % 4 < 3:  # every fourth channel's h0 stays finite
                h0[c] = VALUES[c % 4]
        else:
            p = pos[c % len(pos)]
            (xt if where == "x" else at_)[c, p] = v
            if where == "x":
                gt[c, pos[(c + 1) % len(pos)]] = VALUES[(c + 1) % 3]
    return a, x, h0, gh


def assert_ieee_equal(got, want, dtype):
    """Real data: NaN, +inf and -inf exactly where the reference has them, close to it elsewhere (the
    tests' tolerances).  Complex data: non-finite exactly where the reference is (a complex product
    with an infinite part is not associative: which parts end as inf or NaN depends on the order the
    decays are multiplied in, step by step in the loop, as tile products in a parallel scan)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    tests = ((("non-finite", lambda v: ~np.isfinite(v)),) if want.dtype.kind == "c" else
             (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)))
    for what, test in tests:
        bad = test(got) != test(want)
        if bad.any():
            first = tuple(np.argwhere(bad)[0])
            raise AssertionError(f"{bad.sum()} entries {what} in one and not the other, first at {first}: "
                                 f"got {got[first]}, want {want[first]}")
    fin = np.isfinite(want)
    assert_close(np.where(fin, got, 0), np.where(fin, want, 0), dtype)
