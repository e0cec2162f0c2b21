"""inf / -inf / NaN inputs (issue #23) through the Numba kernels in the CUDA simulator: the reference's
IEEE result (see tests/nonfinite_cases.py), forward and backward, with the small launch (tiles of 128
steps: two in time, so the look-back runs).  Run by tests/test_numba_simulator.py (NUMBA_ENABLE_CUDASIM=1).
"""

import numpy as np
import pytest

import parscan
from parscan import reference
from nonfinite_cases import assert_ieee_equal, problem
from sim_arrays import host, to_device


@pytest.mark.parametrize("dtype", ["float32", "complex64"])  # complex64: the slow run
def test_nonfinite_inputs_give_the_reference_ieee_result(dtype):
    rng = np.random.default_rng(7)
    shape, axis = (8, 140), -1  # two tiles
    for where in ("x", "a", "h0"):
        a, x, h0, gh = problem(rng, shape, axis, dtype, where, 128, 4)
        for h0_ in (h0, None) if where == "x" else (h0,):
            d0 = None if h0_ is None else to_device(h0_)
            with np.errstate(invalid="ignore", over="ignore"):
                want = reference.linear_scan(a, x, h0_, axis=axis)
                h = parscan.linear_scan(to_device(a), to_device(x), d0, axis=axis, backend="numba")
                assert_ieee_equal(host(h), want, dtype)
                hs = want.astype(dtype)
                exp = reference.linear_scan_backward(a, hs, gh, h0_, axis=axis)
                got = parscan.linear_scan_backward(to_device(a), to_device(hs), to_device(gh), d0, axis=axis,
                                                   backend="numba")
            for g, w in zip(got, exp):
                if w is not None:
                    assert_ieee_equal(host(g), w, dtype)


def test_an_underflowing_decay_keeps_inf_float32():
    """x = 1 with one inf and a = 0.1: the loop stays inf (0.1 * inf); a tile's decay product, 0.1^128,
    underflows to 0 unless kept nonzero, and 0 * inf would be NaN."""
    x = np.ones((2, 300), np.float32)
    x[:, 10] = np.inf
    h = host(parscan.linear_scan(0.1, to_device(x), backend="numba"))
    assert np.isposinf(h[:, 10:]).all() and np.isfinite(h[:, :10]).all()
