"""The plan cache: hits replay the plan, a changed signature never gets a stale one, many threads at once."""

import threading

import numpy as np
import pytest

import parscan
from parscan import _plans, reference
from parscan._arrays import as_operand
from parscan._problem import plan_forward
from conftest import HOST_BACKENDS, assert_close, rand


@pytest.fixture(autouse=True)
def fresh_cache():
    _plans.clear()
    yield
    _plans.clear()


def test_a_repeated_signature_hits_and_new_data_is_used():
    rng = np.random.default_rng(0)
    x1, x2 = rand(rng, (3, 40), "float32"), rand(rng, (3, 40), "float32")
    h1 = parscan.linear_scan(0.9, x1)
    assert _plans.FORWARD.misses == 1 and len(_plans.FORWARD) == 1
    h2 = parscan.linear_scan(0.7, x2)
    assert _plans.FORWARD.hits == 1
    assert_close(h1, reference.linear_scan(0.9, x1), "float32")
    assert_close(h2, reference.linear_scan(0.7, x2), "float32")  # the new scalar and the new data
    gh = rand(rng, (3, 40), "float32")
    for a, h in ((0.9, h1), (0.7, h2)):
        got = parscan.linear_scan_backward(a, h, gh)
        for g, w in zip(got[:2], reference.linear_scan_backward(a, h, gh)[:2]):
            assert_close(g, w, "float32")
    assert _plans.BACKWARD.hits == 1


def _variants(rng):
    """Calls whose signatures differ from their predecessor's in one respect each."""
    x = rand(rng, (4, 6, 50), "float64")
    a = rand(rng, (6, 1), "float64", "a")
    yield dict(a=a, x=x)
    yield dict(a=a, x=np.asfortranarray(x))                      # strides
    yield dict(a=a, x=x[:, :, ::-1])                             # negative strides
    yield dict(a=a.astype(np.float32), x=x.astype(np.float32))  # dtypes
    yield dict(a=a, x=x.astype(np.float32))                     # mixed dtypes: promotes to float64
    yield dict(a=np.float32(0.5), x=x.astype(np.float32))       # NumPy scalar (not weak)
    yield dict(a=0.5, x=x.astype(np.float32))                   # Python scalar (weak)
    yield dict(a=a, x=x, axis=1)                                # axis
    yield dict(a=a, x=x, reverse=True)                          # direction
    yield dict(a=a, x=x, h0=rand(rng, (4, 6), "float64"))       # h0
    yield dict(a=a, x=x, h0=rand(rng, (6,), "float64"))         # h0 broadcast
    yield dict(a=a, x=x, out=np.empty((4, 6, 50)))             # out
    xc = x.copy()
    yield dict(a=a, x=xc, out=xc)                               # out aliasing x: in place
    yield dict(a=a, x=x, out=np.empty((4, 6, 50), order="F"))  # out strides
    yield dict(a=a, x=x, backend="reference")                   # backend


def test_no_stale_plan_when_the_signature_changes():
    rng = np.random.default_rng(1)
    cases = list(_variants(rng))
    for _ in range(2):  # second round: every signature is cached; the order still alternates them
        for kw in cases:
            kw = dict(kw)
            a, x = kw.pop("a"), kw.pop("x")
            x_before = np.array(x)
            h0, out = kw.get("h0"), kw.get("out")
            want = reference.linear_scan(a, x_before, h0, axis=kw.get("axis", -1), reverse=kw.get("reverse", False))
            h = parscan.linear_scan(a, x, **kw)
            assert h.dtype == np.result_type(*(v for v in (a, x_before, h0) if v is not None))
            if out is not None:
                assert h is out
            assert_close(h, want, h.dtype)
    assert _plans.FORWARD.hits >= len(cases) - 1


def test_an_overlapping_out_is_refused_on_a_cached_signature():
    x = np.ones((2, 30))
    buf = np.zeros(90)
    ok = buf[:60].reshape(2, 30)
    parscan.linear_scan(0.5, x, out=ok)
    other = np.ones((2, 30))
    with pytest.raises(ValueError, match="overlaps an input"):
        # the same signature as (x, out=ok), but out now partly overlaps x's memory
        big = np.zeros(75)
        xx, oo = big[:60].reshape(2, 30), big[15:75].reshape(2, 30)
        xx[...] = other
        parscan.linear_scan(0.5, xx, out=oo)


def test_a_cached_plan_keeps_the_argument_checks():
    parscan.linear_scan(0.5, np.ones((2, 8), np.float32))
    with pytest.raises(TypeError, match="integer"):
        parscan.linear_scan(0.5, np.ones((2, 8), np.int32))
    with pytest.raises(ValueError, match="out of range"):
        parscan.linear_scan(0.5, np.ones((2, 8), np.float32), axis=2)
    ro = np.ones((2, 8), np.float32)
    ro.flags.writeable = False
    parscan.linear_scan(0.5, np.ones((2, 8), np.float32), out=np.empty((2, 8), np.float32))
    with pytest.raises(ValueError, match="read-only"):
        parscan.linear_scan(0.5, np.ones((2, 8), np.float32), out=ro)


def test_the_cache_is_bounded():
    lru = _plans.LRU(maxsize=3)
    for k in range(5):
        lru.put(k, k)
    assert len(lru) == 3 and lru.get(0) is None and lru.get(4) == 4
    lru.get(2)  # used: 3 is now the least recently used
    lru.put(5, 5)
    assert lru.get(3) is None and lru.get(2) == 2 and lru.get(4) == 4 and lru.get(5) == 5


def test_many_threads_mixed_signatures_and_backends():
    """16 threads call forward and backward on mixed shapes, dtypes, layouts and backends at once, each
    checking every result against the reference."""
    errors = []
    start = threading.Barrier(16)

    def work(tid):
        rng = np.random.default_rng(tid)
        start.wait()
        try:
            for k in range(25):
                dt = ["float32", "float64", "complex64"][(tid + k) % 3]
                shape = [(3, 70), (70, 3), (2, 4, 33), (5,)][(tid * 7 + k) % 4]
                axis = 0 if shape == (70, 3) else -1
                x = rand(rng, shape, dt)
                if k % 2:
                    x = np.asfortranarray(x)
                a = 0.8 if k % 3 == 0 else rand(rng, shape, dt, "a")
                backend = HOST_BACKENDS[(tid + k) % len(HOST_BACKENDS)]
                h = parscan.linear_scan(a, x, axis=axis, backend=backend)
                assert_close(h, reference.linear_scan(a, x, axis=axis), dt)
                gh = rand(rng, shape, dt)
                got = parscan.linear_scan_backward(a, h, gh, axis=axis, backend=backend)
                want = reference.linear_scan_backward(a, h, gh, axis=axis)
                assert_close(got[1], want[1], dt)
        except Exception as exc:  # noqa: BLE001 - reported below with the thread's id
            errors.append((tid, repr(exc)))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert _plans.FORWARD.hits > 100


@pytest.mark.parametrize("a_kind", ["full", "channel", "scalar"])
def test_backward_out_is_replayed_into_the_given_arrays(a_kind):
    """linear_scan_backward(..., out=...) is cached like the plain call: a replay writes grad_x (and a
    full grad_a) into the arrays of the new call, copies the others in, and checks overlaps again."""
    rng = np.random.default_rng(2)
    shape = (3, 5, 60)
    a_shape = {"full": shape, "channel": (5, 1), "scalar": ()}[a_kind]
    for k in range(3):  # planned, then replayed twice with new data and new outputs
        x, gh = rand(rng, shape, "float64"), rand(rng, shape, "float64")
        a = 0.8 if a_kind == "scalar" else rand(rng, a_shape, "float64", "a")
        h0 = rand(rng, (3, 5), "float64")
        h = parscan.linear_scan(a, x, h0)
        outs = (None if a_kind == "scalar" else np.full(a_shape, np.nan), np.full(shape, np.nan),
                np.full((3, 5), np.nan))
        got = parscan.linear_scan_backward(a, h, gh, h0, out=outs)
        want = reference.linear_scan_backward(a, h, gh, h0)
        assert got[1] is outs[1] and got[2] is outs[2] and (outs[0] is None or got[0] is outs[0])
        for g, w in zip(got, want):
            assert_close(g, w, "float64")
    assert _plans.BACKWARD.hits == 2 and _plans.BACKWARD.misses == 1
    with pytest.raises(ValueError, match="overlaps an input"):  # the same signature, out over h this time
        parscan.linear_scan_backward(a, h, gh, h0, out=(outs[0], h, outs[2]))
    assert np.array_equal(h, parscan.linear_scan(a, x, h0))  # and h was not written


def test_many_threads_under_numbas_workqueue_layer():
    """Numba's workqueue threading layer (where neither TBB nor OpenMP is installed) aborts the process
    when two threads launch parallel kernels at once: the cpu backend's parallel launches (and the matrix
    scan's) take a lock under it, so many threads calling at once still get every result right."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import threading, numpy as np, numba, parscan
        from parscan import reference
        rng = np.random.default_rng(0)
        x = rng.standard_normal((4, 2**15)); a = rng.uniform(0.5, 1, (4, 1))
        xm = rng.standard_normal((64, 300, 2)); A = 0.4 * rng.standard_normal((64, 1, 2, 2))
        want, wantm = reference.linear_scan(a, x), parscan.matrix_linear_scan(A, xm, backend="reference")
        errors, start = [], threading.Barrier(4)
        def work():
            start.wait()
            try:
                for _ in range(6):
                    assert np.allclose(parscan.linear_scan(a, x), want)
                    assert np.allclose(parscan.linear_scan_backward(a, want, x)[1], reference.linear_scan_backward(a, want, x)[1])
                    assert np.allclose(parscan.matrix_linear_scan(A, xm), wantm)
            except Exception as e:
                errors.append(repr(e))
        ts = [threading.Thread(target=work) for _ in range(4)]
        [t.start() for t in ts]; [t.join() for t in ts]
        assert not errors, errors[:2]
        assert numba.threading_layer() == "workqueue", numba.threading_layer()
        print("ok")
    """)
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), (r.returncode, r.stdout[-2000:], r.stderr[-2000:])


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_layouts_run_as_parts_are_replayed_on_new_data(backend):
    """A layout of more than three channel groups (flipped axes of a 5-D x: four groups) runs as parts;
    its plan replays every part on a later call's buffers (forward, out=, backward with h0 and a
    per-channel decay), and the results are the reference's."""
    rng = np.random.default_rng(11)
    a = rand(rng, (3, 1, 4, 1), "float64", "a")
    h0 = rand(rng, (2, 3, 2, 4), "float64")
    for k in range(3):
        x = rand(rng, (2, 3, 2, 4, 300), "float64")[::-1, :, ::-1]
        gh = rand(rng, (2, 3, 2, 4, 300), "float64")[:, ::-1, :, ::-1]
        out = np.empty((2, 3, 2, 4, 300))[::-1, ::-1]
        h = parscan.linear_scan(a, x, h0, backend=backend)
        parscan.linear_scan(a, x, h0, out=out, backend=backend)
        got = parscan.linear_scan_backward(a, h, gh, h0, backend=backend)
        want = reference.linear_scan(a, x, h0)
        if k == 0:
            p = plan_forward(np, *(as_operand(v, n, allow_scalar=True) for v, n in ((a, "a"), (x, "x"), (h0, "h0"))),
                             None, -1, False)[0]
            assert p.outer == (2,)
        assert_close(h, want, "float64")
        assert_close(out, want, "float64")
        for g, w in zip(got, reference.linear_scan_backward(a, want, gh, h0)):
            assert_close(g, w, "float64")
    assert _plans.FORWARD.hits == 4 and _plans.BACKWARD.hits == 2
