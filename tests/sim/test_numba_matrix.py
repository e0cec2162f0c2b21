"""The matrix scan's Numba kernel, run by the CUDA simulator through the public API, against the
reference loop.

Small blocks (32 threads) and small chunks (a few steps, a target of a few hundred threads) make
short sequences split into many chunks and recurse several levels, so every pass and the carry
between chunks are exercised on shapes the simulator can afford.
"""

import os

import numpy as np
import pytest

import parscan
from parscan import matrix
from parscan.kernels import matrix_launch, numba_matrix
from test_numba_kernels import simulated_numba_backend  # noqa: F401  (autouse: n = 1 goes to the Numba scan)

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_numba_simulator.py"

TOL = {"float32": 2e-5, "float64": 1e-12, "complex64": 2e-5, "complex128": 1e-12}


@pytest.fixture(autouse=True)
def simulated_matrix_kernel(monkeypatch):
    monkeypatch.setattr(matrix, "_select", lambda backend, on_gpu: ("cuda", numba_matrix))
    monkeypatch.setattr(matrix_launch, "THREADS", 32)
    monkeypatch.setattr(matrix_launch, "TARGET_THREADS", 256)
    monkeypatch.setattr(matrix_launch, "MIN_STEPS", 2)


def _rand(rng, shape, dtype, scale=1.0):
    v = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        v = v + 1j * rng.standard_normal(shape)
    return (scale * v).astype(dtype)


def _close(got, want, dtype):
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[dtype] * scale)


CASES = [  # (x shape, A shape, h0 shape or None, reverse)
    ((2, 24, 3), (2, 24, 3, 3), (2, 3), False),
    ((2, 24, 3), (2, 24, 3, 3), (2, 3), True),
    ((3, 19, 2), (1, 19, 2, 2), None, True),        # A shared by the batch: a zero stride
    ((2, 21, 4), (1, 4, 4), (4,), False),           # A constant in time and batch, h0 broadcast
    ((2, 3, 9, 5), (3, 9, 5, 5), (2, 1, 5), True),  # two leading dims, A broadcast over the first
    ((1, 9, 7), (1, 9, 7, 7), (1, 7), False),       # n = 7: 4 columns a block, 28 of 32 threads live
    ((2, 5, 16), (2, 5, 16, 16), (2, 16), True),    # n = 16: 2 columns a block
    ((4, 1, 3), (4, 1, 3, 3), (4, 3), False),
    ((2, 0, 3), (2, 0, 3, 3), (2, 3), False),
    ((3, 25, 1), (3, 25, 1, 1), (3, 1), True),      # n = 1: the elementwise scan
]


@pytest.mark.parametrize("xs,As,hs,reverse", CASES)
def test_forward_and_backward_match_the_reference(xs, As, hs, reverse):
    rng = np.random.default_rng(sum(xs) + len(As))
    n = xs[-1]
    x, A = _rand(rng, xs, "float64"), _rand(rng, As, "float64", 0.6 / np.sqrt(n))
    h0 = None if hs is None else _rand(rng, hs, "float64")
    h = parscan.matrix_linear_scan(A, x, h0, reverse=reverse)
    want = matrix.matrix_linear_scan(A, x, h0, reverse=reverse, backend="reference")
    _close(h, want, "float64")
    gh = _rand(rng, h.shape, "float64")
    got = parscan.matrix_linear_scan_backward(A, want, gh, h0, reverse=reverse)
    exp = parscan.matrix_linear_scan_backward(A, want, gh, h0, reverse=reverse, backend="cpu")
    for g, w in zip(got, exp):
        assert (g is None) == (w is None)
        if g is not None:
            _close(g, w, "float64")


@pytest.mark.parametrize("dtype,a_time,reverse", [("float32", 12, False), ("float64", 1, True),
                                                  ("complex64", 1, False), ("complex128", 12, True)])
def test_every_dtype(dtype, a_time, reverse):
    rng = np.random.default_rng(7)
    x, A, h0 = _rand(rng, (2, 12, 3), dtype), _rand(rng, (2, a_time, 3, 3), dtype, 0.4), _rand(rng, (2, 3), dtype)
    ref = lambda f, *a, **k: getattr(parscan, f)(*a, **k, backend="cpu")  # noqa: E731
    h = parscan.matrix_linear_scan(A, x, h0, reverse=reverse)
    _close(h, ref("matrix_linear_scan", A, x, h0, reverse=reverse), dtype)
    gh = _rand(rng, h.shape, dtype)
    for g, w in zip(parscan.matrix_linear_scan_backward(A, h, gh, h0, reverse=reverse),
                    ref("matrix_linear_scan_backward", A, h, gh, h0, reverse=reverse)):
        _close(g, w, dtype)


def test_float16_and_mixed_dtypes_are_computed_in_the_working_dtype():
    rng = np.random.default_rng(8)
    x, A = _rand(rng, (2, 10, 3), "float16"), _rand(rng, (2, 10, 3, 3), "float32", 0.4)
    h = parscan.matrix_linear_scan(A, x)  # float32 result
    _close(h, parscan.matrix_linear_scan(A, x.astype(np.float32), backend="cpu"), "float32")
    h16 = parscan.matrix_linear_scan(A.astype(np.float16), x)
    assert h16.dtype == np.float16
    np.testing.assert_allclose(h16.astype(np.float32), h, atol=5e-2, rtol=0)
    hc = parscan.matrix_linear_scan(A, x.astype(np.complex64))  # real A, complex x
    _close(hc, parscan.matrix_linear_scan(A, x.astype(np.complex64), backend="cpu"), "complex64")


def test_strided_views_go_in_without_copies_and_inputs_are_untouched(monkeypatch):
    rng = np.random.default_rng(9)
    big_x = _rand(rng, (3, 30, 8), "float64")
    big_A = _rand(rng, (3, 30, 4, 4), "float64", 0.4)
    x = big_x[::-1, ::2, 1::2]                     # negative batch stride, strided time and state
    A = big_A[:, ::2].transpose(0, 1, 3, 2)       # a transposed view
    before = (big_x.copy(), big_A.copy())
    calls = []
    real = numba_matrix.matrix_pass
    monkeypatch.setattr(numba_matrix, "matrix_pass", lambda *a: calls.append(a) or real(*a))
    h = parscan.matrix_linear_scan(A, x)
    _close(h, matrix.matrix_linear_scan(A, x, backend="reference"), "float64")
    top = calls[-1]
    assert np.shares_memory(top[1], big_A) and np.shares_memory(top[4], big_x)  # the caller's memory, as views
    np.testing.assert_array_equal(big_x, before[0])
    np.testing.assert_array_equal(big_A, before[1])


def test_the_chunk_plan_recurses_here():
    """The fixture's small target really splits these sequences (else the tests above prove less)."""
    C, L = matrix_launch.plan_chunks(2, 24, 3)
    assert C > 3 and matrix_launch.plan_chunks(2, C - 1, 3)[0] > 1


@pytest.mark.parametrize("reverse", [False, True])
def test_time_major_data_takes_the_batch_fast_order(monkeypatch, reverse):
    rng = np.random.default_rng(12)
    xt, At = _rand(rng, (13, 5, 3), "float64"), _rand(rng, (13, 5, 3, 3), "float64", 0.4)  # (T, B, ...)
    x, A = np.moveaxis(xt, 0, 1), np.moveaxis(At, 0, 1)  # (B, T, ...) views of time-major memory
    assert matrix_launch.batch_fast(x)
    h = parscan.matrix_linear_scan(A, x, reverse=reverse)
    _close(h, matrix.matrix_linear_scan(A, x, reverse=reverse, backend="reference"), "float64")
    gh = _rand(rng, h.shape, "float64")
    for g, w in zip(parscan.matrix_linear_scan_backward(A, h, gh, reverse=reverse),
                    parscan.matrix_linear_scan_backward(A, h, gh, reverse=reverse, backend="cpu")):
        if w is not None:
            _close(g, w, "float64")
