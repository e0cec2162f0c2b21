"""The linear scan with dense n x n coefficients: ``h_t = A_t h_{t-1} + x_t`` (the engine of DEER).

``x`` has shape (..., T, n), ``A`` (..., T, n, n) or (..., 1, n, n) (constant in time), leading dims
broadcast against x's; ``h0`` (..., n) broadcasts too.  ``reverse=True`` runs
``h_t = A_t h_{t+1} + x_t`` from ``h_T = h0``.  The adjoint (forward direction)::

    g_t = grad_h_t + A_{t+1}^H g_{t+1}          (g_T = 0)
    grad_x_t = g_t,   grad_A_t = g_t h_{t-1}^H,   grad_h0 = A_0^H g_0

(PyTorch's convention for complex numbers; grad_A is summed over what A was broadcast along).

``resets`` (issue #18; bool, broadcastable to x's shape without its last axis): A_t reads as 0 where
they are true, in the forward and in every formula of the adjoint (grad_A_t = 0 there).  The host
backends take them (one byte per batch row and step at most, never times n); the CUDA kernels not yet.

Backends:

- ``reference``: a float64 / complex128 loop, the ground truth;
- ``cpu``: Numba, parallel over the batch of leading dims and sequential in time (n^2 work a step;
  a parallel-in-time scan needs n^3 matrix products and pays only with thousands of threads);
- ``cupy`` and ``numba``: the chunked parallel-in-time scan of :mod:`parscan.kernels.matrix_launch`
  (one kernel in ``scan.cu`` and its Numba twin).  Operands go in as views: broadcast leading dims
  and a time-constant A are zero strides, never materialised (leading dims that cannot be merged into
  one batch stride are copied once).  The backward is the same scan in reversed time; grad_A is
  one elementwise product per step, or one batched matrix product when A is constant in time.

n = 1 runs as the elementwise :func:`parscan.linear_scan` (except on ``reference``).  float16 is
computed in float32 (one cast copy each way); operands of another dtype than the result's are cast
once.
"""

from __future__ import annotations

import contextlib
import importlib
import math

import numpy as np
from numba import njit, prange

from . import _backends
from ._arrays import array_module, as_flags, as_operand, check_same_place, give_back
from ._problem import _as_strided
from .kernels import matrix_launch
from .scan import linear_scan, linear_scan_backward

_HOST = ("cpu", "reference")
_CUDA = {"cupy": "parscan.kernels.cupy_scan", "numba": "parscan.kernels.numba_matrix"}


@njit(parallel=True, cache=True, fastmath={"contract"})
def _forward_cpu(A, x, h0, out, reverse, R):
    """``R`` (bool, (B or 1, T or 1)): the resets, where A reads as 0 (``h_t = x_t``); (1, 1) False for none."""
    B, T, n = x.shape
    shared = np.int64(0 if A.shape[0] > 1 else 1)  # one A for every batch row
    r_shared = np.int64(0 if R.shape[0] > 1 else 1)
    for b in prange(B):
        ab = np.int64(b) * (1 - shared)
        rb = np.int64(b) * (1 - r_shared)
        h = h0[b].copy()
        for s in range(T):
            t = T - 1 - s if reverse else s
            At = A[ab, t if A.shape[1] > 1 else 0]
            reset = R[rb, t if R.shape[1] > 1 else 0]
            new = np.empty(n, x.dtype)
            for i in range(n):
                acc = x[b, t, i]
                if not reset:
                    for j in range(n):
                        acc += At[i, j] * h[j]
                new[i] = acc
            h = new
            out[b, t] = h


@njit(parallel=True, cache=True, fastmath={"contract"})
def _backward_cpu(A, h, gh, h0, gx, gA, gh0, reverse, R):
    """gA has shape (B, T or 1, n, n): per-step outer products, or their sum over time.  ``R``: the
    forward's resets (as in :func:`_forward_cpu`): A reads as 0 there, so no gradient crosses a reset
    and grad_A gets nothing from a reset step."""
    B, T, n = h.shape
    shared = np.int64(0 if A.shape[0] > 1 else 1)
    r_shared = np.int64(0 if R.shape[0] > 1 else 1)
    for b in prange(B):
        ab = np.int64(b) * (1 - shared)
        rb = np.int64(b) * (1 - r_shared)
        g = np.zeros(n, h.dtype)
        for s in range(T):
            t = s if reverse else T - 1 - s      # walk against the forward's direction
            nxt = t - 1 if reverse else t + 1    # the step that read h_t
            if 0 <= nxt < T and not R[rb, nxt if R.shape[1] > 1 else 0]:
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
            if R[rb, t if R.shape[1] > 1 else 0]:
                continue  # A_t reads as 0: grad_A_t = 0
            prev = t + 1 if reverse else t - 1
            hp = h[b, prev] if 0 <= prev < T else h0[b]
            k = t if gA.shape[1] > 1 else 0
            for i in range(n):
                for j in range(n):
                    gA[b, k, i, j] += g[i] * np.conj(hp[j])
        first = T - 1 if reverse else 0
        A0 = A[ab, first if A.shape[1] > 1 else 0]
        first_reset = R[rb, first if R.shape[1] > 1 else 0]
        for i in range(n):
            gh0[b, i] = 0
            if not first_reset:
                for j in range(n):
                    gh0[b, i] += np.conj(A0[j, i]) * g[j]


# One batch row, or a small problem, runs on one thread: a parallel launch would cost more than the
# work (and, on a machine whose cores are busy, it waits for a thread to be scheduled).  The same code.
SERIAL_BELOW = 1 << 14  # elements of the per-step products, B * T * n * n
_forward_cpu_serial = njit(cache=True, fastmath={"contract"})(_forward_cpu.py_func)
_backward_cpu_serial = njit(cache=True, fastmath={"contract"})(_backward_cpu.py_func)


def _serial(B, T, n):
    return B == 1 or B * T * n * n < SERIAL_BELOW


def _reference_forward(A, x, h0, reverse, R=None):
    acc = np.complex128 if np.iscomplexobj(A) or np.iscomplexobj(x) else np.float64
    A, x, h = A.astype(acc), x.astype(acc), h0.astype(acc).copy()
    A = np.broadcast_to(A, x.shape[:1] + A.shape[1:])  # a batch-shared A stays one copy
    out = np.empty(x.shape, acc)
    T = x.shape[1]
    for s in range(T):
        t = T - 1 - s if reverse else s
        At = _A_eff(A, R, t, x.shape[0])
        h = np.einsum("bij,bj->bi", At, h) + x[:, t]
        out[:, t] = h
    return out


def _A_eff(A, R, t, B):
    """A at step t with the steps where the resets ``R`` ((B or 1, T or 1) bool) are true read as 0."""
    At = A[:, t if A.shape[1] > 1 else 0]
    if R is None:
        return At
    r = np.broadcast_to(R[:, t if R.shape[1] > 1 else 0], (B,))
    return np.where(r[:, None, None], At.dtype.type(0), At)


def _reference_backward(A, h, gh, h0, reverse, R=None):
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
        g = gh[:, t] + (np.einsum("bji,bj->bi", _A_eff(A, R, nxt, B).conj(), g) if 0 <= nxt < T else 0)
        gx[:, t] = g
        prev = t + 1 if reverse else t - 1
        hp = h[:, prev] if 0 <= prev < T else h0
        keep = 1 if R is None else ~np.broadcast_to(R[:, t if R.shape[1] > 1 else 0], (B,))[:, None, None]
        gA[:, t if A.shape[1] > 1 else 0] += keep * (g[:, :, None] * hp.conj()[:, None, :])
    first = T - 1 if reverse else 0
    gh0 = np.einsum("bji,bj->bi", _A_eff(A, R, first, B).conj(), g)
    return gx, gA, gh0


def _select(backend, on_gpu):
    """``("host", name)`` or ``("cuda", module with matrix_pass)``."""
    name = backend or _backends.default(on_gpu)
    if name not in _HOST and name not in _CUDA:
        raise ValueError(f"unknown backend {name!r}; matrix_linear_scan runs on 'cupy', 'numba', 'cpu' or "
                         f"'reference' (or None for the default)")
    _backends.check_device(name, on_gpu)
    if name in _CUDA:
        st = _backends.status(name)
        if not st.available:
            raise _backends.BackendUnavailable(f"backend {name!r} is not available here: {st.reason}")
        return "cuda", importlib.import_module(_CUDA[name])
    return "host", name


def _check(A, x, h0, names):
    """``(lead, T, n, dtype, working dtype)`` of a call, or a clear error."""
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
    if n > matrix_launch.MAX_N:
        raise ValueError(f"n = {n} is more than the {matrix_launch.MAX_N} the scan supports; the matrix scan "
                         f"is meant for small n (1..64)")
    return lead_b, T, n, dt, np.dtype(np.float32 if dt == np.float16 else dt)


def _prepare(A, x, h0, lead_b, T, n, work):
    """Host: broadcast to (B, T|1, n, n), (B, T, n), (B, n) contiguous arrays of the working dtype."""
    Bn = math.prod(lead_b)
    if np.prod(A.shape[:-3], dtype=int) == 1:  # one A for the whole batch: not materialised per batch row
        Ab = np.ascontiguousarray(A.reshape((1,) + A.shape[-3:]), work)
    else:
        Ab = np.ascontiguousarray(np.broadcast_to(A, lead_b + A.shape[-3:]).reshape(Bn, *A.shape[-3:]), work)
    xb = np.ascontiguousarray(np.broadcast_to(x, lead_b + (T, n)).reshape(Bn, T, n), work)
    hb = (np.zeros((Bn, n), work) if h0 is None else
          np.ascontiguousarray(np.broadcast_to(h0, lead_b + (n,)).reshape(Bn, n), work))
    return Ab, xb, hb


_NO_RESETS = np.zeros((1, 1), np.bool_)  # the kernels' "no resets": one False for every step


def _resets_2d(r, lead_b, T, x_name):
    """Host resets as a (B or 1, T or 1) bool array over the flat batch: a view when they are shared by
    the whole batch, else one byte per (batch row, step) (never times n)."""
    want = tuple(lead_b) + (T,)
    try:
        ok = np.broadcast_shapes(r.shape, want) == want
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"resets has shape {r.shape}, which does not broadcast to {x_name}'s shape without its last "
                         f"(state) axis, {want}: e.g. shape (T,) = ({T},) for resets shared by the batch, or "
                         f"{want} per batch row")
    Tr = r.shape[-1] if r.ndim else 1
    if r.ndim <= 1 or math.prod(r.shape[:-1]) == 1:
        return r.reshape(1, Tr)
    return np.ascontiguousarray(np.broadcast_to(r, tuple(lead_b) + (Tr,)).reshape(math.prod(lead_b), Tr))


def _no_cuda_resets(ro):
    if ro is not None:
        raise NotImplementedError("resets are not implemented by the matrix scan's CUDA kernels yet (issue #18): "
                                  "run the matrix scan on host arrays (backend='cpu' or 'reference'), or fold "
                                  "the resets into A yourself: A * ~resets[..., None, None] (A with a full time "
                                  "axis)")


def _batched(xp, v, lead, tail, work):
    """CUDA: ``v`` in the working dtype, broadcast to ``lead + tail`` with the leading dims as one batch
    dim: a view where the strides allow it (a broadcast is a zero stride), else one copy."""
    v = xp.broadcast_to(v.astype(work, copy=False), lead + tail)
    k = len(lead)
    dims = [(m, st) for m, st in zip(v.shape[:k], v.strides[:k]) if m != 1]
    if (all(st % v.itemsize == 0 for st in v.strides)
            and all(dims[d][1] == dims[d + 1][0] * dims[d + 1][1] for d in range(len(dims) - 1))):
        return _as_strided(xp, v, (math.prod(lead),) + tail, (dims[-1][1] if dims else 0,) + v.strides[k:], False)
    return xp.ascontiguousarray(v).reshape((math.prod(lead),) + tail)


def _host(v, name):
    op = as_operand(v, name)
    return op, op.array


def _conj(v):
    return v.conj() if v.dtype.kind == "c" else v


def _device(op):
    """The data's device as the current one (scratch and results are allocated there); nothing for
    NumPy arrays (the CUDA simulator's)."""
    xp = array_module(op)
    return xp.cuda.Device(op.device) if xp is not np else contextlib.nullcontext()


def _as_given(op, v):
    """``v``, a view of ``op``'s converted array, as an argument that lands where ``op`` is: a
    simulator device array for simulator data (a bare NumPy array would be host data)."""
    return give_back(v, op) if op is not None and op.simulated else v


def _cuda_forward(impl, xp, A, x, h0, reverse, lead, T, n, work):
    out = xp.empty((math.prod(lead), T, n), work)
    matrix_launch.scan(impl.matrix_pass, xp, _batched(xp, A, lead, (T, n, n), work),
                       _batched(xp, x, lead, (T, n), work),
                       None if h0 is None else _batched(xp, h0, lead, (n,), work), out, reverse=reverse)
    return out


def _cuda_backward(impl, xp, A, h, gh, h0, reverse, lead, T, n, work):
    """``(grad_x, grad_A with A's time length, grad_h0)`` over the flat batch."""
    B = math.prod(lead)
    if T == 0:
        return (xp.empty((B, 0, n), work), xp.zeros((B, A.shape[-3], n, n), work),
                None if h0 is None else xp.zeros((B, n), work))
    Av = _batched(xp, A, lead, (T, n, n), work)
    hv, h0v = _batched(xp, h, lead, (T, n), work), None if h0 is None else _batched(xp, h0, lead, (n,), work)
    gx = xp.empty((B, T, n), work)
    # g_t = grad_h_t + A_{t+1}^H g_{t+1}: the scan in reversed time of A's conjugate transpose, one step on
    matrix_launch.scan(impl.matrix_pass, xp, Av.swapaxes(-1, -2), _batched(xp, gh, lead, (T, n), work), None, gx,
                       reverse=not reverse, shift=-1 if reverse else 1, conj=True)
    first = T - 1 if reverse else 0      # the step that read h0
    inner = slice(0, T - 1) if reverse else slice(1, T)
    prev = slice(1, T) if reverse else slice(0, T - 1)
    g_in, h_in, g0 = gx[:, inner], _conj(hv[:, prev]), gx[:, first]
    if A.shape[-3] == 1:  # sum over time of g_t h_{t-1}^H: one batched matrix product
        gA = xp.matmul(g_in.swapaxes(1, 2), h_in)
        if h0v is not None:
            gA += g0[:, :, None] * _conj(h0v)[:, None, :]
        gA = gA[:, None]
    else:
        gA = xp.empty((B, T, n, n), work)
        xp.multiply(g_in[..., :, None], h_in[..., None, :], out=gA[:, inner])
        gA[:, first] = 0 if h0v is None else g0[:, :, None] * _conj(h0v)[:, None, :]
    gh0 = None if h0v is None else xp.matmul(_conj(Av[:, first]).swapaxes(-1, -2), g0[..., None])[..., 0]
    return gx, gA, gh0


def matrix_linear_scan(A, x, h0=None, *, reverse=False, backend=None, resets=None):
    """``h_t = A_t h_{t-1} + x_t`` for x (..., T, n), A (..., T or 1, n, n), h0 (..., n) (see module doc).

    ``resets`` (bool, broadcastable to x's shape without its last axis, ``(..., T)``; typically (T,)):
    where true the carried state is dropped, ``h_t = x_t`` (A_t reads as 0; ``reverse``: the state from
    t+1 is dropped).  Host backends only (the CUDA kernels raise NotImplementedError for now).

    Returns h (x's shape broadcast with the leading dims of A and h0) in the caller's library, dtype
    the result type of A, x and h0.  n = 1 runs as the elementwise :func:`parscan.linear_scan`.
    """
    xo, xa = _host(x, "x")
    Ao, Aa = _host(A, "A")
    ho = None if h0 is None else as_operand(h0, "h0")
    ha = None if ho is None else ho.array
    ro = None if resets is None else as_flags(resets, "resets")
    check_same_place(xo, Ao, ho, ro)
    kind, impl = _select(backend, xo.on_gpu)
    lead, T, n, dt, work = _check(Aa, xa, ha, ("A", "x"))
    if ro is not None and kind != "cuda":
        R = _resets_2d(ro.array, lead, T, "x")
    if n == 1 and impl != "reference" and xa.shape[:-2] == lead:
        h = linear_scan(_as_given(Ao, Aa[..., 0]), _as_given(xo, xa), _as_given(ho, ha),
                        axis=-2, reverse=reverse, backend=backend,
                        resets=None if ro is None else _as_given(ro, ro.array[..., None]))
        return give_back(h, xo)
    if kind == "cuda":
        _no_cuda_resets(ro)
        with _device(xo):
            out = _cuda_forward(impl, array_module(xo), Aa, xa, ha, reverse, lead, T, n, work)
    else:
        Ab, xb, hb = _prepare(Aa, xa, ha, lead, T, n, work)
        if T == 0:
            out = np.empty_like(xb)
        elif impl == "reference":
            out = _reference_forward(Ab, xb, hb, reverse, None if ro is None else R)
        else:
            out = np.empty_like(xb)
            (_forward_cpu_serial if _serial(xb.shape[0], T, n) else _forward_cpu)(
                Ab, xb, hb, out, bool(reverse), _NO_RESETS if ro is None else R)
    return give_back(out.reshape(lead + (T, n)).astype(dt, copy=False), xo)


def _reduce(g, shape):
    """Sum ``g`` down to ``shape`` (undo broadcasting)."""
    extra = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(extra))) if extra else g
    axes = tuple(i for i, (s, k) in enumerate(zip(shape, g.shape)) if s == 1 and k != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def matrix_linear_scan_backward(A, h, grad_h, h0=None, *, reverse=False, backend=None, resets=None):
    """``(grad_A, grad_x, grad_h0)`` of :func:`matrix_linear_scan` (formulas in the module doc).

    grad_A has A's shape and dtype (summed over what A was broadcast along), grad_x h's shape,
    grad_h0 h0's shape (None without h0).  ``resets``: the forward's; A reads as 0 there, so no
    gradient crosses a reset and grad_A gets nothing from a reset step."""
    ho_, ha = _host(h, "h")
    Ao, Aa = _host(A, "A")
    go, ga = _host(grad_h, "grad_h")
    h0o = None if h0 is None else as_operand(h0, "h0")
    h0a = None if h0o is None else h0o.array
    ro = None if resets is None else as_flags(resets, "resets")
    check_same_place(ho_, Ao, go, h0o, ro)
    kind, impl = _select(backend, ho_.on_gpu)
    if ga.shape != ha.shape:
        raise ValueError(f"grad_h must have h's shape {ha.shape}, got {ga.shape}")
    lead, T, n, dt, work = _check(Aa, ha, h0a, ("A", "h"))
    if ro is not None and kind != "cuda":
        R = _resets_2d(ro.array, lead, T, "h")
    back = lambda v: None if v is None else give_back(v, ho_)  # noqa: E731
    if n == 1 and impl != "reference" and ha.shape[:-2] == lead:
        g_a, gx, gh0 = linear_scan_backward(_as_given(Ao, Aa[..., 0]), _as_given(ho_, ha), _as_given(go, ga),
                                            _as_given(h0o, h0a), axis=-2, reverse=reverse, backend=backend,
                                            resets=None if ro is None else _as_given(ro, ro.array[..., None]))
        return back(g_a[..., None]), back(gx), back(gh0)
    xp = array_module(ho_)
    if kind == "cuda":
        _no_cuda_resets(ro)
        with _device(ho_):
            gx, gA, gh0 = _cuda_backward(impl, xp, Aa, ha, ga, h0a, reverse, lead, T, n, work)
    else:
        Ab, hb, h0b = _prepare(Aa, ha, h0a, lead, T, n, work)
        gb = np.ascontiguousarray(np.broadcast_to(ga, ha.shape).reshape(hb.shape), hb.dtype)
        if T == 0:
            gx, gA, gh0 = np.empty_like(hb), np.zeros(hb.shape[:1] + Ab.shape[1:], work), np.zeros_like(h0b)
        elif impl == "reference":
            gx, gA, gh0 = _reference_backward(Ab, hb, gb, h0b, reverse, None if ro is None else R)
        else:
            gx, gA, gh0 = np.empty_like(hb), np.zeros(hb.shape[:1] + Ab.shape[1:], work), np.empty_like(h0b)
            kernel = _backward_cpu_serial if _serial(hb.shape[0], T, n) else _backward_cpu
            kernel(Ab, hb, gb, h0b, gx, gA, gh0, bool(reverse), _NO_RESETS if ro is None else R)
    gA = _reduce(gA.reshape(lead + gA.shape[1:]), Aa.shape)
    if gA.dtype.kind == "c" and Aa.dtype.kind != "c":
        gA = gA.real  # a real A's gradient is the real part (PyTorch's convention)
    gx = gx.reshape(lead + (T, n)).astype(dt, copy=False)
    gh0 = None if h0a is None else _reduce(gh0.reshape(lead + (n,)), h0a.shape).astype(h0a.dtype, copy=False)
    return (back(xp.ascontiguousarray(gA.astype(Aa.dtype, copy=False))), back(gx),
            back(None if gh0 is None else xp.ascontiguousarray(gh0)))
