"""Every host backend equals the float64 reference on the forward scan, over shapes, dtypes, axes,
directions, initial states, broadcast decays and memory layouts."""

import numpy as np
import pytest

import parscan
from parscan import reference
from conftest import DTYPES, LAYOUTS, assert_close, layout, rand

LENGTHS = [1, 2, 3, 7, 31, 32, 33, 127, 255, 257, 1000]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", LENGTHS)
def test_lengths_and_dtypes(backend, dtype, T):
    rng = np.random.default_rng(T)
    x, a = rand(rng, (5, T), dtype), rand(rng, (5, T), dtype, "a")
    h = parscan.linear_scan(a, x, backend=backend)
    assert h.dtype == np.dtype(dtype) and isinstance(h, np.ndarray)
    assert_close(h, reference.linear_scan(a, x), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64", "float16"])
@pytest.mark.parametrize("channels,T", [(1, 40_009), (1, 2**16 + 1), (3, 20_011), (2, 9_000), (64, 4097)])
def test_long_sequences_few_channels(backend, dtype, channels, T):
    """Few channels and long T: the cpu backend cuts time into chunks (three-phase scan)."""
    if backend == "reference" and T > 50_000:
        pytest.skip("the Python reference loop is the oracle here; one long case is enough for it")
    rng = np.random.default_rng(channels * T)
    x, a = rand(rng, (channels, T), dtype), rand(rng, (channels, T), dtype, "a")
    h0 = rand(rng, (channels,), dtype)
    for rev in (False, True):
        h = parscan.linear_scan(a, x, h0, reverse=rev, backend=backend)
        assert_close(h, reference.linear_scan(a, x, h0, reverse=rev), dtype)


@pytest.mark.parametrize("how", LAYOUTS)
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("reverse", [False, True])
def test_layouts_axes_directions(backend, how, axis, reverse):
    rng = np.random.default_rng(7)
    shape = (3, 50, 4)
    x = layout(rand(rng, shape, "float64"), how, axis)
    a = layout(rand(rng, shape, "float64", "a"), how, axis)
    h0_shape = tuple(n for d, n in enumerate(shape) if d != axis % 3)
    h0 = rand(rng, h0_shape, "float64")
    h = parscan.linear_scan(a, x, h0, axis=axis, reverse=reverse, backend=backend)
    assert_close(h, reference.linear_scan(a, x, h0, axis=axis, reverse=reverse), "float64")


@pytest.mark.parametrize("how", ["C", "time-major"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 64, 300), (300, 2, 130), (1, 1, 5000), (2, 1000, 16)])
def test_batch_channel_time_layouts(backend, how, dtype, shape):
    """(B, C, T) time-contiguous and (T, B, C) channel-contiguous, the two native layouts."""
    rng = np.random.default_rng(sum(shape))
    x = layout(rand(rng, shape, dtype), how)
    a = layout(rand(rng, shape, dtype, "a"), how)
    for rev in (False, True):
        h = parscan.linear_scan(a, x, reverse=rev, backend=backend)
        assert_close(h, reference.linear_scan(a, x, reverse=rev), dtype)


A_SHAPES = {  # broadcast decays for x of shape (B, C, T) = (3, 6, 40)
    "scalar-array": (),
    "per-channel": (6, 1),
    "per-batch-channel": (3, 6, 1),
    "time-only": (40,),
    "channel-time": (6, 40),
    "batch-only": (3, 1, 1),
    "full": (3, 6, 40),
}


@pytest.mark.parametrize("kind", list(A_SHAPES))
@pytest.mark.parametrize("dtype", ["float32", "complex128"])
def test_broadcast_a(backend, kind, dtype):
    rng = np.random.default_rng(3)
    x = rand(rng, (3, 6, 40), dtype)
    a = rand(rng, A_SHAPES[kind], dtype, "a")
    for how in ("C", "time-major"):
        xl = layout(x, how)
        h = parscan.linear_scan(a, xl, backend=backend)
        assert_close(h, reference.linear_scan(a, x), dtype)


def test_python_scalar_decay_is_weak(backend):
    x = rand(np.random.default_rng(0), (2, 9), "float32")
    h = parscan.linear_scan(0.9, x, backend=backend)
    assert h.dtype == np.float32
    assert_close(h, reference.linear_scan(0.9, x), "float32")
    hc = parscan.linear_scan(0.9j, x, backend=backend)
    assert hc.dtype == np.complex64
    assert_close(hc, reference.linear_scan(0.9j, x), "complex64")


@pytest.mark.parametrize("h0_shape", [(), (1,), (4,), (3, 1), (3, 4)])
def test_broadcast_h0(backend, h0_shape):
    rng = np.random.default_rng(1)
    x, a = rand(rng, (3, 4, 25), "float64"), rand(rng, (3, 4, 25), "float64", "a")
    h0 = rand(rng, h0_shape, "float64")
    for rev in (False, True):
        h = parscan.linear_scan(a, x, h0, reverse=rev, backend=backend)
        assert_close(h, reference.linear_scan(a, x, h0, reverse=rev), "float64")
    h = parscan.linear_scan(a, x, 2.5, backend=backend)
    assert_close(h, reference.linear_scan(a, x, 2.5), "float64")


@pytest.mark.parametrize("dtypes", [("float32", "float64"), ("float16", "float32"), ("float64", "complex64"),
                                    ("float16", "complex64"), ("complex128", "float32")])
def test_mixed_dtypes_promote_like_numpy(backend, dtypes):
    rng = np.random.default_rng(2)
    a = rand(rng, (4, 30), dtypes[0], "a")
    x = rand(rng, (4, 30), dtypes[1])
    h = parscan.linear_scan(a, x, backend=backend)
    want = np.result_type(a, x)
    assert h.dtype == want
    assert_close(h, reference.linear_scan(a, x), want)


def test_high_rank_unmergeable_layouts(backend):
    """4-D with a per-(head, dim) decay in the middle of time-major data: three channel groups."""
    rng = np.random.default_rng(4)
    x = rand(rng, (2, 3, 20, 5), "float64")  # (B, H, T, D), axis 2
    a = rand(rng, (3, 1, 5), "float64", "a")
    h0 = rand(rng, (2, 3, 5), "float64")
    h = parscan.linear_scan(a, x, h0, axis=2, backend=backend)
    assert_close(h, reference.linear_scan(a, x, h0, axis=2), "float64")
    # 6-D with alternating broadcast dims: more than three groups, run as parts (views, no copy)
    x6 = layout(rand(rng, (2, 3, 2, 3, 2, 7), "float64"), "strided")
    a6 = rand(rng, (2, 1, 2, 1, 2, 1), "float64", "a")
    h6 = parscan.linear_scan(a6, x6, backend=backend)
    assert_close(h6, reference.linear_scan(a6, x6), "float64")


def test_out_argument_and_in_place(backend):
    rng = np.random.default_rng(5)
    x, a = rand(rng, (4, 33), "float32"), rand(rng, (4, 33), "float32", "a")
    want = reference.linear_scan(a, x)
    out = np.empty_like(x)
    assert parscan.linear_scan(a, x, out=out, backend=backend) is out
    assert_close(out, want, "float32")
    fout = np.empty((4, 33), np.float32, order="F")
    parscan.linear_scan(a, x, out=fout, backend=backend)
    assert_close(fout, want, "float32")
    y = x.copy()
    parscan.linear_scan(a, y, out=y, backend=backend)  # in place
    assert_close(y, want, "float32")


def test_inputs_never_modified(backend):
    rng = np.random.default_rng(6)
    x, a, h0 = rand(rng, (3, 17), "float64"), rand(rng, (3, 17), "float64", "a"), rand(rng, (3,), "float64")
    copies = [v.copy() for v in (x, a, h0)]
    parscan.linear_scan(a, x, h0, backend=backend)
    parscan.linear_scan_backward(a, x, x, h0, backend=backend)
    for v, c in zip((x, a, h0), copies):
        np.testing.assert_array_equal(v, c)


@pytest.mark.parametrize("shape,axis", [((0,), 0), ((3, 0), -1), ((0, 5), -1), ((2, 0, 4), 1)])
def test_empty(backend, shape, axis):
    x = np.zeros(shape, np.float32)
    h = parscan.linear_scan(0.5, x, axis=axis, backend=backend)
    assert h.shape == shape and h.dtype == np.float32


def test_one_dimensional_and_single_step(backend):
    x = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(parscan.linear_scan(0.5, x, backend=backend), [1.0, 2.5, 4.25])
    np.testing.assert_allclose(parscan.linear_scan(0.5, x, 4.0, reverse=True, backend=backend),
                               [1 + 0.5 * (2 + 0.5 * (3 + 0.5 * 4)), 2 + 0.5 * (3 + 2), 3 + 2])
    np.testing.assert_allclose(parscan.linear_scan(0.5, x[:1], 2.0, backend=backend), [2.0])


def test_nan_and_inf_propagate_like_the_loop(backend):
    x = np.array([[1.0, np.nan, 1.0, 1.0], [1.0, np.inf, 1.0, 1.0]])
    a = np.array([[0.5, 0.5, 0.0, 0.5], [0.5, 0.5, 0.5, 0.5]])
    h = parscan.linear_scan(a, x, backend=backend)
    want = reference.linear_scan(a, x)
    np.testing.assert_array_equal(np.isnan(h), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(h), np.isinf(want))
    # a zero decay does not reset NaN in IEEE arithmetic (0 * nan = nan): same as the loop
    assert np.isnan(h[0, 2]) and np.isnan(want[0, 2])


def test_results_are_bitwise_repeatable(backend):
    rng = np.random.default_rng(8)
    x, a = rand(rng, (1, 50_000), "float32"), rand(rng, (1, 50_000), "float32", "a")
    first = parscan.linear_scan(a, x, backend=backend)
    for _ in range(3):
        np.testing.assert_array_equal(parscan.linear_scan(a, x, backend=backend), first)


def test_default_backend_for_host_arrays_is_cpu(monkeypatch):
    from parscan import cpu

    calls = []
    monkeypatch.setattr(cpu, "forward", lambda p: calls.append(p) or reference.forward(p))
    parscan.linear_scan(0.5, np.ones(3))
    assert len(calls) == 1
