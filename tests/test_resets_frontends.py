"""resets (issue #18) through the front ends: the matrix scan, the layers and parscan.dask.

Each is checked against an independent ground truth in float64: a plain loop with the decay zeroed at
reset steps, the same sequences scanned (or run through a layer) separately, and finite differences.
(parscan.torch and parscan.jax: tests/test_torch.py and tests/test_jax_jit.py.)
"""

import importlib

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
@pytest.mark.parametrize("dtype", ["float64", "complex128"])
@pytest.mark.parametrize("case", ["shared", "per-row", "A-constant"])
def test_matrix_scan_with_resets_matches_the_loop_and_separate_scans(backend, reverse, dtype, case):
    rng = np.random.default_rng(3)
    B, T, n = 3, 23, 3
    cplx = np.dtype(dtype).kind == "c"
    rnd = lambda *s: rng.standard_normal(s) + (1j * rng.standard_normal(s) if cplx else 0)  # noqa: E731
    A = 0.5 * rnd(B, 1 if case == "A-constant" else T, n, n) / np.sqrt(n)
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
    wa, wx, wh0 = parscan.matrix_linear_scan_backward(A_eff, h, gh, h0, reverse=reverse, backend="reference")
    wa = np.where(np.broadcast_to(resets, (B, T))[..., None, None], 0, wa)  # A reads as 0 there: no gradient
    if A.shape[1] == 1:
        wa = wa.sum(axis=1, keepdims=True)
    for got, want in ((ga, wa), (gx, wx), (gh0, wh0)):
        assert got.shape == want.shape
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
    """n = 1 on the cpu backend runs as parscan.linear_scan: the resets go with it.  The elementwise
    call is redirected to the reference backend (and, once the cpu backend implements resets, also run
    as it is)."""
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

    if getattr(importlib.import_module("parscan.cpu"), "RESETS", False):
        run()
    from parscan import matrix

    calls = []
    for name in ("linear_scan", "linear_scan_backward"):
        real = getattr(matrix, name)
        monkeypatch.setattr(matrix, name, lambda *a, _real=real, **k: calls.append(k) or _real(*a, **{
            **k, "backend": "reference"}))
    run()
    assert len(calls) == 2 and all(k["resets"] is not None and k["axis"] == -2 for k in calls)


def test_matrix_resets_errors(monkeypatch):
    A, x = np.zeros((4, 2, 2)), np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"resets has shape \(5,\), which does not broadcast to x's shape without "
                                         r"its last \(state\) axis, \(4,\)"):
        parscan.matrix_linear_scan(A, x, resets=np.zeros(5, bool), backend="reference")
    with pytest.raises(ValueError, match=r"does not broadcast to h's shape"):
        parscan.matrix_linear_scan_backward(A, x, x, resets=np.zeros((3, 4), bool), backend="cpu")
    with pytest.raises(TypeError, match="resets has dtype int64; it must be a boolean array"):
        parscan.matrix_linear_scan(A, x, resets=np.zeros(4, np.int64), backend="cpu")
    # the CUDA kernels do not take resets yet: a clear refusal, before any launch
    from parscan import matrix

    monkeypatch.setattr(matrix, "_select", lambda backend, on_gpu: ("cuda", None))
    for call in (lambda: parscan.matrix_linear_scan(A, x, resets=np.zeros(4, bool)),
                 lambda: parscan.matrix_linear_scan_backward(A, x, x, resets=np.zeros(4, bool))):
        with pytest.raises(NotImplementedError, match="resets are not implemented by the matrix scan's CUDA kernels"):
            call()
