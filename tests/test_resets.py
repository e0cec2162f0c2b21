"""resets (issue #18): the state restarts inside one array, on every backend that implements it.

Checked against scanning each segment separately (the reference without resets), the reference with
resets, and finite differences; packed offsets with segments of length 1 and long ones, resets at the
first and last step (and none there, so h0 flows in, either direction), per batch row, both directions,
h0, every dtype; inf and NaN states, h0 and gradients before a reset (dropped, not multiplied by 0);
the plan cache with new reset patterns; the helpers; the errors.
"""

import importlib

import numpy as np
import pytest

import parscan
from parscan import reference
from conftest import DTYPES, HOST_BACKENDS, assert_close, rand
from reset_cases import assert_same_nonfinite, assert_some_of_both, poisoned

# every host backend implements resets (the GPU backends' kernels: tests/test_cuda_cpu.py and tests/sim)
RESET_BACKENDS = [b for b in HOST_BACKENDS if importlib.import_module(f"parscan.{b}").RESETS]

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
    # h0 dropped (resets at 0 and T - 1), or flowing in: no reset at t = 0 (forward) or T - 1 (reverse)
    for r, with_h0 in ((resets, False), (resets, True), (resets & (np.arange(100) > 0), True),
                       (resets & (np.arange(100) < 99), True)):
        h = parscan.linear_scan(a, x, h0 if with_h0 else None, reverse=reverse, resets=r, backend=backend)
        want = _per_segment(np.asarray(a), x, h0 if with_h0 else None, _starts(r, reverse), reverse)
        assert_close(h, want, dtype)
        assert_close(h, reference.linear_scan(a, x, h0 if with_h0 else None, reverse=reverse, resets=r), dtype)


def _per_segment_backward(a, h, g, h0, starts, reverse, resets):
    """(grad_a, grad_x, grad_h0) of the last axis, each segment's backward on its own (no resets), grad_a
    set to 0 at the reset steps (a reads as 0 there) and grad_h0 from the segment h0 flows into."""
    T = h.shape[-1]
    a = np.broadcast_to(a, h.shape)
    bounds = sorted(set([0, T] + [int(s) for s in starts]))
    wide = np.result_type(a, h, np.float64)
    ga, gx, gh0 = np.empty(h.shape, wide), np.empty(h.shape, wide), np.zeros(h.shape[:-1], wide)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        first = (lo == 0 and 0 not in starts) if not reverse else (hi == T and T not in starts)
        sa, sx, s0 = reference.linear_scan_backward(a[..., lo:hi], h[..., lo:hi], g[..., lo:hi],
                                                    h0 if first else None, reverse=reverse)
        ga[..., lo:hi], gx[..., lo:hi] = sa, sx
        if first:
            gh0 = s0
    ga[..., np.broadcast_to(resets, h.shape[-1:])] = 0
    return ga, gx, gh0


# long enough for the cpu backend's time chunks (forced by cpu_time_chunks): a chunk holding a reset
# passes no incoming state on, even a non-finite one
NONFINITE_CASES = [(b, shape, axis) for b in RESET_BACKENDS
                   for shape, axis in (((40000,), -1), ((2, 3, 700), -1), ((20000, 3), 0))]


@pytest.fixture
def cpu_time_chunks(monkeypatch):
    """The cpu backend cuts time into at least three chunks whenever T allows (its plan leaves many
    channels uncut)."""
    from parscan import _plans, cpu

    real = cpu.task_plan

    def plan(shape, strides):
        bs, nch = real(shape, strides)
        return bs, max(nch, min(3, shape[3] // cpu.MIN_CHUNK))

    monkeypatch.setattr(cpu, "task_plan", plan)
    _plans.clear()
    yield
    _plans.clear()


@pytest.mark.parametrize("backend,shape,axis", NONFINITE_CASES)
@pytest.mark.parametrize("dtype", ["float64", "complex64"])
@pytest.mark.parametrize("reverse", [False, True])
def test_nonfinite_values_do_not_cross_a_reset(backend, shape, axis, dtype, reverse, cpu_time_chunks):
    """inf / NaN in x before a reset, a NaN h0 with a reset at the first step, inf / NaN in grad_h, a NaN
    or inf a at the reset steps: the reset drops them (h = x, not 0 * inf + x = NaN), forward and
    backward, against each segment scanned on its own (long enough for the cpu backend's time chunks,
    both loop orders)."""
    rng = np.random.default_rng(len(shape) + 3 * reverse)
    for a_kind, mirror in (("full", False), ("channel", False), ("full", True)):
        a, x, h0, r, gh = poisoned(rng, shape, axis, dtype, a_kind, mirror)
        last = lambda v: np.moveaxis(np.broadcast_to(v, x.shape), axis, -1)  # noqa: E731
        starts = _starts(r.reshape(-1), reverse)
        a_eff = np.where(r, 0, a)  # what a reads as (the segments' own scans see it)
        with np.errstate(invalid="ignore", over="ignore"):
            want = np.moveaxis(_per_segment(last(a_eff), last(x), h0, starts, reverse), -1, axis)
            h = parscan.linear_scan(a, x, h0, axis=axis, reverse=reverse, resets=r, backend=backend)
            assert_some_of_both(want)
            assert_same_nonfinite(h, want, dtype)
            hs = want.astype(dtype)
            wa, wx, wh0 = _per_segment_backward(last(a_eff), last(hs), last(gh), h0, starts, reverse, r.reshape(-1))
            wa, wx = np.moveaxis(wa, -1, axis), np.moveaxis(wx, -1, axis)
            if a_kind != "full":
                wa = wa.sum(axis=axis, keepdims=True)
            ga, gx, gh0 = parscan.linear_scan_backward(a, hs, gh, h0, axis=axis, reverse=reverse, resets=r,
                                                       backend=backend)
        assert_some_of_both(wx)
        for got, w in ((ga, wa), (gx, wx), (gh0, wh0)):
            assert_same_nonfinite(got, w.real if np.dtype(dtype).kind != "c" else w, dtype)
        assert np.all(gh0 == 0)  # the reset at t = 0 (T - 1 in reverse) drops h0: no gradient reaches it


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


def test_resets_alone_do_not_cost_a_copy_of_x_or_a_full_size_resets():
    """x (2, 3, 4, 5, 50) merges into one channel dim by itself; resets (2, 1, 4, 1, 50) (broadcast over
    dims 1 and 3) break every merge.  Materialising the resets over dim 1 alone (3x their size) leaves
    two channel groups; copying x to canonical order (and resets to x's full size) is not needed."""
    from parscan import _problem
    from parscan._arrays import as_flags, as_operand

    x = np.ones((2, 3, 4, 5, 50))
    r = np.zeros((2, 1, 4, 1, 50), bool)
    r[..., ::7] = True
    for plan in (lambda ro: _problem.plan_forward(np, as_operand(0.5, "a", allow_scalar=True), as_operand(x, "x"),
                                                  None, None, -1, False, ro)[0],
                 lambda ro: _problem.plan_backward(np, as_operand(0.5, "a", allow_scalar=True), as_operand(x, "h"),
                                                   as_operand(x, "grad_h"), None, -1, False, ro)[0]):
        problem = plan(as_flags(r, "resets"))
        data = problem.x if hasattr(problem, "x") else problem.h
        assert np.shares_memory(data.buf, x), "x was copied"
        assert problem.resets.buf.size < x.size, "resets were materialised to x's size"
    # the results are right either way
    assert_close(parscan.linear_scan(0.5, x, resets=r), reference.linear_scan(0.5, x, resets=r), "float64")
