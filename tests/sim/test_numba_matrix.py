"""The matrix scan's Numba kernel, run by the CUDA simulator through the public API on simulator
device arrays, against the reference loop and the cpu backend.

Small blocks (32 threads) and small chunks (a few steps, a target of a few hundred threads; see
sim_arrays) make short sequences split into many chunks and recurse several levels, so every pass
and the carry between chunks are exercised on shapes the simulator can afford.
"""

import numpy as np
import pytest

import parscan
from parscan import _arrays, matrix
from parscan.kernels import matrix_launch, numba_matrix
from conftest import TOL
from sim_arrays import DeviceArray, host, to_device


def _rand(rng, shape, dtype, scale=1.0):
    v = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        v = v + 1j * rng.standard_normal(shape)
    return (scale * v).astype(dtype)


def _close(got, want, dtype):
    """``got``, a simulator device array, against ``want`` on the host."""
    got = host(got)
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[dtype] * scale)


def _dev(*arrays):
    return tuple(None if v is None else to_device(v) for v in arrays)


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
    dA, dx, dh0 = _dev(A, x, h0)
    h = parscan.matrix_linear_scan(dA, dx, dh0, reverse=reverse)
    want = matrix.matrix_linear_scan(A, x, h0, reverse=reverse, backend="reference")
    _close(h, want, "float64")
    gh = _rand(rng, want.shape, "float64")
    got = parscan.matrix_linear_scan_backward(dA, *_dev(want, gh), dh0, reverse=reverse)
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
    h = parscan.matrix_linear_scan(*_dev(A, x, h0), reverse=reverse)
    _close(h, ref("matrix_linear_scan", A, x, h0, reverse=reverse), dtype)
    hh, gh = host(h), _rand(rng, h.shape, dtype)
    for g, w in zip(parscan.matrix_linear_scan_backward(*_dev(A, hh, gh, h0), reverse=reverse),
                    ref("matrix_linear_scan_backward", A, hh, gh, h0, reverse=reverse)):
        _close(g, w, dtype)


def test_float16_and_mixed_dtypes_are_computed_in_the_working_dtype():
    rng = np.random.default_rng(8)
    x, A = _rand(rng, (2, 10, 3), "float16"), _rand(rng, (2, 10, 3, 3), "float32", 0.4)
    h = parscan.matrix_linear_scan(*_dev(A, x))  # float32 result
    _close(h, parscan.matrix_linear_scan(A, x.astype(np.float32), backend="cpu"), "float32")
    h16 = host(parscan.matrix_linear_scan(*_dev(A.astype(np.float16), x)))
    assert h16.dtype == np.float16
    np.testing.assert_allclose(h16.astype(np.float32), host(h), atol=5e-2, rtol=0)
    hc = parscan.matrix_linear_scan(*_dev(A, x.astype(np.complex64)))  # real A, complex x
    _close(hc, parscan.matrix_linear_scan(A, x.astype(np.complex64), backend="cpu"), "complex64")


def test_strided_views_go_in_without_copies_and_inputs_are_untouched(monkeypatch):
    rng = np.random.default_rng(9)
    big_x = _rand(rng, (3, 30, 8), "float64")
    big_A = _rand(rng, (3, 30, 4, 4), "float64", 0.4)
    dbig_x, dbig_A = _dev(big_x, big_A)
    x = dbig_x[::-1, ::2, 1::2]                    # negative batch stride, strided time and state
    A = dbig_A[:, ::2].transpose((0, 1, 3, 2))    # a transposed view
    calls = []
    real = numba_matrix.matrix_pass
    monkeypatch.setattr(numba_matrix, "matrix_pass", lambda *a: calls.append(a) or real(*a))  # a spy
    h = parscan.matrix_linear_scan(A, x)
    _close(h, matrix.matrix_linear_scan(host(A), host(x), backend="reference"), "float64")
    top = calls[-1]
    memory = lambda d: _arrays.as_operand(d, "d").array  # noqa: E731  (the device array's own memory)
    assert np.shares_memory(top[1], memory(dbig_A)) and np.shares_memory(top[4], memory(dbig_x))
    np.testing.assert_array_equal(host(dbig_x), big_x)
    np.testing.assert_array_equal(host(dbig_A), big_A)
    g = parscan.matrix_linear_scan_backward(A, h, x)
    assert g[2] is None and g[0].shape == A.shape and g[1].shape == x.shape
    np.testing.assert_array_equal(host(dbig_x), big_x)
    np.testing.assert_array_equal(host(dbig_A), big_A)


def test_the_chunk_plan_recurses_here():
    """The small chunks (sim_arrays) really split these sequences (else the tests above prove less);
    the real default does not."""
    C, L = matrix_launch.plan_chunks(2, 24, 3)
    assert C > 3 and matrix_launch.plan_chunks(2, C - 1, 3)[0] > 1
    assert matrix_launch.sizes()[0] == 32 and matrix_launch.THREADS == 256
    assert matrix_launch.plan_chunks(2, 24, 3, matrix_launch.TARGET_THREADS, matrix_launch.MIN_STEPS)[0] <= 2


def test_the_numba_backend_reads_the_chunk_setting(monkeypatch):
    monkeypatch.setenv("PARSCAN_SIM_CHUNKS", "32,0,2")
    with pytest.raises(ValueError, match="PARSCAN_SIM_CHUNKS='32,0,2': expected 3 positive integers"):
        parscan.matrix_linear_scan(*_dev(np.eye(2)[None, None], np.ones((1, 4, 2))))


@pytest.mark.parametrize("reverse", [False, True])
def test_time_major_data_takes_the_batch_fast_order(reverse):
    rng = np.random.default_rng(12)
    xt, At = _rand(rng, (13, 5, 3), "float64"), _rand(rng, (13, 5, 3, 3), "float64", 0.4)  # (T, B, ...)
    dxt, dAt = _dev(xt, At)
    x, A = dxt.transpose((1, 0, 2)), dAt.transpose((1, 0, 2, 3))  # (B, T, ...) views of time-major memory
    assert matrix_launch.batch_fast(x)
    h = parscan.matrix_linear_scan(A, x, reverse=reverse)
    hx, hA = np.moveaxis(xt, 0, 1), np.moveaxis(At, 0, 1)
    _close(h, matrix.matrix_linear_scan(hA, hx, reverse=reverse, backend="reference"), "float64")
    hh = host(h)
    gh = _rand(rng, hh.shape, "float64")
    for g, w in zip(parscan.matrix_linear_scan_backward(A, h, to_device(gh), reverse=reverse),
                    parscan.matrix_linear_scan_backward(hA, hh, gh, reverse=reverse, backend="cpu")):
        if w is not None:
            _close(g, w, "float64")


@pytest.mark.parametrize("n", [1, 3])
def test_device_arrays_in_and_out_auto_numba_and_host_arrays_refused(n):
    rng = np.random.default_rng(13)
    x, A = _rand(rng, (2, 9, n), "float32"), _rand(rng, (2, 9, n, n), "float32", 0.4)
    h = parscan.matrix_linear_scan(*_dev(A, x))  # auto: the numba backend (nothing else runs these)
    assert isinstance(h, DeviceArray)
    np.testing.assert_array_equal(host(h), host(parscan.matrix_linear_scan(*_dev(A, x), backend="numba")))
    for g in parscan.matrix_linear_scan_backward(*_dev(A, host(h), x)):
        assert g is None or isinstance(g, DeviceArray)
    with pytest.raises(ValueError, match="inputs are in host memory.*numba.cuda.to_device"):
        parscan.matrix_linear_scan(A, x, backend="numba")
    with pytest.raises(ValueError, match="inputs are in host memory.*numba.cuda.to_device"):
        parscan.matrix_linear_scan_backward(A, x, x, backend="numba")
    with pytest.raises(parscan.BackendUnavailable, match="CuPy cannot use"):
        parscan.matrix_linear_scan(*_dev(A, x), backend="cupy")


# ---- resets (issue #18): the kernel reads a byte a step (a view, broadcast by zero strides) ----------

RESET_CASES = [  # (x shape, A shape, h0 shape or None, resets shape, reverse, dtype)
    ((2, 24, 3), (2, 24, 3, 3), (2, 3), (24,), False, "float32"),
    ((2, 24, 3), (1, 1, 3, 3), (2, 3), (2, 24), True, "complex128"),     # A constant; per batch row
    ((2, 2, 11, 2), (2, 2, 11, 2, 2), (2, 2, 2), (2, 1, 11), True, "float32"),  # (B1, 1, T) over (B1, B2)
    ((2, 24, 3), (2, 24, 3, 3), (2, 3), (24,), True, "float64"),
    ((2, 2, 11, 2), (1, 11, 2, 2), None, (2, 1, 11), False, "complex64"),
]


@pytest.mark.parametrize("xs,As,hs,rs,reverse,dtype", RESET_CASES)
def test_resets_match_the_reference(xs, As, hs, rs, reverse, dtype):
    """Resets at t = 0, T - 1 and both sides of chunk edges (2 steps a chunk here) in some rows, the
    forward and the backward (whose flag is read at t + 1) against the reference."""
    rng = np.random.default_rng(sum(xs) + len(rs))
    n, T = xs[-1], xs[-2]
    x, A = _rand(rng, xs, dtype), _rand(rng, As, dtype, 0.6 / np.sqrt(n))
    h0 = None if hs is None else _rand(rng, hs, dtype)
    r = rng.random(rs) < 0.2
    r[..., [0, 5, 6, T - 1]] |= rng.random(r.shape[:-1] + (4,)) < 0.5
    dA, dx, dh0, dr = _dev(A, x, h0, r)
    h = parscan.matrix_linear_scan(dA, dx, dh0, reverse=reverse, resets=dr)
    want = matrix.matrix_linear_scan(A, x, h0, reverse=reverse, resets=r, backend="reference")
    _close(h, want, dtype)
    hh, gh = want.astype(dtype), _rand(rng, want.shape, dtype)
    got = parscan.matrix_linear_scan_backward(dA, *_dev(hh, gh), dh0, reverse=reverse, resets=dr)
    exp = parscan.matrix_linear_scan_backward(A, hh, gh, h0, reverse=reverse, resets=r, backend="reference")
    for g, w in zip(got, exp):
        assert (g is None) == (w is None)
        if g is not None:
            _close(g, w.astype(g.dtype), dtype)


@pytest.mark.parametrize("reverse,dtype", [(False, "float32"), (True, "complex128")])
def test_nonfinite_values_do_not_cross_a_reset(reverse, dtype):
    """inf / NaN before a reset and a NaN h0: dropped within a chunk and by the carry scan (whose
    resets are the chunks' "dropped the incoming state" flags), forward and backward."""
    from reset_cases import assert_same_nonfinite, assert_some_of_both, poisoned_matrix

    A, x, h0, r, gh = poisoned_matrix(np.random.default_rng(5), (2, 40, 3), (2, 40, 3, 3), dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        want = matrix.matrix_linear_scan(A, x, h0, reverse=reverse, resets=r, backend="reference")
        h = parscan.matrix_linear_scan(*_dev(A, x, h0), reverse=reverse, resets=to_device(r))
        assert_some_of_both(want)
        assert_same_nonfinite(host(h), want, dtype)
        hh = want.astype(dtype)
        exp = parscan.matrix_linear_scan_backward(A, hh, gh, h0, reverse=reverse, resets=r, backend="reference")
        got = parscan.matrix_linear_scan_backward(*_dev(A, hh, gh, h0), reverse=reverse, resets=to_device(r))
    for g, w in zip(got, exp):
        assert_same_nonfinite(host(g), w, dtype)
