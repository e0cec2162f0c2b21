"""The backward: the reference against finite differences and the adjoint identity, every host
backend against the reference."""

import numpy as np
import pytest

import parscan
from parscan import reference
from conftest import DTYPES, assert_close, layout, rand


def _loss(a, x, h0, w, axis, reverse):
    """A real scalar loss L = Re sum(conj(w) * h): dL/dh = w (PyTorch's convention)."""
    h = reference.linear_scan(a, x, h0, axis=axis, reverse=reverse)
    return float(np.real(np.sum(np.conj(w) * h)))


def _fd_grad(f, v, eps=1e-6):
    """Central finite differences of the real scalar f w.r.t. v (complex: d/dRe + i d/dIm)."""
    g = np.zeros(v.shape, v.dtype)
    it = np.nditer(v, flags=["multi_index"])
    for _ in it:
        idx = it.multi_index
        for unit in ((1.0, 1j) if np.iscomplexobj(v) else (1.0,)):
            vp, vm = v.copy(), v.copy()
            vp[idx] += eps * unit
            vm[idx] -= eps * unit
            g[idx] += unit * (f(vp) - f(vm)) / (2 * eps)
    return g


@pytest.mark.parametrize("dtype", ["float64", "complex128"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("a_shape", [(3, 7), (3, 1), (7,), ()])
def test_reference_matches_finite_differences(dtype, reverse, a_shape):
    rng = np.random.default_rng(0)
    x, w = rand(rng, (3, 7), dtype), rand(rng, (3, 7), dtype)
    a, h0 = rand(rng, a_shape, dtype, "a"), rand(rng, (3,), dtype)
    h = reference.linear_scan(a, x, h0, reverse=reverse)
    ga, gx, gh0 = reference.linear_scan_backward(a, h, w, h0, reverse=reverse)
    np.testing.assert_allclose(gx, _fd_grad(lambda v: _loss(a, v, h0, w, -1, reverse), x), atol=1e-7)
    np.testing.assert_allclose(ga, _fd_grad(lambda v: _loss(v, x, h0, w, -1, reverse), a), atol=1e-7)
    np.testing.assert_allclose(gh0, _fd_grad(lambda v: _loss(a, x, v, w, -1, reverse), h0), atol=1e-7)
    assert ga.shape == a_shape and gh0.shape == (3,)


@pytest.mark.parametrize("dtype", ["float64", "complex128"])
def test_adjoint_identity(backend, dtype):
    """With h0 = 0 the scan is a linear map M: x -> h, and grad_x = M^H grad_h exactly:
    <grad_h, M x> = <M^H grad_h, x>."""
    rng = np.random.default_rng(1)
    x, w, a = rand(rng, (4, 300), dtype), rand(rng, (4, 300), dtype), rand(rng, (4, 300), dtype, "a")
    for rev in (False, True):
        h = parscan.linear_scan(a, x, reverse=rev, backend=backend)
        _, gx, _ = parscan.linear_scan_backward(a, h, w, reverse=rev, backend=backend)
        lhs, rhs = np.vdot(w, h), np.vdot(gx, x)
        assert abs(lhs - rhs) <= 1e-11 * max(1.0, abs(lhs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((4, 40), -1), ((1, 30_011), -1), ((2, 9000), 1), ((50, 3, 6), 0),
                                        ((1, 1, 7), 2), ((300, 2, 70), -1)])
def test_backends_match_reference(backend, dtype, shape, axis):
    rng = np.random.default_rng(sum(shape))
    if backend == "reference" and max(shape) > 10_000:
        pytest.skip("covered for the reference by the finite-difference test")
    a, h, gh = rand(rng, shape, dtype, "a"), rand(rng, shape, dtype), rand(rng, shape, dtype)
    h0 = rand(rng, tuple(n for d, n in enumerate(shape) if d != axis % len(shape)), dtype)
    for rev in (False, True):
        got = parscan.linear_scan_backward(a, h, gh, h0, axis=axis, reverse=rev, backend=backend)
        want = reference.linear_scan_backward(a, h, gh, h0, axis=axis, reverse=rev)
        for g, r, v in zip(got, want, (a, h, h0)):
            assert g.dtype == v.dtype and g.shape == v.shape
            assert_close(g, r, dtype)


@pytest.mark.parametrize("a_shape", [(), (6, 1), (3, 6, 1), (40,), (6, 40), (3, 1, 1), (1, 6, 40)])
@pytest.mark.parametrize("how", ["C", "time-major"])
def test_broadcast_a_gradient_is_summed(backend, a_shape, how):
    rng = np.random.default_rng(2)
    shape = (3, 6, 40)
    a = rand(rng, a_shape, "float64", "a")
    h, gh = layout(rand(rng, shape, "float64"), how), layout(rand(rng, shape, "float64"), how)
    h0 = rand(rng, (6,), "float64")  # broadcast over the batch too
    got = parscan.linear_scan_backward(a, h, gh, h0, backend=backend)
    want = reference.linear_scan_backward(a, h, gh, h0)
    assert got[0].shape == a_shape and got[2].shape == (6,)
    for g, r in zip(got, want):
        assert_close(g, r, "float64")


def test_long_time_constant_decay_summed_over_chunks(backend):
    rng = np.random.default_rng(3)
    a = rand(rng, (2, 1), "float32", "a")
    h, gh = rand(rng, (2, 50_000), "float32"), rand(rng, (2, 50_000), "float32")
    if backend == "reference":
        pytest.skip("long case for the fast backends")
    got = parscan.linear_scan_backward(a, h, gh, backend=backend)
    want = reference.linear_scan_backward(a, h, gh)
    assert_close(got[0], want[0], "float32")
    assert_close(got[1], want[1], "float32")
    assert got[2] is None


def test_real_decay_with_complex_inputs_gets_a_real_gradient(backend):
    rng = np.random.default_rng(4)
    a = rand(rng, (3, 20), "float64", "a")
    h, gh = rand(rng, (3, 20), "complex128"), rand(rng, (3, 20), "complex128")
    ga, gx, _ = parscan.linear_scan_backward(a, h, gh, backend=backend)
    want = reference.linear_scan_backward(a, h, gh)
    assert ga.dtype == np.float64 and gx.dtype == np.complex128
    np.testing.assert_allclose(ga, want[0].real, atol=1e-12)


def test_empty_backward(backend):
    ga, gx, gh0 = parscan.linear_scan_backward(np.ones((3, 1)), np.zeros((3, 0)), np.zeros((3, 0)),
                                               np.ones(3), backend=backend)
    assert ga.shape == (3, 1) and gx.shape == (3, 0) and gh0.shape == (3,)
    assert not ga.any() and not gh0.any()


@pytest.mark.parametrize("reverse", [False, True])
def test_nan_and_inf_propagate_like_the_loop(backend, reverse):
    rng = np.random.default_rng(3)
    a = rng.uniform(0.2, 0.9, (3, 13))
    h = reference.linear_scan(a, rng.standard_normal((3, 13)), reverse=reverse)
    gh = rng.standard_normal((3, 13))
    gh[0, 6], gh[1, 2], gh[2, 9] = np.nan, np.inf, -np.inf
    h0 = np.ones(3)
    got = parscan.linear_scan_backward(a, h, gh, h0, reverse=reverse, backend=backend)
    want = reference.linear_scan_backward(a, h, gh, h0, reverse=reverse)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        np.testing.assert_array_equal(np.isinf(g), np.isinf(w))
        finite = np.isfinite(w)
        np.testing.assert_allclose(g[finite], w[finite], rtol=1e-12)


def test_reference_gradient_of_a_real_decay_with_complex_data_is_real(backend):
    """The ground truth and the API agree: a real a (and h0) gets the real part of its gradient."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 50)) + 1j * rng.standard_normal((3, 50))
    a, h0 = rng.uniform(0.5, 0.9, (3, 50)), rng.standard_normal(3)
    h = reference.linear_scan(a, x, h0)
    gh = rng.standard_normal((3, 50)) + 1j * rng.standard_normal((3, 50))
    want = reference.linear_scan_backward(a, h, gh, h0)
    got = parscan.linear_scan_backward(a, h, gh, h0, backend=backend)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    assert want[0].dtype == np.float64 and want[2].dtype == np.float64


@pytest.mark.parametrize("dtype", ["float32", "complex128"])
@pytest.mark.parametrize("how", ["C", "F", "strided"])
@pytest.mark.parametrize("decay", ["full", "channel", "scalar"])
def test_out_receives_the_gradients(backend, dtype, how, decay):
    """linear_scan_backward(..., out=(grad_a, grad_x, grad_h0)): the same values as without out, in the
    arrays given (grad_x of any layout, in place; a full grad_a in place; the others copied in)."""
    rng = np.random.default_rng(3)
    shape, axis = (4, 3, 40), 1
    x, g, h0 = rand(rng, shape, dtype), rand(rng, shape, dtype), rand(rng, (4, 40), dtype)
    a = {"full": rand(rng, shape, dtype, "a"), "channel": rand(rng, (4, 1, 40), dtype, "a"), "scalar": 0.8}[decay]
    h = parscan.linear_scan(a, x, h0, axis=axis, backend=backend)
    want = parscan.linear_scan_backward(a, h, g, h0, axis=axis, backend=backend)
    outs = tuple(None if w is None else layout(np.zeros(w.shape, w.dtype), how) if np.ndim(w) else
                 np.zeros((), w.dtype) for w in want)
    inputs = [v.copy() for v in (a, h, g, h0) if isinstance(v, np.ndarray)]
    got = parscan.linear_scan_backward(a, h, g, h0, axis=axis, backend=backend, out=outs)
    for o, r, w in zip(outs, got, want):
        assert r is o
        assert np.array_equal(r, w)
    assert all(np.array_equal(u, v) for u, v in zip(inputs, [v for v in (a, h, g, h0) if isinstance(v, np.ndarray)]))
    only = np.empty(shape, np.result_type(x, a if isinstance(a, np.ndarray) else x), order="F")
    ga, gx, gh0 = parscan.linear_scan_backward(a, h, g, h0, axis=axis, backend=backend, out=(None, only, None))
    assert gx is only and np.array_equal(gx, want[1]) and np.array_equal(ga, want[0])


def test_out_errors_name_the_output_and_the_fix():
    x = np.ones((2, 6))
    h = parscan.linear_scan(0.5, x, backend="reference")
    with pytest.raises(TypeError, match=r"out must be a tuple \(grad_a, grad_x, grad_h0\)"):
        parscan.linear_scan_backward(0.5, h, x, out=np.empty((2, 6)))
    with pytest.raises(ValueError, match="out's grad_x has shape \\(6, 2\\).*allocate it so"):
        parscan.linear_scan_backward(0.5, h, x, out=(None, np.empty((6, 2)), None))
    with pytest.raises(ValueError, match="out's grad_x has shape \\(2, 6\\) and dtype float32"):
        parscan.linear_scan_backward(0.5, h, x, out=(None, np.empty((2, 6), np.float32), None))
    ro = np.empty((2, 6))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out's grad_x is read-only"):
        parscan.linear_scan_backward(0.5, h, x, out=(None, ro, None))
    g = x.copy()
    with pytest.raises(ValueError, match="out's grad_x overlaps an input"):
        parscan.linear_scan_backward(0.5, h, g, out=(None, g, None))
    with pytest.raises(ValueError, match="grad_h0 is given but h0 is None"):
        parscan.linear_scan_backward(0.5, h, x, out=(None, None, np.empty(2)))
    with pytest.raises(ValueError, match="share memory"):
        shared = np.lib.stride_tricks.as_strided(np.empty(6), (2, 6), (0, 8))  # writable, rows alias
        parscan.linear_scan_backward(0.5, h, x, out=(None, shared, None))
