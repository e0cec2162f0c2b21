"""resets (issue #18) through the Numba kernels in the CUDA simulator, against the reference: both
tile orders, flags broadcast over channels (one row a block: (T,), (T, 1), (B, 1, T)) or one per
element, resets on tile and thread edges in both directions, h0, reverse, full / per-channel / scalar
a; float32 or complex128 in the default run, each layout again in another dtype in the slow one.
Small launches (sim_arrays: 32 threads, 4 steps a thread) so short sequences span several tiles;
small shapes, as the simulator is slow.
"""

import numpy as np
import pytest

import parscan
from parscan import reference
from conftest import assert_close, rand
from sim_arrays import host, to_device

CASES = [  # (x shape, axis, resets shape, dtype, a, h0, reverse): the default run's layouts
    ((1, 300), -1, (300,), "float32", "full", True, False),                   # time-fast, 3 tiles of 128 steps
    ((150, 3), 0, (150, 1), "complex128", "channel", False, True),            # channel-fast, 5 tiles of 32
    ((2, 2, 140), -1, (2, 1, 140), "float32", "scalar", True, True),          # per batch row (B, 1, T)
    ((40, 4), 0, (40, 4), "complex128", "full", True, False),                 # per element, a row per channel
    ((2, 140), -1, (2, 140), "complex128", "channel", True, False),           # per element, time-fast
    ((3, 200), -1, (200,), "float32", "full", False, True),                   # (T,) broadcast, reverse
    ((60, 2, 3), 0, (60, 2, 1), "float32", "full", True, True),               # time-major (T, B, 1)
]
# the other dtypes on the same layouts (test ids name them: the slow simulator run takes these)
CASES += [(s, ax, r, d, a, h0, rev) for (s, ax, r, _, a, h0, rev), d in
          zip(CASES, ("float64", "complex64", "float16", "float16", "complex64", "float64", "float16"))]


def _resets(rng, T, rshape, axis):
    """About 3% random resets, and (each with probability 1/2) the first and last step and both sides
    of every multiple of 4, 32 and 128 steps from either end (thread and tile edges of the small launch)."""
    axis %= len(rshape)
    r = rng.random(rshape) < 0.03
    special = {0, T - 1}
    for b in (4, 32, 128):
        for m in range(b, T, b):
            special |= {m - 1, m, T - m, T - 1 - m}
    pick = np.array(sorted(t for t in special if 0 <= t < T))
    on = np.zeros(T, bool)
    on[pick[rng.random(len(pick)) < 0.5]] = True
    shape = [1] * len(rshape)
    shape[axis] = T
    return r | on.reshape(shape)


@pytest.mark.parametrize("shape,axis,rshape,dtype,a_kind,with_h0,reverse", CASES)
def test_resets_match_the_reference(shape, axis, rshape, dtype, a_kind, with_h0, reverse):
    rng = np.random.default_rng(shape[axis])
    x = rand(rng, shape, dtype)
    a_shape = shape if a_kind == "full" else tuple(1 if d == axis % len(shape) else n for d, n in enumerate(shape))
    a = rand(rng, a_shape, dtype, "a") if a_kind != "scalar" else 0.9
    da = a if a_kind == "scalar" else to_device(a)
    h0 = rand(rng, np.delete(shape, axis % len(shape)), dtype) if with_h0 else None
    dh0 = None if h0 is None else to_device(h0)
    r = _resets(rng, shape[axis], rshape, axis)
    kw = dict(axis=axis, reverse=reverse)
    h = parscan.linear_scan(da, to_device(x), dh0, resets=to_device(r), **kw)
    want = reference.linear_scan(a, x, h0, resets=r, **kw)
    assert_close(host(h), want, dtype)
    hs = want.astype(dtype)
    gh = rand(rng, shape, dtype)
    got = parscan.linear_scan_backward(da, to_device(hs), to_device(gh), dh0, resets=to_device(r), **kw)
    exp = reference.linear_scan_backward(a, hs, gh, h0, resets=r, **kw)
    for g, w in zip(got, exp):
        if w is None:
            assert g is None
        else:
            assert np.shape(g) == np.shape(w)
            assert_close(host(g), w, dtype)


# inf / NaN before a reset (tests/reset_cases.py): dropped, not multiplied by 0, in the lanes' fold, the
# block scan and the look-back (tiles of 128 steps time-fast, 32 channel-fast: some tiles without a reset
# carry the poison into the ones with one)
NONFINITE = [((1, 600), -1, "float32", "full", False), ((150, 3), 0, "complex128", "channel", True),
             ((1, 600), -1, "complex64", "full", True), ((150, 3), 0, "float64", "full", False)]


@pytest.mark.parametrize("shape,axis,dtype,a_kind,reverse", NONFINITE)
def test_nonfinite_values_do_not_cross_a_reset(shape, axis, dtype, a_kind, reverse):
    from reset_cases import assert_same_nonfinite, assert_some_of_both, poisoned

    a, x, h0, r, gh = poisoned(np.random.default_rng(shape[axis]), shape, axis, dtype, a_kind, mirror=reverse)
    kw = dict(axis=axis, reverse=reverse)
    with np.errstate(invalid="ignore", over="ignore"):
        want = reference.linear_scan(a, x, h0, resets=r, **kw)
        h = parscan.linear_scan(to_device(a), to_device(x), to_device(h0), resets=to_device(r), **kw)
        assert_some_of_both(want)
        assert_same_nonfinite(host(h), want, dtype)
        hs = want.astype(dtype)
        exp = reference.linear_scan_backward(a, hs, gh, h0, resets=r, **kw)
        got = parscan.linear_scan_backward(to_device(a), to_device(hs), to_device(gh), to_device(h0),
                                           resets=to_device(r), **kw)
    for g, w in zip(got, exp):
        assert_same_nonfinite(host(g), w, dtype)
