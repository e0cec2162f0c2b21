"""resets (issue #18): the state restarts inside one array, on every backend that implements it.

Checked against scanning each segment separately (the reference without resets), the reference with
resets, and finite differences; packed offsets with segments of length 1 and long ones, resets at the
first and last step, per batch row, both directions, h0, every dtype; the plan cache with new reset
patterns; the helpers; the errors.  Backends that do not implement resets yet must say so.
"""

import importlib

import numpy as np
import pytest

import parscan
from parscan import reference
from conftest import DTYPES, HOST_BACKENDS, assert_close, rand


def _module(name):
    return importlib.import_module(f"parscan.{name}")


RESET_BACKENDS = [b for b in HOST_BACKENDS if getattr(_module(b), "RESETS", False)]
NO_RESET_BACKENDS = [b for b in HOST_BACKENDS if b not in RESET_BACKENDS]

OFFSETS = [0, 1, 2, 40, 41, 97, 99, 100]  # lengths 1, 1, 38, 1, 56, 2, 1: T = 100


def _per_segment(a, x, h0, starts, reverse):
    """Scan each segment of the last axis on its own (no resets): the first one from h0 when there is
    no reset at its start (forward) or end (reverse)."""
    T = x.shape[-1]
    a = np.broadcast_to(a, x.shape)
    bounds = sorted(set([0, T] + [int(s) for s in starts]))
    out = np.empty(x.shape, np.result_type(a, x, np.float64))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        first = (lo == 0 and 0 not in starts) if not reverse else (hi == T and T not in starts)
        out[..., lo:hi] = reference.linear_scan(a[..., lo:hi], x[..., lo:hi], h0 if first else None,
                                                reverse=reverse)
    return out


def _starts(resets, reverse):
    """Segment boundaries in the sense of _per_segment: a forward reset at t starts a segment at t; a
    reverse one at t ends a segment at t + 1 (the state from t + 1 is dropped)."""
    idx = np.flatnonzero(resets)
    return set(idx.tolist()) if not reverse else set((idx + 1).tolist())


@pytest.mark.parametrize("backend", RESET_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("decay", ["full", "channel", "scalar"])
def test_packed_sequences_equal_separate_scans(backend, dtype, reverse, decay):
    rng = np.random.default_rng(len(dtype) + 2 * reverse)
    x = rand(rng, (2, 3, 100), dtype)
    a = {"full": rand(rng, (2, 3, 100), dtype, "a"), "channel": rand(rng, (3, 1), dtype, "a"),
         "scalar": 0.9}[decay]
    h0 = rand(rng, (2, 3), dtype)
    resets = parscan.resets_from_offsets(OFFSETS, 100)
    resets[-1] = True  # the last step too
    for r, with_h0 in ((resets, False), (resets, True), (resets & (np.arange(100) > 0), True)):
        h = parscan.linear_scan(a, x, h0 if with_h0 else None, reverse=reverse, resets=r, backend=backend)
        want = _per_segment(np.asarray(a), x, h0 if with_h0 else None, _starts(r, reverse), reverse)
        assert_close(h, want, dtype)
        assert_close(h, reference.linear_scan(a, x, h0 if with_h0 else None, reverse=reverse, resets=r), dtype)


@pytest.mark.parametrize("backend", RESET_BACKENDS)
def test_resets_per_batch_row_and_time_major(backend):
    rng = np.random.default_rng(5)
    x, a = rand(rng, (4, 3, 50), "float64"), rand(rng, (4, 3, 50), "float64", "a")
    rows = rng.random((4, 1, 50)) < 0.1  # episode ends per batch row, broadcast over channels
    h = parscan.linear_scan(a, x, resets=rows, backend=backend)
    for b in range(4):
        assert_close(h[b], _per_segment(a[b], x[b], None, _starts(rows[b, 0], False), False), "float64")
    # time-major (T, B, C) with resets of shape (T, 1, 1), and an F-ordered x
    xt, at = np.asfortranarray(x.transpose(2, 0, 1)), a.transpose(2, 0, 1)
    rt = rows[0, 0][:, None, None]
    got = parscan.linear_scan(at, xt, axis=0, resets=rt, backend=backend)
    assert_close(got, reference.linear_scan(at, xt, axis=0, resets=rt), "float64")


@pytest.mark.parametrize("backend", RESET_BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "complex128"])
@pytest.mark.parametrize("reverse", [False, True])
def test_backward_stops_at_resets(backend, dtype, reverse):
    """grad_x, grad_a (0 at reset steps) and grad_h0 against the per-segment backward, and the
    reference with resets."""
    rng = np.random.default_rng(11)
    x, a, g = rand(rng, (3, 60), dtype), rand(rng, (3, 60), dtype, "a"), rand(rng, (3, 60), dtype)
    h0 = rand(rng, (3,), dtype)
    resets = parscan.resets_from_offsets([0, 1, 20, 21, 59, 60], 60)
    resets[0] = False  # h0 flows into the first segment
    h = parscan.linear_scan(a, x, h0, reverse=reverse, resets=resets, backend=backend)
    ga, gx, gh0 = parscan.linear_scan_backward(a, h, g, h0, reverse=reverse, resets=resets, backend=backend)
    wa, wx, wh0 = reference.linear_scan_backward(a, h, g, h0, reverse=reverse, resets=resets)
    for got, want in ((ga, wa), (gx, wx), (gh0, wh0)):
        assert got.shape == want.shape
        assert_close(got, want, dtype)
    assert np.all(ga[:, resets] == 0)
    # segment by segment, with no resets
    st = _starts(resets, reverse)
    bounds = sorted(st | {0, 60})
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        first = (lo == 0 and 0 not in st) if not reverse else (hi == 60 and 60 not in st)
        sa, sx, s0 = reference.linear_scan_backward(a[:, lo:hi], h[:, lo:hi], g[:, lo:hi], h0 if first else None,
                                                    reverse=reverse)
        ok = ~resets[lo:hi]
        assert_close(gx[:, lo:hi], sx, dtype)
        assert_close(ga[:, lo:hi][:, ok], sa[:, ok], dtype)
        if first:
            assert_close(gh0, s0, dtype)
    if reverse:  # the reset at the last step drops h0 (the state from T): no gradient reaches it
        assert np.all(gh0 == 0)


def test_reference_gradients_match_finite_differences():
    rng = np.random.default_rng(2)
    x, a, g = rng.standard_normal((2, 12)), rng.uniform(0.3, 0.9, (2, 12)), rng.standard_normal((2, 12))
    h0 = rng.standard_normal(2)
    resets = np.zeros(12, bool)
    resets[[0, 5, 11]] = True
    for reverse in (False, True):
        def loss(a_, x_, h0_):
            return float(np.sum(g * reference.linear_scan(a_, x_, h0_, reverse=reverse, resets=resets)))

        h = reference.linear_scan(a, x, h0, reverse=reverse, resets=resets)
        grads = reference.linear_scan_backward(a, h, g, h0, reverse=reverse, resets=resets)
        eps = 1e-6
        for k, v in enumerate((a, x, h0)):
            num = np.zeros_like(v)
            for i in np.ndindex(v.shape):
                up, dn = [w.copy() for w in (a, x, h0)], [w.copy() for w in (a, x, h0)]
                up[k][i] += eps
                dn[k][i] -= eps
                num[i] = (loss(*up) - loss(*dn)) / (2 * eps)
            np.testing.assert_allclose(grads[k], num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", RESET_BACKENDS)
def test_every_step_a_reset_and_none(backend):
    x, a = np.arange(1.0, 9.0), np.full(8, 0.5)
    g = np.ones(8)
    every = np.ones(8, bool)
    assert np.array_equal(parscan.linear_scan(a, x, 3.0, resets=every, backend=backend), x)
    ga, gx, gh0 = parscan.linear_scan_backward(a, x, g, 3.0, resets=every, backend=backend)
    assert np.all(ga == 0) and np.array_equal(gx, g) and gh0 == 0
    none = np.zeros(8, bool)
    assert_close(parscan.linear_scan(a, x, resets=none, backend=backend), reference.linear_scan(a, x), "float64")


@pytest.mark.parametrize("backend", RESET_BACKENDS)
def test_cached_plans_read_new_resets_and_inputs_stay_unmodified(backend):
    rng = np.random.default_rng(4)
    x, a = rand(rng, (2, 30), "float32"), rand(rng, (2, 30), "float32", "a")
    copies = [v.copy() for v in (x, a)]
    for seed in range(4):  # one signature, new reset patterns: replayed plans must read them
        r = np.random.default_rng(seed).random(30) < 0.2
        r_copy = r.copy()
        h = parscan.linear_scan(a, x, resets=r, backend=backend)
        assert_close(h, reference.linear_scan(a, x, resets=r), "float32")
        grads = parscan.linear_scan_backward(a, h, x, resets=r, backend=backend)
        for got, want in zip(grads[:2], reference.linear_scan_backward(a, h, x, resets=r)[:2]):
            assert_close(got, want, "float32")
        assert np.array_equal(r, r_copy)
    assert all(np.array_equal(u, v) for u, v in zip((x, a), copies))


def test_errors_name_resets_and_the_fix():
    x = np.ones((2, 5))
    with pytest.raises(TypeError, match="resets has dtype float64.*astype\\(bool\\)"):
        parscan.linear_scan(0.5, x, resets=np.zeros(5), backend="reference")
    with pytest.raises(TypeError, match="resets must be a boolean array.*pass None"):
        parscan.linear_scan(0.5, x, resets=True, backend="reference")
    with pytest.raises(ValueError, match="resets has shape \\(4,\\).*broadcast"):
        parscan.linear_scan(0.5, x, resets=np.zeros(4, bool), backend="reference")
    with pytest.raises(ValueError, match="resets has shape"):
        parscan.linear_scan_backward(0.5, x, x, resets=np.zeros((3, 5), bool), backend="reference")


@pytest.mark.parametrize("backend", NO_RESET_BACKENDS)
def test_backends_without_resets_say_so(backend):
    r = np.zeros(5, bool)
    with pytest.raises(NotImplementedError, match=f"resets are not implemented by the '{backend}' backend"):
        parscan.linear_scan(0.5, np.ones(5), resets=r, backend=backend)
    with pytest.raises(NotImplementedError, match="resets are not implemented"):
        parscan.linear_scan_backward(0.5, np.ones(5), np.ones(5), resets=r, backend=backend)


def test_resets_from_offsets_and_segment_ends():
    r = parscan.resets_from_offsets([0, 3, 3, 7, 8], 8)  # an empty sequence at 3
    assert r.dtype == bool and np.flatnonzero(r).tolist() == [0, 3, 7]
    assert parscan.resets_from_offsets(np.array([0, 8, 8]), 8).tolist() == [True] + [False] * 7
    assert parscan.resets_from_offsets([0], 0).shape == (0,)
    h = np.arange(16.0).reshape(2, 8)
    assert parscan.segment_ends(h, [0, 3, 3, 7, 8]).tolist() == [[2, 0, 6, 7], [10, 0, 14, 15]]
    assert parscan.segment_ends(h.T, [0, 8], axis=0).tolist() == [[7, 15]]
    with pytest.raises(ValueError, match="offsets must start at 0, end at T = 8"):
        parscan.resets_from_offsets([0, 5, 4, 8], 8)
    with pytest.raises(ValueError, match="end at T = 8"):
        parscan.segment_ends(h, [0, 3, 9])
    with pytest.raises(TypeError, match="offsets must be a 1-d integer array"):
        parscan.resets_from_offsets([0.0, 8.0], 8)
    # the docstring's recipe: per-sequence initial states
    a, x, h0_seq, offsets = np.full(8, 0.5), np.ones(8), np.array([2.0, -1.0]), [0, 5, 8]
    xs = x.copy()
    xs[offsets[:-1]] += a[offsets[:-1]] * h0_seq
    h = reference.linear_scan(a, xs, resets=parscan.resets_from_offsets(offsets, 8))
    assert_close(parscan.segment_ends(h, offsets), [reference.linear_scan(a[:5], x[:5], 2.0)[-1],
                                                    reference.linear_scan(a[5:], x[5:], -1.0)[-1]], "float64")
