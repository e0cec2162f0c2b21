"""matrix_linear_scan: cpu and reference against a plain loop, the backward against finite differences
and the adjoint identity, broadcasting, errors."""

import numpy as np
import pytest

import parscan
from parscan import matrix

BACKENDS = ["cpu", "reference"]


def _loop(A, x, h0, reverse=False):
    A = np.broadcast_to(A, x.shape[:-2] + A.shape[-3:]) if A.ndim - 1 < x.ndim else A
    T = x.shape[-2]
    h = np.zeros(x.shape[:-2] + x.shape[-1:], np.result_type(A, x)) if h0 is None else h0 + 0 * x[..., 0, :]
    out = np.empty(np.broadcast_shapes(x.shape, h[..., None, :].shape), h.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        At = A[..., t if A.shape[-3] > 1 else 0, :, :]
        h = np.einsum("...ij,...j->...i", At, h) + x[..., t, :]
        out[..., t, :] = h
    return out


def _rand(rng, shape, dtype):
    v = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        v = v + 1j * rng.standard_normal(shape)
    return v.astype(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64", "complex128"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("n,T,a_shape", [(1, 9, (2, 9)), (3, 17, (2, 17)), (5, 4, (1,)), (4, 30, (2, 1))])
def test_forward_matches_the_loop(backend, dtype, reverse, n, T, a_shape):
    rng = np.random.default_rng(n * T)
    x = _rand(rng, (2, T, n), dtype)
    A = (0.4 * _rand(rng, a_shape + (n, n), dtype) / np.sqrt(n)).astype(dtype)
    h0 = _rand(rng, (2, n), dtype)
    h = parscan.matrix_linear_scan(A, x, h0, reverse=reverse, backend=backend)
    want = _loop(A.astype(np.complex128 if np.iscomplexobj(A) else np.float64), x, h0, reverse)
    assert h.dtype == np.dtype(dtype) and h.shape == x.shape
    tol = 1e-4 if dtype in ("float32", "complex64") else 1e-12
    np.testing.assert_allclose(h, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "complex128"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("a_shape", [(2, 5), (1, 1), (5,)])
def test_backward_matches_finite_differences(backend, dtype, reverse, a_shape):
    rng = np.random.default_rng(3)
    n = 3
    x, w, h0 = _rand(rng, (2, 5, n), dtype), _rand(rng, (2, 5, n), dtype), _rand(rng, (2, n), dtype)
    A = 0.5 * _rand(rng, a_shape + (n, n), dtype)

    def loss(A, x, h0):
        return float(np.real(np.sum(np.conj(w) * _loop(A, x, h0, reverse))))

    h = parscan.matrix_linear_scan(A, x, h0, reverse=reverse, backend=backend)
    gA, gx, gh0 = parscan.matrix_linear_scan_backward(A, h, w, h0, reverse=reverse, backend=backend)
    for got, v, f in ((gA, A, lambda v: loss(v, x, h0)), (gx, x, lambda v: loss(A, v, h0)),
                      (gh0, h0, lambda v: loss(A, x, v))):
        fd = np.zeros_like(v)
        units = (1.0, 1j) if np.iscomplexobj(v) else (1.0,)
        for idx in np.ndindex(v.shape):
            for u in units:
                vp, vm = v.copy(), v.copy()
                vp[idx] += 1e-6 * u
                vm[idx] -= 1e-6 * u
                fd[idx] += u * (f(vp) - f(vm)) / 2e-6
        assert got.shape == v.shape
        np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-7)


def test_cpu_equals_reference_on_a_longer_run_and_empty_time():
    rng = np.random.default_rng(5)
    x, A = rng.standard_normal((7, 500, 8)), 0.3 * rng.standard_normal((7, 500, 8, 8)) / np.sqrt(8)
    np.testing.assert_allclose(parscan.matrix_linear_scan(A, x, backend="cpu"),
                               parscan.matrix_linear_scan(A, x, backend="reference"), rtol=1e-10, atol=1e-12)
    e = parscan.matrix_linear_scan(np.zeros((0, 2, 2)), np.zeros((0, 2)))
    assert e.shape == (0, 2)


@pytest.mark.parametrize("dtype", ["float64", "complex128"])
@pytest.mark.parametrize("reverse", [False, True])
def test_serial_and_parallel_cpu_kernels_agree(monkeypatch, dtype, reverse):
    """Small problems (or one batch row) run the cpu kernels' single-threaded build, larger ones the
    parallel build of the same code: bit for bit the same results, forward and backward."""
    rng = np.random.default_rng(6)
    A, x = 0.4 * _rand(rng, (3, 20, 3, 3), dtype), _rand(rng, (3, 20, 3), dtype)
    h0, gh = _rand(rng, (3, 3), dtype), _rand(rng, (3, 20, 3), dtype)
    results = []
    for below in (matrix.SERIAL_BELOW, 0):
        monkeypatch.setattr(matrix, "SERIAL_BELOW", below)
        h = parscan.matrix_linear_scan(A, x, h0, reverse=reverse, backend="cpu")
        results.append((h, *parscan.matrix_linear_scan_backward(A, h, gh, h0, reverse=reverse, backend="cpu")))
    for u, v in zip(*results):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_allclose(results[0][0], _loop(A, x, h0, reverse), rtol=1e-12, atol=1e-12)


def test_errors():
    with pytest.raises(ValueError, match=r"A must have shape \(\.\.\., T, n, n\)"):
        parscan.matrix_linear_scan(np.zeros((4, 3, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="do not broadcast"):
        parscan.matrix_linear_scan(np.zeros((3, 4, 2, 2)), np.zeros((2, 4, 2)))
    with pytest.raises(TypeError, match="x has an integer dtype"):
        parscan.matrix_linear_scan(np.zeros((4, 2, 2), int), np.zeros((4, 2), int))
    with pytest.raises(ValueError, match="unknown backend"):
        parscan.matrix_linear_scan(np.zeros((4, 2, 2)), np.zeros((4, 2)), backend="fast")
    with pytest.raises(ValueError, match="runs on CUDA arrays but the inputs are in host memory"):
        parscan.matrix_linear_scan(np.zeros((4, 2, 2)), np.zeros((4, 2)), backend="numba")
    with pytest.raises(ValueError, match="more than the 256"):
        parscan.matrix_linear_scan(np.zeros((1, 257, 257)), np.zeros((1, 257)))
    for name in ("cupy", "numba"):
        if parscan.available_backends()[name].available:
            assert matrix._select(name, True)[0] == "cuda"
        else:
            with pytest.raises(parscan.BackendUnavailable, match=f"backend '{name}' is not available here"):
                matrix._select(name, True)


@pytest.mark.parametrize("a_shape", [(3, 40, 1, 1), (1, 1, 1), (40, 1, 1)])
@pytest.mark.parametrize("reverse", [False, True])
def test_n_equal_one_runs_as_the_elementwise_scan(monkeypatch, a_shape, reverse):
    rng = np.random.default_rng(11)
    x, h0, gh = rng.standard_normal((3, 40, 1)), rng.standard_normal((3, 1)), rng.standard_normal((3, 40, 1))
    A = rng.uniform(-0.9, 0.9, a_shape)
    want = parscan.matrix_linear_scan(A, x, h0, reverse=reverse, backend="reference")
    want_g = parscan.matrix_linear_scan_backward(A, want, gh, h0, reverse=reverse, backend="reference")
    calls = []
    real = matrix.linear_scan
    monkeypatch.setattr(matrix, "linear_scan", lambda *a, **k: calls.append(k) or real(*a, **k))
    np.testing.assert_allclose(parscan.matrix_linear_scan(A, x, h0, reverse=reverse), want, rtol=1e-12, atol=1e-12)
    assert calls and calls[0]["axis"] == -2
    for g, w in zip(parscan.matrix_linear_scan_backward(A, want, gh, h0, reverse=reverse), want_g):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


# ---- out= (the result written into the caller's arrays; parscan.jax writes into XLA's buffers so) ----

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [1, 3])
def test_forward_out_receives_the_result(backend, n, monkeypatch):
    rng = np.random.default_rng(21)
    A, x, h0 = 0.5 * _rand(rng, (2, 9, n, n), "float64"), _rand(rng, (2, 9, n), "float64"), _rand(rng, (2, n), "float64")
    want = parscan.matrix_linear_scan(A, x, h0, backend="reference")
    seen = []
    if backend == "cpu" and n > 1:  # the kernel writes into out itself (no copy)
        real = matrix._forward_cpu_serial
        monkeypatch.setattr(matrix, "_forward_cpu_serial", lambda *a: seen.append(a[3]) or real(*a))
    out = np.full_like(x, np.nan)
    assert parscan.matrix_linear_scan(A, x, h0, backend=backend, out=out) is out
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    if seen:
        assert np.shares_memory(seen[0], out)
    # in place, and an out in another layout (time-major: a view of it when the leading dims merge)
    xc = x.copy()
    assert parscan.matrix_linear_scan(A, xc, h0, backend=backend, out=xc) is xc
    np.testing.assert_allclose(xc, want, rtol=1e-12, atol=1e-12)
    tm = np.empty((9, 2, n)).transpose(1, 0, 2)
    parscan.matrix_linear_scan(A, x, h0, backend=backend, out=tm)
    np.testing.assert_allclose(tm, want, rtol=1e-12, atol=1e-12)
    # float16: computed in float32, cast into out
    o16 = np.empty((2, 9, n), np.float16)
    parscan.matrix_linear_scan(A.astype(np.float16), x.astype(np.float16), backend=backend, out=o16)
    np.testing.assert_allclose(o16, parscan.matrix_linear_scan(A.astype(np.float16), x.astype(np.float16),
                                                               backend=backend), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("a_time", [9, 1])
def test_backward_out_receives_the_gradients(backend, a_time, monkeypatch):
    rng = np.random.default_rng(22)
    n = 3
    A, h0 = 0.5 * _rand(rng, (2, a_time, n, n), "float64"), _rand(rng, (2, n), "float64")
    h, gh = _rand(rng, (2, 9, n), "float64"), _rand(rng, (2, 9, n), "float64")
    want = parscan.matrix_linear_scan_backward(A, h, gh, h0, backend=backend)
    seen = []
    if backend == "cpu":
        real = matrix._backward_cpu_serial
        monkeypatch.setattr(matrix, "_backward_cpu_serial", lambda *a: seen.append(a[4:6]) or real(*a))
    outs = (np.full_like(A, np.nan), np.full_like(h, np.nan), np.full_like(h0, np.nan))
    got = parscan.matrix_linear_scan_backward(A, h, gh, h0, backend=backend, out=outs)
    assert all(g is o for g, o in zip(got, outs))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    if seen:  # grad_x, and a full grad_A, computed in place
        assert np.shares_memory(seen[0][0], outs[1]) and np.shares_memory(seen[0][1], outs[0]) == (a_time > 1)
    part = np.empty_like(h)
    got = parscan.matrix_linear_scan_backward(A, h, gh, h0, backend=backend, out=(None, part, None))
    assert got[1] is part and got[0].shape == A.shape and got[2].shape == h0.shape
    np.testing.assert_array_equal(part, want[1])
    n1 = parscan.matrix_linear_scan_backward(A[..., :1, :1], h[..., :1], gh[..., :1], h0[..., :1], backend=backend,
                                             out=(np.empty(A[..., :1, :1].shape), None, np.empty((2, 1))))
    w1 = parscan.matrix_linear_scan_backward(A[..., :1, :1], h[..., :1], gh[..., :1], h0[..., :1], backend="reference")
    for g, w in zip(n1, w1):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_out_errors_are_linear_scans():
    A, x, h0 = np.zeros((2, 5, 3, 3)), np.zeros((2, 5, 3)), np.zeros((2, 3))
    scan = lambda out, **k: parscan.matrix_linear_scan(A, x, h0, out=out, backend="cpu", **k)  # noqa: E731
    with pytest.raises(ValueError, match=r"out has shape \(2, 5, 2\) but the result has shape \(2, 5, 3\)"):
        scan(np.zeros((2, 5, 2)))
    with pytest.raises(TypeError, match="out has dtype float32 but the result has dtype float64"):
        scan(np.zeros((2, 5, 3), np.float32))
    ro = np.zeros((2, 5, 3))
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="out is read-only"):
        scan(ro)
    with pytest.raises(ValueError, match="elements that share memory"):
        scan(np.lib.stride_tricks.as_strided(np.zeros(3), (2, 5, 3), (0, 0, 8)))
    big = np.zeros((2, 6, 3))
    with pytest.raises(ValueError, match="out overlaps an input without being exactly that input"):
        parscan.matrix_linear_scan(A, big[:, 1:], h0, out=big[:, :5], backend="cpu")
    back = lambda out, hh=h0: parscan.matrix_linear_scan_backward(A, x, x, hh, out=out, backend="cpu")  # noqa: E731
    with pytest.raises(TypeError, match=r"out must be a tuple \(grad_a, grad_x, grad_h0\)"):
        back(np.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match="out's grad_h0 is given but h0 is None"):
        back((None, None, np.zeros((2, 3))), None)
    with pytest.raises(ValueError, match=r"out's grad_a has shape \(2, 5, 3\) and dtype float64 but grad_a has shape "
                                         r"\(2, 5, 3, 3\)"):
        back((np.zeros((2, 5, 3)), None, None))
    with pytest.raises(ValueError, match="out's grad_x overlaps an input or another output"):
        back((None, x, None))
    g = np.zeros((2, 5, 3))
    with pytest.raises(ValueError, match="overlaps an input or another output"):
        back((None, g, g[:, 0, :]))  # grad_h0 inside grad_x
