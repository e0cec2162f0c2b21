"""The Numba CUDA kernels, run by the CUDA simulator through the public API on simulator device
arrays (``cuda.to_device`` in, ``.copy_to_host()`` out), against the reference.

The launches are small (see sim_arrays), so short sequences span many tiles.  Run by
tests/test_numba_simulator.py in a process with NUMBA_ENABLE_CUDASIM=1.
"""

import numpy as np
import pytest

import parscan
from parscan import _arrays, reference
from parscan.kernels import launch
from conftest import DTYPES, assert_close, rand
from sim_arrays import DeviceArray, host, to_device

CASES = [  # (shape, axis)
    ((1, 0), -1), ((1, 1), -1), ((1, 5), -1), ((1, 128), -1), ((1, 129), -1), ((1, 700), -1),
    ((3, 300), -1), ((300, 3), 0), ((9, 40), 0), ((2, 3, 50), 1), ((5, 2, 33), 0), ((64, 2), 0),
]


def test_the_small_launch_is_in_effect():
    """The tests below span many tiles only with the small launch: check it, and that the numba
    backend reads the setting (a bad value is refused by name)."""
    threads, items = launch.sim_sizes(launch.SIM_LAUNCH, ("threads", "items"))
    assert (threads, items) == (32, 4)
    assert launch.plan_launch((1, 1, 1, 700), (0, 0, 0, 1), threads, items).time_tiles == 6
    assert launch.plan_launch((1, 1, 1, 700), (0, 0, 0, 1)).time_tiles == 1  # the real default


def test_the_numba_backend_reads_the_launch_setting(monkeypatch):
    monkeypatch.setenv("PARSCAN_SIM_LAUNCH", "32")
    with pytest.raises(ValueError, match="PARSCAN_SIM_LAUNCH='32': expected 2 positive integers"):
        parscan.linear_scan(0.5, to_device(np.ones((1, 10))))


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_matches_reference(shape, axis, reverse):
    rng = np.random.default_rng(len(shape) * 100 + shape[axis])
    x, a = rand(rng, shape, "float64"), rand(rng, shape, "float64", "a")
    h0 = rand(rng, np.delete(shape, axis % len(shape)), "float64")
    h = parscan.linear_scan(to_device(a), to_device(x), to_device(h0), axis=axis, reverse=reverse)
    assert_close(host(h), reference.linear_scan(a, x, h0, axis=axis, reverse=reverse), "float64")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((2, 300), -1), ((300, 5), 0)])
def test_every_dtype(dtype, shape, axis):
    rng = np.random.default_rng(1)
    x, a = rand(rng, shape, dtype), rand(rng, shape, dtype, "a")
    h = parscan.linear_scan(to_device(a), to_device(x), axis=axis)
    assert h.dtype == np.dtype(dtype)
    hh = host(h)
    assert_close(hh, reference.linear_scan(a, x, axis=axis), dtype)
    gh = rand(rng, shape, dtype)
    got = parscan.linear_scan_backward(to_device(a), h, to_device(gh), axis=axis)
    want = reference.linear_scan_backward(a, hh, gh, axis=axis)
    for g, w in zip(got[:2], want[:2]):
        assert_close(host(g), w, dtype)


@pytest.mark.parametrize("how", ["F", "strided", "negative", "time-major"])
def test_layouts(how):
    rng = np.random.default_rng(2)
    x, a = rand(rng, (4, 3, 70), "float32"), rand(rng, (4, 3, 70), "float32", "a")
    h = parscan.linear_scan(to_device(a, how), to_device(x, how))
    assert_close(host(h), reference.linear_scan(a, x), "float32")


@pytest.mark.parametrize("a_shape", [(), (3, 1), (1, 150)])
def test_broadcast_decay(a_shape):
    rng = np.random.default_rng(3)
    x, a = rand(rng, (3, 150), "float64"), rand(rng, a_shape, "float64", "a")
    h = parscan.linear_scan(to_device(a), to_device(x))
    assert_close(host(h), reference.linear_scan(a, x), "float64")
    gh = rand(rng, (3, 150), "float64")
    ga, gx, _ = parscan.linear_scan_backward(to_device(a), h, to_device(gh))
    wa, wx, _ = reference.linear_scan_backward(a, host(h), gh)
    assert ga.shape == np.shape(a)
    assert_close(host(ga), wa, "float64")
    assert_close(host(gx), wx, "float64")


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("reverse", [False, True])
def test_backward_matches_reference(shape, axis, reverse):
    rng = np.random.default_rng(7 + shape[axis])
    x, a = rand(rng, shape, "complex128"), rand(rng, shape, "complex128", "a")
    h0 = rand(rng, np.delete(shape, axis % len(shape)), "complex128")
    h = reference.linear_scan(a, x, h0, axis=axis, reverse=reverse)
    gh = rand(rng, shape, "complex128")
    got = parscan.linear_scan_backward(to_device(a), to_device(h), to_device(gh), to_device(h0), axis=axis,
                                       reverse=reverse)
    want = reference.linear_scan_backward(a, h, gh, h0, axis=axis, reverse=reverse)
    for g, w in zip(got, want):
        assert_close(host(g), w, "complex128")


def test_python_scalar_decay_and_h0():
    x = np.linspace(-1, 1, 2 * 200).reshape(2, 200).astype(np.float32)
    h = parscan.linear_scan(0.9, to_device(x), 0.5, reverse=True)
    assert h.dtype == np.float32
    assert_close(host(h), reference.linear_scan(0.9, x, 0.5, reverse=True), "float32")


def test_auto_choice_on_device_arrays_is_numba():
    st = parscan.available_backends()
    assert st["numba"].available and str(st["numba"]) == "numba (cuda): available (Numba CUDA simulator)"
    assert not st["cupy"].available and "NUMBA_ENABLE_CUDASIM" in st["cupy"].reason
    rng = np.random.default_rng(5)
    x, a = rand(rng, (2, 300), "float32"), rand(rng, (2, 300), "float32", "a")
    auto = parscan.linear_scan(to_device(a), to_device(x))
    numba = parscan.linear_scan(to_device(a), to_device(x), backend="numba")
    np.testing.assert_array_equal(host(auto), host(numba))  # the same kernels and launch: bitwise equal
    with pytest.raises(parscan.BackendUnavailable, match="CuPy cannot use"):
        parscan.linear_scan(to_device(a), to_device(x), backend="cupy")
    with pytest.raises(ValueError, match="runs on host arrays but the inputs are on a CUDA device"):
        parscan.linear_scan(to_device(a), to_device(x), backend="cpu")


def test_results_are_device_arrays():
    x = to_device(np.ones((2, 40)))
    h = parscan.linear_scan(0.5, x)
    ga, gx, gh0 = parscan.linear_scan_backward(to_device(np.full((2, 1), 0.5)), h, x, to_device(np.zeros(2)))
    for v in (h, ga, gx, gh0):
        assert isinstance(v, DeviceArray)
    assert ga.shape == (2, 1) and gh0.shape == (2,)


@pytest.mark.parametrize("call", ["forward", "backward"])
def test_host_arrays_are_refused_by_the_numba_backend(call):
    x = np.ones((2, 40))
    args = (0.5, x) if call == "forward" else (0.5, x, x)
    fn = parscan.linear_scan if call == "forward" else parscan.linear_scan_backward
    with pytest.raises(ValueError, match="inputs are in host memory.*numba.cuda.to_device"):
        fn(*args, backend="numba")
    mixed = (np.full((2, 40), 0.5), to_device(x)) + (() if call == "forward" else (to_device(x),))
    with pytest.raises(ValueError, match="a is in host memory but .* simulator memory.*numba.cuda.to_device"):
        fn(*mixed)


def test_the_adapter_takes_simulator_memory_zero_copy():
    d = to_device(np.zeros((2, 3)))
    op = _arrays.as_operand(d, "x")
    assert (op.library, op.device, op.on_gpu, op.simulated) == ("numba", 0, True, True)
    assert _arrays.array_module(op) is np and type(op.array) is np.ndarray
    d[1, 2] = 7.0
    assert op.array[1, 2] == 7.0  # a view of the device array's memory
    back = _arrays.give_back(op.array[1], op)
    assert isinstance(back, DeviceArray)
    back[0] = 5.0
    assert host(d)[1, 0] == 5.0  # and the result wraps NumPy's memory, not a copy


@pytest.mark.parametrize("step", [1, 2])
def test_out_is_a_device_array_written_in_place(step):
    rng = np.random.default_rng(4)
    x, a = rand(rng, (2, 500), "float32"), rand(rng, (2, 500), "float32", "a")
    big = to_device(np.full((2 * step + 1, 500 * step + 3), 9.0, np.float32))
    where = (slice(1, 1 + 2 * step, step), slice(3, 3 + 500 * step, step))
    out = big[where]
    assert parscan.linear_scan(to_device(a), to_device(x), out=out) is out
    assert_close(host(out), reference.linear_scan(a, x), "float32")
    outside = np.ones(big.shape, bool)
    outside[where] = False
    assert (host(big)[outside] == 9.0).all()  # nothing written outside out


def test_out_in_place_and_repeatable():
    rng = np.random.default_rng(4)
    x, a = rand(rng, (2, 500), "float32"), rand(rng, (2, 500), "float32", "a")
    first = host(parscan.linear_scan(to_device(a), to_device(x)))
    y = to_device(x)
    assert parscan.linear_scan(to_device(a), y, out=y) is y
    np.testing.assert_array_equal(host(y), first)  # the same kernels and launch: bitwise equal


def test_inputs_are_unmodified():
    rng = np.random.default_rng(6)
    x, a, h0, gh = (rand(rng, (3, 200), "complex64"), rand(rng, (3, 200), "complex64", "a"),
                    rand(rng, 3, "complex64"), rand(rng, (3, 200), "complex64"))
    dx, da, dh0, dgh = (to_device(v, "strided") for v in (x, a, h0, gh))
    h = parscan.linear_scan(da, dx, dh0)
    hh = host(h)
    parscan.linear_scan_backward(da, h, dgh, dh0)
    for d, v in ((dx, x), (da, a), (dh0, h0), (dgh, gh)):
        np.testing.assert_array_equal(host(d), v)
    np.testing.assert_array_equal(host(h), hh)


def test_nan_propagates():
    x = np.ones((1, 300))
    x[0, 100] = np.nan
    h = host(parscan.linear_scan(0.5, to_device(x)))
    assert not np.isnan(h[0, :100]).any() and np.isnan(h[0, 100:]).all()


def test_mixed_precision_operands_are_read_as_they_are():
    """A float16 x (a strided device view) with a float32 a: the kernel reads each in its own dtype
    (Numba specialises on the argument types; nothing is cast), forward and backward."""
    rng = np.random.default_rng(4)
    base = rand(rng, (2, 600), "float16")
    x, a = base[:, ::2], rand(rng, (2, 300), "float32", "a")
    xd = to_device(base)[:, ::2]
    h = parscan.linear_scan(to_device(a), xd)
    assert h.dtype == np.float32
    assert_close(host(h), reference.linear_scan(a, x), "float32")
    gh = rand(rng, (2, 300), "float16")
    got = parscan.linear_scan_backward(to_device(a), h, to_device(gh))
    want = reference.linear_scan_backward(a, host(h), gh)
    for g, w in zip(got[:2], want[:2]):
        assert_close(host(g), w, "float32")
