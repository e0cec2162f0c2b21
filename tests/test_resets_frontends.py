"""resets (issue #18) through the front ends: the matrix scan, the layers and parscan.dask.

Each is checked against an independent ground truth in float64: a plain loop with the decay zeroed at
reset steps, the same sequences scanned (or run through a layer) separately, and finite differences.
(parscan.torch and parscan.jax: tests/test_torch.py and tests/test_jax_jit.py.)
"""

import numpy as np
import pytest

import parscan
from parscan import layers, reference, tasks
from conftest import TOL, assert_close

# ------------------------------------------------------------------------------------ matrix scan


def _mloop(A, x, h0, reverse, resets):
    """h_t = A_t h_{t-1} + x_t with A_t = 0 where resets[..., t]: the plain loop (complex128/float64)."""
    wide = np.complex128 if np.iscomplexobj(A) or np.iscomplexobj(x) else np.float64
    T, n = x.shape[-2:]
    lead = np.broadcast_shapes(x.shape[:-2], A.shape[:-3], np.shape(resets)[:-1])
    A = np.broadcast_to(A, lead + (T,) + A.shape[-2:]).astype(wide)
    r = np.broadcast_to(resets, lead + (T,))
    h = np.zeros(lead + (n,), wide) if h0 is None else np.broadcast_to(h0, lead + (n,)).astype(wide)
    out = np.empty(lead + (T, n), wide)
    for s in range(T):
        t = T - 1 - s if reverse else s
        h = np.where(r[..., t, None], 0, np.einsum("...ij,...j->...i", A[..., t, :, :], h)) + x[..., t, :]
        out[..., t, :] = h
    return out


MATRIX_BACKENDS = ["cpu", "reference"]


@pytest.mark.parametrize("backend", MATRIX_BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "complex128"])
@pytest.mark.parametrize("case", ["shared", "per-row", "A-constant"])
def test_matrix_scan_with_resets_matches_the_loop_and_separate_scans(backend, reverse, dtype, case):
    rng = np.random.default_rng(3)
    B, T, n = 3, 23, 3
    cplx = np.dtype(dtype).kind == "c"
    # data in the dtype under test (float16 is computed in float32); the ground truth in float64 from it
    rnd = lambda *s: (rng.standard_normal(s) + (1j * rng.standard_normal(s) if cplx else 0)).astype(dtype)  # noqa: E731
    A = (0.5 / np.sqrt(n) * rnd(B, 1 if case == "A-constant" else T, n, n)).astype(dtype)
    x, h0, gh = rnd(B, T, n), rnd(B, n), rnd(B, T, n)
    if case == "per-row":
        resets = rng.random((B, T)) < 0.2
        resets[0, [0, T - 1]] = True  # the first and last steps
    else:
        resets = parscan.resets_from_offsets([0, 1, 7, 8, 20, T], T)
        resets[0] = False  # h0 flows into the first segment
    keep = resets.copy()
    h = parscan.matrix_linear_scan(A, x, h0, reverse=reverse, backend=backend, resets=resets)
    assert np.array_equal(resets, keep)  # inputs never modified
    assert h.dtype == np.dtype(dtype)
    assert_close(h, _mloop(A, x, h0, reverse, resets), dtype)
    # the same sequences scanned separately (no resets), the first (last, reverse) one from h0
    if case != "per-row":
        cuts = sorted(set(np.flatnonzero(resets) + (1 if reverse else 0)) | {0, T})
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            first = lo == 0 if not reverse else hi == T
            seg = parscan.matrix_linear_scan(A[:, lo:hi] if A.shape[1] > 1 else A, x[:, lo:hi],
                                             h0 if first else None, reverse=reverse, backend="reference")
            assert_close(h[:, lo:hi], seg, dtype)
    # the backward: against the reference backward of the loop's effective A (zero at resets)
    ga, gx, gh0 = parscan.matrix_linear_scan_backward(A, h, gh, h0, reverse=reverse, backend=backend, resets=resets)
    A_eff = np.where(np.broadcast_to(resets, (B, T))[..., None, None], 0, np.broadcast_to(A, (B, T, n, n)))
    wa, wx, wh0 = parscan.matrix_linear_scan_backward(A_eff.astype(np.float64 if not cplx else np.complex128), h, gh,
                                                      h0, reverse=reverse, backend="reference")
    wa = np.where(np.broadcast_to(resets, (B, T))[..., None, None], 0, wa)  # A reads as 0 there: no gradient
    if A.shape[1] == 1:
        wa = wa.sum(axis=1, keepdims=True)
    for got, want in ((ga, wa), (gx, wx), (gh0, wh0)):
        assert got.shape == want.shape and got.dtype == np.dtype(dtype)
        assert_close(got, want, dtype)


@pytest.mark.parametrize("backend", MATRIX_BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_matrix_backward_with_resets_matches_finite_differences(backend, reverse):
    rng = np.random.default_rng(4)
    n, T = 2, 7
    A, x = 0.6 * rng.standard_normal((2, T, n, n)), rng.standard_normal((2, T, n))
    h0, w = rng.standard_normal((2, n)), rng.standard_normal((2, T, n))
    resets = np.zeros((2, 1, T), bool)[:, 0]  # per batch row, (B, T)
    resets[0, [2, 6]] = True
    resets[1, [0, 3]] = True

    def loss(A_, x_, h0_):
        return float(np.sum(w * _mloop(A_, x_, h0_, reverse, resets)))

    h = parscan.matrix_linear_scan(A, x, h0, reverse=reverse, backend=backend, resets=resets)
    grads = parscan.matrix_linear_scan_backward(A, h, w, h0, reverse=reverse, backend=backend, resets=resets)
    for k, v in enumerate((A, x, h0)):
        fd = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            args = [A, x, h0]
            up, dn = v.copy(), v.copy()
            up[idx] += 1e-6
            dn[idx] -= 1e-6
            fd[idx] = (loss(*args[:k], up, *args[k + 1:]) - loss(*args[:k], dn, *args[k + 1:])) / 2e-6
        np.testing.assert_allclose(grads[k], fd, rtol=1e-6, atol=1e-8)
    assert np.all(grads[0][resets] == 0)


@pytest.mark.parametrize("reverse", [False, True])
def test_matrix_n1_passes_resets_to_the_elementwise_scan(monkeypatch, reverse):
    """n = 1 on the cpu backend runs as parscan.linear_scan (cpu): the resets go with it."""
    rng = np.random.default_rng(7)
    A, x, h0, gh = (rng.uniform(-0.9, 0.9, (2, 30, 1, 1)), rng.standard_normal((2, 30, 1)),
                    rng.standard_normal((2, 1)), rng.standard_normal((2, 30, 1)))
    resets = np.zeros(30, bool)
    resets[[0, 11, 29]] = True
    want = _mloop(A, x, h0, reverse, resets)
    wa, wx, wh0 = reference.linear_scan_backward(A[..., 0], want, gh, h0, axis=-2, reverse=reverse,
                                                 resets=resets[:, None])

    def run():
        h = parscan.matrix_linear_scan(A, x, h0, reverse=reverse, backend="cpu", resets=resets)
        assert_close(h, want, "float64")
        ga, gx, gh0 = parscan.matrix_linear_scan_backward(A, h, gh, h0, reverse=reverse, backend="cpu", resets=resets)
        for got, w in ((ga, wa[..., None]), (gx, wx), (gh0, wh0)):
            assert_close(got, w, "float64")

    from parscan import matrix

    calls = []
    for name in ("linear_scan", "linear_scan_backward"):
        real = getattr(matrix, name)
        monkeypatch.setattr(matrix, name, lambda *a, _real=real, **k: calls.append(k) or _real(*a, **k))
    run()
    assert len(calls) == 2 and all(k["resets"] is not None and k["axis"] == -2 for k in calls)


@pytest.mark.parametrize("rshape,lead,view", [
    ((4,), (2, 3), True), ((2, 3, 4), (2, 3), True), ((2, 1, 4), (2, 3), True), ((1, 3, 4), (2, 3), True),
    ((2, 1, 1, 4), (2, 2, 3), True),    # broadcast over the last two leading dims: they merge (stride 0)
    ((2, 1, 3, 4), (2, 2, 3), False),   # three groups of strides: one byte per row and step copied
])
def test_matrix_host_resets_are_views(monkeypatch, rshape, lead, view):
    """The host backends read the resets through a (Bo, Bi, T) view of the caller's array (zero strides
    where broadcast over leading dims, never a copy per batch row), unless the leading dims fall into
    more than two groups of mergeable strides (then one byte per row and step is copied); every case
    against the loop, on both host backends."""
    from parscan import matrix

    rng = np.random.default_rng(9)
    x, A = rng.standard_normal(lead + (4, 2)), 0.5 * rng.standard_normal(lead + (4, 2, 2))
    r = rng.random(rshape) < 0.4
    seen = []
    real = matrix._forward_cpu_serial
    monkeypatch.setattr(matrix, "_forward_cpu_serial", lambda *a: seen.append(a[-1]) or real(*a))
    want = _mloop(A, x, None, False, r)
    assert_close(parscan.matrix_linear_scan(A, x, resets=r, backend="cpu"), want, "float64")
    assert_close(parscan.matrix_linear_scan(A, x, resets=r, backend="reference"), want, "float64")
    assert seen and seen[0].ndim == 3 and np.shares_memory(seen[0], r) == view


MATRIX_RESET_ERRORS = [  # (call, error, message): the same on every backend, before the host / CUDA branch
    (lambda be: parscan.matrix_linear_scan(np.zeros((4, 2, 2)), np.zeros((4, 2)), resets=np.zeros(5, bool),
                                           backend=be),
     ValueError, r"resets has shape \(5,\), which does not broadcast to x's shape without its last \(state\) axis, "
                 r"\(4,\)"),
    (lambda be: parscan.matrix_linear_scan_backward(np.zeros((4, 2, 2)), np.zeros((4, 2)), np.zeros((4, 2)),
                                                    resets=np.zeros((3, 4), bool), backend=be),
     ValueError, r"does not broadcast to h's shape"),
    (lambda be: parscan.matrix_linear_scan(np.zeros((4, 2, 2)), np.zeros((4, 2)), resets=np.zeros(4, np.int64),
                                           backend=be),
     TypeError, "resets has dtype int64; it must be a boolean array"),
    (lambda be: parscan.matrix_linear_scan(np.zeros((4, 1, 1)), np.zeros((4, 1)), resets=np.zeros(5, bool),
                                           backend=be),  # n = 1 (the elementwise scan) says the same
     ValueError, r"resets has shape \(5,\), which does not broadcast to x's shape"),
]


@pytest.mark.parametrize("k", range(len(MATRIX_RESET_ERRORS)))
def test_matrix_resets_errors_are_the_same_on_every_path(monkeypatch, k):
    """Bad resets fail with the same error on the host backends and on the CUDA path (its module
    replaced by one whose passes would fail the test: the checks come before any launch)."""
    from parscan import matrix

    call, error, message = MATRIX_RESET_ERRORS[k]
    for backend in MATRIX_BACKENDS:
        with pytest.raises(error, match=message):
            call(backend)

    class NoLaunch:
        @staticmethod
        def matrix_pass(*args):
            raise AssertionError("launched before the resets were checked")

    monkeypatch.setattr(matrix, "_select", lambda backend, on_gpu: ("cuda", NoLaunch))
    with pytest.raises(error, match=message):
        call(None)


def test_the_cuda_path_hands_the_kernel_a_view_of_the_resets(monkeypatch):
    """The CUDA path's plumbing on host arrays, its passes recorded instead of launched: the resets
    reach every top-level pass as a (Bo, Bi, T) view of the caller's flags (zero stride where broadcast;
    never materialised), the aggregate passes write chunk flags, and the carry scan reads those.
    (The kernels themselves: tests/test_cuda_cpu.py and tests/sim.)"""
    from parscan import matrix
    from parscan.kernels import matrix_launch

    monkeypatch.setattr(matrix_launch, "TARGET_THREADS", 1 << 10)
    calls = []

    class Record:
        @staticmethod
        def matrix_pass(aggregate, A, conj, shift, x, h0, resets, rc, carry, out, L, nch, reverse):
            calls.append((aggregate, resets, rc, x.shape))

    monkeypatch.setattr(matrix, "_select", lambda backend, on_gpu: ("cuda", Record))
    rng = np.random.default_rng(6)
    A, x = rng.standard_normal((2, 3, 200, 2, 2)), rng.standard_normal((2, 3, 200, 2))
    r = rng.random((2, 1, 200)) < 0.1  # per row of the first leading dim, broadcast over the second
    for run in (lambda: parscan.matrix_linear_scan(A, x, resets=r),
                lambda: parscan.matrix_linear_scan_backward(A, x, x, resets=r)):
        calls.clear()
        run()
        top = [c for c in calls if c[3] == (6, 200, 2)]
        assert top and all(c[1].shape == (2, 3, 200) and c[1].strides[1] == 0 and np.shares_memory(c[1], r)
                           for c in top)
        flags = [c[2] for c in calls if c[0] and c[2] is not None]
        assert flags and any(c[1] is not None and np.shares_memory(c[1], flags[0]) for c in calls if c[3][0] == 6
                             and c[3][1] == flags[0].shape[1])


# ------------------------------------------------------------------------------------ layers


def _segments(resets_row, T):
    cuts = sorted(set(np.flatnonzero(resets_row).tolist()) | {0, T})
    return list(zip(cuts[:-1], cuts[1:]))


LAYERS = {
    "GILR": lambda m, n: layers.GILR(m, n, dtype="float64", seed=0, gate_bias=0.3),
    "GILRLSTM": lambda m, n: layers.GILRLSTM(m, n, dtype="float64", seed=0),
    "SRU": lambda m, n: layers.SRU(m, n, dtype="float64", seed=0),
    "QRNN": lambda m, n: layers.QRNN(m, n, k=3, dtype="float64", seed=0),
}


@pytest.mark.parametrize("name", LAYERS)
def test_layer_with_resets_equals_the_sequences_run_one_by_one(name):
    """Packed rows (resets of shape (T, B)): outputs, final state, and every gradient (params, x, the
    initial state) equal the segments run separately, summed; a row without a reset at step 0 starts
    from the given state, one with a reset ignores it (zero gradient)."""
    rng = np.random.default_rng(8)
    T, B, m, n = 14, 2, 3, 4
    layer = LAYERS[name](m, n)
    x = rng.standard_normal((T, B, m))
    resets = np.zeros((T, B), bool)
    resets[[0, 1, 4, 5, 13], 1] = True  # row 1: lengths 1, 3, 1, 8, 1 (restarts at 0: its state is ignored)
    resets[[3, 12], 0] = True  # row 0: the given state, then lengths 3, 9, 2 (a reset on the last but one step)
    _, final0, _ = layer.forward(x[:2])
    state = tuple(rng.standard_normal(np.shape(v)) for v in final0)
    h, final, cache = layer.forward(x, state, resets)
    w = rng.standard_normal(h.shape)
    ws = tuple(rng.standard_normal(np.shape(v)) for v in final)
    dx, grads, dstate = layer.backward(w, cache, ws)
    want_grads = {k: np.zeros_like(v) for k, v in layer.params.items()}
    for b in range(B):
        segs = _segments(resets[:, b], T)
        for lo, hi in segs:
            st = tuple(v[..., b:b + 1, :] for v in state) if lo == 0 and not resets[0, b] else None
            hs, fs, cs = layer.forward(x[lo:hi, b:b + 1], st)
            np.testing.assert_allclose(h[lo:hi, b:b + 1], hs, rtol=1e-12, atol=1e-12)
            last = hi == T
            gs = tuple(v[..., b:b + 1, :] for v in ws) if last else None
            dxs, gr, dst = layer.backward(w[lo:hi, b:b + 1], cs, gs)
            np.testing.assert_allclose(dx[lo:hi, b:b + 1], dxs, rtol=1e-10, atol=1e-12)
            for k in want_grads:
                want_grads[k] += gr[k]
            if last:
                for u, v in zip(final, fs):
                    np.testing.assert_allclose(u[..., b:b + 1, :], v, rtol=1e-12, atol=1e-12)
            if st is not None:
                for u, v in zip(dstate, dst):
                    np.testing.assert_allclose(u[..., b:b + 1, :], v, rtol=1e-10, atol=1e-12)
        if resets[0, b]:
            assert all(np.all(u[..., b, :] == 0) for u in dstate)
    for k, v in grads.items():
        np.testing.assert_allclose(v, want_grads[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("name", LAYERS)
def test_layer_with_resets_in_two_chunks_equals_the_whole(name):
    """The final state carries what the next chunk needs: a reset at the chunk's last step (QRNN: the
    window must not reach back across it from the next chunk)."""
    rng = np.random.default_rng(9)
    layer = LAYERS[name](3, 4)
    x = rng.standard_normal((11, 2, 3))
    resets = np.zeros(11, bool)
    resets[[2, 3, 6]] = True
    h, final, _ = layer.forward(x, resets=resets)
    h1, st, _ = layer.forward(x[:4], resets=resets[:4])
    h2, final2, _ = layer.forward(x[4:], st, resets=resets[4:])
    np.testing.assert_allclose(np.concatenate([h1, h2]), h, rtol=1e-12, atol=1e-12)
    for a, b in zip(final, final2):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # and the resets do something: without them the outputs differ
    assert not np.allclose(layer.forward(x)[0], h)


def _sign_model(m, n):
    return [layers.GILRLSTM(m, n, dtype="float64", seed=1, forget_bias=2.0),
            layers.GILRLSTM(n, n, dtype="float64", seed=2, forget_bias=2.0)]


def _sign_loss_grads(stack, W_out, x, labels, ends, w, resets):
    """Two GILR-LSTM layers, each sequence's final h read out (softmax cross-entropy against its sign
    label) plus a per-step term ``sum(w * h)``: ``(loss, grads of every param, grad x)``.  ``ends``:
    (step, row) of each sequence's last step, in the order of ``labels``."""
    caches, h = [], x
    for layer in stack:
        h, _, cache = layer.forward(h, resets=resets)
        caches.append(cache)
    last = h[ends[:, 0], ends[:, 1]]
    logits = last @ W_out
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss = -np.log(p[np.arange(len(labels)), labels]).sum() + np.sum(w * h)
    dlogits = p.copy()
    dlogits[np.arange(len(labels)), labels] -= 1
    gh = w.copy()
    np.add.at(gh, (ends[:, 0], ends[:, 1]), dlogits @ W_out.T)
    grads = {"out.W": last.T @ dlogits}
    for k in range(len(stack) - 1, -1, -1):
        gh, g, _ = stack[k].backward(gh, caches[k])
        grads.update({f"layer{k}.{name}": v for name, v in g.items()})
    return loss, grads, gh


def test_gilrlstm_packed_sign_task_sequences_get_the_padded_gradients():
    """Issue #18: a GILR-LSTM on packed variable-length sign-task sequences gets the same loss and
    gradients (every parameter, and x) as the same sequences padded and run as a batch."""
    rng = np.random.default_rng(10)
    lengths = [5, 1, 9, 2, 7, 3]
    dim, n = 6, 5
    seqs, labels = zip(*(tasks.sign_batch(rng, L, 1, dim=dim, dtype="float64") for L in lengths))
    labels = np.concatenate(labels)
    ws = [rng.standard_normal((L, n)) * 0.1 for L in lengths]
    W_out = rng.standard_normal((n, 2))
    S, Lmax = len(lengths), max(lengths)
    # padded: (Lmax, S, dim), zeros after each sequence's end (they reach no loss term)
    xp_ = np.zeros((Lmax, S, dim))
    wp = np.zeros((Lmax, S, n))
    for k, (sq, wk) in enumerate(zip(seqs, ws)):
        xp_[:len(sq), k] = sq[:, 0]
        wp[:len(sq), k] = wk
    ends_p = np.array([[L - 1, k] for k, L in enumerate(lengths)])
    loss_p, grads_p, dx_p = _sign_loss_grads(_sign_model(dim, n), W_out, xp_, labels, ends_p, wp, None)
    # packed into one row with resets of shape (T,), and into two rows with resets of shape (T, 2)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    T = int(offsets[-1])
    x1 = np.concatenate(seqs)
    w1 = np.concatenate(ws)[:, None]
    ends_1 = np.stack([offsets[1:] - 1, np.zeros(S, int)], 1)
    loss_1, grads_1, dx_1 = _sign_loss_grads(_sign_model(dim, n), W_out, x1, labels, ends_1, w1,
                                             parscan.resets_from_offsets(offsets, T))
    half = 3  # rows: sequences 0-2 and 3-5, the shorter row padded at its end
    T2 = max(sum(lengths[:half]), sum(lengths[half:]))
    x2, w2, r2, ends_2 = np.zeros((T2, 2, dim)), np.zeros((T2, 2, n)), np.zeros((T2, 2), bool), []
    for row, idx in enumerate((range(half), range(half, S))):
        t = 0
        for k in idx:
            L = lengths[k]
            x2[t:t + L, row], w2[t:t + L, row], r2[t, row] = seqs[k][:, 0], ws[k], True
            ends_2.append([t + L - 1, row])
            t += L
    loss_2, grads_2, dx_2 = _sign_loss_grads(_sign_model(dim, n), W_out, x2, labels, np.array(ends_2), w2, r2)
    for loss, grads, dx, unpack in (
            (loss_1, grads_1, dx_1, lambda d, k: d[offsets[k]:offsets[k + 1], 0]),
            (loss_2, grads_2, dx_2, lambda d, k: d[ends_2[k][0] - lengths[k] + 1:ends_2[k][0] + 1, ends_2[k][1]])):
        np.testing.assert_allclose(loss, loss_p, rtol=1e-12)
        assert set(grads) == set(grads_p) and len(grads) == 15
        for name, g in grads.items():
            np.testing.assert_allclose(g, grads_p[name], rtol=1e-10, atol=1e-12, err_msg=name)
        for k, L in enumerate(lengths):
            np.testing.assert_allclose(unpack(dx, k), dx_p[:L, k], rtol=1e-10, atol=1e-12)
    # without the resets the packed run is a different computation
    _, grads_0, _ = _sign_loss_grads(_sign_model(dim, n), W_out, x1, labels, ends_1, w1, None)
    assert not np.allclose(grads_0["layer0.U"], grads_p["layer0.U"])


def test_layer_resets_errors():
    layer = layers.GILR(2, 3, dtype="float64")
    x = np.zeros((4, 2, 2))
    with pytest.raises(ValueError, match=r"resets must have shape \(T,\) = \(4,\) or \(T, B\) = \(4, 2\)"):
        layer.forward(x, resets=np.zeros((2, 4), bool))
    with pytest.raises(TypeError, match="resets has dtype int64; it must be a boolean array"):
        layer.forward(x, resets=np.zeros(4, np.int64))


# ------------------------------------------------------------------------------------ parscan.dask

# (C, T) chunkings of a (3, 24) array; RESET_STEPS put resets at chunk starts (8, 12), chunk ends
# (7, 11, 23), inside chunks, and the first step
DASK_CHUNKINGS = {"one": ((3,), (24,)), "time": ((3,), (8, 4, 1, 11)), "steps": ((3,), (1,) * 24),
                  "both": ((1, 2), (5, 7, 12))}
RESET_STEPS = [0, 7, 8, 11, 12, 16, 23]


@pytest.mark.parametrize("chunking", list(DASK_CHUNKINGS))
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "complex128"])
def test_dask_scan_and_backward_with_resets_equal_the_reference(chunking, reverse, dtype):
    da = pytest.importorskip("dask.array")
    import dask

    import parscan.dask as pdask

    rng = np.random.default_rng(12)
    C, T = 3, 24
    chunks = DASK_CHUNKINGS[chunking]
    cplx = np.dtype(dtype).kind == "c"
    rnd = lambda *s: (rng.standard_normal(s) + (1j * rng.standard_normal(s) if cplx else 0)).astype(dtype)  # noqa
    x, gh, h0 = rnd(C, T), rnd(C, T), rnd(C)
    a = (rng.uniform(0.5, 0.95, (C, T)) * (np.exp(1j * rng.uniform(-3, 3, (C, T))) if cplx else 1)).astype(dtype)
    shared = np.zeros(T, bool)
    shared[RESET_STEPS] = True
    rows = rng.random((C, T)) < 0.25  # per channel, chunked like x
    rows[:, 12] = True
    cases = [(a, h0, shared, shared),  # in-memory (T,) resets
             (a[:, :1], 0.5, da.from_array(rows, chunks=chunks), rows),  # Dask (C, T) resets, per-channel decay
             (0.9, h0, shared & (np.arange(T) > 0), shared & (np.arange(T) > 0))]  # h0 reaches the first chunk
    backend = None  # the chunks on the default host backend, cpu
    lazy, wants = [], []
    for am, hm, rd, rm in cases:
        xd = da.from_array(x, chunks=chunks)
        ad = da.from_array(am, chunks=chunks) if np.shape(am) == x.shape else am
        h_ref = reference.linear_scan(am, x, hm, reverse=reverse, resets=rm)
        h = pdask.linear_scan(ad, xd, hm, reverse=reverse, resets=rd, backend=backend)
        hd, ghd = da.from_array(h_ref.astype(dtype), chunks=chunks), da.from_array(gh, chunks=chunks)
        lazy.append((h, *pdask.linear_scan_backward(ad, hd, ghd, hm, reverse=reverse, resets=rd, backend=backend)))
        wants.append((h_ref, *reference.linear_scan_backward(am, h_ref.astype(dtype), gh, hm, reverse=reverse,
                                                             resets=rm)))
    with dask.config.set(scheduler="synchronous"):
        got = dask.compute(*lazy)
    for g, w in zip(got, wants):
        assert g[0].dtype == np.dtype(dtype) and g[0].shape == x.shape
        for u, v in zip(g, w):
            if v is None:
                assert u is None
                continue
            # summed gradients (a per-channel or scalar decay) add up to T terms: scale the tolerance
            assert_close(np.asarray(u), v, dtype) if np.size(v) == x.size or np.ndim(v) == 1 else \
                np.testing.assert_allclose(u, v, rtol=50 * TOL[dtype], atol=50 * TOL[dtype])


def test_dask_matrix_scan_and_backward_with_resets_equal_in_memory():
    da = pytest.importorskip("dask.array")
    import dask

    import parscan.dask as pdask

    rng = np.random.default_rng(13)
    B, T, n = 2, 20, 3
    A, x = 0.5 * rng.standard_normal((B, T, n, n)) / np.sqrt(n), rng.standard_normal((B, T, n))
    h0, gh = rng.standard_normal((B, n)), rng.standard_normal((B, T, n))
    rows = rng.random((B, T)) < 0.2
    rows[:, [6, 13]] = True  # chunk starts and ends below
    rows[0, 5] = True
    chunks = ((1, 1), (6, 7, 7))
    for reverse in (False, True):
        for rd, rm in ((rows, rows), (da.from_array(rows, chunks=chunks), rows), (rows[0], rows[0])):
            for Am, Ad in ((A, da.from_array(A, chunks=chunks + ((n,), (n,)))), (A[:, :1], A[:, :1])):
                want = _mloop(np.broadcast_to(Am, A.shape), x, h0, reverse, rm)
                h = pdask.matrix_linear_scan(Ad, da.from_array(x, chunks=chunks + ((n,),)), h0, reverse=reverse,
                                             resets=rd, backend="cpu")
                wb = parscan.matrix_linear_scan_backward(Am, want, gh, h0, reverse=reverse, resets=rm, backend="cpu")
                gb = pdask.matrix_linear_scan_backward(Ad, da.from_array(want, chunks=chunks + ((n,),)),
                                                       da.from_array(gh, chunks=chunks + ((n,),)), h0,
                                                       reverse=reverse, resets=rd, backend="cpu")
                with dask.config.set(scheduler="synchronous"):
                    got = dask.compute(h, *gb)
                assert_close(got[0], want, "float64")
                for g, w in zip(got[1:], wb):
                    assert g.shape == w.shape
                    assert_close(g, w, "float64")


def test_dask_resets_errors():
    da = pytest.importorskip("dask.array")
    import parscan.dask as pdask

    x = da.ones((2, 10), chunks=(2, 5))
    with pytest.raises(ValueError, match=r"resets is chunked \(2, 8\) along its axis 0 but x is chunked "
                                         r"\(5, 5\).*resets.rechunk"):
        pdask.linear_scan(0.5, x, resets=da.zeros(10, dtype=bool, chunks=(2, 8)), backend="reference")
    with pytest.raises(ValueError, match=r"resets has shape \(3,\), which does not broadcast to \(2, 10\)"):
        pdask.linear_scan(0.5, x, resets=np.zeros(3, bool), backend="reference")
    with pytest.raises(TypeError, match="resets has dtype float64; it must be a boolean array"):
        pdask.linear_scan(0.5, x, resets=da.zeros(10, chunks=5), backend="reference")
