"""The Numba CUDA kernels, run by the CUDA simulator through the public API, against the reference.

Small launches (32 threads, 4 steps a thread) make short sequences span many tiles, so the block
scan, the look-back chain and the identity padding are all exercised on shapes the simulator can
afford.  Run by tests/test_numba_simulator.py in a process with NUMBA_ENABLE_CUDASIM=1.
"""

import os

import numpy as np
import pytest

import parscan
from parscan import _backends, reference
from parscan.kernels import launch, numba_scan
from conftest import DTYPES, assert_close, layout, rand

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_numba_simulator.py"


@pytest.fixture(autouse=True)
def simulated_numba_backend(monkeypatch):
    """Route every call to the Numba kernels (host arrays are the simulator's device arrays)."""
    monkeypatch.setattr(_backends, "select", lambda name, on_gpu: numba_scan)
    monkeypatch.setattr(numba_scan, "plan_launch",
                        lambda shape, strides, **kw: launch.plan_launch(shape, strides, threads=32, items=4))


CASES = [  # (shape, axis)
    ((1, 0), -1), ((1, 1), -1), ((1, 5), -1), ((1, 128), -1), ((1, 129), -1), ((1, 700), -1),
    ((3, 300), -1), ((300, 3), 0), ((9, 40), 0), ((2, 3, 50), 1), ((5, 2, 33), 0), ((64, 2), 0),
]


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_matches_reference(shape, axis, reverse):
    rng = np.random.default_rng(len(shape) * 100 + shape[axis])
    x, a = rand(rng, shape, "float64"), rand(rng, shape, "float64", "a")
    h0 = rand(rng, np.delete(shape, axis % len(shape)), "float64")
    h = parscan.linear_scan(a, x, h0, axis=axis, reverse=reverse)
    assert_close(h, reference.linear_scan(a, x, h0, axis=axis, reverse=reverse), "float64")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((2, 300), -1), ((300, 5), 0)])
def test_every_dtype(dtype, shape, axis):
    rng = np.random.default_rng(1)
    x, a = rand(rng, shape, dtype), rand(rng, shape, dtype, "a")
    h = parscan.linear_scan(a, x, axis=axis)
    assert h.dtype == np.dtype(dtype)
    assert_close(h, reference.linear_scan(a, x, axis=axis), dtype)
    gh = rand(rng, shape, dtype)
    got = parscan.linear_scan_backward(a, h, gh, axis=axis)
    want = reference.linear_scan_backward(a, h, gh, axis=axis)
    for g, w in zip(got[:2], want[:2]):
        assert_close(g, w, dtype)


@pytest.mark.parametrize("how", ["F", "strided", "negative", "time-major"])
def test_layouts(how):
    rng = np.random.default_rng(2)
    x, a = rand(rng, (4, 3, 70), "float32"), rand(rng, (4, 3, 70), "float32", "a")
    h = parscan.linear_scan(layout(a, how), layout(x, how))
    assert_close(h, reference.linear_scan(a, x), "float32")


@pytest.mark.parametrize("a_shape", [(), (3, 1), (1, 150)])
def test_broadcast_decay(a_shape):
    rng = np.random.default_rng(3)
    x, a = rand(rng, (3, 150), "float64"), rand(rng, a_shape, "float64", "a")
    h = parscan.linear_scan(a, x)
    assert_close(h, reference.linear_scan(a, x), "float64")
    gh = rand(rng, (3, 150), "float64")
    ga, gx, _ = parscan.linear_scan_backward(a, h, gh)
    wa, wx, _ = reference.linear_scan_backward(a, h, gh)
    assert ga.shape == np.shape(a)
    assert_close(ga, wa, "float64")
    assert_close(gx, wx, "float64")


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("reverse", [False, True])
def test_backward_matches_reference(shape, axis, reverse):
    rng = np.random.default_rng(7 + shape[axis])
    x, a = rand(rng, shape, "complex128"), rand(rng, shape, "complex128", "a")
    h0 = rand(rng, np.delete(shape, axis % len(shape)), "complex128")
    h = reference.linear_scan(a, x, h0, axis=axis, reverse=reverse)
    gh = rand(rng, shape, "complex128")
    got = parscan.linear_scan_backward(a, h, gh, h0, axis=axis, reverse=reverse)
    want = reference.linear_scan_backward(a, h, gh, h0, axis=axis, reverse=reverse)
    for g, w in zip(got, want):
        assert_close(g, w, "complex128")


def test_out_in_place_and_repeatable():
    rng = np.random.default_rng(4)
    x, a = rand(rng, (2, 500), "float32"), rand(rng, (2, 500), "float32", "a")
    first = parscan.linear_scan(a, x)
    y = x.copy()
    assert parscan.linear_scan(a, y, out=y) is y
    np.testing.assert_array_equal(y, first)  # the same kernels and launch: bitwise equal


def test_nan_propagates():
    x = np.ones((1, 300))
    x[0, 100] = np.nan
    h = parscan.linear_scan(0.5, x)
    assert not np.isnan(h[0, :100]).any() and np.isnan(h[0, 100:]).all()
