"""Hypothesis against the Numba CUDA kernels in the simulator, on simulator device arrays: random
shapes, strides, broadcasts, dtypes, axes and directions (tests/test_properties.py's strategy, fewer
examples)."""

import numpy as np
from hypothesis import HealthCheck, given, settings

import parscan
from parscan import reference
import test_properties as tp  # a module import: pytest must not collect its host test here
from conftest import assert_close, rand
from sim_arrays import host, to_device

LAYOUT = {"C": "C", "F": "F", "step": "strided", "flip": "negative"}  # test_properties' views, on the device


def _both(arr, how):
    """(host array, the same values on the device in layout ``how``); Python scalars stay scalars."""
    if arr is None or isinstance(arr, float):
        return arr, arr
    return arr, to_device(arr, LAYOUT[how])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tp.problems())
def test_random_problems_on_the_numba_kernels(p):
    rng = np.random.default_rng(p["seed"])
    dt = p["dtype"]
    x, dx = _both(rand(rng, p["shape"], dt), p["views"][0])
    a, da = _both(rand(rng, p["a_shape"], dt, "a"), p["views"][1])
    h0, dh0 = _both({"none": None, "full": rand(rng, p["chan"], dt),
                     "broadcast": rand(rng, (1,) * min(1, len(p["chan"])), dt), "scalar": 0.25}[p["h0_mode"]], "C")
    kw = dict(axis=p["axis"], reverse=p["reverse"])
    h = parscan.linear_scan(da, dx, dh0, **kw)  # backend None: the numba backend, for device arrays
    hh = host(h)
    assert hh.dtype == np.result_type(a, x, *(() if h0 is None else (h0,)))
    assert_close(hh, reference.linear_scan(a, x, h0, **kw), hh.dtype)
    gh, dgh = _both(rand(rng, p["shape"], dt), p["views"][2])
    got = parscan.linear_scan_backward(da, h, dgh, dh0, **kw)
    ref = reference.linear_scan_backward(a, hh, gh, h0, **kw)
    for g, r in zip(got, ref):
        if r is None:
            assert g is None
        else:
            assert np.shape(g) == np.shape(r)
            assert_close(host(g), r, hh.dtype)
