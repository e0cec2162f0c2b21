"""Hypothesis against the Numba CUDA kernels in the simulator, on simulator device arrays: random
shapes, per-operand layouts, broadcasts, dtypes, axes, directions and resets (tests/test_properties.py's
strategy and operands, its "tiny" sizes only: the simulator runs a thread at a time)."""

import numpy as np
from hypothesis import HealthCheck, given, settings

import parscan
from parscan import reference
import test_properties as tp  # a module import: pytest must not collect its host test here
from conftest import assert_close
from sim_arrays import host, to_device

# test_properties' host views -> the device layouts of sim_arrays.to_device
LAYOUT = {"C": "C", "F": "F", "time-major": "time-major", "flip": "negative", "flip-time": "negative",
          "step": "strided"}


def _device(arr, how, axis):
    """``arr`` (a host view, a Python scalar or None) in simulator memory, laid out as ``how``."""
    if arr is None or isinstance(arr, (bool, int, float, complex)):
        return arr
    return to_device(np.asarray(arr), LAYOUT[how], axis)  # (0-d arrays go over as they are)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tp.problems(regimes=("tiny",)))
def test_random_problems_on_the_numba_kernels(p):
    rng = np.random.default_rng(p["seed"])
    x, a, h0, resets, gh = tp._operands(p, rng)
    v, ax = p["views"], p["axis"]
    dx, da, dr = _device(x, v["x"], ax), _device(a, v["a"], ax), _device(resets, v["resets"], ax)
    dh0 = _device(h0, "C", -1)
    kw = dict(axis=ax, reverse=p["reverse"])
    h = parscan.linear_scan(da, dx, dh0, resets=dr, **kw)  # backend None: the numba backend, for device arrays
    hh = host(h)
    assert_close(hh, reference.linear_scan(a, x, h0, resets=resets, **kw), hh.dtype)
    got = parscan.linear_scan_backward(da, h, _device(gh, v["grad_h"], ax), dh0, resets=dr, **kw)
    ref = reference.linear_scan_backward(a, hh, gh, h0, resets=resets, **kw)
    for g, r in zip(got, ref):
        if r is None:
            assert g is None
        else:
            assert np.shape(g) == np.shape(r)
            assert_close(host(g), r, hh.dtype)
