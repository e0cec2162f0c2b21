"""Every bad input gets a clear exception that names the problem and the fix."""

import numpy as np
import pytest

import parscan
from conftest import Foreign

X = np.ones((3, 5), np.float32)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(a=0.5, x=np.float32(1.0)), TypeError, "x must be an array"),
    (dict(a=0.5, x=np.array(1.0)), ValueError, "x is 0-d"),
    (dict(a=0.5, x=X, axis=2), ValueError, r"axis=2 is out of range .* use an axis in -2..1"),
    (dict(a=0.5, x=X, axis=-3), ValueError, "out of range"),
    (dict(a=0.5, x=X, axis=1.0), TypeError, "axis must be an int"),
    (dict(a=np.ones((3, 4)), x=X), ValueError, r"a has shape \(3, 4\), which does not broadcast to \(3, 5\)"),
    (dict(a=np.ones(3), x=X), ValueError, "size-1 time axis"),
    (dict(a=0.5, x=X, h0=np.ones(5)), ValueError, r"h0 has shape \(5,\).*without the time axis, \(3,\)"),
    (dict(a=0.5, x=np.ones((3, 5), np.int64)), TypeError, r"x has an integer dtype .*cast it first"),
    (dict(a=np.ones(5, np.int32), x=X), TypeError, r"a has an integer dtype"),
    (dict(a=0.5, x=np.ones(5, bool)), TypeError, "x has a bool dtype"),
    (dict(a=True, x=X), TypeError, "a is a bool"),
    (dict(a=0.5, x=np.array(["a", "b"])), TypeError, "x has a string dtype"),
    (dict(a=0.5, x=np.array([1.0, None])), TypeError, "x has an object dtype"),
    (dict(a=0.5, x=X, h0=np.ones(3, np.uint8)), TypeError, "h0 has an unsigned integer dtype"),
    (dict(a=0.5, x=object()), TypeError, "x must be an array"),
    (dict(a=0.5, x=X, backend="gpu"), ValueError, r"unknown backend 'gpu'; choose one of 'cupy', 'numba', 'cpu', 'reference'"),
    (dict(a=0.5, x=X, backend="cupy"), ValueError, "runs on CUDA arrays but the inputs are in host memory"),
    (dict(a=0.5, x=X, backend="numba"), ValueError, "backend='cpu'"),
    (dict(a=0.5, x=X, out=np.empty((3, 4), np.float32)), ValueError, r"out has shape \(3, 4\)"),
    (dict(a=0.5, x=X, out=np.empty((3, 5), np.float64)), TypeError, "out has dtype float64 but the result has dtype float32"),
    (dict(a=0.5, x=X, out=np.broadcast_to(np.empty(5, np.float32), (3, 5))), ValueError, "out is read-only"),
    (dict(a=0.5, x=X, out=np.float32(0)), TypeError, "out must be an array"),
    (dict(a=0.5, x=X, out=np.zeros((3, 5), np.float32).tolist()), TypeError,
     "out must be an array parscan can write into .* got list: preallocate one"),
    (dict(a=0.5, x=X, out=tuple(np.zeros((3, 5), np.float32))), TypeError, "out must be an array .* got tuple"),
    (dict(a=0.5, x=X, reverse="no"), TypeError, "reverse must be a bool .* got str 'no'"),
    (dict(a=0.5, x=X, reverse=1), TypeError, "reverse must be a bool .* got int 1; pass reverse=True or reverse=False"),
    (dict(a=0.5, x=X, reverse=None), TypeError, "reverse must be a bool"),
])
def test_bad_forward_inputs(kwargs, exc, match):
    args = dict(kwargs)
    with pytest.raises(exc, match=match):
        parscan.linear_scan(args.pop("a"), args.pop("x"), **args)


def test_read_only_and_overlapping_out():
    ro = np.empty((3, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        parscan.linear_scan(0.5, X, out=ro)
    buf = np.zeros((3, 6), np.float32)
    x = buf[:, :5]
    with pytest.raises(ValueError, match="out overlaps an input"):
        parscan.linear_scan(0.5, x, out=buf[:, 1:])
    s = np.lib.stride_tricks.as_strided(np.empty(20, np.float32), (3, 5), (4, 4))
    with pytest.raises(ValueError, match="share memory"):
        parscan.linear_scan(0.5, X, out=s)
    z = np.lib.stride_tricks.as_strided(np.empty(20, np.float32), (3, 5), (0, 4))
    with pytest.raises(ValueError, match="zero stride"):
        parscan.linear_scan(0.5, X, out=z)


def test_bad_backward_inputs():
    h = np.ones((3, 5))
    with pytest.raises(ValueError, match=r"grad_h has shape \(3, 4\) but h has shape \(3, 5\)"):
        parscan.linear_scan_backward(0.5, h, np.ones((3, 4)))
    with pytest.raises(ValueError, match="a has shape"):
        parscan.linear_scan_backward(np.ones((2, 5)), h, h)
    with pytest.raises(TypeError, match="grad_h has an integer dtype"):
        parscan.linear_scan_backward(0.5, h, np.ones((3, 5), int))
    with pytest.raises(ValueError, match="axis=3 is out of range for h"):
        parscan.linear_scan_backward(0.5, h, h, axis=3)
    with pytest.raises(ValueError, match="h is 0-d"):
        parscan.linear_scan_backward(0.5, np.array(1.0), np.array(1.0))
    with pytest.raises(ValueError, match="unknown backend"):
        parscan.linear_scan_backward(0.5, h, h, backend="fast")


def test_out_must_be_writable_and_reverse_a_bool_everywhere():
    h = np.ones((3, 5))
    with pytest.raises(TypeError, match="out's grad_x must be an array parscan can write into .* got list"):
        parscan.linear_scan_backward(0.5, h, h, out=(None, h.tolist(), None))
    with pytest.raises(TypeError, match="reverse must be a bool .* got str 'yes'"):
        parscan.linear_scan_backward(0.5, h, h, reverse="yes")
    A, xm = np.tile(0.5 * np.eye(2), (5, 1, 1)), np.ones((5, 2))
    with pytest.raises(TypeError, match="reverse must be a bool .* got str 'no'"):
        parscan.matrix_linear_scan(A, xm, reverse="no")
    with pytest.raises(TypeError, match="reverse must be a bool .* got int 0"):
        parscan.matrix_linear_scan_backward(A, xm, xm, reverse=0)
    with pytest.raises(TypeError, match="out must be an array parscan can write into .* got list"):
        parscan.matrix_linear_scan(A, xm, out=xm.tolist())
    assert parscan.linear_scan(0.5, X, reverse=np.bool_(True))[0, 0] == np.float32(1 + 0.5 + 0.25 + 0.125 + 0.0625)
    for rev in (False, True):  # NumPy bools are bools
        np.testing.assert_array_equal(parscan.linear_scan(0.5, X, reverse=np.bool_(rev)),
                                      parscan.linear_scan(0.5, X, reverse=rev))
        np.testing.assert_array_equal(parscan.linear_scan_backward(0.5, h, h, reverse=np.bool_(rev))[1],
                                      parscan.linear_scan_backward(0.5, h, h, reverse=rev)[1])


def test_mixed_libraries_are_refused():
    with pytest.raises(ValueError, match="a is a .* array but x is a numpy array"):
        parscan.linear_scan(Foreign(np.ones((3, 5), np.float32)), X)


def test_unavailable_backend_says_why():
    st = parscan.available_backends()
    assert set(st) == {"cupy", "numba", "cpu", "reference"}
    for s in st.values():
        assert s.available or s.reason  # every unavailable backend explains itself
    assert st["cpu"].available and st["reference"].available
    assert "available" in str(st["cpu"])


def test_nan_never_hangs():
    x = np.full((2, 100_000), np.nan, np.float32)
    assert np.isnan(parscan.linear_scan(np.float32(0.5), x)).all()


def test_reverse_must_be_a_bool_in_the_dask_and_jax_front_ends():
    da = pytest.importorskip("dask.array")
    pjax = pytest.importorskip("parscan.jax")
    pdask = pytest.importorskip("parscan.dask")
    x = np.ones((3, 8), np.float32)
    A, xm = np.tile(0.5 * np.eye(2), (8, 1, 1)), np.ones((8, 2))
    calls = [lambda: pdask.linear_scan(0.5, da.from_array(x, chunks=(3, 4)), reverse="no"),
             lambda: pdask.linear_scan_backward(0.5, da.from_array(x, chunks=(3, 4)), da.from_array(x, chunks=(3, 4)),
                                                reverse="no"),
             lambda: pdask.matrix_linear_scan(A, da.from_array(xm, chunks=(4, 2)), reverse="no"),
             lambda: pjax.linear_scan(0.5, x, reverse="no"),
             lambda: pjax.matrix_linear_scan(A, xm, reverse="no")]
    for call in calls:
        with pytest.raises(TypeError, match="reverse must be a bool .* got str 'no'"):
            call()
