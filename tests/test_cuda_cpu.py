"""The CUDA C kernels of scan.cu, run on the CPU through the CuPy backend's own launch path.

``tests/cuda_cpu`` compiles ``parscan/kernels/scan.cu`` with g++ and stands in for ``cupy``: every call
below goes ``parscan.linear_scan(..., backend="cupy")`` -> planning -> ``cupy_scan`` -> ``RawModule``
-> the compiled kernel, with NumPy memory as device memory, and is compared with the float64 reference
at the GPU suite's tolerances.  Shapes are small but span many tiles (a tile is 256 lanes x 8 steps,
or 4 for complex128).  The shuffled schedule (block start order permuted, 8 blocks in flight, threads
interleaved at random) runs the look-back's wait and its walk over aggregates; ``polls`` proves it.
"""

import contextlib

import numpy as np
import pytest

import parscan
from parscan import reference
from conftest import DTYPES, assert_close, layout, rand
import nonfinite_cases
from reset_cases import assert_same_nonfinite, assert_some_of_both, poisoned, poisoned_matrix
import cuda_cpu

SHUFFLED = dict(seed=12345, in_flight=8, yield_every=3)


@pytest.fixture(scope="module")
def cp():
    with cuda_cpu.installed() as module:
        yield module


def _names():
    return [launch.name.split("<")[0] for launch in cuda_cpu.launches()]


# (shape, axis): time-contiguous and channel-contiguous, one tile and many tiles per sequence,
# several short channels per block, a 3-D problem with the time axis in the middle
SHAPES = [((2, 5000), -1), ((5000, 3), 0), ((40, 300), -1), ((300, 40), 0), ((2, 3, 700), 1), ((3, 7), -1)]


def _inputs(rng, shape, axis, dtype, a_kind):
    x = rand(rng, shape, dtype)
    if a_kind == "full":
        a = rand(rng, shape, dtype, "a")
    elif a_kind == "channel":  # constant in time, broadcast along it
        s = list(shape)
        s[axis] = 1
        a = rand(rng, tuple(s), dtype, "a")
    else:
        a = np.asarray(rand(rng, (), dtype, "a"))[()]
    return x, a


def _dev(cp, v):
    return cp.asarray(v) if isinstance(v, np.ndarray) else v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", SHAPES)
def test_forward_and_backward_match_the_reference(cp, dtype, shape, axis):
    rng = np.random.default_rng(shape[axis] + len(dtype))
    for a_kind, with_h0, reverse in (("full", False, False), ("channel", True, True), ("scalar", True, False)):
        x, a = _inputs(rng, shape, axis, dtype, a_kind)
        h0 = rand(rng, np.delete(shape, axis % len(shape)), dtype) if with_h0 else None
        xd, ad, h0d = cp.asarray(x), _dev(cp, a), None if h0 is None else cp.asarray(h0)
        before = [np.array(v) for v in (xd, ad, h0d) if isinstance(v, cp.ndarray)]
        h = parscan.linear_scan(ad, xd, h0d, axis=axis, reverse=reverse, backend="cupy")
        assert isinstance(h, cp.ndarray) and h.dtype == np.dtype(dtype)
        want = reference.linear_scan(a, x, h0, axis=axis, reverse=reverse)
        assert_close(np.asarray(h), want, dtype)
        hs = want.astype(dtype)
        gh = rand(rng, shape, dtype)
        got = parscan.linear_scan_backward(ad, cp.asarray(hs), cp.asarray(gh), h0d, axis=axis, reverse=reverse,
                                           backend="cupy")
        exp = reference.linear_scan_backward(a, hs, gh, h0, axis=axis, reverse=reverse)
        for g, w, name in zip(got, exp, ("grad_a", "grad_x", "grad_h0")):
            if w is None:
                assert g is None
                continue
            assert np.shape(g) == np.shape(w), name
            assert_close(np.asarray(g), np.asarray(w), dtype)
        after = [np.array(v) for v in (xd, ad, h0d) if isinstance(v, cp.ndarray)]
        assert all(np.array_equal(p, q, equal_nan=True) for p, q in zip(before, after)), "inputs modified"
    if shape[axis] > 2048:  # a constant a across several tiles: per-tile parts summed by sum_parts
        assert "sum_parts" in _names()


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_real_decay_with_complex_data(cp, dtype):
    rng = np.random.default_rng(3)
    x = rand(rng, (3, 3000), dtype)
    a = rand(rng, (3, 3000), np.zeros(0, dtype).real.dtype, "a")
    h = parscan.linear_scan(cp.asarray(a), cp.asarray(x), backend="cupy")
    assert h.dtype == np.dtype(dtype)
    assert_close(np.asarray(h), reference.linear_scan(a, x), dtype)
    r, c = ("float", "cplx<float>") if dtype == "complex64" else ("double", "cplx<double>")
    assert cuda_cpu.launches()[-1].name.startswith(f"scan_kernel<{r}, {c}, {c}, {c}, {c}, {c}, {c},")


def _device_layout(cp, arr, how):
    """``arr``'s values on the device in a layout made there (as conftest.layout makes it on the host):
    a view of a contiguous device array (``cp.asarray`` of a host view would copy it to C order)."""
    flip = (slice(None, None, -1),) * arr.ndim
    if how == "F":
        return cp.asarray(np.ascontiguousarray(arr.T)).T
    if how == "strided":
        big = cp.zeros(tuple(2 * n for n in arr.shape), arr.dtype)
        view = big[(slice(None, None, 2),) * arr.ndim]
        view[...] = cp.asarray(arr)
        return view
    if how == "negative":
        return cp.asarray(np.ascontiguousarray(arr[flip]))[flip]
    if how == "time-major":
        order = (arr.ndim - 1, *range(arr.ndim - 1))
        return cp.asarray(np.ascontiguousarray(arr.transpose(order))).transpose((*range(1, arr.ndim), 0))
    raise ValueError(how)


def _geo_args(launch, index):
    """The (offset, four strides) arguments after pointer argument ``index``."""
    return [int(v) for v in launch.args[index + 1:index + 6]]


@pytest.mark.parametrize("how", ["F", "strided", "negative", "time-major"])
def test_layouts_go_in_as_views(cp, how):
    """Views made on the device reach scan.cu as they are: the kernel gets the views' own buffers
    (no copy) with their strides (negative ones included), forward and backward, and the results
    equal the reference's."""
    rng = np.random.default_rng(5)
    x = rand(rng, (2, 3, 2500), "float32")
    a = rand(rng, (2, 3, 2500), "float32", "a")
    xd, ad = _device_layout(cp, x, how), _device_layout(cp, a, how)
    assert np.array_equal(np.asarray(xd), x) and xd.strides != cp.asarray(x).strides
    h = parscan.linear_scan(ad, xd, backend="cupy")
    fwd = cuda_cpu.launches()[-1]
    assert _received(fwd, 0, ad) and _received(fwd, 6, xd)
    strides = _geo_args(fwd, 6)[1:]
    assert any(s < 0 for s in strides) == (how == "negative"), strides
    if how == "time-major":
        assert strides[3] == 6  # time the slowest axis: one step is (2 * 3) elements on
    assert_close(np.asarray(h), reference.linear_scan(a, x), "float32")
    gd = _device_layout(cp, x, how)
    ga, gx, _ = parscan.linear_scan_backward(ad, h, gd, backend="cupy")
    bwd = cuda_cpu.launches()[-1]
    assert _received(bwd, 0, ad) and _received(bwd, 6, gd)
    wa, wx, _ = reference.linear_scan_backward(a, np.asarray(h), x)
    assert_close(np.asarray(gx), wx, "float32")
    assert_close(np.asarray(ga), wa, "float32")


def test_in_place_and_out(cp):
    rng = np.random.default_rng(6)
    x, a = rand(rng, (4, 3000), "float64"), rand(rng, (4, 3000), "float64", "a")
    want = reference.linear_scan(a, x)
    xd = cp.asarray(x)
    assert parscan.linear_scan(cp.asarray(a), xd, out=xd, backend="cupy") is xd
    assert_close(np.asarray(xd), want, "float64")
    out = cp.empty((4, 3000), np.float64)
    parscan.linear_scan(cp.asarray(a), cp.asarray(x), out=out, backend="cupy")
    assert_close(np.asarray(out), want, "float64")


@pytest.mark.parametrize("dtype", DTYPES)
def test_shuffled_schedule_walks_the_look_back(cp, dtype):
    """Blocks started out of order, eight resident, threads interleaved at random: tiles find
    predecessors still EMPTY (they wait) or holding only an AGGREGATE (the walk), and the results are
    still the reference's, bit for bit the in-order run's."""
    rng = np.random.default_rng(7)
    for shape, axis in (((2, 9000), -1), ((9000, 3), 0)):
        x, a = rand(rng, shape, dtype), rand(rng, shape, dtype, "a")
        gh = rand(rng, shape, dtype)
        ordered = parscan.linear_scan(cp.asarray(a), cp.asarray(x), axis=axis, backend="cupy")
        ordered_b = parscan.linear_scan_backward(cp.asarray(a), ordered, cp.asarray(gh), axis=axis, backend="cupy")
        assert cuda_cpu.launches()[-1].polls[1] == 0  # in order, every predecessor is already INCLUSIVE
        cuda_cpu.launches().clear()
        with cuda_cpu.scheduled(**SHUFFLED):
            h = parscan.linear_scan(cp.asarray(a), cp.asarray(x), axis=axis, backend="cupy")
            gb = parscan.linear_scan_backward(cp.asarray(a), h, cp.asarray(gh), axis=axis, backend="cupy")
        polls = np.sum([launch.polls for launch in cuda_cpu.launches()], axis=0)
        assert polls[0] > 0 and polls[1] > 0, polls  # waited on EMPTY, walked over AGGREGATE
        assert_close(np.asarray(h), reference.linear_scan(a, x, axis=axis), dtype)
        assert np.array_equal(np.asarray(h), np.asarray(ordered), equal_nan=True)  # bitwise repeatable
        for g, w in zip(gb[:2], ordered_b[:2]):
            assert np.array_equal(np.asarray(g), np.asarray(w), equal_nan=True)


def test_a_broken_look_back_walk_is_caught_only_by_the_shuffled_schedule(cp, monkeypatch):
    """The shuffled schedule is what lets the look-back test fail: a walk that skips one aggregate
    passes in order (it never walks) and fails shuffled."""
    from parscan.kernels import cupy_scan

    src = cupy_scan.source()
    bad = "for (i64 u = s + 1; u < tt; ++u) h ="
    assert bad in src
    monkeypatch.setattr(cupy_scan, "source", lambda: src.replace(bad, "for (i64 u = s + 2; u < tt; ++u) h ="))
    cupy_scan._module.cache_clear()
    try:
        rng = np.random.default_rng(8)
        x, a = rand(rng, (2, 20000), "float64"), rand(rng, (2, 20000), "float64", "a")
        want = reference.linear_scan(a, x)
        assert_close(np.asarray(parscan.linear_scan(cp.asarray(a), cp.asarray(x), backend="cupy")), want, "float64")
        with cuda_cpu.scheduled(**SHUFFLED):
            h = parscan.linear_scan(cp.asarray(a), cp.asarray(x), backend="cupy")
        with pytest.raises(AssertionError):
            assert_close(np.asarray(h), want, "float64")
    finally:
        cupy_scan._module.cache_clear()


MATRIX = [  # (x shape, A shape, h0 shape)
    ((2, 600, 3), (2, 600, 3, 3), (2, 3)),
    ((3, 400, 2), (1, 1, 2, 2), None),       # A constant and shared by the batch: zero strides
    ((2, 300, 16), (2, 300, 16, 16), (2, 16)),
    ((2, 50, 5), (2, 50, 5, 5), (5,)),       # n that does not divide the block, one chunk level
]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "complex64", "complex128"])
@pytest.mark.parametrize("xs,As,hs", MATRIX)
def test_matrix_pass_matches_the_reference(cp, dtype, xs, As, hs, monkeypatch):
    from parscan.kernels import matrix_launch

    monkeypatch.setattr(matrix_launch, "TARGET_THREADS", 1 << 12)  # many short chunks: several levels
    rng = np.random.default_rng(xs[1] + xs[2])
    n = xs[-1]
    x, gh = rand(rng, xs, dtype), rand(rng, xs, dtype)
    A = (rand(rng, As, "complex128" if np.dtype(dtype).kind == "c" else "float64") * (0.7 / np.sqrt(n))).astype(dtype)
    h0 = None if hs is None else rand(rng, hs, dtype)
    dev = lambda v: None if v is None else cp.asarray(v)  # noqa: E731
    tol = {"float16": 1e-2, "float32": 1e-4, "complex64": 1e-4, "float64": 1e-11, "complex128": 1e-11}[dtype]
    for reverse in (False, True):
        cuda_cpu.launches().clear()
        h = parscan.matrix_linear_scan(dev(A), dev(x), dev(h0), reverse=reverse, backend="cupy")
        assert sum(name == "matrix_pass" for name in _names()) >= 3  # aggregate, carry, final
        want = parscan.matrix_linear_scan(A, x, h0, reverse=reverse, backend="reference")
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(np.asarray(h), want, rtol=0, atol=tol * scale)
        got = parscan.matrix_linear_scan_backward(dev(A), dev(want.astype(dtype)), dev(gh), dev(h0),
                                                  reverse=reverse, backend="cupy")
        exp = parscan.matrix_linear_scan_backward(A, want.astype(dtype), gh, h0, reverse=reverse, backend="reference")
        for g, w in zip(got, exp):
            assert (g is None) == (w is None)
            if g is not None:
                s = max(1.0, float(np.abs(w).max()))
                np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=tol * s)


def test_matrix_pass_shuffled(cp, monkeypatch):
    from parscan.kernels import matrix_launch

    monkeypatch.setattr(matrix_launch, "TARGET_THREADS", 1 << 12)
    rng = np.random.default_rng(9)
    x, A = rand(rng, (2, 700, 4), "float64"), 0.4 * rand(rng, (2, 700, 4, 4), "float64")
    with cuda_cpu.scheduled(**SHUFFLED):
        h = parscan.matrix_linear_scan(cp.asarray(A), cp.asarray(x), backend="cupy")
    np.testing.assert_allclose(np.asarray(h), parscan.matrix_linear_scan(A, x, backend="reference"), atol=1e-11)


# ---- the harness itself can fail ------------------------------------------------------------------

def test_kernel_arguments_are_checked_against_the_compiled_parameters(cp):
    from parscan.kernels import cupy_scan

    fn = cupy_scan._function(("sum", "float32", "float32"))
    parts, ga = cp.zeros(4, np.float32), cp.zeros(4, np.float32)
    good = (parts, ga, np.int64(0), np.int64(1), np.int64(1), np.int64(1), np.int64(0),
            np.int64(1), np.int64(1), np.int64(4), np.int64(1))
    fn((1,), (32,), good)
    with pytest.raises(TypeError, match="takes 11 arguments, got 10"):
        fn((1,), (32,), good[:-1])
    with pytest.raises(TypeError, match="argument 10 .* got int32"):
        fn((1,), (32,), good[:-1] + (np.int32(1),))
    with pytest.raises(TypeError, match="argument 0 .* holds float64"):
        fn((1,), (32,), (cp.zeros(4, np.float64),) + good[1:])
    with pytest.raises(TypeError, match="device array"):
        fn((1,), (32,), (np.zeros(4, np.float32),) + good[1:])
    scan = cupy_scan._function(("scan", *("float32",) * 6, False))
    with pytest.raises(RuntimeError, match="launch bounds"):
        scan((1,), (512,), ())


ROGUE = r"""
__global__ void oob(float* p, long long n) { p[threadIdx.x + n] = 1.0f; }
__global__ void divergent(float* p) { if (threadIdx.x == 0) return; __syncthreads(); p[threadIdx.x] = 1.0f; }
__global__ void spin(int* flag) { while (atomicAdd(flag, 0) == 0) {} }
__global__ void block_sum(float* p) {
    __shared__ float s[64];
    s[threadIdx.x] = p[blockIdx.x * 64 + threadIdx.x];
    __syncthreads();
    if (threadIdx.x == 0) { float t = 0; for (int i = 0; i < 64; ++i) t += s[i]; p[blockIdx.x * 64] = t; }
}
"""


@pytest.mark.parametrize("schedule", [{}, SHUFFLED])
def test_the_harness_reports_bad_kernels_instead_of_crashing_or_hanging(cp, schedule):
    mod = cp.RawModule(code=ROGUE, name_expressions=["oob", "divergent", "spin", "block_sum"])
    buf = cp.zeros(64, np.float32)
    with cuda_cpu.scheduled(**schedule):
        mod.get_function("oob")((1,), (64,), (buf, np.int64(0)))  # in bounds
        with pytest.raises(RuntimeError, match="invalid global write"):
            mod.get_function("oob")((1,), (64,), (buf, np.int64(1)))  # one past the end
        with pytest.raises(RuntimeError, match="divergent"):
            mod.get_function("divergent")((1,), (64,), (buf,))
        with pytest.raises(RuntimeError, match="did not finish"):
            mod.get_function("spin")((1,), (2,), (cp.zeros(1, np.int32),))
        p = cp.asarray(np.arange(4 * 64, dtype=np.float32))
        mod.get_function("block_sum")((4,), (64,), (p,))  # shared memory is per block
        sums = np.arange(4 * 64, dtype=np.float32).reshape(4, 64).sum(1)
        np.testing.assert_array_equal(np.asarray(p)[::64], sums)


def test_parscan_check_cases_on_the_cuda_kernels(cp):
    """`parscan check`'s GPU case loop (its own placement, aliasing and comparison code) on scan.cu run by
    the harness, at the CPU profile's sizes: every forward/backward x dtype x layout and the matrix scan."""
    from parscan import check

    target = check.Target("cupy", cp, True)
    cases = check.make_cases(seed=3, profile="cpu", quick=True)
    cuda_cpu.launches().clear()
    results = [check.run_case(c, target) for c in cases]
    assert {"scan_kernel", "matrix_pass"} <= set(_names())  # the kernels ran, not a host fallback
    bad = [(c, r) for c, r in zip(cases, results) if r["status"] != "pass"]
    assert not bad, bad[:3]
    assert len(results) >= 48 and {c.op for c in cases} >= {"forward", "backward", "matrix-forward"}


@pytest.mark.parametrize("a_kind", ["full", "channel", "scalar"])
def test_replayed_plans_launch_the_same_kernels(cp, a_kind):
    """A repeated call replays its cached plan through the backend's prepared launcher (new buffers,
    the same kernel arguments): the results equal the first call's bit for bit, with h0, out= and in
    place, forward and backward, on new data of the same signature."""
    shape, axis = (3, 700), -1
    runs = []
    for _ in range(3):
        x, a = _inputs(np.random.default_rng(8), shape, axis, "float32", a_kind)
        h0 = rand(np.random.default_rng(9), (3,), "float32")
        xd, ad, h0d = _dev(cp, x), _dev(cp, a), cp.asarray(h0)
        h = parscan.linear_scan(ad, xd, h0d, axis=axis, backend="cupy")
        out = cp.empty(shape, np.float32)
        parscan.linear_scan(ad, xd, h0d, axis=axis, out=out, backend="cupy")
        grads = parscan.linear_scan_backward(ad, h, xd, h0d, axis=axis, backend="cupy")
        runs.append([np.asarray(v) for v in (h, out, *grads)])
        parscan.linear_scan(ad, xd, h0d, axis=axis, out=xd, backend="cupy")  # in place
        runs[-1].append(np.asarray(xd))
    assert_close(runs[0][0], reference.linear_scan(a, x, h0, axis=axis), "float32")
    for later in runs[1:]:
        for u, v in zip(runs[0], later):
            assert np.array_equal(u, v)


def test_the_host_path_of_a_gpu_call(cp):
    """tests/cuda_cpu/overhead.py's accounting (no timing asserted): a replayed 16-step forward (one tile
    in time: no look-back scratch) makes one launch and one device allocation (the result: the scalar a
    is a cached device scalar), its backward with a constant a one launch (the block's grad_a sum is
    grad_a itself) and two (grad_x, grad_a); a call whose channel spans several tiles still gets new
    look-back scratch (zeroed flags) per launch and the grad_a sum over tiles.  cupy and numba alike."""
    from cuda_cpu import overhead

    rows = {(r["backend"], r["op"]): r for r in overhead.measure(repeats=5)}
    for backend in ("cupy", "numba"):
        assert (rows[backend, "forward"]["launches"], rows[backend, "forward"]["allocations"]) == (1, 1)
        assert (rows[backend, "backward"]["launches"], rows[backend, "backward"]["allocations"]) == (1, 2)
        assert rows[backend, "forward"]["zeroed"] == rows[backend, "backward"]["zeroed"] == 0
    x = cp.asarray(np.ones(5000, np.float32))  # 3 tiles of 2048 steps
    h = parscan.linear_scan(0.9, x, backend="cupy")
    with overhead._no_op_launches(cp) as counts:
        for backend in ("cupy", "numba"):
            parscan.linear_scan(0.9, x, backend=backend)  # planned; then replayed, counted
            parscan.linear_scan_backward(0.9, h, h, backend=backend)
            before = dict(counts)
            parscan.linear_scan(0.9, x, backend=backend)
            assert (counts["launches"] - before["launches"], counts["allocations"] - before["allocations"],
                    counts["zeroed"] - before["zeroed"]) == (1, 3, 1)
            before = dict(counts)
            parscan.linear_scan_backward(0.9, h, h, backend=backend)
            assert (counts["launches"] - before["launches"], counts["allocations"] - before["allocations"],
                    counts["zeroed"] - before["zeroed"]) == (2, 5, 1)


def test_device_scalars_are_cached_by_value_sign_and_dtype(cp):
    """A scalar decay on a CUDA call is one cached device array per (value, dtype, device): 0.0 and
    -0.0 are different values here (the sign of a zero reaches the result), and the cache stops
    growing at its bound instead of freeing arrays a kernel may still read."""
    from parscan import _problem

    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    one = _problem._device_scalar(cp, 0.5, f32)
    assert _problem._device_scalar(cp, 0.5, f32) is one and np.asarray(one).tolist() == [0.5]
    assert _problem._device_scalar(cp, 0.5, f64) is not one
    pz, nz = _problem._device_scalar(cp, 0.0, f32), _problem._device_scalar(cp, -0.0, f32)
    assert pz is not nz and np.signbit(np.asarray(nz)[0]) and not np.signbit(np.asarray(pz)[0])
    assert np.asarray(_problem._device_scalar(cp, 1 - 2j, np.dtype(np.complex64))).tolist() == [1 - 2j]
    x = cp.asarray(np.full(8, -0.0, np.float32))
    h = np.asarray(parscan.linear_scan(-0.0, x, backend="cupy"))
    assert np.array_equal(np.signbit(h), np.signbit(reference.linear_scan(-0.0, np.full(8, -0.0, np.float32))))
    old = _problem.DEVICE_SCALARS
    try:
        _problem.DEVICE_SCALARS = len(_problem._DEVICE_SCALARS)
        a, b = _problem._device_scalar(cp, 0.125, f32), _problem._device_scalar(cp, 0.125, f32)
        assert a is not b and len(_problem._DEVICE_SCALARS) == _problem.DEVICE_SCALARS
    finally:
        _problem.DEVICE_SCALARS = old


# ---- resets (issue #18) ---------------------------------------------------------------------------

RESET_CASES = [  # (x shape, axis, resets shape): many tiles per sequence unless noted
    ((2, 5000), -1, (5000,)),            # time-contiguous, (T,) broadcast over the channels
    ((5000, 3), 0, (5000, 1)),           # channel-contiguous, broadcast: one row of flags per block
    ((2, 3, 2500), -1, (2, 1, 2500)),    # per batch row (B, 1, T)
    ((700, 3, 20), 0, (700, 3, 1)),      # time-major, per batch row: channel-fast tiles of 128 steps
    ((6, 2100), -1, (6, 2100)),          # a flag per element, time-contiguous
    ((40, 300), -1, (40, 300)),          # a flag per element, several channels a block (one tile)
    ((300, 40), 0, (300, 40)),           # a flag per element, channel-contiguous: a row per channel
]


def _resets(rng, T, rshape, axis):
    """About 2% random resets, and (each with probability 1/2, so carries still cross some edges) the
    steps that tiles and threads make special in either direction: the first and the last, both sides
    of every multiple of 4, 8, 64, 128, 1024 and 2048 steps counted from either end."""
    axis %= len(rshape)
    r = rng.random(rshape) < 0.02
    special = {0, T - 1}
    for b in (4, 8, 64, 128, 1024, 2048):
        for m in range(b, T, b):
            special |= {m - 1, m, T - m, T - 1 - m}
    pick = np.array(sorted(t for t in special if 0 <= t < T))
    on = np.zeros(T, bool)
    on[pick[rng.random(len(pick)) < 0.5]] = True
    shape = [1] * len(rshape)
    shape[axis] = T
    return r | on.reshape(shape)


def _check_resets(cp, rng, dtype, shape, axis, rshape, a_kind, with_h0, reverse):
    x, a = _inputs(rng, shape, axis, dtype, a_kind)
    r = _resets(rng, shape[axis], rshape, axis)
    h0 = rand(rng, np.delete(shape, axis % len(shape)), dtype) if with_h0 else None
    xd, ad, h0d, rd = cp.asarray(x), _dev(cp, a), None if h0 is None else cp.asarray(h0), cp.asarray(r)
    h = parscan.linear_scan(ad, xd, h0d, axis=axis, reverse=reverse, resets=rd, backend="cupy")
    want = reference.linear_scan(a, x, h0, axis=axis, reverse=reverse, resets=r)
    assert_close(np.asarray(h), want, dtype)
    hs = want.astype(dtype)
    gh = rand(rng, shape, dtype)
    got = parscan.linear_scan_backward(ad, cp.asarray(hs), cp.asarray(gh), h0d, axis=axis, reverse=reverse,
                                       resets=rd, backend="cupy")
    exp = reference.linear_scan_backward(a, hs, gh, h0, axis=axis, reverse=reverse, resets=r)
    for g, w, name in zip(got, exp, ("grad_a", "grad_x", "grad_h0")):
        if w is None:
            assert g is None
            continue
        assert np.shape(g) == np.shape(w), name
        assert_close(np.asarray(g), np.asarray(w), dtype)
    return r


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis,rshape", RESET_CASES)
def test_resets_match_the_reference(cp, dtype, shape, axis, rshape):
    """scan.cu's flags against the reference's resets, forward and backward: both tile orders, flags
    broadcast over channels (one row a block) or one per element, resets on tile and thread edges in
    both directions, h0, and a full, per-channel (constant in time: a_eff still varies) or scalar a."""
    rng = np.random.default_rng(shape[axis] + 7 * len(dtype))
    for a_kind, with_h0, reverse in (("full", True, False), ("channel", False, True), ("scalar", True, True)):
        cuda_cpu.launches().clear()
        _check_resets(cp, rng, dtype, shape, axis, rshape, a_kind, with_h0, reverse)
        launched = [launch for launch in cuda_cpu.launches() if launch.name.startswith("scan_kernel")]
        # has_r: after four operands (a pointer, an offset, four strides), has_h0 and the resets operand
        assert len(launched) == 2 and all(launch.args[4 * 6 + 1 + 6] == 1 for launch in launched)


def _sparse_resets(T, rshape, axis):
    """Resets at two steps only (a third and seven ninths in): the tiles holding one publish their
    inclusive prefix at once, the others are walked over as aggregates."""
    r = np.zeros(T, bool)
    r[[T // 3, 7 * T // 9]] = True
    shape = [1] * len(rshape)
    shape[axis % len(rshape)] = T
    return r.reshape(shape)


@pytest.mark.parametrize("dtype", ["float64", "complex64"])
def test_resets_under_the_shuffled_schedule(cp, dtype):
    """Resets with the look-back waiting and walking over aggregates (those of the tiles without a
    reset; a tile with one is inclusive at once): the reference's results, bit for bit the in-order run's."""
    rng = np.random.default_rng(11)
    for shape, axis, rshape in (((2, 9000), -1, (9000,)), ((2000, 3), 0, (2000, 1))):
        x, a, gh = rand(rng, shape, dtype), rand(rng, shape, dtype, "a"), rand(rng, shape, dtype)
        r = _sparse_resets(shape[axis], rshape, axis)
        rd = cp.asarray(r)
        ordered = parscan.linear_scan(cp.asarray(a), cp.asarray(x), axis=axis, resets=rd, backend="cupy")
        ordered_b = parscan.linear_scan_backward(cp.asarray(a), ordered, cp.asarray(gh), axis=axis, resets=rd,
                                                 backend="cupy")
        cuda_cpu.launches().clear()
        with cuda_cpu.scheduled(**SHUFFLED):
            h = parscan.linear_scan(cp.asarray(a), cp.asarray(x), axis=axis, resets=rd, backend="cupy")
            gb = parscan.linear_scan_backward(cp.asarray(a), h, cp.asarray(gh), axis=axis, resets=rd, backend="cupy")
        polls = np.sum([launch.polls for launch in cuda_cpu.launches()], axis=0)
        assert polls[0] > 0 and polls[1] > 0, polls
        assert_close(np.asarray(h), reference.linear_scan(a, x, axis=axis, resets=r), dtype)
        assert np.array_equal(np.asarray(h), np.asarray(ordered), equal_nan=True)
        for g, w in zip(gb[:2], ordered_b[:2]):
            assert np.array_equal(np.asarray(g), np.asarray(w), equal_nan=True)


def test_replayed_plans_take_new_reset_patterns(cp):
    """A cached plan replays with the next call's resets buffer (same signature, other flags)."""
    rng = np.random.default_rng(12)
    x, a, gh = rand(rng, (3, 2500), "float32"), rand(rng, (3, 2500), "float32", "a"), rand(rng, (3, 2500), "float32")
    for _ in range(3):
        r = _resets(rng, 2500, (2500,), -1)
        h = parscan.linear_scan(cp.asarray(a), cp.asarray(x), resets=cp.asarray(r), backend="cupy")
        assert_close(np.asarray(h), reference.linear_scan(a, x, resets=r), "float32")
        got = parscan.linear_scan_backward(cp.asarray(a), h, cp.asarray(gh), resets=cp.asarray(r), backend="cupy")
        exp = reference.linear_scan_backward(a, np.asarray(h), gh, resets=r)
        for g, w in zip(got[:2], exp[:2]):
            assert_close(np.asarray(g), w, "float32")


@pytest.mark.parametrize("bad", [
    ("bits |= (unsigned)f;", "bits |= 0u;"),                   # the backward's flag of the step before
    ("r_s2 == 0 ? 1 : chans", "1"),                             # one row of flags for every channel
])
def test_the_resets_tests_can_fail(cp, monkeypatch, bad):
    """Two subtle breakages of the flags' code fail the resets checks above (each costs a build)."""
    with _mutated(monkeypatch, [bad]):
        rng = np.random.default_rng(13)
        with pytest.raises(AssertionError):
            for shape, axis, rshape in RESET_CASES:
                _check_resets(cp, rng, "float64", shape, axis, rshape, "full", True, False)


# ---- resets after inf / NaN (issue #18): dropped, not multiplied by 0 --------------------------------

def _check_nonfinite(cp, rng, dtype, shape, axis, a_kind, reverse, mirror):
    a, x, h0, r, gh = poisoned(rng, shape, axis, dtype, a_kind, mirror)
    kw = dict(axis=axis, reverse=reverse)
    with np.errstate(invalid="ignore", over="ignore"):
        want = reference.linear_scan(a, x, h0, resets=r, **kw)
        h = parscan.linear_scan(cp.asarray(a), cp.asarray(x), cp.asarray(h0), resets=cp.asarray(r), backend="cupy",
                                **kw)
        assert_some_of_both(want)
        assert_same_nonfinite(h, want, dtype)
        hs = want.astype(dtype)
        exp = reference.linear_scan_backward(a, hs, gh, h0, resets=r, **kw)
        got = parscan.linear_scan_backward(cp.asarray(a), cp.asarray(hs), cp.asarray(gh), cp.asarray(h0),
                                           resets=cp.asarray(r), backend="cupy", **kw)
    for g, w in zip(got, exp):
        assert_same_nonfinite(g, w, dtype)
    return h, got


NONFINITE = [((2, 9000), -1), ((9000, 3), 0)]  # several tiles, some without a reset, in both tile orders


@pytest.mark.parametrize("dtype", ["float16", "float32", "complex128"])
def test_nonfinite_values_do_not_cross_a_reset(cp, dtype):
    """inf / NaN in x (and grad_h) before a reset, a NaN h0 with a reset at the first step: the kernel
    selects x at a reset and carries "holds a reset" with every lane, tile and look-back pair, so
    nothing non-finite reaches past a reset (0 * inf would be NaN).  Both directions, a full or
    per-channel a, the pattern and its mirror image; the shuffled schedule bit for bit the in-order run."""
    rng = np.random.default_rng(21)
    for shape, axis in NONFINITE:
        for a_kind, reverse, mirror in (("full", False, False), ("channel", True, False), ("full", True, True),
                                        ("full", False, True)):
            _check_nonfinite(cp, rng, dtype, shape, axis, a_kind, reverse, mirror)
    rng = np.random.default_rng(22)
    ordered = _check_nonfinite(cp, rng, dtype, *NONFINITE[0], "full", False, False)
    with cuda_cpu.scheduled(**SHUFFLED):
        shuffled = _check_nonfinite(cp, np.random.default_rng(22), dtype, *NONFINITE[0], "full", False, False)
    for u, v in zip((ordered[0], *ordered[1][:2]), (shuffled[0], *shuffled[1][:2])):
        assert np.array_equal(np.asarray(u), np.asarray(v), equal_nan=True)


MULTIPLIED = [  # each turns a select at a reset back into a multiplication by 0
    ("if (!ff) {", "if (true) {"),                                  # lane pairs combined as (A2 A1, A2 H1 + H2)
    ("ff ? fh : fa * hin + fh", "fa * hin + fh"),                   # the first tile's prefix, from a NaN h0
    ("if (agg_r) {", "if (false) {"), ("if (!agg_r) {", "if (true) {"),  # a reset tile's prefix as A * h + H
    ("rc[b * nch + c] = dropped;", "rc[b * nch + c] = false;"),      # the matrix carry scan: H_c = P_c H_{c-1} + s_c
]


@contextlib.contextmanager
def _mutated(monkeypatch, edits):
    """scan.cu with ``edits`` (each (old, new), old found once) for the block: one build."""
    from parscan import _plans
    from parscan.kernels import cupy_scan

    src = cupy_scan.source()
    for old, new in edits:
        assert src.count(old) == 1, old
        src = src.replace(old, new)
    monkeypatch.setattr(cupy_scan, "source", lambda: src)
    cupy_scan._module.cache_clear()
    _plans.clear()  # cached plans hold the launchers of the unbroken module
    try:
        yield
    finally:
        cupy_scan._module.cache_clear()
        _plans.clear()


def test_multiplying_by_zero_at_resets_is_caught(cp, monkeypatch):
    """Every select at a reset turned back into a multiplication by 0 (one build): finite results stay
    right (0 * h is 0), and the non-finite checks above fail, elementwise and matrix scan alike."""
    from parscan.kernels import matrix_launch

    monkeypatch.setattr(matrix_launch, "TARGET_THREADS", 1 << 12)
    with _mutated(monkeypatch, MULTIPLIED):
        rng = np.random.default_rng(13)
        _check_resets(cp, rng, "float64", (2, 5000), -1, (5000,), "full", True, False)
        _check_matrix_resets(cp, rng, "float64", (2, 600, 3), (2, 600, 3, 3), (2, 3), (600,), False)
        with pytest.raises(AssertionError):
            for shape, axis in NONFINITE:
                for reverse in (False, True):
                    _check_nonfinite(cp, rng, "float64", shape, axis, "full", reverse, False)
        with pytest.raises(AssertionError):
            for reverse in (False, True):
                _check_matrix_nonfinite(cp, "float64", (2, 600, 3), (2, 600, 3, 3), (600,), reverse)


@pytest.mark.slow
@pytest.mark.parametrize("k", [0, 1, 2, 4])
def test_each_multiplication_by_zero_is_caught(cp, monkeypatch, k):
    """As above, one breakage at a time (a build each: the slow run's)."""
    from parscan.kernels import matrix_launch

    monkeypatch.setattr(matrix_launch, "TARGET_THREADS", 1 << 12)
    edits = MULTIPLIED[k:k + 2] if k == 2 else MULTIPLIED[k:k + 1]
    with _mutated(monkeypatch, edits):
        rng = np.random.default_rng(13)
        with pytest.raises(AssertionError):
            if k == 4:
                for reverse in (False, True):
                    _check_matrix_nonfinite(cp, "float64", (2, 600, 3), (2, 600, 3, 3), (600,), reverse)
            for shape, axis in NONFINITE:
                for reverse in (False, True):
                    _check_nonfinite(cp, rng, "float64", shape, axis, "full", reverse, False)


# ---- the matrix scan's resets (issue #18) -----------------------------------------------------------

MATRIX_RESETS = [  # (x shape, A shape, h0 shape, resets shape)
    ((2, 600, 3), (2, 600, 3, 3), (2, 3), (600,)),              # shared by the batch: a zero batch stride
    ((3, 400, 2), (1, 1, 2, 2), (3, 2), (3, 400)),              # A constant in time and batch; per batch row
    ((2, 3, 300, 2), (2, 3, 300, 2, 2), (2, 3, 2), (2, 1, 300)),  # (B1, 1, T): broadcast over B2, still a view
    ((2, 50, 5), (2, 50, 5, 5), (5,), (2, 50)),                 # one chunk level
]


def _matrix_resets(rng, T, rshape):
    """About 2% random resets, and (each with probability 1/2) t = 0, T - 1 and both sides of every
    multiple of the chunk lengths (16 steps, and 256: the carry scan's chunks of 16 chunks) counted
    from either end."""
    r = rng.random(rshape) < 0.02
    special = {0, T - 1}
    for b in (16, 256):
        for m in range(b, T, b):
            special |= {m - 1, m, T - m, T - 1 - m}
    pick = np.array(sorted(t for t in special if 0 <= t < T))
    on = np.zeros(T, bool)
    on[pick[rng.random(len(pick)) < 0.5]] = True
    return r | on


_MTOL = {"float16": 1e-2, "float32": 1e-4, "complex64": 1e-4, "float64": 1e-11, "complex128": 1e-11}


def _mclose(got, want, dtype):
    scale = max(1.0, float(np.abs(want).max())) if np.size(want) else 1.0
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=_MTOL[dtype] * scale)


def _check_matrix_resets(cp, rng, dtype, xs, As, hs, rs, reverse):
    n = xs[-1]
    x, gh = rand(rng, xs, dtype), rand(rng, xs, dtype)
    A = (rand(rng, As, "complex128" if np.dtype(dtype).kind == "c" else "float64") * (0.7 / np.sqrt(n))).astype(dtype)
    h0 = None if hs is None else rand(rng, hs, dtype)
    r = _matrix_resets(rng, xs[-2], rs)
    dev = lambda v: None if v is None else cp.asarray(v)  # noqa: E731
    rd = dev(r)
    h = parscan.matrix_linear_scan(dev(A), dev(x), dev(h0), reverse=reverse, resets=rd, backend="cupy")
    want = parscan.matrix_linear_scan(A, x, h0, reverse=reverse, resets=r, backend="reference")
    _mclose(h, want, dtype)
    hs_ = want.astype(dtype)
    got = parscan.matrix_linear_scan_backward(dev(A), dev(hs_), dev(gh), dev(h0), reverse=reverse, resets=rd,
                                              backend="cupy")
    exp = parscan.matrix_linear_scan_backward(A, hs_, gh, h0, reverse=reverse, resets=r, backend="reference")
    for g, w in zip(got, exp):
        assert (g is None) == (w is None)
        if g is not None:
            assert g.shape == w.shape
            _mclose(g, w, dtype)
    return rd


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "complex64", "complex128"])
@pytest.mark.parametrize("xs,As,hs,rs", MATRIX_RESETS)
def test_matrix_resets_match_the_reference(cp, dtype, xs, As, hs, rs, monkeypatch):
    """matrix_pass reads the flags itself (one byte a step, a view): short chunks (several levels of the
    carry scan), resets on chunk edges from either end, at t = 0 and T - 1, forward and backward (the
    flag read at the coefficient's step, t + 1), h0, reverse, A constant in time."""
    from parscan.kernels import cupy_scan, matrix_launch

    monkeypatch.setattr(matrix_launch, "TARGET_THREADS", 1 << 12)  # many short chunks: several levels
    calls = []
    real = cupy_scan.matrix_pass
    monkeypatch.setattr(cupy_scan, "matrix_pass", lambda *a: calls.append(a) or real(*a))  # a spy
    rng = np.random.default_rng(xs[-2] + xs[-1] + len(rs))
    for reverse in (False, True):
        calls.clear()
        rd = _check_matrix_resets(cp, rng, dtype, xs, As, hs, rs, reverse)
        top = [c[6] for c in calls if c[6] is not None and c[6].shape[-1] == xs[-2]]
        assert top and all(np.shares_memory(v, rd) for v in top)  # the caller's flags, as a view
        flags = [c[7] for c in calls if c[7] is not None]  # the aggregate passes' chunk flags ...
        assert flags and any(c[6] is not None and np.shares_memory(c[6], flags[0]) for c in calls)  # ... read back


def test_matrix_resets_go_in_as_views_and_run_shuffled(cp, monkeypatch):
    """Resets of shape (B1, 1, T) for leading dims (B1, B2) reach the kernel as a view of the caller's
    array (zero stride over B2), and the shuffled block schedule gives the same results."""
    from parscan.kernels import cupy_scan, matrix_launch

    monkeypatch.setattr(matrix_launch, "TARGET_THREADS", 1 << 12)
    calls = []
    real = cupy_scan.matrix_pass
    monkeypatch.setattr(cupy_scan, "matrix_pass", lambda *a: calls.append(a) or real(*a))
    rng = np.random.default_rng(31)
    x, A = rand(rng, (2, 3, 300, 4), "float64"), 0.4 * rand(rng, (2, 3, 300, 4, 4), "float64")
    r = _matrix_resets(rng, 300, (2, 1, 300))
    rd = cp.asarray(r)
    h = parscan.matrix_linear_scan(cp.asarray(A), cp.asarray(x), resets=rd, backend="cupy")
    view = calls[0][6]
    assert view.shape == (2, 3, 300) and view.strides[1] == 0 and np.shares_memory(view, rd)
    with cuda_cpu.scheduled(**SHUFFLED):
        hs = parscan.matrix_linear_scan(cp.asarray(A), cp.asarray(x), resets=rd, backend="cupy")
        gs = parscan.matrix_linear_scan_backward(cp.asarray(A), h, cp.asarray(x), resets=rd, backend="cupy")
    g = parscan.matrix_linear_scan_backward(cp.asarray(A), h, cp.asarray(x), resets=rd, backend="cupy")
    assert np.array_equal(np.asarray(h), np.asarray(hs))
    for u, v in zip(g[:2], gs[:2]):
        assert np.array_equal(np.asarray(u), np.asarray(v))
    _mclose(h, parscan.matrix_linear_scan(A, x, resets=r, backend="reference"), "float64")


def _check_matrix_nonfinite(cp, dtype, xs, As, rs, reverse):
    A, x, h0, r, gh = poisoned_matrix(np.random.default_rng(xs[-2]), xs, As, dtype, rs)
    dev = cp.asarray
    with np.errstate(invalid="ignore", over="ignore"):
        want = parscan.matrix_linear_scan(A, x, h0, reverse=reverse, resets=r, backend="reference")
        h = parscan.matrix_linear_scan(dev(A), dev(x), dev(h0), reverse=reverse, resets=dev(r), backend="cupy")
        assert_some_of_both(want)
        assert_same_nonfinite(h, want, dtype)
        hs = want.astype(dtype)
        exp = parscan.matrix_linear_scan_backward(A, hs, gh, h0, reverse=reverse, resets=r, backend="reference")
        got = parscan.matrix_linear_scan_backward(dev(A), dev(hs), dev(gh), dev(h0), reverse=reverse, resets=dev(r),
                                                  backend="cupy")
    for g, w in zip(got, exp):
        assert_same_nonfinite(g, w, dtype)
    assert np.all(np.asarray(got[2]) == 0)  # h0 (NaN) is dropped by the reset at t = 0 (T - 1 in reverse)


MATRIX_NONFINITE = [((2, 600, 3), (2, 600, 3, 3), (600,)), ((2, 600, 3), (1, 1, 3, 3), (2, 600))]


@pytest.mark.parametrize("dtype", ["float32", "complex128"])
def test_matrix_nonfinite_values_do_not_cross_a_reset(cp, dtype, monkeypatch):
    """inf / NaN in x and grad_h before a reset, a NaN h0: dropped at the reset within a chunk (no A
    term: v = x), and across chunks by the carry scan, whose resets are the chunks' "dropped its
    incoming state" flags (P_c = 0 times an inf carry would be NaN), A full or constant in time."""
    from parscan.kernels import matrix_launch

    monkeypatch.setattr(matrix_launch, "TARGET_THREADS", 1 << 12)
    for xs, As, rs in MATRIX_NONFINITE:
        for reverse in (False, True):
            _check_matrix_nonfinite(cp, dtype, xs, As, rs, reverse)


def test_the_matrix_resets_tests_can_fail(cp, monkeypatch):
    """The flag read at step t instead of the coefficient's step t + shift: the forward (shift 0) is
    still right, the backward (A_{t+1}^H dropped at a reset at t + 1) is not (a build)."""
    from parscan.kernels import matrix_launch

    monkeypatch.setattr(matrix_launch, "TARGET_THREADS", 1 << 12)
    with _mutated(monkeypatch, [("R[r_row + te * R_st]", "R[r_row + t * R_st]")]):
        rng = np.random.default_rng(14)
        x, A = rand(rng, (2, 600, 3), "float64"), 0.4 * rand(rng, (2, 600, 3, 3), "float64")
        r = _matrix_resets(rng, 600, (600,))
        h = parscan.matrix_linear_scan(cp.asarray(A), cp.asarray(x), resets=cp.asarray(r), backend="cupy")
        want = parscan.matrix_linear_scan(A, x, resets=r, backend="reference")
        _mclose(h, want, "float64")
        with pytest.raises(AssertionError):
            for reverse in (False, True):
                _check_matrix_resets(cp, rng, "float64", (2, 600, 3), (2, 600, 3, 3), (2, 3), (600,), reverse)


def test_matrix_out_is_written_by_the_kernels(cp, monkeypatch):
    """out= (forward) and out=(grad_A, grad_x, grad_h0) (backward) on the CUDA path: the final passes
    write h and grad_x into the caller's arrays (a time-major out too: its leading dims merge), grad_A
    (full, of the working dtype) is computed there, grad_h0 copied in; in place; with resets."""
    from parscan.kernels import cupy_scan, matrix_launch

    monkeypatch.setattr(matrix_launch, "TARGET_THREADS", 1 << 12)
    calls = []
    real = cupy_scan.matrix_pass
    monkeypatch.setattr(cupy_scan, "matrix_pass", lambda *a: calls.append(a) or real(*a))
    rng = np.random.default_rng(41)
    x, A, h0 = rand(rng, (2, 300, 3), "float64"), 0.4 * rand(rng, (2, 300, 3, 3), "float64"), rand(rng, (2, 3), "float64")
    r = _matrix_resets(rng, 300, (300,))
    want = parscan.matrix_linear_scan(A, x, h0, resets=r, backend="reference")
    dA, dx, dh0, dr = (cp.asarray(v) for v in (A, x, h0, r))
    for out in (cp.empty((2, 300, 3)), cp.empty((300, 2, 3)).transpose(1, 0, 2)):
        calls.clear()
        assert parscan.matrix_linear_scan(dA, dx, dh0, resets=dr, out=out, backend="cupy") is out
        _mclose(out, want, "float64")
        assert np.shares_memory(calls[-1][9], out)  # the top-level final pass wrote it
    xc = cp.asarray(x)
    parscan.matrix_linear_scan(dA, xc, dh0, resets=dr, out=xc, backend="cupy")  # in place
    _mclose(xc, want, "float64")
    gh = rand(rng, (2, 300, 3), "float64")
    exp = parscan.matrix_linear_scan_backward(A, want, gh, h0, resets=r, backend="reference")
    outs = (cp.empty(A.shape), cp.empty(x.shape), cp.empty(h0.shape))
    calls.clear()
    got = parscan.matrix_linear_scan_backward(dA, cp.asarray(want), cp.asarray(gh), dh0, resets=dr, out=outs,
                                              backend="cupy")
    assert all(g is o for g, o in zip(got, outs)) and np.shares_memory(calls[-1][9], outs[1])
    for g, w in zip(got, exp):
        _mclose(g, w, "float64")


@pytest.mark.parametrize("backend", ["cupy", "numba"])
def test_data_on_another_device_than_the_current_one(cp, monkeypatch, backend):
    """Data on device 1 while device 0 is current: results, scratch, a scalar decay's device copy and
    the launches all on device 1 (the stand-in fails a launch that reads memory of another device),
    planned and replayed; the caller's current device is left as it was."""
    from cuda_cpu import fake_cupy

    monkeypatch.setattr(fake_cupy, "DEVICES", 2)
    if backend == "numba":
        pytest.importorskip("numba.cuda")
        from cuda_cpu import overhead
        ctx = overhead._no_op_launches(cp)  # no Numba CUDA context here: placement only
    else:
        ctx = contextlib.nullcontext()
    rng = np.random.default_rng(5)
    xh, gh = rng.standard_normal((3, 5000)).astype(np.float32), rng.standard_normal((3, 5000)).astype(np.float32)
    ah = rng.uniform(0.5, 1, (3, 1)).astype(np.float32)
    with cp.cuda.Device(1):
        x, g, a1 = cp.asarray(xh), cp.asarray(gh), cp.asarray(ah)
    with ctx:
        for a, a_host in ((0.9, 0.9), (a1, ah)):
            for _ in range(2):  # planned, then replayed
                assert cp.cuda.runtime.getDevice() == 0
                h = parscan.linear_scan(a, x, backend=backend)
                ga, gx, _ = parscan.linear_scan_backward(a, h, g, backend=backend)
                assert cp.cuda.runtime.getDevice() == 0
                assert h.device.id == gx.device.id == 1 and (np.ndim(ga) == 0 or ga.device.id == 1)
                if backend == "cupy":
                    assert_close(np.asarray(h), reference.linear_scan(a_host, xh), "float32")
                    want = reference.linear_scan_backward(a_host, np.asarray(h), gh)
                    assert_close(np.asarray(gx), want[1], "float32")
                    assert_close(np.asarray(ga), want[0], "float32")


# ---- inf / -inf / NaN in x, a, h0 (issue #23): the reference's IEEE result ---------------------------

NONFINITE_SHAPES = [((8, 40), -1), ((40, 8), 0), ((8, 4200), -1), ((4200, 8), 0)]  # one tile, many tiles


@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64"])
@pytest.mark.parametrize("shape,axis", NONFINITE_SHAPES)
def test_nonfinite_inputs_give_the_reference_ieee_result(cp, dtype, shape, axis):
    """inf, -inf and NaN in x (and grad_h), a or h0 at the first step, a thread's and a tile's edges, the
    middle and the last step, forward and backward: NaN, +inf, -inf exactly where the sequential loop
    has them.  The pairs compose without inf * 0: no decay product multiplied into the identity's 0 or
    the missing h0, products that underflow kept nonzero (x = inf with a = 0.5 stays inf)."""
    from parscan.kernels.launch import items_for

    items = items_for(dtype)
    rng = np.random.default_rng(shape[axis])
    for where in ("x", "a", "h0"):
        a, x, h0, gh = nonfinite_cases.problem(rng, shape, axis, dtype, where, 256 * items, items)
        for h0_ in (h0, None) if where != "h0" else (h0,):
            with np.errstate(invalid="ignore", over="ignore"):
                want = reference.linear_scan(a, x, h0_, axis=axis)
                assert np.isfinite(want).any() and not np.isfinite(want).all()
                d0 = None if h0_ is None else cp.asarray(h0_)
                h = parscan.linear_scan(cp.asarray(a), cp.asarray(x), d0, axis=axis, backend="cupy")
                nonfinite_cases.assert_ieee_equal(h, want, dtype)
                hs = want.astype(dtype)
                exp = reference.linear_scan_backward(a, hs, gh, h0_, axis=axis)
                got = parscan.linear_scan_backward(cp.asarray(a), cp.asarray(hs), cp.asarray(gh), d0, axis=axis,
                                                   backend="cupy")
            for g, w in zip(got, exp):
                if w is not None:
                    nonfinite_cases.assert_ieee_equal(g, w, dtype)


# ---- mixed dtypes read in their own dtype (issue #23): no operand cast -------------------------------

def _received(launch, index, arr):
    """The kernel's pointer argument ``index`` points into ``arr``'s own allocation (no copy of it)."""
    lo, hi = arr.extent
    return lo <= launch.args[index].__array_interface__["data"][0] < hi


_CT = {"float16": "half_t", "float32": "float", "float64": "double", "complex64": "cplx<float>",
       "complex128": "cplx<double>"}

MIXED = [  # (a, x or grad_h, h0 dtype or None): the result dtype is theirs combined
    ("float32", "float16", None),       # float16 data (a strided view of it) with a float32 a
    ("float64", "float32", "float64"),
    ("float16", "float16", "float32"),  # a float32 h0 with float16 a and x
    ("float32", "complex64", None),     # a complex result with a real a: the common module's
    ("float64", "complex64", None),
]


@pytest.mark.parametrize("sa,sx,s0", MIXED)
def test_mixed_dtypes_are_read_in_their_own_dtype(cp, sa, sx, s0):
    """Each operand goes to the kernel as it is (its own buffer, its storage type in the kernel's name),
    forward and backward, and the results equal the reference's on the same values."""
    rng = np.random.default_rng(9)
    d = np.result_type(sa, sx, *(s0,) * (s0 is not None)).name
    base = rand(rng, (3, 6000), sx)
    a, h0 = rand(rng, (3, 3000), sa, "a"), None if s0 is None else rand(rng, (3,), s0)
    xd, ad = cp.asarray(base)[:, ::2], cp.asarray(a)  # x a strided view on the device
    x = base[:, ::2]
    h0d = None if h0 is None else cp.asarray(h0)
    h = parscan.linear_scan(ad, xd, h0d, backend="cupy")
    assert h.dtype == d
    assert_close(np.asarray(h), reference.linear_scan(a, x, h0), d)
    fwd = cuda_cpu.launches()[-1]
    assert fwd.name.startswith(f"scan_kernel<{_CT[sa]}, {_CT[sx]}, {_CT[d]}, {_CT[d]}, {_CT[d]},")
    assert _received(fwd, 0, ad) and _received(fwd, 6, xd)
    hs = reference.linear_scan(a, x, h0).astype(sx)  # h and grad_h in x's dtype, a in its own
    gh = cp.asarray(rand(rng, (3, 6000), sx))[:, ::2]
    hd = cp.asarray(hs)
    got = parscan.linear_scan_backward(ad, hd, gh, h0d, backend="cupy")
    exp = reference.linear_scan_backward(a, hs, np.asarray(gh), h0)
    bwd = [v for v in cuda_cpu.launches() if v.name.startswith("scan_kernel")][-1]
    assert bwd.name.startswith(f"scan_kernel<{_CT[sa]}, {_CT[sx]}, {_CT[sx]}, {_CT[d]}, {_CT[d]},")
    assert _received(bwd, 0, ad) and _received(bwd, 6, gh) and _received(bwd, 12, hd)
    for g, w in zip(got, exp):
        if w is not None:  # each gradient in its operand's dtype (grad_a of a float16 a is float16)
            assert_close(np.asarray(g), np.asarray(w), g.dtype.name)
