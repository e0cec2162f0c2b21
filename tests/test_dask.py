"""parscan.dask: scans over Dask arrays equal the in-memory API (and the float64 reference) across
chunkings, dtypes, directions, broadcasts and h0; the graph is linear in the number of chunks and reads
each chunk at most twice; the same on a LocalCluster of worker processes, including a run whose data
exceed a worker's memory limit."""

import doctest
import logging

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

# (C, T) chunkings of a (4, 29) array with time last: one chunk, uneven time chunks, chunks of one
# step, channel chunks, both
CHUNKINGS = {
    "one": ((4,), (29,)),
    "time": ((4,), (7, 1, 10, 3, 8)),
    "steps": ((4,), (1,) * 29),
    "channels": ((1, 3), (29,)),
    "both": ((2, 2), (5, 11, 13)),
}


def _compute(*arrays):
    with dask.config.set(SYNC):
        return dask.compute(*arrays)


def _tol(dtype):
    return TOL[np.dtype(dtype).name]


def _close(got, want, dtype):
    """The result's dtype is ``dtype`` and its values are ``want``'s within that dtype's tolerance."""
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    assert_close(got, want, dtype)


# ---- forward ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_equals_in_memory_and_reference(chunking, dtype, reverse):
    rng = np.random.default_rng(hash((chunking, dtype, reverse)) % 2**32)
    chunks = CHUNKINGS[chunking]
    x = rand(rng, (4, 29), dtype)
    a = rand(rng, (4, 29), dtype, "a")
    h0 = rand(rng, (4,), dtype)
    xd = da.from_array(x, chunks=chunks)
    cases = [  # (a as passed, a in memory, h0 as passed, h0 in memory)
        (da.from_array(a, chunks=chunks), a, None, None),
        (da.from_array(a, chunks=chunks), a, da.from_array(h0, chunks=(chunks[0],)), h0),
        (a[:, :1], a[:, :1], 0.5, 0.5),             # per-channel decay, in memory; weak scalar h0
        (0.9, 0.9, h0, h0),                         # weak scalar decay; in-memory h0
        (a[:1], a[:1], None, None),                 # decay broadcast over channels, in memory
    ]
    results = [pdask.linear_scan(ap, xd, hp, reverse=reverse) for ap, _, hp, _ in cases]
    for r in results:
        assert isinstance(r, da.Array) and r.chunks == xd.chunks
    for got, (_, am, _, hm) in zip(_compute(*results), cases):
        want = parscan.linear_scan(am, x, hm, reverse=reverse)
        _close(got, want, want.dtype)
        assert_close(got, reference.linear_scan(am, x, hm, reverse=reverse), dtype)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_forward_any_axis_3d(axis):
    rng = np.random.default_rng(axis + 5)
    shape, chunks = (5, 6, 7), ((2, 3), (1, 5), (3, 4))
    x = rand(rng, shape, "float32")
    a_shape = tuple(n if d == axis % 3 else 1 for d, n in enumerate(shape))  # constant in time... per axis
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


def test_methods_agree_and_unequal_chunks_of_one():
    rng = np.random.default_rng(1)
    x = rand(rng, (3, 40), "float64")
    a = rand(rng, (3, 40), "float64", "a")
    chunks = ((3,), (1, 1, 5, 1, 9, 2, 1, 1, 12, 3, 4))
    seq, tree = (pdask.linear_scan(da.from_array(a, chunks=chunks), da.from_array(x, chunks=chunks), 1.0,
                                   method=m) for m in ("sequential", "blelloch"))
    want = reference.linear_scan(a, x, 1.0)
    for got in _compute(seq, tree):
        assert_close(got, want, "float64")


@pytest.mark.parametrize("a, x_dtype, h0", [
    (0.5, "float16", None),                    # weak Python scalar keeps float16
    (np.float64(0.5), "float32", None),        # a NumPy scalar is not weak: float64
    (0.5, "float32", 1j),                      # weak complex h0: complex64
    ("float64", "float32", None),              # a Dask float64 decay: float64
    ("complex64", "float64", None),            # complex64 with float64: complex128
    ("float16", "float16", np.float32(1.0)),   # a float32 h0 widens float16 data
])
def test_dtype_promotion_is_the_in_memory_one(a, x_dtype, h0):
    rng = np.random.default_rng(2)
    x = rand(rng, (2, 9), x_dtype)
    am = rand(rng, (2, 9), a, "a") if isinstance(a, str) else a
    ap = da.from_array(am, chunks=(1, 4)) if isinstance(a, str) else a
    got = pdask.linear_scan(ap, da.from_array(x, chunks=(1, 4)), h0)
    want = parscan.linear_scan(am, x, h0)
    assert got.dtype == want.dtype
    _close(_compute(got)[0], want, want.dtype)


def test_in_memory_x_takes_the_chunks_of_a_dask_decay_and_inputs_are_unmodified():
    rng = np.random.default_rng(3)
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


# ---- backward ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_backward_equals_in_memory_and_reference(chunking, dtype, reverse):
    rng = np.random.default_rng(hash((chunking, dtype, reverse, "b")) % 2**32)
    chunks = CHUNKINGS[chunking]
    x = rand(rng, (4, 29), dtype)
    gh = rand(rng, (4, 29), dtype)
    a = rand(rng, (4, 29), dtype, "a")
    h0 = rand(rng, (4,), dtype)
    cases = [  # (a, h0) in memory; the Dask call gets Dask arrays where shapes allow
        (a, h0),
        (a, None),
        (a[:, :1], 0.5),   # per-channel decay (summed over time blocks), weak scalar h0
        (0.9, h0[:1]),     # weak scalar decay (summed over everything), h0 broadcast over channels
        (a[:1], None),     # decay broadcast over channels (summed over channel blocks)
    ]
    calls = []
    for am, hm in cases:
        h = parscan.linear_scan(am, x, hm, reverse=reverse)
        ap = da.from_array(am, chunks=chunks) if np.shape(am) == x.shape else am
        hp = da.from_array(hm, chunks=(chunks[0],)) if np.shape(hm) == (4,) else hm
        hd, ghd = da.from_array(h, chunks=chunks), da.from_array(gh, chunks=chunks)
        calls.append((h, pdask.linear_scan_backward(ap, hd, ghd, hp, reverse=reverse)))
    got = _compute(*[r for _, rs in calls for r in rs if r is not None])
    k = 0
    for (am, hm), (h, rs) in zip(cases, calls):
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


def _terms(v, is_a, h, gh, am, hm, reverse, axis=-1):
    """The sum of |terms| behind a gradient summed over the dims ``v`` (a or h0) was broadcast along
    (its rounding is relative to them, not to the sum, as in test_equivalence); 0 where nothing is summed."""
    chan = tuple(np.delete(h.shape, axis % h.ndim))
    if np.shape(v) == (h.shape if is_a else chan):
        return 0.0
    full = reference.linear_scan_backward(np.broadcast_to(am, h.shape), h, gh,
                                          None if hm is None else np.broadcast_to(hm, chan), reverse=reverse, axis=axis)
    return float(reference._sum_to(np.abs(full[0 if is_a else 2]), np.shape(v)).max())


def _close_scaled(got, want, dtype, terms):
    """Within ``dtype``'s tolerance of the largest of 1, |want| and ``terms``."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    scale = max(1.0, float(np.max(np.abs(want))) if want.size else 0.0, terms)
    err = float(np.max(np.abs(got.astype(want.dtype) - want))) if want.size else 0.0
    assert err <= TOL[np.dtype(dtype).name] * scale, f"max error {err:.3g} > {TOL[np.dtype(dtype).name] * scale:.3g}"


def test_backward_any_axis_and_mixed_layout():
    rng = np.random.default_rng(7)
    shape, chunks = (6, 5, 8), ((4, 2), (2, 3), (8,))
    x = rand(rng, shape, "complex128")
    gh = rand(rng, shape, "complex128")
    a = rand(rng, (6, 1, 8), "float64", "a")     # real decay, constant along axis 1 (time)
    h0 = rand(rng, (6, 8), "complex128")
    h = parscan.linear_scan(a, x, h0, axis=1)
    rs = pdask.linear_scan_backward(da.from_array(a, chunks=((4, 2), (1,), (8,))), da.from_array(h, chunks=chunks),
                                    da.from_array(gh, chunks=chunks), da.from_array(h0, chunks=((4, 2), (8,))),
                                    axis=1, method="blelloch")
    want = parscan.linear_scan_backward(a, h, gh, h0, axis=1)
    for g, w in zip(_compute(*rs), want):
        assert g.dtype == w.dtype  # a real decay's gradient is real
        assert_close(g, w, "complex128")


# ---- matrix scan ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64", "complex128", "float16"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("a_time", ["full", "constant"])
def test_matrix_scan_equals_in_memory(dtype, reverse, a_time):
    rng = np.random.default_rng(11)
    B, T, n = 3, 21, 3
    x = rand(rng, (B, T, n), dtype)
    A = (rand(rng, (B, T if a_time == "full" else 1, n, n), dtype) * 0.4).astype(dtype)
    h0 = rand(rng, (B, n), dtype)
    tchunks = (4, 1, 9, 7)
    xd = da.from_array(x, chunks=((1, 2), tchunks, (n,)))
    Ad = da.from_array(A, chunks=((1, 2), tchunks if a_time == "full" else (1,), (n,), (n,)))
    res = [pdask.matrix_linear_scan(Ad, xd, h0, reverse=reverse),
           pdask.matrix_linear_scan(A[:1], xd, reverse=reverse, method="blelloch")]  # A shared by the batch
    want = [parscan.matrix_linear_scan(A, x, h0, reverse=reverse),
            parscan.matrix_linear_scan(A[:1], x, reverse=reverse)]
    for g, w in zip(_compute(*res), want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert_close(g, w, dtype)
    refw = parscan.matrix_linear_scan(A, x, h0, reverse=reverse, backend="reference")
    assert_close(_compute(res[0])[0], refw, dtype)


# ---- graph structure --------------------------------------------------------------------------------

def _graph(arr):
    return dict(arr.__dask_graph__())


def _tasks(arr, *inputs):
    """Tasks of ``arr``'s graph that are not tasks of ``inputs``' graphs."""
    outside = set().union(*(set(_graph(v)) for v in inputs))
    return {k: v for k, v in _graph(arr).items() if k not in outside}


@pytest.mark.parametrize("method", ["sequential", "blelloch"])
def test_tasks_grow_linearly_in_the_number_of_chunks(method):
    counts = []
    for nt in (8, 16, 32, 64, 128):
        x = da.zeros((3, nt * 4), chunks=(1, 4), dtype=np.float32)   # 3 channel blocks x nt time chunks
        a = da.full((3, nt * 4), 0.5, chunks=(1, 4), dtype=np.float32)
        fwd = len(_tasks(pdask.linear_scan(a, x, method=method), a, x))
        bwd = len(_tasks(_merged(pdask.linear_scan_backward(a, x, x, np.zeros(3, np.float32), method=method)), a, x))
        mat = da.zeros((3, nt * 4, 2), chunks=(1, 4, 2), dtype=np.float32)
        matn = len(_tasks(pdask.matrix_linear_scan(np.eye(2, dtype=np.float32)[None], mat, method=method), mat))
        counts.append((nt, fwd, bwd, matn))
    for (n1, *c1), (n2, *c2) in zip(counts, counts[1:]):
        for u, v in zip(c1, c2):
            per_chunk = (v - u) / (3 * (n2 - n1))  # tasks per extra chunk
            assert per_chunk <= (7 if method == "blelloch" else 6), counts
    # linear: the same increment per chunk at every size (a tree adds O(1) per chunk as well)
    inc = [[(v - u) / (n2 - n1) for u, v in zip(c1, c2)] for (n1, *c1), (n2, *c2) in zip(counts, counts[1:])]
    if method == "sequential":
        assert all(i == inc[0] for i in inc), inc
    else:
        assert all(abs(i[j] - inc[-1][j]) <= 0.2 * inc[-1][j] for i in inc for j in range(3)), inc


class _merged:
    """The union of the graphs of ``arrays`` (None skipped), as something with a __dask_graph__."""

    def __init__(self, arrays):
        self.g = {}
        for v in arrays:
            if v is not None:
                self.g.update(_graph(v))

    def __dask_graph__(self):
        return self.g


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


def test_each_chunk_is_read_at_most_twice_and_never_gathered():
    x = da.random.default_rng(0).standard_normal((4, 64), chunks=(2, 8)).astype(np.float32)
    a = da.random.default_rng(1).uniform(0.5, 0.9, (4, 64), chunks=(2, 8)).astype(np.float32)
    for method in ("sequential", "blelloch"):
        h = pdask.linear_scan(a, x, method=method)
        g = _graph(h)
        xkeys = [k for row in x.__dask_keys__() for k in row]
        akeys = [k for row in a.__dask_keys__() for k in row]
        reads = _deps_on(g, xkeys + akeys)
        assert max(reads.values()) <= 2, reads
        for k in _tasks(h, a, x):  # no task reads more than one chunk of x, or of a
            deps = get_dependencies(g, k)
            assert len(deps & set(xkeys)) <= 1 and len(deps & set(akeys)) <= 1
        ga, gx, _ = pdask.linear_scan_backward(a, h, x, method=method)
        gb = _merged([ga, gx]).__dask_graph__()
        hkeys = [k for row in h.__dask_keys__() for k in row]
        reads = _deps_on(gb, hkeys + xkeys + akeys, skip=g)  # the backward's own reads
        assert max(reads.values()) <= 2, reads  # h: its chunk's call and the next chunk's h0 (one slice)


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
    with pytest.raises(ValueError, match=r"rechunk\(\(\(2, 2\), \(3, 7\)\)\)"):
        pdask.linear_scan(da.ones((4, 10), chunks=(2, 5), dtype=np.float32), x.rechunk((2, (3, 7))))
    with pytest.raises(ValueError, match="h0 has shape"):
        pdask.linear_scan(0.5, x, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="h0 is chunked"):
        pdask.linear_scan(0.5, x, da.zeros(4, chunks=1, dtype=np.float32))
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        pdask.linear_scan(0.5, x, axis=2)
    with pytest.raises(ValueError, match="method must be"):
        pdask.linear_scan(0.5, x, method="tree")
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
    with pytest.raises(ValueError, match="give x the full shape first"):
        pdask.matrix_linear_scan(np.zeros((2, 1, 3, 3)), da.zeros((5, 3), chunks=-1))


def test_docstring_examples_run():
    with dask.config.set(SYNC):
        result = doctest.testmod(pdask, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 5 and result.failed == 0


def test_xarray_apply_ufunc_ema():
    xr = pytest.importorskip("xarray")
    rng = np.random.default_rng(4)
    data = rng.standard_normal((3, 500)).astype(np.float32)
    arr = xr.DataArray(data, dims=("sensor", "time")).chunk({"time": 128})
    alpha = 0.1
    ema = xr.apply_ufunc(lambda v: pdask.linear_scan(1 - alpha, alpha * v, axis=-1), arr,
                         input_core_dims=[["time"]], output_core_dims=[["time"]], dask="allowed")
    assert ema.chunks == arr.chunks
    with dask.config.set(SYNC):
        got = ema.values
    assert_close(got, reference.linear_scan(1 - alpha, alpha * data), "float32")


# ---- the benchmark suite runs end to end (timings recorded, never asserted) -----------------------------

def test_bench_suite_runs(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    from parscan import bench

    monkeypatch.setattr(bench.dask_suite, "_configs", lambda quick: [(2**14, 8)])
    meta, rows, skipped = bench.run(["dask"], quick=True, out=str(tmp_path), repeats=2, progress=False)
    names = {r["name"] for r in rows}
    assert names == {"dask.array.cumsum", "parscan.dask sequential", "parscan.dask blelloch",
                     "parscan.linear_scan in memory"}
    assert all(r["s"] > 0 and r["melem_s_per_worker"] > 0 for r in rows)
    assert all(r["vs_cumsum"] > 0 for r in rows if r["name"].startswith("parscan.dask"))
    assert "## dask" in (tmp_path / "bench.md").read_text()


# ---- on a LocalCluster of worker processes ------------------------------------------------------------

@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    # managed memory spills to disk above 40% of the limit; the RSS-based spill, pause and terminate
    # thresholds are off, because a worker's interpreter alone weighs more than this small limit
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
    rng = np.random.default_rng(5)
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


def test_data_larger_than_a_worker_memory_limit(client):
    """2^23 float32 (32 MiB) and its scan (32 MiB more) on workers of 16 MiB: Dask spills, the scan completes."""
    from distributed import wait

    x = da.random.default_rng(0).standard_normal(2**23, chunks=2**19, dtype=np.float32)
    x = x.persist()
    wait(x, timeout=120)
    h = pdask.linear_scan(0.999, x)
    got = _blocks(client, h)
    xs = _blocks(client, x)
    want = parscan.linear_scan(0.999, xs)
    assert_close(got, want, "float32")
    spilled = client.run(lambda dask_worker: dask_worker.data.spilled_total.disk)
    assert sum(spilled.values()) > 0, spilled  # the data really did not fit: Dask spilled it
    limits = client.run(lambda dask_worker: dask_worker.memory_manager.memory_limit)
    assert 2 * x.nbytes > max(limits.values())


# ---- CuPy chunks (GPU suite) ------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "complex64"])
def test_cupy_chunks(dtype):
    cp = pytest.importorskip("cupy")
    rng = np.random.default_rng(9)
    chunks = ((2, 2), (7, 1, 10, 11))
    x, a, gh = rand(rng, (4, 29), dtype), rand(rng, (4, 29), dtype, "a"), rand(rng, (4, 29), dtype)
    xd = da.from_array(cp.asarray(x), chunks=chunks)
    ad = da.from_array(cp.asarray(a), chunks=chunks)
    h = pdask.linear_scan(ad, xd, 0.5)
    assert isinstance(h._meta, cp.ndarray)
    got = cp.asnumpy(_compute(h)[0])
    assert_close(got, parscan.linear_scan(a, x, 0.5), dtype)
    hm = parscan.linear_scan(a, x, 0.5)
    rs = pdask.linear_scan_backward(ad, da.from_array(cp.asarray(hm), chunks=chunks),
                                    da.from_array(cp.asarray(gh), chunks=chunks), cp.full(4, 0.5, dtype))
    want = parscan.linear_scan_backward(a, hm, gh, np.full(4, 0.5, dtype))
    for g, w in zip(_compute(*rs), want):
        assert_close(cp.asnumpy(g), w, dtype)
    xm = rand(rng, (2, 30, 3), "float32")
    A = (rand(rng, (2, 30, 3, 3), "float32") * 0.4).astype(np.float32)
    hmat = pdask.matrix_linear_scan(da.from_array(cp.asarray(A), chunks=(1, 8, 3, 3)),
                                    da.from_array(cp.asarray(xm), chunks=(1, 8, 3)))
    assert_close(cp.asnumpy(_compute(hmat)[0]), parscan.matrix_linear_scan(A, xm), "float32")

