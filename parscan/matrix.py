"""The linear scan with dense n x n coefficients: ``h_t = A_t h_{t-1} + x_t`` (the engine of DEER).

``x`` has shape (..., T, n), ``A`` (..., T, n, n) or (..., 1, n, n) (constant in time), leading dims
broadcast against x's; ``h0`` (..., n) broadcasts too.  ``reverse=True`` runs
``h_t = A_t h_{t+1} + x_t`` from ``h_T = h0``.  The adjoint (forward direction)::

    g_t = grad_h_t + A_{t+1}^H g_{t+1}          (g_T = 0)
    grad_x_t = g_t,   grad_A_t = g_t h_{t-1}^H,   grad_h0 = A_0^H g_0

(PyTorch's convention for complex numbers; grad_A is summed over what A was broadcast along).

Backends: ``reference`` (a float64 / complex128 loop) and ``cpu`` (Numba, parallel over the batch of
leading dims, sequential in time: n^2 work per step, where a parallel-in-time scan would need n^3
matrix products and only pays on a GPU).  float16 is computed in float32 (one cast copy each way).
The GPU kernels for this scan are not written yet: the CUDA backends raise BackendUnavailable.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _backends
from ._arrays import as_operand, check_same_place, give_back

_HOST = ("cpu", "reference")


@njit(parallel=True, cache=True, fastmath={"contract"})
def _forward_cpu(A, x, h0, out, reverse):
    B, T, n = x.shape
    shared = np.int64(0 if A.shape[0] > 1 else 1)  # one A for every batch row
    for b in prange(B):
        ab = np.int64(b) * (1 - shared)
        h = h0[b].copy()
        for s in range(T):
            t = T - 1 - s if reverse else s
            At = A[ab, t if A.shape[1] > 1 else 0]
            new = np.empty(n, x.dtype)
            for i in range(n):
                acc = x[b, t, i]
                for j in range(n):
                    acc += At[i, j] * h[j]
                new[i] = acc
            h = new
            out[b, t] = h


@njit(parallel=True, cache=True, fastmath={"contract"})
def _backward_cpu(A, h, gh, h0, gx, gA, gh0, reverse):
    """gA has shape (B, T or 1, n, n): per-step outer products, or their sum over time."""
    B, T, n = h.shape
    shared = np.int64(0 if A.shape[0] > 1 else 1)
    for b in prange(B):
        ab = np.int64(b) * (1 - shared)
        g = np.zeros(n, h.dtype)
        for s in range(T):
            t = s if reverse else T - 1 - s      # walk against the forward's direction
            nxt = t - 1 if reverse else t + 1    # the step that read h_t
            if 0 <= nxt < T:
                An = A[ab, nxt if A.shape[1] > 1 else 0]
                new = np.empty(n, h.dtype)
                for i in range(n):
                    acc = gh[b, t, i]
                    for j in range(n):
                        acc += np.conj(An[j, i]) * g[j]
                    new[i] = acc
                g = new
            else:
                g = gh[b, t].copy()
            gx[b, t] = g
            prev = t + 1 if reverse else t - 1
            hp = h[b, prev] if 0 <= prev < T else h0[b]
            k = t if gA.shape[1] > 1 else 0
            for i in range(n):
                for j in range(n):
                    gA[b, k, i, j] += g[i] * np.conj(hp[j])
        first = T - 1 if reverse else 0
        A0 = A[ab, first if A.shape[1] > 1 else 0]
        for i in range(n):
            gh0[b, i] = 0
            for j in range(n):
                gh0[b, i] += np.conj(A0[j, i]) * g[j]


def _reference_forward(A, x, h0, reverse):
    acc = np.complex128 if np.iscomplexobj(A) or np.iscomplexobj(x) else np.float64
    A, x, h = A.astype(acc), x.astype(acc), h0.astype(acc).copy()
    A = np.broadcast_to(A, x.shape[:1] + A.shape[1:])  # a batch-shared A stays one copy
    out = np.empty(x.shape, acc)
    T = x.shape[1]
    for s in range(T):
        t = T - 1 - s if reverse else s
        At = A[:, t if A.shape[1] > 1 else 0]
        h = np.einsum("bij,bj->bi", At, h) + x[:, t]
        out[:, t] = h
    return out


def _reference_backward(A, h, gh, h0, reverse):
    acc = np.complex128 if np.iscomplexobj(A) or np.iscomplexobj(h) else np.float64
    A, h, gh, h0 = (v.astype(acc) for v in (A, h, gh, h0))
    B, T, n = h.shape
    A = np.broadcast_to(A, (B,) + A.shape[1:])
    gx = np.zeros_like(h)
    gA = np.zeros((B, A.shape[1]) + A.shape[2:], acc)
    g = np.zeros((B, n), acc)
    order = range(T) if reverse else range(T - 1, -1, -1)
    for t in order:
        nxt = t - 1 if reverse else t + 1
        g = gh[:, t] + (np.einsum("bji,bj->bi", A[:, nxt if A.shape[1] > 1 else 0].conj(), g) if 0 <= nxt < T else 0)
        gx[:, t] = g
        prev = t + 1 if reverse else t - 1
        hp = h[:, prev] if 0 <= prev < T else h0
        gA[:, t if A.shape[1] > 1 else 0] += g[:, :, None] * hp.conj()[:, None, :]
    first = T - 1 if reverse else 0
    gh0 = np.einsum("bji,bj->bi", A[:, first if A.shape[1] > 1 else 0].conj(), g)
    return gx, gA, gh0


def _select(backend, on_gpu):
    name = backend or ("cupy" if on_gpu else "cpu")
    if name in ("cupy", "numba"):
        raise _backends.BackendUnavailable(f"matrix_linear_scan has no {name} (CUDA) kernels yet (issue #8); "
                                           f"use host arrays with backend='cpu'")
    if name not in _HOST:
        raise ValueError(f"unknown backend {name!r}; matrix_linear_scan runs on 'cpu' or 'reference'")
    if on_gpu:
        raise ValueError("matrix_linear_scan runs on host arrays only for now (no CUDA kernels yet, issue #8)")
    return name


def _prepare(A, x, h0, names):
    """Broadcast to (B, T|1, n, n), (B, T, n), (B, n) contiguous arrays of the working dtype."""
    if x.ndim < 2:
        raise ValueError(f"{names[1]} must have shape (..., T, n), got {x.shape}")
    *lead, T, n = x.shape
    if A.ndim < 3 or A.shape[-2:] != (n, n) or A.shape[-3] not in (1, T):
        raise ValueError(f"{names[0]} must have shape (..., T, n, n) or (..., 1, n, n) with n = {n} and T = {T}, "
                         f"got {A.shape}")
    try:
        lead_b = np.broadcast_shapes(tuple(lead), A.shape[:-3], () if h0 is None else h0.shape[:-1])
    except ValueError:
        raise ValueError(f"the leading dims of {names[0]} {A.shape[:-3]}, {names[1]} {tuple(lead)} and h0 do not "
                         f"broadcast") from None
    if h0 is not None and h0.shape[-1:] != (n,):
        raise ValueError(f"h0 must have shape (..., {n}), got {h0.shape}")
    dt = np.result_type(A, x, *(() if h0 is None else (h0,)))
    if dt.kind not in "fc":
        raise TypeError(f"matrix_linear_scan needs floating-point or complex data, got {dt}; cast first")
    work = np.float32 if dt == np.float16 else dt
    Bn = int(np.prod(lead_b)) if lead_b else 1
    if np.prod(A.shape[:-3], dtype=int) == 1:  # one A for the whole batch: not materialised per batch row
        Ab = np.ascontiguousarray(A.reshape((1,) + A.shape[-3:]), work)
    else:
        Ab = np.ascontiguousarray(np.broadcast_to(A, lead_b + A.shape[-3:]).reshape(Bn, *A.shape[-3:]), work)
    xb = np.ascontiguousarray(np.broadcast_to(x, lead_b + (T, n)).reshape(Bn, T, n), work)
    hb = (np.zeros((Bn, n), work) if h0 is None else
          np.ascontiguousarray(np.broadcast_to(h0, lead_b + (n,)).reshape(Bn, n), work))
    return Ab, xb, hb, lead_b, dt


def _host(v, name):
    op = as_operand(v, name)
    return op, op.array


def matrix_linear_scan(A, x, h0=None, *, reverse=False, backend=None):
    """``h_t = A_t h_{t-1} + x_t`` for x (..., T, n), A (..., T or 1, n, n), h0 (..., n) (see module doc)."""
    xo, xa = _host(x, "x")
    Ao, Aa = _host(A, "A")
    ho = None if h0 is None else as_operand(h0, "h0")
    check_same_place(xo, Ao, ho)
    name = _select(backend, xo.on_gpu)
    Ab, xb, hb, lead, dt = _prepare(Aa, xa, None if ho is None else ho.array, ("A", "x"))
    if xb.shape[1] == 0:
        out = np.empty_like(xb)
    elif name == "reference":
        out = _reference_forward(Ab, xb, hb, reverse)
    else:
        out = np.empty_like(xb)
        _forward_cpu(Ab, xb, hb, out, bool(reverse))
    return give_back(out.reshape(lead + xb.shape[1:]).astype(dt, copy=False), xo)


def _reduce(g, shape):
    """Sum ``g`` down to ``shape`` (undo broadcasting)."""
    extra = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(extra))) if extra else g
    axes = tuple(i for i, (s, k) in enumerate(zip(shape, g.shape)) if s == 1 and k != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def matrix_linear_scan_backward(A, h, grad_h, h0=None, *, reverse=False, backend=None):
    """``(grad_A, grad_x, grad_h0)`` of :func:`matrix_linear_scan` (formulas in the module doc)."""
    ho_, ha = _host(h, "h")
    Ao, Aa = _host(A, "A")
    go, ga = _host(grad_h, "grad_h")
    h0o = None if h0 is None else as_operand(h0, "h0")
    check_same_place(ho_, Ao, go, h0o)
    name = _select(backend, ho_.on_gpu)
    if ga.shape != ha.shape:
        raise ValueError(f"grad_h must have h's shape {ha.shape}, got {ga.shape}")
    Ab, hb, h0b, lead, dt = _prepare(Aa, ha, None if h0o is None else h0o.array, ("A", "h"))
    gb = np.ascontiguousarray(np.broadcast_to(ga, ha.shape).reshape(hb.shape), hb.dtype)
    if hb.shape[1] == 0:
        gx, gA, gh0 = np.empty_like(hb), np.zeros(hb.shape[:1] + Ab.shape[1:], hb.dtype), np.zeros_like(h0b)
    elif name == "reference":
        gx, gA, gh0 = _reference_backward(Ab, hb, gb, h0b, reverse)
    else:
        gx, gA, gh0 = np.empty_like(hb), np.zeros(hb.shape[:1] + Ab.shape[1:], hb.dtype), np.empty_like(h0b)
        _backward_cpu(Ab, hb, gb, h0b, gx, gA, gh0, bool(reverse))
    gA = _reduce(gA.reshape(lead + Ab.shape[1:]), Aa.shape)
    if np.iscomplexobj(gA) and not np.iscomplexobj(Aa):
        gA = gA.real  # a real A's gradient is the real part (PyTorch's convention)
    gx = gx.reshape(lead + hb.shape[1:]).astype(dt, copy=False)
    gh0 = None if h0o is None else _reduce(gh0.reshape(lead + (hb.shape[-1],)), h0o.array.shape).astype(
        h0o.array.dtype, copy=False)
    back = lambda v: None if v is None else give_back(np.ascontiguousarray(v), ho_)  # noqa: E731
    return back(gA.astype(Aa.dtype, copy=False)), back(gx), back(gh0)
