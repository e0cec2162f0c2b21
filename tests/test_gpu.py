"""The GPU suite: both CUDA backends against the reference on a CUDA device (skipped without one).

Run on the device machine: ``pytest -m "gpu and not slow" tests/test_gpu.py``; ``-m gpu`` alone runs the
slow 2^27-step and over-2^31-element cases too (a ``-m`` on the command line replaces setup.cfg's
``-m "not slow"``), ``-m "gpu and slow"`` only those.  Both markers are declared in setup.cfg.
"""

import numpy as np
import pytest

import parscan
from parscan import check, reference
from conftest import DTYPES, TOL, assert_close, layout, rand

pytestmark = pytest.mark.gpu
GPU_BACKENDS = ["cupy", "numba"]


@pytest.fixture(params=GPU_BACKENDS)
def gpu_backend(request):
    return request.param


def _cp():
    return pytest.importorskip("cupy")


SHAPES = [((1, 0), -1), ((1, 1), -1), ((1, 7), -1), ((3, 2047), -1), ((3, 2049), -1), ((2, 100_003), -1),
          ((100_003, 2), 0), ((4096, 33), 0), ((33, 4096), -1), ((2, 3, 5000), 1), ((1, 1 << 20), -1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", SHAPES)
def test_forward_and_backward_match_reference(gpu_backend, dtype, shape, axis):
    cp = _cp()
    rng = np.random.default_rng(shape[axis] % 1000)
    x, a = rand(rng, shape, dtype), rand(rng, shape, dtype, "a")
    h0 = rand(rng, np.delete(shape, axis % len(shape)), dtype)
    for reverse in (False, True):
        h = parscan.linear_scan(cp.asarray(a), cp.asarray(x), cp.asarray(h0), axis=axis, reverse=reverse,
                                backend=gpu_backend)
        assert isinstance(h, cp.ndarray) and h.dtype == np.dtype(dtype)
        want = reference.linear_scan(a, x, h0, axis=axis, reverse=reverse)
        assert_close(h.get(), want, dtype)
        gh = rand(rng, shape, dtype)
        got = parscan.linear_scan_backward(cp.asarray(a), cp.asarray(want.astype(dtype)), cp.asarray(gh),
                                           cp.asarray(h0), axis=axis, reverse=reverse, backend=gpu_backend)
        exp = reference.linear_scan_backward(a, want.astype(dtype), gh, h0, axis=axis, reverse=reverse)
        for g, w in zip(got, exp):
            assert_close(g.get(), w, dtype)


def on_device(cp, host, how, axis=-1):
    """``host``'s values on the device in ``layout(host, how, axis)``'s memory layout, made there (a
    contiguous copy, then sliced, transposed or reversed on the device: ``cp.asarray`` of a host view
    would copy it to C order)."""
    if np.ndim(host) == 0:
        return host
    every, flip = (slice(None, None, 2),) * host.ndim, (slice(None, None, -1),) * host.ndim
    if how == "C":
        d = cp.asarray(np.ascontiguousarray(host))
    elif how == "F":
        d = cp.asarray(np.ascontiguousarray(host.T)).T
    elif how == "strided":
        d = cp.zeros(tuple(2 * n for n in host.shape), host.dtype)[every]
        d[...] = cp.asarray(host)
    elif how == "negative":
        d = cp.asarray(np.ascontiguousarray(host[flip]))[flip]
    elif how == "time-major":
        d = cp.moveaxis(cp.asarray(np.ascontiguousarray(np.moveaxis(host, axis, 0))), 0, axis)
    else:
        raise ValueError(how)
    want = layout(host, how, axis)  # the layout reached the device (a size-1 dim's stride does not matter)
    assert [s for n, s in zip(d.shape, d.strides) if n > 1] == [s for n, s in zip(want.shape, want.strides) if n > 1]
    return d


def _close(name, got, want, dtype, reduced=1, bound=0.0, factor=1.0):
    """``check._compare``'s error (relative to max(1, max |want|), for a sum of ``reduced`` terms of at most
    ``bound`` each to at least sqrt(reduced) * bound) within ``dtype``'s tolerance times ``factor``."""
    problem = check._compare(name, np.asarray(got), want, dtype, reduced, bound, factor)[2]
    assert problem is None, problem


def _host(v):
    return v.get() if hasattr(v, "get") else np.asarray(v)


@pytest.mark.parametrize("how", ["C", "F", "strided", "negative", "time-major"])
def test_layouts_and_broadcast_decays(gpu_backend, how):
    cp = _cp()
    rng = np.random.default_rng(5)
    x, gh = rand(rng, (4, 6, 3000), "float32"), rand(rng, (4, 6, 3000), "float32")
    xd, ghd = on_device(cp, x, how), on_device(cp, gh, how)
    for a in (rand(rng, (4, 6, 3000), "float32", "a"), rand(rng, (6, 1), "float32", "a"), np.float32(0.9)):
        ad = on_device(cp, a, how)
        h = parscan.linear_scan(ad, xd, backend=gpu_backend)
        _close("h", h.get(), reference.linear_scan(a, x), "float32")
        hd = on_device(cp, h.get(), how)
        ga, gx, _ = parscan.linear_scan_backward(ad, hd, ghd, backend=gpu_backend)
        wa, wx, _ = reference.linear_scan_backward(a, h.get(), gh)
        assert np.shape(ga) == np.shape(a)
        _close("grad_x", gx.get(), wx, "float32")
        _close("grad_a", _host(ga), wa, "float32", x.size // np.size(a), np.abs(wx).max() * np.abs(h.get()).max())


def test_default_backend_for_cuda_arrays_is_cupy(monkeypatch):
    cp = _cp()
    from parscan.kernels import cupy_scan

    called = []
    monkeypatch.setattr(cupy_scan, "forward", lambda p, orig=cupy_scan.forward: called.append(1) or orig(p))
    parscan.linear_scan(0.5, cp.ones(10, cp.float32))
    assert called


REPEAT_STEPS = 1 << 22


def test_bitwise_repeatable_and_backends_agree():
    """One channel of 2^22 steps (thousands of tiles: the look-back between blocks): each backend gives
    the same bits on every call, matches the reference on windows from its own incoming states, and the
    backends agree within twice the float32 tolerance (each is within it of the exact result)."""
    cp = _cp()
    rng = np.random.default_rng(9)
    x, a, gh = (cp.asarray(rand(rng, (1, REPEAT_STEPS), "float32", k)) for k in ("x", "a", "x"))
    results = {}
    for backend in GPU_BACKENDS:
        h = parscan.linear_scan(a, x, backend=backend)
        grads = parscan.linear_scan_backward(a, h, gh, backend=backend)[:2]
        for _ in range(3):
            cp.testing.assert_array_equal(parscan.linear_scan(a, x, backend=backend), h)
            for g, g1 in zip(parscan.linear_scan_backward(a, h, gh, backend=backend)[:2], grads):
                cp.testing.assert_array_equal(g, g1)
        for direction in ("forward", "backward"):
            assert check._window_check(cp, backend, a, x, h, -1, direction) <= 1.0, (backend, direction)
        results[backend] = [v.get() for v in (h, *grads)]
    first, *others = GPU_BACKENDS
    for other in others:
        for name, want, got in zip(("h", "grad_a", "grad_x"), results[first], results[other]):
            _close(f"{name}: {other} against {first}", got, want.astype(np.float64), "float32", factor=2.0)


def test_runs_on_the_current_stream(gpu_backend):
    cp = _cp()
    x = cp.ones((8, 1 << 20), cp.float32)
    with cp.cuda.Stream(non_blocking=True) as s:
        h = parscan.linear_scan(0.5, x, backend=gpu_backend)
        h2 = h * 2  # ordered after the scan on the same stream
    s.synchronize()
    cp.testing.assert_allclose(h2[:, -1], cp.full(8, 4.0, cp.float32), rtol=1e-5)


def test_numba_device_arrays_in_and_out():
    cp = _cp()
    from numba import cuda
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    x = cuda.to_device(np.ones(1000, np.float32))
    for backend in GPU_BACKENDS:  # a Numba device array in gives one out (a CuPy array would pass is_cuda_array)
        h = parscan.linear_scan(0.5, x, backend=backend)
        assert isinstance(h, DeviceNDArray) and not isinstance(h, cp.ndarray), type(h)
        assert_close(h.copy_to_host(), reference.linear_scan(0.5, np.ones(1000)), "float32")


@pytest.mark.slow
def test_one_channel_of_2_27_steps(gpu_backend):
    cp = _cp()
    T = 1 << 27
    a = cp.random.uniform(0.5, 0.999, T, dtype=cp.float32)
    x = cp.random.standard_normal(T, dtype=cp.float32)
    h = parscan.linear_scan(a, x, backend=gpu_backend)
    # spot checks: the reference from a few ranges' true incoming states
    for s in (0, 12345, T // 2, T - 5000):
        h_in = h[s - 1].get().astype(np.float64) if s else 0.0
        want = reference.linear_scan(a[s:s + 4000].get(), x[s:s + 4000].get(), h_in)
        assert_close(h[s:s + 4000].get(), want, "float32")


@pytest.mark.slow
def test_over_2_31_elements():
    cp = _cp()
    C, T = 3, (1 << 31) // 3 + 7  # 2^31 + 19 elements of float16
    x = cp.ones((C, T), cp.float16)
    h = parscan.linear_scan(cp.float16(0.5), x, backend="cupy")
    tail = h[:, -3:].get().astype(np.float64)
    np.testing.assert_allclose(tail, 2.0, rtol=TOL["float16"])
    assert h[-1, 1].get() == np.float16(1.5)


# ---- the matrix scan (issue #8) ---------------------------------------------------------------------

MATRIX_CASES = [  # (x shape, A shape, h0 shape or None)
    ((3, 1000, 4), (3, 1000, 4, 4), (3, 4)),
    ((16, 50_000, 2), (16, 50_000, 2, 2), (16, 2)),   # many chunks, two recursion levels
    ((2, 20_000, 8), (1, 8, 8), (8,)),                 # A constant and shared: zero strides
    ((4, 3, 3000, 32), (3, 3000, 32, 32), None),       # A broadcast over the first leading dim
    ((2, 4000, 64), (2, 4000, 64, 64), (2, 64)),
    ((5, 300, 7), (5, 300, 7, 7), (5, 7)),             # n that does not divide the block
    ((8, 100_000, 1), (8, 100_000, 1, 1), (8, 1)),     # n = 1: the elementwise scan
]


# relative to the largest |reference| value: n-term dot products and chunk products round more than
# the elementwise scan does
MATRIX_TOL = {"float32": 1e-4, "complex64": 1e-4, "float64": 1e-11, "complex128": 1e-11}


def _matrix_close(got, want, dtype):
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=MATRIX_TOL[dtype] * scale)


@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64", "complex128"])
@pytest.mark.parametrize("xs,As,hs", MATRIX_CASES)
def test_matrix_scan_matches_the_reference(gpu_backend, dtype, xs, As, hs):
    cp = _cp()
    rng = np.random.default_rng(xs[-2] + xs[-1])
    n = xs[-1]
    cplx = np.dtype(dtype).kind == "c"
    r = lambda s, k=1.0: (k * (rng.standard_normal(s) + (1j * rng.standard_normal(s) if cplx else 0))).astype(dtype)  # noqa: E731
    x, A, gh = r(xs), r(As, 0.7 / np.sqrt(n)), r(xs)
    h0 = None if hs is None else r(hs)
    dev = lambda v: None if v is None else cp.asarray(v)  # noqa: E731
    for reverse in (False, True):
        h = parscan.matrix_linear_scan(dev(A), dev(x), dev(h0), reverse=reverse, backend=gpu_backend)
        want = parscan.matrix_linear_scan(A, x, h0, reverse=reverse, backend="reference")
        assert isinstance(h, cp.ndarray) and h.dtype == want.dtype
        _matrix_close(h.get(), want, dtype)
        got = parscan.matrix_linear_scan_backward(dev(A), dev(want), dev(gh), dev(h0), reverse=reverse,
                                                  backend=gpu_backend)
        exp = parscan.matrix_linear_scan_backward(A, want, gh, h0, reverse=reverse, backend="reference")
        for g, w in zip(got, exp):
            assert (g is None) == (w is None)
            if g is not None:
                assert g.dtype == w.dtype
                _matrix_close(g.get(), w, dtype)


def test_matrix_scan_is_bitwise_repeatable_and_on_the_current_stream(gpu_backend):
    cp = _cp()
    rng = np.random.default_rng(4)
    A = cp.asarray(0.3 * rng.standard_normal((4, 200_000, 3, 3)), cp.float32)
    x = cp.asarray(rng.standard_normal((4, 200_000, 3)), cp.float32)
    first = parscan.matrix_linear_scan(A, x, backend=gpu_backend)
    with cp.cuda.Stream(non_blocking=True) as s:
        again = parscan.matrix_linear_scan(A, x, backend=gpu_backend)
        twice = again * 2
    s.synchronize()
    cp.testing.assert_array_equal(again, first)
    cp.testing.assert_array_equal(twice, first * 2)


def test_deer_on_cupy_arrays_matches_the_sequential_loop():
    cp = _cp()
    from parscan import deer

    cell = deer.GRUCell(3, 4)
    p = cell.init_params(seed=0)
    rng = np.random.default_rng(0)
    x, y0 = rng.standard_normal((2000, 2, 3)), rng.standard_normal((2, 4))
    want = deer.sequential(cell, p, x, y0)
    pd = {k: cp.asarray(v) for k, v in p.items()}
    for method in ("deer", "quasi"):
        y, info = deer.solve(cell, pd, cp.asarray(x), cp.asarray(y0), method=method)
        assert isinstance(y, cp.ndarray) and info.converged
        np.testing.assert_allclose(y.get(), want, rtol=1e-9, atol=1e-9)
