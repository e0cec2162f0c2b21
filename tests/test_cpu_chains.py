"""The cpu backend's kernel paths one by one, forward and backward, against the reference.

- time-inner runs (blocked by four steps) with the strides of the common layouts compiled in as
  literals (contiguous 1, reversed -1, a constant in time 0) and the generic runtime-stride code
  (strided views), at lengths that are not multiples of four, and tiny ones;
- the three-phase chunked scan of few long channels, brought down to small lengths by lowering
  ``MIN_CHUNK`` so that chunk boundaries fall at every offset, on one and two threads;
- whole-channel runs (many time-inner channels) walked up or down memory;
- channel-inner rows: a unit channel stride (vectorised), a shared by the channels, generic strides;
  row 0 with and without h0; grad_a summed when a is constant in time;
- every dtype (float16 accumulating in float32, complex), both layouts, reverse, h0, broadcast a;
- resets (issue #18) on each of these paths: next to and at chunk boundaries, inside folded chunks, at
  the first and last step, shared by the channels (one flag a row), per batch row, per channel (the
  narrow channel-by-channel path), with inf/nan in a at reset steps;
- results are bitwise repeatable.
"""

import numba
import numpy as np
import pytest

import parscan
from parscan import _plans, cpu, reference
from conftest import DTYPES, assert_close, rand

THREADS = sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)})


@pytest.fixture(params=THREADS, ids=lambda n: f"{n}thr")
def threads(request):
    old = numba.get_num_threads()
    numba.set_num_threads(request.param)
    yield request.param
    numba.set_num_threads(old)


@pytest.fixture(autouse=True)
def parallel_kernels(monkeypatch):
    """The parallel kernels on every input here: below ``cpu.SMALL`` elements calls would otherwise go
    to the single-threaded small-problem kernels (tested by ``test_small_problems``).  Cached plans keep
    the kernel they were made with, so the cache is emptied on the way in and out."""
    monkeypatch.setattr(cpu, "SMALL", 0)
    _plans.clear()
    yield
    _plans.clear()


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunk time from ten steps on (the planner's MIN_CHUNK is 4096), so that the chunked path runs
    on small inputs with chunk ends at every offset modulo four."""
    monkeypatch.setattr(cpu, "MIN_CHUNK", 5)


def _check(a, x, h0=None, axis=-1, reverse=False, dtype=None, seed=0, resets=None):
    """Forward and backward on the cpu backend equal the reference (conftest's tolerances)."""
    dtype = dtype or x.dtype
    h = parscan.linear_scan(a, x, h0, axis=axis, reverse=reverse, backend="cpu", resets=resets)
    assert_close(h, reference.linear_scan(a, x, h0, axis=axis, reverse=reverse, resets=resets), dtype)
    gh = np.empty_like(x)
    gh[...] = rand(np.random.default_rng(seed + 1), x.shape, x.dtype)
    got = parscan.linear_scan_backward(a, h, gh, h0, axis=axis, reverse=reverse, backend="cpu", resets=resets)
    want = reference.linear_scan_backward(a, h, gh, h0, axis=axis, reverse=reverse, resets=resets)
    for name, g, w in zip(("grad_a", "grad_x", "grad_h0"), got, want):
        if w is None:
            assert g is None, name
        else:
            assert np.shape(g) == np.shape(w), name
            assert_close(g, w, dtype)
    return h, got


ONE_CHANNEL = {"1-D": ((), -1), "(1, T)": ((1,), -1), "(T, 1)": ((1,), 0)}


def _one_channel(rng, layout, T, dtype):
    lead, axis = ONE_CHANNEL[layout]
    shape = (T,) if not lead else ((1, T) if axis == -1 else (T, 1))
    return rand(rng, shape, dtype), rand(rng, shape, dtype, "a"), axis


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33, 67, 130, 1001])
@pytest.mark.parametrize("layout", list(ONE_CHANNEL))
def test_one_channel_chunked(threads, small_chunks, dtype, T, layout):
    """One channel cut into chunks (phase 1 scans chunk 0 and folds the middle ones, phase 3 rescans),
    each chunk run blocked by four with a scalar tail, in both directions, with and without h0."""
    rng = np.random.default_rng(T)
    x, a, axis = _one_channel(rng, layout, T, dtype)
    h0 = rand(rng, (1,) if layout != "1-D" else (), dtype)
    for reverse in (False, True):
        for init in (None, h0):
            _check(a, x, init, axis=axis, reverse=reverse, dtype=dtype, seed=T)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(ONE_CHANNEL))
def test_one_long_channel(threads, dtype, layout):
    """The planner's own chunking (``cpu.TASKS + 1`` chunks for one channel) on a channel just past three
    chunks' minimum length."""
    rng = np.random.default_rng(5)
    x, a, axis = _one_channel(rng, layout, 3 * cpu.MIN_CHUNK + 7, dtype)
    _check(a, x, axis=axis, dtype=dtype)
    _check(a, x, rand(rng, (1,) if layout != "1-D" else (), dtype), axis=axis, reverse=True, dtype=dtype)


# a's shape for x of shape (C, T) (time-contiguous) or (T, C) (channel-contiguous)
DECAYS = {
    "full": lambda C, T, tfast: (C, T) if tfast else (T, C),
    "constant in time": lambda C, T, tfast: (C, 1) if tfast else (1, C),   # time stride 0, grad_a summed
    "shared by channels": lambda C, T, tfast: (1, T) if tfast else (T, 1),  # channel stride 0
    "scalar": lambda C, T, tfast: (),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay", list(DECAYS))
@pytest.mark.parametrize("C", [1, 2, 3, 5])
def test_few_channels_both_layouts(threads, small_chunks, dtype, decay, C):
    """Few channels: time-inner chunked runs, or channel-inner chunked rows (literal unit channel
    stride, or a shared by the channels), for every kind of decay, both directions, h0."""
    for tfast in (True, False):
        T = 41 + C
        rng = np.random.default_rng(C * 7 + tfast)
        shape, axis = ((C, T), -1) if tfast else ((T, C), 0)
        x = rand(rng, shape, dtype)
        a = rand(rng, DECAYS[decay](C, T, tfast), dtype, "a")
        h0 = rand(rng, (C,), dtype)
        for reverse in (False, True):
            _check(a, x, h0, axis=axis, reverse=reverse, dtype=dtype, seed=C)
            _check(a, x, axis=axis, reverse=reverse, dtype=dtype, seed=C + 1)


@pytest.mark.parametrize("dtype", ["float32", "float16", "complex64", "float64"])
@pytest.mark.parametrize("tfast", [True, False], ids=["time-contiguous", "channel-contiguous"])
def test_runtime_strides(threads, small_chunks, dtype, tfast):
    """Strides the kernels do not compile in (every other element, a and x laid out differently): the
    generic code, time-inner and channel-inner, chunked and not."""
    rng = np.random.default_rng(11)
    for C, T in ((1, 50), (3, 61), (40, 23)):
        shape, axis = ((C, T), -1) if tfast else ((T, C), 0)
        big = rand(rng, tuple(2 * n for n in shape), dtype)
        x = big[::2, ::2]                                     # strided in both dimensions
        a = np.asfortranarray(rand(rng, shape, dtype, "a"))   # the other layout
        h0 = rand(rng, (C,), dtype)
        for reverse in (False, True):
            _check(a, x, h0, axis=axis, reverse=reverse, dtype=dtype, seed=C)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay", ["full", "constant in time"])
@pytest.mark.parametrize("memory", ["C", "negative"])
def test_many_channels_whole_runs(threads, dtype, decay, memory):
    """Many time-inner channels: each task scans a run of whole channels, walking them up or down memory
    (forward/backward x reverse x a layout whose channels run down memory)."""
    rng = np.random.default_rng(2)
    C, T = 37, 29
    x = rand(rng, (C, T), dtype)
    a = rand(rng, DECAYS[decay](C, T, True), dtype, "a")
    if memory == "negative":
        x = np.ascontiguousarray(x[::-1, ::-1])[::-1, ::-1]
        a = np.ascontiguousarray(a[::-1, ::-1])[::-1, ::-1]
    h0 = rand(rng, (C,), dtype)
    for reverse in (False, True):
        _check(a, x, h0, reverse=reverse, dtype=dtype)
        _check(a, x, reverse=reverse, dtype=dtype, seed=1)
    x3 = rand(rng, (3, 5, 2, 9), dtype)  # channels over several dimensions: the walk carries (i, j, k)
    _check(rand(rng, (5, 1, 9), dtype, "a"), x3, rand(rng, (3, 5, 2), dtype), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [4, 16, 100, 2500])
def test_channel_inner_rows(threads, small_chunks, dtype, C):
    """Channel-contiguous blocks (whole rows, or rows split between tasks past WHOLE_ROW channels),
    vectorised rows, row 0 from h0 or from zero, grad_a written or summed."""
    rng = np.random.default_rng(C)
    T = 23
    x = rand(rng, (T, C), dtype)
    for a in (rand(rng, (T, C), dtype, "a"), rand(rng, (1, C), dtype, "a"), rand(rng, (T, 1), dtype, "a")):
        for reverse in (False, True):
            _check(a, x, rand(rng, (C,), dtype), axis=0, reverse=reverse, dtype=dtype)
            _check(a, x, axis=0, reverse=reverse, dtype=dtype, seed=3)


def test_real_decay_with_complex_data(threads, small_chunks):
    """A real a with complex x: the runs widen a to the accumulator's type; grad_a is real."""
    rng = np.random.default_rng(4)
    for shape, axis in (((1, 70), -1), ((70, 3), 0), ((40, 9), -1)):
        x = rand(rng, shape, "complex64")
        a = rand(rng, shape, "float32", "a")
        _check(a, x, axis=axis, dtype="complex64")
        _check(a[..., :1] if axis == -1 else a[:1], x, axis=axis, reverse=True, dtype="complex64")


@pytest.mark.parametrize("shape,axis", [((1, 3 * 4096 + 5), -1), ((3 * 4096 + 5, 3), 0), ((50, 300), -1)])
def test_bitwise_repeatable(shape, axis):
    """No atomics and a fixed task plan: the same call gives the same bits every time."""
    rng = np.random.default_rng(9)
    x, a = rand(rng, shape, "float32"), rand(rng, shape, "float32", "a")
    h1 = parscan.linear_scan(a, x, axis=axis, backend="cpu")
    g1 = parscan.linear_scan_backward(a, h1, x, axis=axis, backend="cpu")
    for _ in range(3):
        assert np.array_equal(parscan.linear_scan(a, x, axis=axis, backend="cpu"), h1)
        g = parscan.linear_scan_backward(a, h1, x, axis=axis, backend="cpu")
        assert all(np.array_equal(u, v) for u, v in zip(g[:2], g1[:2]))


@pytest.mark.parametrize("shape,strides,backward,want", [
    ((1, 1, 8, 100), (0, 0, 100, 1), False, False),   # time up, channels up: walk up
    ((1, 1, 8, 100), (0, 0, 100, 1), True, True),     # the backward runs time down: walk down
    ((1, 1, 8, 100), (0, 0, 100, -1), False, True),   # reversed time
    ((1, 1, 8, 100), (0, 0, 100, -1), True, False),
    ((1, 1, 8, 100), (0, 0, -100, 1), False, True),   # channels down memory
    ((1, 8, 1, 100), (0, 100, 0, 1), True, True),     # the walk's innermost moving dimension decides
])
def test_walk_down(shape, strides, backward, want):
    assert cpu.walk_down(shape, strides, backward) == want


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis,decay", [
    ((37,), -1, "full"), ((3, 4, 29), -1, "channel"), ((29, 3, 4), 0, "full"), ((5, 29, 2), 1, "scalar"),
])
@pytest.mark.parametrize("with_h0", [False, True])
def test_small_problems(monkeypatch, dtype, shape, axis, decay, with_h0):
    """Problems of at most ``cpu.SMALL`` elements run single-threaded (``_forward_small`` /
    ``_backward_small``): against the reference, and against the parallel kernels, both layouts'
    channel walks, a constant in time (grad_a summed), h0 (grad_h0)."""
    rng = np.random.default_rng(3)
    x = rand(rng, shape, dtype)
    a = rand(rng, shape, dtype, "a")
    if decay == "channel":
        a = np.ascontiguousarray(np.take(a, [0], axis=axis))
    elif decay == "scalar":
        a = 0.9
    h0 = rand(rng, shape[:axis % len(shape)] + shape[axis % len(shape) + 1:], dtype) if with_h0 else None
    monkeypatch.setattr(cpu, "SMALL", 1 << 14)
    _plans.clear()
    h, grads = _check(a, x, h0, axis=axis, dtype=dtype)
    for _ in range(2):  # replayed from the plan cache: the prepared small launcher
        assert np.array_equal(parscan.linear_scan(a, x, h0, axis=axis, backend="cpu"), h)
    monkeypatch.setattr(cpu, "SMALL", 0)
    _plans.clear()
    big = parscan.linear_scan(a, x, h0, axis=axis, backend="cpu")
    assert_close(big, h, dtype)
    gh = np.empty_like(x)
    gh[...] = rand(np.random.default_rng(1), x.shape, x.dtype)
    for g, w in zip(parscan.linear_scan_backward(a, h, gh, h0, axis=axis, backend="cpu"), grads):
        assert (g is None) == (w is None)
        if g is not None:
            assert_close(g, w, dtype)


# ------------------------------------------------------------------------------------------ resets

def _chunk_len(C, T, tfast):
    """The chunk length the cpu backend uses for x of shape (C, T) (``tfast``) or (T, C), or T."""
    strides = (0, 0, T, 1) if tfast else (0, 0, 1, C)
    _, nch = cpu.task_plan((1, 1, C, T), strides)
    return -(-T // nch)


def _reset_patterns(rng, T, L):
    """(name, resets of shape (T,)): at chunk boundaries (both directions' chunks) and the ends, one
    inside the second chunk only (a folded one when there are three or more), random, none set."""
    edges = np.zeros(T, bool)
    for t in (0, L - 1, L, 2 * L - 1, 2 * L, T - 1, T - L, T - L - 1, T - 2 * L):
        if 0 <= t < T:
            edges[t] = True
    inside = np.zeros(T, bool)
    inside[min(T - 1, L + L // 2)] = True
    return [("edges", edges), ("inside a fold", inside), ("random", rng.random(T) < 0.15),
            ("none set", np.zeros(T, bool))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tfast", [True, False], ids=["time-contiguous", "channel-contiguous"])
@pytest.mark.parametrize("C", [1, 3, 12])
def test_resets_chunked(threads, small_chunks, dtype, tfast, C):
    """Resets of shape (T,) on the chunked paths: time-inner runs (folds' pairs with A = 0 after a reset,
    rescans), narrow channel-by-channel blocks (C = 3) and channel-inner rows (C = 12, one flag a row,
    row 0), with resets at chunk starts and ends, at t = 0 and T - 1, inside a fold; both directions,
    with and without h0; a full, constant-in-time (grad_a summed) or channel-shared a."""
    rng = np.random.default_rng(C + 10 * tfast)
    T = 47
    shape, axis = ((C, T), -1) if tfast else ((T, C), 0)
    x = rand(rng, shape, dtype)
    h0 = rand(rng, (C,), dtype)
    L = _chunk_len(C, T, tfast)
    decays = [rand(rng, DECAYS[d](C, T, tfast), dtype, "a") for d in ("full", "constant in time",
                                                                     "shared by channels")]
    for n, (name, r) in enumerate(_reset_patterns(rng, T, L)):
        for reverse in (False, True):
            a = decays[(n + reverse) % 3]
            rr = r if tfast else r[:, None]  # (T,) or (T, 1): shared by the channels either way
            _check(a, x, h0 if (n + reverse) % 2 else None, axis=axis, reverse=reverse, dtype=dtype, seed=n,
                   resets=rr)


@pytest.mark.parametrize("dtype", ["float32", "float16", "complex128"])
@pytest.mark.parametrize("C", [3, 16, 2500])
def test_resets_per_channel_channel_inner(threads, small_chunks, dtype, C):
    """Resets that differ between the channels of a channel-inner block (full (T, C) resets) go channel
    by channel; resets shared by the channels of wide rows (whole rows, rows split between tasks past
    WHOLE_ROW) take the rows' one flag a row."""
    rng = np.random.default_rng(C)
    T = 23
    x, a = rand(rng, (T, C), dtype), rand(rng, (T, C), dtype, "a")
    full = rng.random((T, C)) < 0.2
    full[0, ::2] = True
    shared = rng.random(T) < 0.2
    shared[[0, T - 1]] = True
    for reverse in (False, True):
        _check(a, x, rand(rng, (C,), dtype), axis=0, reverse=reverse, dtype=dtype, resets=full)
        _check(a, x, axis=0, reverse=reverse, dtype=dtype, seed=1, resets=shared[:, None])
        _check(rand(rng, (1, C), dtype, "a"), x, rand(rng, (C,), dtype), axis=0, reverse=reverse, dtype=dtype,
               seed=2, resets=shared[:, None])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("memory", ["C", "negative"])
def test_resets_whole_channel_runs(threads, dtype, memory):
    """Many time-inner channels, whole runs walked up or down memory: resets shared by the channels,
    per channel, and per batch row ((B, 1, T) for a (B, C, T) x); time-major (T, B, C) rows with
    (T, B, 1) resets."""
    rng = np.random.default_rng(6)
    C, T = 37, 29
    x, a = rand(rng, (C, T), dtype), rand(rng, (C, T), dtype, "a")
    if memory == "negative":
        x = np.ascontiguousarray(x[::-1, ::-1])[::-1, ::-1]
        a = np.ascontiguousarray(a[::-1, ::-1])[::-1, ::-1]
    shared, full = rng.random(T) < 0.2, rng.random((C, T)) < 0.2
    shared[0] = full[::3, 0] = full[1::4, T - 1] = True
    h0 = rand(rng, (C,), dtype)
    for reverse in (False, True):
        _check(a, x, h0, reverse=reverse, dtype=dtype, resets=shared)
        _check(a[:, :1], x, reverse=reverse, dtype=dtype, seed=1, resets=full)  # grad_a summed
    _check(np.asfortranarray(a), x, h0, dtype=dtype, seed=2, resets=full)  # a's own strides: the general run
    B, C3 = 3, 10
    x3, a3 = rand(rng, (B, C3, T), dtype), rand(rng, (B, C3, T), dtype, "a")
    rows = rng.random((B, 1, T)) < 0.15
    rows[1, 0, 0] = True
    _check(a3, x3, rand(rng, (B, C3), dtype), dtype=dtype, resets=rows)
    xt, at = x3.transpose(2, 0, 1).copy(), a3.transpose(2, 0, 1).copy()  # (T, B, C): rows of C per batch row
    _check(at, xt, rand(rng, (B, C3), dtype), axis=0, reverse=True, dtype=dtype, resets=rows.transpose(2, 0, 1))


@pytest.mark.parametrize("shape,axis", [((1, 3 * 4096 + 5), -1), ((3 * 4096 + 5, 12), 0), ((40, 99), -1)])
def test_resets_select_and_repeatable(shape, axis):
    """Where a reset is set, a is not read as a number: inf and nan there do not reach h or the
    gradients (a select, not a multiply); results are bitwise repeatable; the planner's own chunking."""
    rng = np.random.default_rng(8)
    T = shape[axis]
    x, a = rand(rng, shape, "float32"), rand(rng, shape, "float32", "a")
    r = rng.random(T) < 0.01
    r[[0, T // 3, T // 3 + 1, T - 1]] = True  # next to the planner's chunk boundaries for the long ones
    rr = r if axis == -1 else r[:, None]
    a = np.where(np.broadcast_to(rr, shape), np.float32(np.nan), a)
    a[np.broadcast_to(rr, shape) & (rng.random(shape) < 0.5)] = np.inf
    h = parscan.linear_scan(a, x, axis=axis, backend="cpu", resets=rr)
    assert np.all(np.isfinite(h))
    assert_close(h, reference.linear_scan(a, x, axis=axis, resets=rr), "float32")
    g = parscan.linear_scan_backward(a, h, x, axis=axis, backend="cpu", resets=rr)
    for got, want in zip(g[:2], reference.linear_scan_backward(a, h, x, axis=axis, resets=rr)[:2]):
        assert np.all(np.isfinite(got))
        assert_close(got, want, "float32")
    assert np.all(g[0][np.broadcast_to(rr, shape)] == 0)
    for _ in range(2):
        assert np.array_equal(parscan.linear_scan(a, x, axis=axis, backend="cpu", resets=rr), h)
        again = parscan.linear_scan_backward(a, h, x, axis=axis, backend="cpu", resets=rr)
        assert all(np.array_equal(u, v) for u, v in zip(again[:2], g[:2]))


# ------------------------------------------------------------------------ thread counts and accuracy

# long enough for the parallel kernels and the planner's own chunks (few channels), both layouts
SAME_BITS = [((40000,), -1), ((3, 20000), -1), ((20000, 3), 0), ((8192, 16), 0), ((300, 200), -1)]


def same_bits_results():
    """h, grad_a, grad_x and grad_h0 of seeded float32 problems (SAME_BITS, both directions, with h0):
    what a subprocess computes on its own thread count for ``test_same_bits_in_fresh_processes``."""
    out = []
    for shape, axis in SAME_BITS:
        rng = np.random.default_rng(sum(shape))
        x, a, gh = rand(rng, shape, "float32"), rand(rng, shape, "float32", "a"), rand(rng, shape, "float32")
        h0 = rand(rng, tuple(n for d, n in enumerate(shape) if d != axis % len(shape)), "float32")
        for reverse in (False, True):
            h = parscan.linear_scan(a, x, h0, axis=axis, reverse=reverse, backend="cpu")
            out += [h, *parscan.linear_scan_backward(a, h, gh, h0, axis=axis, reverse=reverse, backend="cpu")]
    return out


def _assert_same_bits(got, want, what):
    assert len(got) == len(want)
    for n, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape and g.tobytes() == w.tobytes(), (what, n)


def test_same_bits_on_any_thread_count():
    """The plan depends on the problem only: the same bits after ``numba.set_num_threads`` back and
    forth, with the plan cache warm (plans made on another thread count replayed) and cold."""
    first = same_bits_results()
    for n in [1, 2, 1, 2, 1] if numba.config.NUMBA_NUM_THREADS >= 2 else [1]:
        numba.set_num_threads(n)
        try:
            _assert_same_bits(same_bits_results(), first, f"{n} threads, warm cache")
            _plans.clear()
            _assert_same_bits(same_bits_results(), first, f"{n} threads, cold cache")
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def test_same_bits_in_fresh_processes(tmp_path):
    """Fresh processes started with NUMBA_NUM_THREADS 1, 2 and 4 (more than this machine's cores is
    allowed) compute the same bits as this one."""
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(os.path.abspath(parscan.__file__)))
    code = ("import sys, numpy as np; sys.path[:0] = [{!r}, {!r}]; import test_cpu_chains as t; "
            "np.savez(sys.argv[1], *t.same_bits_results())").format(here, root)
    procs = {}
    for n in (1, 2, 4):
        env = dict(os.environ, NUMBA_NUM_THREADS=str(n))
        procs[n] = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"{n}.npz")], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    want = same_bits_results()
    for n, p in procs.items():
        out = p.communicate(timeout=600)[0]
        assert p.returncode == 0, out.decode()[-3000:]
        with np.load(tmp_path / f"{n}.npz") as f:
            _assert_same_bits([f[f"arr_{i}"] for i in range(len(f.files))], want, f"NUMBA_NUM_THREADS={n}")


def _loop32(a, x, axis, reverse):
    """A plain float32 sequential loop (h = a * h + x, each step rounded): the accuracy to keep."""
    at, xt = np.moveaxis(a, axis, -1), np.moveaxis(x, axis, -1)
    if reverse:
        at, xt = at[..., ::-1], xt[..., ::-1]
    h = np.zeros(xt.shape[:-1], np.float32)
    out = np.empty(xt.shape, np.float32)
    for t in range(xt.shape[-1]):
        h = at[..., t] * h + xt[..., t]
        out[..., t] = h
    return np.moveaxis(out[..., ::-1] if reverse else out, -1, axis)


@pytest.mark.parametrize("shape,axis,reverse", [
    ((4096,), -1, False),        # one time-inner run, blocked by four
    ((30000,), -1, False),       # one long channel: the planner's time chunks
    ((30000,), -1, True),
    ((3, 12000), -1, False),     # few time-inner channels, chunked
    ((12000, 3), 0, True),       # narrow channel-inner blocks (time-inner runs), chunked
])
def test_float32_long_decay_accuracy(shape, axis, reverse):
    """At a = 0.9995 (a decay close to 1 amplifies a rounded decay product's error by 1 / (1 - a)) the
    forward and grad_x on float32 are at most twice as far from the float64 reference as a plain float32
    loop (the issue measured 9x before the chains were carried in float64)."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, shape).astype(np.float32)  # one sign: rounding errors of the decay add up
    a = np.full(shape, 0.9995, np.float32)
    for what, got, want, loop in (
            ("h", parscan.linear_scan(a, x, axis=axis, reverse=reverse, backend="cpu"),
             reference.linear_scan(a, x, axis=axis, reverse=reverse), _loop32(a, x, axis, reverse)),
            ("grad_x", parscan.linear_scan_backward(a, x, x, axis=axis, reverse=reverse, backend="cpu")[1],
             reference.linear_scan_backward(a, x, x, axis=axis, reverse=reverse)[1],
             _loop32(a, x, axis, not reverse))):  # a constant: grad_x is the same loop the other way in time
        cpu_err = float(np.max(np.abs(got - want)))
        loop_err = float(np.max(np.abs(loop - want)))
        tiny = 4 * np.finfo(np.float32).eps * float(np.max(np.abs(want)))
        assert cpu_err <= 2 * loop_err + tiny, (what, cpu_err, loop_err)
