"""parscan.dask: scans over Dask arrays equal the in-memory API (and the float64 reference) across
chunkings, dtypes, directions, broadcasts and h0; the graph is linear in the number of chunks and reads
each chunk at most twice; the threaded scheduler; a LocalCluster of worker processes, including a run
whose data exceed a worker's memory limit, where no task ever holds more than about one chunk."""

import doctest
import logging
import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

from dask.core import get_dependencies  # noqa: E402

import parscan  # noqa: E402
import parscan.dask as pdask  # noqa: E402
from parscan import reference  # noqa: E402
from parscan.kernels import matrix_launch  # noqa: E402

from conftest import DTYPES, TOL, assert_close, rand  # noqa: E402

SYNC = {"scheduler": "synchronous"}
METHODS = ["scan", "sequential"]

# (C, T) chunkings of a (4, 29) array with time last: one chunk, uneven time chunks, chunks of one
# step, channel chunks, both
CHUNKINGS = {
    "one": ((4,), (29,)),
    "time": ((4,), (7, 1, 10, 3, 8)),
    "steps": ((4,), (1,) * 29),
    "channels": ((1, 3), (29,)),
    "both": ((2, 2), (5, 11, 13)),
}


def _rng(*case):
    """A generator seeded by the test case (crc32 of its repr: the same in every process)."""
    return np.random.default_rng(zlib.crc32(repr(case).encode()))


def _compute(*arrays, scheduler="synchronous"):
    with dask.config.set(scheduler=scheduler):
        return dask.compute(*arrays)


def _close(got, want, dtype):
    """The result's dtype is ``want``'s and its values are ``want``'s within ``dtype``'s tolerance."""
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert_close(got, want, dtype)


def _close_scaled(got, want, dtype, terms):
    """Within ``dtype``'s tolerance of the largest of 1, |want| and ``terms``."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(1.0, float(np.max(np.abs(want))) if want.size else 0.0, terms)
    err = float(np.max(np.abs(got.astype(want.dtype) - want))) if want.size else 0.0
    assert err <= TOL[np.dtype(dtype).name] * scale, f"max error {err:.3g} > {TOL[np.dtype(dtype).name] * scale:.3g}"


def _terms(v, is_a, h, gh, am, hm, reverse, axis=-1):
    """The sum of |terms| behind a gradient summed over the dims ``v`` (a or h0) was broadcast along
    (its rounding is relative to them, not to the sum, as in test_equivalence); 0 where nothing is summed."""
    chan = tuple(np.delete(h.shape, axis % h.ndim))
    if np.shape(v) == (h.shape if is_a else chan):
        return 0.0
    full = reference.linear_scan_backward(np.broadcast_to(am, h.shape), h, gh,
                                          None if hm is None else np.broadcast_to(hm, chan), reverse=reverse, axis=axis)
    return float(reference._sum_to(np.abs(full[0 if is_a else 2]), np.shape(v)).max())


def _as(v, chunks, kind):
    """``v`` as the call gets it: ``kind`` "dask" (a Dask array chunked like x where it is not broadcast)
    or "memory" (as it is)."""
    if kind == "memory" or np.ndim(v) == 0 and not isinstance(v, np.ndarray):
        return v
    v = np.asarray(v)
    return da.from_array(v, chunks=tuple((1,) if n == 1 else c for n, c in zip(v.shape, chunks[-v.ndim:]))
                         if v.ndim else ())


def _cases(a, h0):
    """(a, h0, how each is passed): full, broadcast (Dask and in-memory), weak scalars."""
    return [
        (a, None, "dask", "dask"),
        (a, h0, "dask", "dask"),
        (a[:, :1], 0.5, "dask", "memory"),        # a Dask (C, 1) decay; weak scalar h0
        (a[:1], h0[:1], "dask", "dask"),          # a Dask (1, T) decay; a Dask (1,) h0
        (a[0], None, "dask", "dask"),             # a Dask (T,) decay
        (np.asarray(a[0, 0]), h0, "dask", "memory"),  # a 0-d Dask decay
        (0.9, h0, "memory", "memory"),            # weak scalar decay, in-memory h0
        (a[:1], None, "memory", "memory"),        # in-memory decay broadcast over channels
    ]


# ---- forward ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_equals_in_memory_and_reference(chunking, dtype, reverse):
    rng = _rng("forward", chunking, dtype, reverse)
    chunks = CHUNKINGS[chunking]
    x = rand(rng, (4, 29), dtype)
    a = rand(rng, (4, 29), dtype, "a")
    h0 = rand(rng, (4,), dtype)
    xd = da.from_array(x, chunks=chunks)
    cases = _cases(a, h0)
    results = [pdask.linear_scan(_as(am, chunks, ka), xd, _as(hm, (chunks[0],), kh), reverse=reverse,
                                 method=METHODS[i % 2]) for i, (am, hm, ka, kh) in enumerate(cases)]
    for r in results:
        assert isinstance(r, da.Array) and r.chunks == xd.chunks
    for got, (am, hm, _, _) in zip(_compute(*results), cases):
        want = parscan.linear_scan(am, x, hm, reverse=reverse)
        _close(got, want, dtype)
        assert_close(got, reference.linear_scan(am, x, hm, reverse=reverse), dtype)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_forward_any_axis_3d(axis):
    rng = _rng("axis", axis)
    shape, chunks = (5, 6, 7), ((2, 3), (1, 5), (3, 4))
    x = rand(rng, shape, "float32")
    a_shape = tuple(n if d == axis % 3 else 1 for d, n in enumerate(shape))  # varies along time only
    a_full = rand(rng, shape, "float32", "a")
    a_t = rand(rng, a_shape, "float32", "a")
    h0_shape = tuple(n for d, n in enumerate(shape) if d != axis % 3)
    h0 = rand(rng, h0_shape, "float64")  # widens the result to float64
    h0_chunks = tuple(c for d, c in enumerate(chunks) if d != axis % 3)
    xd = da.from_array(x, chunks=chunks)
    got = _compute(pdask.linear_scan(da.from_array(a_full, chunks=chunks), xd, da.from_array(h0, chunks=h0_chunks),
                                     axis=axis),
                   pdask.linear_scan(a_t, xd, axis=axis, reverse=True))
    want = (parscan.linear_scan(a_full, x, h0, axis=axis), parscan.linear_scan(a_t, x, axis=axis, reverse=True))
    assert got[0].dtype == np.float64
    for g, w in zip(got, want):
        _close(g, w, w.dtype)


@pytest.mark.parametrize("method", METHODS)
def test_methods_agree_with_unequal_chunks_of_one(method):
    rng = _rng("methods", method)
    x = rand(rng, (3, 40), "float64")
    a = rand(rng, (3, 40), "float64", "a")
    gh = rand(rng, (3, 40), "float64")
    chunks = ((3,), (1, 1, 5, 1, 9, 2, 1, 1, 12, 3, 4))
    ad, xd = da.from_array(a, chunks=chunks), da.from_array(x, chunks=chunks)
    h = pdask.linear_scan(ad, xd, 1.0, method=method)
    hm = reference.linear_scan(a, x, 1.0)
    bw = pdask.linear_scan_backward(ad[:, :1], da.from_array(hm, chunks=chunks), da.from_array(gh, chunks=chunks),
                                    np.ones(3), method=method)
    got = _compute(h, *bw)
    assert_close(got[0], hm, "float64")
    for g, w in zip(got[1:], parscan.linear_scan_backward(a[:, :1], hm, gh, np.ones(3))):
        assert_close(g, w, "float64")


@pytest.mark.parametrize("a, x_dtype, h0", [
    (0.5, "float16", None),                    # weak Python scalar keeps float16
    (np.float64(0.5), "float32", None),        # a NumPy scalar is not weak: float64
    (0.5, "float32", 1j),                      # weak complex h0: complex64
    ("float64", "float32", None),              # a Dask float64 decay: float64
    ("complex64", "float64", None),            # complex64 with float64: complex128
    ("float16", "float16", np.float32(1.0)),   # a float32 h0 widens float16 data
])
def test_dtype_promotion_is_the_in_memory_one(a, x_dtype, h0):
    rng = _rng("promotion", a, x_dtype, h0)
    x = rand(rng, (2, 9), x_dtype)
    am = rand(rng, (2, 9), a, "a") if isinstance(a, str) else a
    ap = da.from_array(am, chunks=(1, 4)) if isinstance(a, str) else a
    got = pdask.linear_scan(ap, da.from_array(x, chunks=(1, 4)), h0)
    want = parscan.linear_scan(am, x, h0)
    assert got.dtype == want.dtype
    _close(_compute(got)[0], want, want.dtype)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # 7e4 is inf in float16
def test_float16_rounds_python_scalars_as_the_in_memory_api_over_many_chunks():
    """float16 data with Python-scalar a and h0: a = 0.999 is 0.9990234375 in float16 (the sum of its
    powers tends to 1024, not 1000), and h0 = 7e4 is inf in float16; over 8192 steps in 8 and 64 chunks
    the Dask scan and its backward give the in-memory answers, forward and reverse."""
    T = 8192
    x = np.ones((2, T), np.float16)
    x[1] = _rng("f16").standard_normal(T).astype(np.float16)
    gh = np.full((2, T), 1e-4, np.float16)  # g ~ 0.1: grad_a (a sum over 2 T terms) stays finite in float16
    for reverse in (False, True):
        end, first = (0, T - 1) if reverse else (-1, 0)
        want = parscan.linear_scan(0.999, x, reverse=reverse)
        assert abs(float(want[0, end]) - 1023.5) < 1  # the contract's rounding of a, not 999.5
        assert np.isinf(parscan.linear_scan(0.999, x, 7e4, reverse=reverse)).all()  # inf h0 stays inf
        hm = parscan.linear_scan(0.999, 1e-3 * x, 0.25, reverse=reverse)
        wb = parscan.linear_scan_backward(0.999, hm, gh, 0.25, reverse=reverse)
        assert abs(float(wb[1][0, first]) - 0.10235) < 1e-3  # 1e-4 * (sum of powers of a), not 0.09995
        assert np.isinf(parscan.linear_scan_backward(0.999, hm, gh, 7e4, reverse=reverse)[0])  # h[-1] = inf
        for step in (1024, 128):
            xd = da.from_array(x, chunks=(2, step))
            hd, ghd = da.from_array(hm, chunks=(2, step)), da.from_array(gh, chunks=(2, step))
            got = _compute(pdask.linear_scan(0.999, xd, reverse=reverse),
                           pdask.linear_scan(0.999, xd, 7e4, reverse=reverse),
                           pdask.linear_scan_backward(0.999, hd, ghd, 7e4, reverse=reverse)[0],
                           *pdask.linear_scan_backward(0.999, hd, ghd, 0.25, reverse=reverse))
            _close(got[0], want, "float16")
            assert got[1].dtype == np.float16 and np.isinf(got[1]).all()
            assert np.isinf(got[2])
            for g, w in zip(got[3:], wb):
                assert g.dtype == w.dtype and g.shape == w.shape
                np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64), rtol=4e-3, atol=1e-6)


def test_in_memory_x_takes_the_chunks_of_a_dask_decay_and_inputs_are_unmodified():
    rng = _rng("in-memory x")
    x = rand(rng, (4, 12), "float32")
    a = rand(rng, (4, 12), "float32", "a")
    h0 = rand(rng, (4,), "float32")
    keep = [v.copy() for v in (x, a, h0)]
    ad = da.from_array(a, chunks=(2, 5))
    h = pdask.linear_scan(ad, x, h0)
    assert h.chunks == ((2, 2), (5, 5, 2))
    g = rand(rng, (4, 12), "float32")
    keep.append(g.copy())
    res = _compute(h, *pdask.linear_scan_backward(ad, h, g, h0))
    _close(res[0], parscan.linear_scan(a, x, h0), "float32")
    for v, k in zip((x, a, h0, g), keep):
        np.testing.assert_array_equal(v, k)
    # all in memory: one chunk, still lazy
    h1 = pdask.linear_scan(0.5, x)
    assert isinstance(h1, da.Array) and h1.numblocks == (1, 1)


@pytest.mark.parametrize("chunking", ["time", "steps", "both"])
def test_real_decay_with_complex_data(chunking):
    rng = _rng("real a complex x", chunking)
    chunks = CHUNKINGS[chunking]
    x, gh, h0 = rand(rng, (4, 29), "complex64"), rand(rng, (4, 29), "complex64"), rand(rng, (4,), "complex64")
    a = rand(rng, (4, 29), "float32", "a")
    lazy, wants = [], []
    for am, hm in ((a, h0), (a[:, :1], None), (0.8, h0)):
        for reverse in (False, True):
            h = parscan.linear_scan(am, x, hm, reverse=reverse)
            lazy += [pdask.linear_scan(_as(am, chunks, "dask"), da.from_array(x, chunks=chunks), hm, reverse=reverse),
                     *[r for r in pdask.linear_scan_backward(_as(am, chunks, "dask"), da.from_array(h, chunks=chunks),
                                                             da.from_array(gh, chunks=chunks), hm, reverse=reverse)
                       if r is not None]]
            wants += [(h, 0.0)] + [(w, _terms(am, i == 0, h, gh, am, hm, reverse) if i != 1 else 0.0)
                                   for i, w in enumerate(parscan.linear_scan_backward(am, h, gh, hm, reverse=reverse))
                                   if w is not None]
    for g, (w, terms) in zip(_compute(*lazy), wants):
        assert g.dtype == w.dtype  # a real decay's gradient is real
        _close_scaled(g, w, "complex64", terms)


def test_threaded_scheduler():
    """Dask's threaded scheduler runs chunk calls from several threads at once (Numba's omp or tbb
    layer here; under workqueue the cpu backend serialises them: see test_workqueue_threading_layer)."""
    rng = _rng("threads")
    chunks = ((2, 2), (60, 60, 40, 40))
    x, a, gh = rand(rng, (4, 200), "float32"), rand(rng, (4, 200), "float32", "a"), rand(rng, (4, 200), "float32")
    ad, xd = da.from_array(a, chunks=chunks), da.from_array(x, chunks=chunks)
    hm = parscan.linear_scan(a, x, 0.5)
    xm = rand(rng, (2, 200, 3), "float64")
    A = 0.5 * rand(rng, (2, 1, 3, 3), "float64")
    lazy = [pdask.linear_scan(ad, xd, 0.5), pdask.linear_scan(ad, xd, 0.5, method="sequential", reverse=True),
            *pdask.linear_scan_backward(ad, da.from_array(hm, chunks=chunks), da.from_array(gh, chunks=chunks), 0.5),
            pdask.matrix_linear_scan(A, da.from_array(xm, chunks=(1, 50, 3)))]
    want = [hm, parscan.linear_scan(a, x, 0.5, reverse=True), *parscan.linear_scan_backward(a, hm, gh, 0.5),
            parscan.matrix_linear_scan(A, xm)]
    for _ in range(3):
        for g, w in zip(_compute(*lazy, scheduler="threads"), want):
            _close_scaled(g, w, w.dtype, 200.0 if np.ndim(w) == 0 else 0.0)


def test_workqueue_threading_layer():
    """Under Numba's workqueue layer two threads launching parallel kernels at once abort the process;
    the cpu backend serialises its parallel launches there, so the threaded scheduler completes."""
    code = textwrap.dedent("""
        import numpy as np, dask, dask.array as da, numba, parscan, parscan.dask as pdask
        x = da.random.default_rng(0).standard_normal((64, 2**17), chunks=(32, 2**15), dtype=np.float32)
        with dask.config.set(scheduler="threads", num_workers=4):
            got = pdask.linear_scan(0.99, x).compute()
        assert numba.threading_layer() == "workqueue", numba.threading_layer()
        want = parscan.linear_scan(0.99, x.compute(scheduler="sync"))
        assert np.allclose(got, want, rtol=1e-4, atol=1e-4)
        print("ok")
    """)
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), (r.returncode, r.stdout[-2000:], r.stderr[-2000:])


# ---- backward ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_backward_equals_in_memory_and_reference(chunking, dtype, reverse):
    rng = _rng("backward", chunking, dtype, reverse)
    chunks = CHUNKINGS[chunking]
    x = rand(rng, (4, 29), dtype)
    gh = rand(rng, (4, 29), dtype)
    a = rand(rng, (4, 29), dtype, "a")
    h0 = rand(rng, (4,), dtype)
    cases = _cases(a, h0)
    calls = []
    for i, (am, hm, ka, kh) in enumerate(cases):
        h = parscan.linear_scan(am, x, hm, reverse=reverse)
        hd, ghd = da.from_array(h, chunks=chunks), da.from_array(gh, chunks=chunks)
        calls.append((h, pdask.linear_scan_backward(_as(am, chunks, ka), hd, ghd, _as(hm, (chunks[0],), kh),
                                                    reverse=reverse, method=METHODS[i % 2])))
    got = _compute(*[r for _, rs in calls for r in rs if r is not None])
    k = 0
    for (am, hm, _, _), (h, rs) in zip(cases, calls):
        want = parscan.linear_scan_backward(am, h, gh, hm, reverse=reverse)
        ref = reference.linear_scan_backward(am, h, gh, hm, reverse=reverse)
        for which, (r, w, rf) in enumerate(zip(rs, want, ref)):
            if w is None:
                assert r is None
                continue
            g = got[k]
            k += 1
            assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
            scale = 0.0 if which == 1 else _terms(am if which == 0 else hm, which == 0, h, gh, am, hm, reverse)
            _close_scaled(g, w, dtype, scale)
            _close_scaled(g, rf, dtype, scale)


def test_backward_any_axis_and_mixed_layout():
    rng = _rng("backward axis")
    shape, chunks = (6, 5, 8), ((4, 2), (2, 3), (8,))
    x = rand(rng, shape, "complex128")
    gh = rand(rng, shape, "complex128")
    a = rand(rng, (6, 1, 8), "float64", "a")     # real decay, constant along axis 1 (time)
    h0 = rand(rng, (6, 8), "complex128")
    h = parscan.linear_scan(a, x, h0, axis=1)
    for method in METHODS:
        rs = pdask.linear_scan_backward(da.from_array(a, chunks=((4, 2), (1,), (8,))), da.from_array(h, chunks=chunks),
                                        da.from_array(gh, chunks=chunks), da.from_array(h0, chunks=((4, 2), (8,))),
                                        axis=1, method=method)
        want = parscan.linear_scan_backward(a, h, gh, h0, axis=1)
        for g, w in zip(_compute(*rs), want):
            assert g.dtype == w.dtype  # a real decay's gradient is real
            assert_close(g, w, "complex128")


# ---- matrix scan ------------------------------------------------------------------------------------

MATRIX_CHUNKINGS = {  # (B, T) chunkings of x (3, 21, n)
    "time": ((3,), (4, 1, 9, 7)),
    "batch": ((1, 2), (21,)),
    "both": ((1, 2), (4, 1, 9, 7)),
}


@pytest.mark.parametrize("chunking", list(MATRIX_CHUNKINGS))
@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64", "complex128", "float16"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("a_time", ["full", "constant"])
def test_matrix_scan_and_backward_equal_in_memory(chunking, dtype, reverse, a_time):
    rng = _rng("matrix", chunking, dtype, reverse, a_time)
    B, T, n = 3, 21, 3
    bch, tch = MATRIX_CHUNKINGS[chunking]
    x = rand(rng, (B, T, n), dtype)
    gh = rand(rng, (B, T, n), dtype)
    A = (rand(rng, (B, T if a_time == "full" else 1, n, n), dtype) * 0.4).astype(dtype)
    h0 = rand(rng, (B, n), dtype)
    xd = da.from_array(x, chunks=(bch, tch, (n,)))
    Ad = da.from_array(A, chunks=(bch, tch if a_time == "full" else (1,), (n,), (n,)))
    h0d = da.from_array(h0, chunks=(bch, (n,)))
    hm = parscan.matrix_linear_scan(A, x, h0, reverse=reverse)
    hd, ghd = da.from_array(hm, chunks=(bch, tch, (n,))), da.from_array(gh, chunks=(bch, tch, (n,)))
    lazy = [pdask.matrix_linear_scan(Ad, xd, h0d, reverse=reverse),
            pdask.matrix_linear_scan(A[:1], xd, reverse=reverse, method="sequential"),  # A shared by the batch
            *pdask.matrix_linear_scan_backward(Ad, hd, ghd, h0d, reverse=reverse),
            *pdask.matrix_linear_scan_backward(A[:1], hd, ghd, reverse=reverse, method="sequential")[:2]]
    want = [hm, parscan.matrix_linear_scan(A[:1], x, reverse=reverse),
            *parscan.matrix_linear_scan_backward(A, hm, gh, h0, reverse=reverse),
            *parscan.matrix_linear_scan_backward(A[:1], hm, gh, reverse=reverse)[:2]]
    summed = [0, 0, T if a_time == "constant" else 0, 0, 0, B * T, 0]  # terms behind each summed gradient
    for g, w, s in zip(_compute(*lazy), want, summed):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, w.dtype, g.shape, w.shape)
        _close_scaled(g, w, dtype, 4.0 * s)
    ref = parscan.matrix_linear_scan(A, x, h0, reverse=reverse, backend="reference")
    assert_close(_compute(lazy[0])[0], ref, dtype)


def test_matrix_scan_broadcasts_like_the_in_memory_one():
    """x's leading dims broadcast against A's and h0's as in memory (the result has the broadcast shape;
    x's one block serves every block of the result), forward and backward."""
    rng = _rng("matrix broadcast")
    A = 0.4 * rand(rng, (2, 1, 3, 3), "float64")
    x = rand(rng, (20, 3), "float64")
    assert parscan.matrix_linear_scan(np.zeros((2, 1, 3, 3)), np.ones((5, 3))).shape == (2, 5, 3)
    h0 = rand(rng, (4, 1, 3), "float64")
    want = [parscan.matrix_linear_scan(A, x), parscan.matrix_linear_scan(A, x, h0)]
    lazy = [pdask.matrix_linear_scan(da.from_array(A, chunks=(1, 1, 3, 3)), da.from_array(x, chunks=(6, 3))),
            pdask.matrix_linear_scan(A, da.from_array(x, chunks=(6, 3)), da.from_array(h0, chunks=(2, 1, 3)))]
    assert lazy[0].shape == (2, 20, 3) and lazy[0].chunks == ((1, 1), (6, 6, 6, 2), (3,))
    assert lazy[1].shape == (4, 2, 20, 3) and lazy[1].chunks == ((2, 2), (2,), (6, 6, 6, 2), (3,))
    assert not any(isinstance(k, tuple) and "rechunk" in str(k[0]) for k in dict(lazy[1].__dask_graph__()))
    for g, w in zip(_compute(*lazy), want):
        assert_close(g, w, "float64")
    # backward: h and grad_h with A's batch (grad_x has the broadcast shape), h0 broadcast over the batch
    hm, gh = want[0], rand(rng, (2, 20, 3), "float64")
    h0b = rand(rng, (3,), "float64")
    wb = parscan.matrix_linear_scan_backward(A, hm, gh, h0b)
    gb = _compute(*pdask.matrix_linear_scan_backward(A, da.from_array(hm, chunks=(1, 7, 3)),
                                                      da.from_array(gh, chunks=(1, 7, 3)), h0b))
    for g, w in zip(gb, wb):
        assert g.shape == w.shape
        _close_scaled(g, w, "float64", 40.0)


def test_matrix_complex64_dask_h0_channel_chunks_only():
    rng = _rng("matrix c64")
    B, T, n = 4, 17, 2
    x, gh = rand(rng, (B, T, n), "complex64"), rand(rng, (B, T, n), "complex64")
    A = (0.5 * rand(rng, (B, T, n, n), "complex64")).astype(np.complex64)
    h0 = rand(rng, (B, n), "complex64")
    hm = parscan.matrix_linear_scan(A, x, h0)
    ch = ((1, 3), (T,))
    lazy = [pdask.matrix_linear_scan(da.from_array(A, chunks=ch + ((n,), (n,))), da.from_array(x, chunks=ch + ((n,),)),
                                     da.from_array(h0, chunks=(ch[0], (n,)))),
            *pdask.matrix_linear_scan_backward(da.from_array(A, chunks=ch + ((n,), (n,))),
                                               da.from_array(hm, chunks=ch + ((n,),)),
                                               da.from_array(gh, chunks=ch + ((n,),)),
                                               da.from_array(h0, chunks=(ch[0], (n,))))]
    for g, w in zip(_compute(*lazy), [hm, *parscan.matrix_linear_scan_backward(A, hm, gh, h0)]):
        assert g.dtype == w.dtype
        assert_close(g, w, "complex64")


# ---- graph structure --------------------------------------------------------------------------------

def _graph(arr):
    return dict(arr.__dask_graph__())


def _tasks(arr, *inputs):
    """Tasks of ``arr``'s graph that are not tasks of ``inputs``' graphs."""
    outside = set().union(*(set(_graph(v)) for v in inputs))
    return {k: v for k, v in _graph(arr).items() if k not in outside}


class _merged:
    """The union of the graphs of ``arrays`` (None skipped), as something with a __dask_graph__."""

    def __init__(self, arrays):
        self.g = {}
        for v in arrays:
            if v is not None:
                self.g.update(_graph(v))

    def __dask_graph__(self):
        return self.g


@pytest.mark.parametrize("method", METHODS)
def test_tasks_grow_linearly_in_the_number_of_chunks(method):
    counts = []
    for nt in (8, 16, 32, 64, 128):
        x = da.zeros((3, nt * 4), chunks=(1, 4), dtype=np.float32)   # 3 channel blocks x nt time chunks
        a = da.full((3, nt * 4), 0.5, chunks=(1, 4), dtype=np.float32)
        fwd = len(_tasks(pdask.linear_scan(a, x, method=method), a, x))
        fwd_s = len(_tasks(pdask.linear_scan(0.5, x, method=method), x))  # a shared decay product
        bwd = len(_tasks(_merged(pdask.linear_scan_backward(a, x, x, np.zeros(3, np.float32), method=method)), a, x))
        mat = da.zeros((3, nt * 4, 2), chunks=(1, 4, 2), dtype=np.float32)
        matn = len(_tasks(pdask.matrix_linear_scan(np.eye(2, dtype=np.float32)[None], mat, method=method), mat))
        counts.append((nt, fwd, fwd_s, bwd, matn))
    for (n1, *c1), (n2, *c2) in zip(counts, counts[1:]):
        for u, v in zip(c1, c2):
            per_chunk = (v - u) / (3 * (n2 - n1))  # tasks per extra chunk and block of channels
            assert per_chunk <= 6, counts  # the backward: h's slice, the call, grad_x, a pair, a link, grad_a
    # linear: the same increment per chunk at every size
    inc = [[(v - u) / (n2 - n1) for u, v in zip(c1, c2)] for (n1, *c1), (n2, *c2) in zip(counts, counts[1:])]
    assert all(i == inc[0] for i in inc), inc


def _deps_on(graph, keys, skip=()):
    """For each key in ``keys``: how many tasks of ``graph`` (but those in ``skip``) read it."""
    readers = {k: 0 for k in keys}
    skip = set(skip)
    for k in graph:
        if k in skip:
            continue
        for d in get_dependencies(graph, k):
            if d in readers:
                readers[d] += 1
    return readers


@pytest.mark.parametrize("method", METHODS)
def test_each_chunk_is_read_at_most_twice_and_never_gathered(method):
    x = da.random.default_rng(0).standard_normal((4, 64), chunks=(2, 8)).astype(np.float32)
    a = da.random.default_rng(1).uniform(0.5, 0.9, (4, 64), chunks=(2, 8)).astype(np.float32)
    for av in (a, a[:, :1], 0.9):
        h = pdask.linear_scan(av, x, method=method)
        g = _graph(h)
        xkeys = [k for row in x.__dask_keys__() for k in row]
        akeys = [k for row in a.__dask_keys__() for k in row]
        reads = _deps_on(g, xkeys + (akeys if av is a else []))
        assert max(reads.values()) <= 2, reads
        for k in _tasks(h, a, x):  # no task reads more than one chunk of x, or of a
            deps = get_dependencies(g, k)
            assert len(deps & set(xkeys)) <= 1 and len(deps & set(akeys)) <= 1
        ga, gx, _ = pdask.linear_scan_backward(av, h, x, method=method)
        gb = _merged([ga, gx]).__dask_graph__()
        hkeys = [k for row in h.__dask_keys__() for k in row]
        reads = _deps_on(gb, hkeys + xkeys + (akeys if av is a else []), skip=g)  # the backward's own reads
        assert max(reads.values()) <= 2, reads  # h: its chunk's call and the next chunk's h0 (one slice)
        for k in set(gb) - set(g):
            deps = get_dependencies(gb, k)
            assert len(deps & set(hkeys)) <= 1 and len(deps & set(xkeys)) <= 1


# ---- errors -----------------------------------------------------------------------------------------

def test_errors_name_the_argument_and_the_fix():
    x = da.zeros((4, 10), chunks=(2, 5), dtype=np.float32)
    with pytest.raises(TypeError, match="x has an integer dtype"):
        pdask.linear_scan(0.5, da.zeros((4, 10), chunks=2, dtype=np.int32))
    with pytest.raises(TypeError, match="a is a bool"):
        pdask.linear_scan(True, x)
    with pytest.raises(ValueError, match=r"a has shape \(3, 10\), which does not broadcast to \(4, 10\)"):
        pdask.linear_scan(da.ones((3, 10), chunks=(3, 5), dtype=np.float32), x)
    with pytest.raises(ValueError, match=r"a is chunked \(5, 5\) along its axis 1 but x is chunked"):
        pdask.linear_scan(da.ones((4, 10), chunks=(2, 5), dtype=np.float32), x.rechunk((2, (3, 7))))
    with pytest.raises(ValueError, match=r"a.rechunk\(\(\(2, 2\), \(3, 7\)\)\)"):
        pdask.linear_scan(da.ones((4, 10), chunks=(2, 5), dtype=np.float32), x.rechunk((2, (3, 7))))
    x1 = da.zeros(29, chunks=((7, 1, 10, 3, 8),), dtype=np.float32)  # 1-D: a one-element tuple of chunks
    with pytest.raises(ValueError, match=r"pass a.rechunk\(\(\(7, 1, 10, 3, 8\),\)\) \(or rechunk x"):
        pdask.linear_scan(da.ones(29, chunks=10, dtype=np.float32), x1)
    rechunked = da.ones(29, chunks=10, dtype=np.float32).rechunk(((7, 1, 10, 3, 8),))  # the fix it names works
    assert pdask.linear_scan(rechunked, x1).chunks == x1.chunks
    with pytest.raises(ValueError, match="h0 has shape"):
        pdask.linear_scan(0.5, x, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="h0 is chunked"):
        pdask.linear_scan(0.5, x, da.zeros(4, chunks=1, dtype=np.float32))
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        pdask.linear_scan(0.5, x, axis=2)
    with pytest.raises(ValueError, match="method must be 'scan' or 'sequential'"):
        pdask.linear_scan(0.5, x, method="blelloch")
    with pytest.raises(TypeError, match="x must be an array"):
        pdask.linear_scan(0.5, 3.0)
    with pytest.raises(ValueError, match="grad_h has shape"):
        pdask.linear_scan_backward(0.5, x, x[:, :5])
    with pytest.raises(ValueError, match=r"grad_h is chunked .* grad_h.rechunk\(h.chunks\)"):
        pdask.linear_scan_backward(0.5, x, x.rechunk(4))
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        pdask.linear_scan(0.5, x[x[:, 0] > 0])
    m = da.zeros((5, 3), chunks=(5, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=r"must be one chunk: pass x.rechunk\(\{1: -1\}\)"):
        pdask.matrix_linear_scan(np.eye(3, dtype=np.float32)[None], m)
    big = matrix_launch.MAX_N + 1
    with pytest.raises(ValueError, match=f"n = {big} is more than the"):
        pdask.matrix_linear_scan(da.zeros((1, big, big), chunks=-1), da.zeros((5, big), chunks=-1))
    with pytest.raises(ValueError, match="leading dims of A"):
        pdask.matrix_linear_scan(np.zeros((2, 1, 3, 3)), da.zeros((3, 5, 3), chunks=-1))
    with pytest.raises(ValueError, match=r"A must have shape \(..., T, n, n\) or \(..., 1, n, n\) with n = 3 and T = 5"
                                         r", got \(2, 3, 3\)"):
        pdask.matrix_linear_scan(np.zeros((2, 3, 3)), da.zeros((5, 3), chunks=-1))
    with pytest.raises(ValueError, match=r"h0 is chunked \(1, 1\) along its axis 0 but A is chunked \(2,\)"):
        pdask.matrix_linear_scan(da.zeros((2, 1, 3, 3), chunks=(2, 1, 3, 3)), da.zeros((5, 3), chunks=-1),
                                 da.zeros((2, 3), chunks=(1, 3)))
    with pytest.raises(ValueError, match="grad_h has shape"):
        pdask.matrix_linear_scan_backward(np.zeros((1, 3, 3)), m, m[:4])


def test_docstring_examples_run():
    with dask.config.set(SYNC):
        result = doctest.testmod(pdask, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 7 and result.failed == 0


def test_xarray_apply_ufunc_ema():
    xr = pytest.importorskip("xarray")
    rng = _rng("xarray")
    data = rng.standard_normal((3, 500)).astype(np.float32)
    arr = xr.DataArray(data, dims=("sensor", "time")).chunk({"time": 128})
    alpha = 0.1
    ema = xr.apply_ufunc(lambda v: pdask.linear_scan(1 - alpha, alpha * v, axis=-1), arr,
                         input_core_dims=[["time"]], output_core_dims=[["time"]], dask="allowed")
    assert ema.chunks == arr.chunks
    with dask.config.set(SYNC):
        got = ema.values
    assert_close(got, reference.linear_scan(np.float32(1 - alpha), alpha * data), "float32")


# ---- the benchmark suite runs end to end (timings recorded, never asserted) -----------------------------

def test_bench_suite_runs(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    from parscan import bench

    monkeypatch.setattr(bench.dask_suite, "_configs", lambda quick: [(2**14, 8)])
    meta, rows, skipped = bench.run(["dask"], quick=True, out=str(tmp_path), repeats=2, progress=False)
    names = {r["name"] for r in rows}
    assert names == {"dask.array.cumsum", "parscan.dask sequential", "parscan.dask scan",
                     "parscan.linear_scan in memory"}
    assert all(r["s"] > 0 and r["melem_s_per_thread"] > 0 for r in rows)
    assert all(r["vs_cumsum"] > 0 and r["vs_in_memory"] > 0 for r in rows if r["name"].startswith("parscan.dask"))
    mem = [r for r in rows if r["name"] == "parscan.linear_scan in memory"]
    assert all(r["threads"] >= 1 and r["workers"] == 0 for r in mem)
    assert "## dask" in (tmp_path / "bench.md").read_text()


# ---- on a LocalCluster of worker processes ------------------------------------------------------------

@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    # managed memory spills to disk above 40% of the limit; the RSS-based spill, pause and terminate
    # thresholds are off, because a worker's interpreter alone weighs more than this small limit (what
    # would catch a gather, a task result far larger than a chunk, is checked by the scheduler plugin)
    with dask.config.set({"distributed.worker.memory.target": 0.4, "distributed.worker.memory.spill": False,
                          "distributed.worker.memory.pause": False, "distributed.worker.memory.terminate": False,
                          "distributed.comm.timeouts.connect": "30s"}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           memory_limit="16MiB", dashboard_address=None,
                                           silence_logs=logging.ERROR, env={"NUMBA_NUM_THREADS": "1"})
        c = distributed.Client(cluster, timeout=60)
    try:
        yield c
    finally:
        c.close(timeout=30)
        cluster.close(timeout=30)


def _blocks(client, arr):
    """The blocks of ``arr`` gathered one by one (no worker ever holds the whole array)."""
    from distributed import wait

    futs = client.compute(arr.to_delayed().ravel().tolist())
    wait(futs, timeout=120)
    parts = client.gather(futs)
    nb = arr.numblocks
    return np.block(np.array(parts, dtype=object).reshape(nb).tolist()) if arr.ndim > 1 else np.concatenate(parts)


def test_distributed_processes_forward_backward_and_matrix(client):
    rng = _rng("distributed")
    chunks = ((3, 2), (40, 7, 1, 52))
    x = rand(rng, (5, 100), "float64")
    a = rand(rng, (5, 100), "float64", "a")
    gh = rand(rng, (5, 100), "float64")
    xd, ad = da.from_array(x, chunks=chunks), da.from_array(a, chunks=chunks)
    h = pdask.linear_scan(ad, xd, 1.0, reverse=True)
    assert_close(_blocks(client, h), reference.linear_scan(a, x, 1.0, reverse=True), "float64")
    hm = parscan.linear_scan(a, x, 1.0, reverse=True)
    hd, ghd = da.from_array(hm, chunks=chunks), da.from_array(gh, chunks=chunks)
    ga, gx, gh0 = pdask.linear_scan_backward(a[:, :1], hd, ghd, np.ones(5), reverse=True, method="sequential")
    want = parscan.linear_scan_backward(a[:, :1], hm, gh, np.ones(5), reverse=True)
    for got, w in zip((_blocks(client, ga), _blocks(client, gx), client.compute(gh0).result(timeout=60)), want):
        assert_close(got, w, "float64")
    xm = rand(rng, (60, 2), "float32")
    A = (rand(rng, (60, 2, 2), "float32") * 0.5).astype(np.float32)
    hmat = pdask.matrix_linear_scan(da.from_array(A, chunks=(16, 2, 2)), da.from_array(xm, chunks=(16, 2)))
    assert_close(_blocks(client, hmat), parscan.matrix_linear_scan(A, xm), "float32")


try:
    from distributed.diagnostics.plugin import SchedulerPlugin
except ImportError:  # pragma: no cover - the distributed tests are skipped then
    SchedulerPlugin = object


class _Largest(SchedulerPlugin):
    """A scheduler plugin: the largest result (``TaskState.nbytes``) of any task whose key starts with
    ``prefix``, as the scheduler sees them go to memory."""

    name = "parscan-test-largest"

    def __init__(self, prefix):
        self.prefix, self.largest, self.count = prefix, 0, 0

    async def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        name = key[0] if isinstance(key, tuple) else key
        if finish == "memory" and str(name).startswith(self.prefix):
            ts = self.scheduler.tasks.get(key)
            if ts is not None:
                self.largest = max(self.largest, ts.nbytes)
                self.count += 1


def _disk_writes(dask_worker):
    """How many times this worker has written a key to disk (spilled), ever."""
    return dask_worker.data.cumulative_metrics[("disk-write", "count")]


def test_data_larger_than_a_worker_memory_limit(client):
    """2^23 float32 (32 MiB) and its scan (32 MiB more) on workers of 16 MiB: Dask spills during the scan,
    the scan completes, and no parscan task's result is bigger than one 2 MiB chunk (a gather, or a
    hidden rechunk, would make a 32 MiB one)."""
    from distributed import wait

    x = da.random.default_rng(0).standard_normal(2**23, chunks=2**19, dtype=np.float32)
    x = x.persist()
    wait(x, timeout=120)
    chunk = 2**19 * 4
    limits = client.run(lambda dask_worker: dask_worker.memory_manager.memory_limit)
    assert sum(limits.values()) < 2 * x.nbytes  # x and h together do not fit in the workers' memory
    client.register_plugin(_Largest("parscan-"))
    try:
        spilled = client.run(_disk_writes)
        h = pdask.linear_scan(0.999, x)
        got = _blocks(client, h)
        after = client.run(_disk_writes)
        largest, count = client.run_on_scheduler(
            lambda dask_scheduler: (dask_scheduler.plugins[_Largest.name].largest,
                                    dask_scheduler.plugins[_Largest.name].count))
    finally:
        client.unregister_scheduler_plugin(_Largest.name)
    assert count >= 2 * h.numblocks[0] - 2  # the plugin saw the scan's tasks
    assert chunk <= largest <= chunk + 4096, (largest, chunk)
    assert sum(after.values()) > sum(spilled.values()), (spilled, after)  # spilled while the scan ran
    want = parscan.linear_scan(0.999, _blocks(client, x))
    assert_close(got, want, "float32")


# ---- CuPy chunks (GPU suite) ------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "complex64", "float64", "complex128"])
def test_cupy_chunks(dtype):
    _cupy_chunks(pytest.importorskip("cupy"), dtype)


@pytest.mark.parametrize("dtype", ["float32", "complex128"])
def test_cupy_chunks_on_the_cpu_harness(dtype):
    """The same cases with the CPU harness's stand-in ``cupy`` (tests/cuda_cpu): CuPy-typed chunks, and
    every chunk call runs the ``cupy`` backend's own launch code and the CUDA C kernels of scan.cu
    (elementwise and matrix) on the CPU, no GPU needed."""
    import cuda_cpu

    with cuda_cpu.installed() as cp:
        _cupy_chunks(cp, dtype)
        names = {launch.name.split("<")[0] for launch in cuda_cpu.launches()}
    assert {"scan_kernel", "matrix_pass"} <= names, names


def _cupy_chunks(cp, dtype):
    """CuPy chunks (x, a, h0, the matrix scan's A and x) against the in-memory scans on NumPy."""
    rng = _rng("cupy", dtype)
    chunks = ((2, 2), (7, 1, 10, 11))
    x, a, gh = rand(rng, (4, 29), dtype), rand(rng, (4, 29), dtype, "a"), rand(rng, (4, 29), dtype)
    h0 = rand(rng, (4,), dtype)
    xd = da.from_array(cp.asarray(x), chunks=chunks)
    cases = [(da.from_array(cp.asarray(a), chunks=chunks), a, 0.5, 0.5),
             (0.9, 0.9, da.from_array(cp.asarray(h0), chunks=(chunks[0],)), h0),          # scalar a, Dask h0
             (da.from_array(cp.asarray(a[:, :1]), chunks=(chunks[0], (1,))), a[:, :1], None, None)]  # per channel
    for reverse in (False, True):
        for ap, am, hp, hm in cases:
            h = pdask.linear_scan(ap, xd, hp, reverse=reverse)
            assert isinstance(h._meta, cp.ndarray)
            want = parscan.linear_scan(am, x, hm, reverse=reverse)
            assert_close(cp.asnumpy(_compute(h)[0]), want, dtype)
            rs = pdask.linear_scan_backward(ap, da.from_array(cp.asarray(want), chunks=chunks),
                                            da.from_array(cp.asarray(gh), chunks=chunks), hp, reverse=reverse)
            wb = parscan.linear_scan_backward(am, want, gh, hm, reverse=reverse)
            for g, w in zip(_compute(*[r for r in rs if r is not None]), [w for w in wb if w is not None]):
                _close_scaled(cp.asnumpy(g), w, dtype, 0.0 if np.shape(w) == x.shape else 100.0)  # 100: summed
    mdt = "float64" if dtype in ("float64", "complex128") else "float32"
    xm = rand(rng, (2, 30, 3), mdt)
    for A in ((rand(rng, (2, 30, 3, 3), mdt) * 0.4).astype(mdt), (rand(rng, (1, 1, 3, 3), mdt) * 0.4).astype(mdt)):
        for reverse in (False, True):
            Ad = da.from_array(cp.asarray(A), chunks=(1, 8 if A.shape[1] > 1 else 1, 3, 3))
            hmat = pdask.matrix_linear_scan(Ad, da.from_array(cp.asarray(xm), chunks=(1, 8, 3)), reverse=reverse)
            want = parscan.matrix_linear_scan(A, xm, reverse=reverse)
            assert_close(cp.asnumpy(_compute(hmat)[0]), want, mdt)
