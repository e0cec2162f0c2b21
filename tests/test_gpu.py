"""The GPU suite: both CUDA backends against the reference on a CUDA device (skipped without one).

Run on the device machine: ``pytest -m gpu`` (add ``-m "gpu and slow"`` for the 2^27-step and
over-2^31-element cases).
"""

import numpy as np
import pytest

import parscan
from parscan import reference
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


@pytest.mark.parametrize("how", ["F", "strided", "negative", "time-major"])
def test_layouts_and_broadcast_decays(gpu_backend, how):
    cp = _cp()
    rng = np.random.default_rng(5)
    x = rand(rng, (4, 6, 3000), "float32")
    for a in (rand(rng, (4, 6, 3000), "float32", "a"), rand(rng, (6, 1), "float32", "a"), np.float32(0.9)):
        xa = cp.asarray(layout(x, how)) if how != "C" else cp.asarray(x)
        ad = cp.asarray(layout(a, how)) if np.ndim(a) else a
        h = parscan.linear_scan(ad, xa, backend=gpu_backend)
        assert_close(h.get(), reference.linear_scan(a, x), "float32")
        ga, gx, _ = parscan.linear_scan_backward(ad, h, cp.asarray(x), backend=gpu_backend)
        wa, wx, _ = reference.linear_scan_backward(a, h.get(), x)
        assert ga.shape == np.shape(a)
        assert_close(gx.get(), wx, "float32")
        np.testing.assert_allclose(np.asarray(ga.get() if hasattr(ga, "get") else ga), wa,
                                   rtol=1e-4, atol=1e-3 * np.abs(wa).max())


def test_default_backend_for_cuda_arrays_is_cupy(monkeypatch):
    cp = _cp()
    from parscan.kernels import cupy_scan

    called = []
    monkeypatch.setattr(cupy_scan, "forward", lambda p, orig=cupy_scan.forward: called.append(1) or orig(p))
    parscan.linear_scan(0.5, cp.ones(10, cp.float32))
    assert called


def test_bitwise_repeatable_and_backends_agree(gpu_backend):
    cp = _cp()
    rng = np.random.default_rng(9)
    x, a = cp.asarray(rand(rng, (1, 1 << 22), "float32")), cp.asarray(rand(rng, (1, 1 << 22), "float32", "a"))
    first = parscan.linear_scan(a, x, backend=gpu_backend)
    for _ in range(5):
        cp.testing.assert_array_equal(parscan.linear_scan(a, x, backend=gpu_backend), first)


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

    x = cuda.to_device(np.ones(1000, np.float32))
    h = parscan.linear_scan(0.5, x, backend="numba")
    assert cuda.is_cuda_array(h)
    np.testing.assert_allclose(h.copy_to_host()[-1], 2.0, rtol=1e-5)
    del cp


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
