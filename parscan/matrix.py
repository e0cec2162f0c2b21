"""The linear scan with dense n x n coefficients: ``h_t = A_t h_{t-1} + x_t`` (the engine of DEER).

``x`` has shape (..., T, n), ``A`` (..., T, n, n) or (..., 1, n, n) (constant in time), leading dims
broadcast against x's; ``h0`` (..., n) broadcasts too.  ``reverse=True`` runs
``h_t = A_t h_{t+1} + x_t`` from ``h_T = h0``.  The adjoint (forward direction)::

    g_t = grad_h_t + A_{t+1}^H g_{t+1}          (g_T = 0)
    grad_x_t = g_t,   grad_A_t = g_t h_{t-1}^H,   grad_h0 = A_0^H g_0

(PyTorch's convention for complex numbers; grad_A is summed over what A was broadcast along).

``resets`` (issue #18; bool, broadcastable to x's shape without its last axis): where they are true
the carried state is dropped, ``h_t = x_t`` (A_t reads as 0), in the forward and in every formula of
the adjoint (no gradient crosses a reset, grad_A_t = 0 there, grad_h0 = 0 when the first step resets).
Dropped, not multiplied by 0: a non-finite state or gradient does not cross a reset.  Every backend
takes them as a view (one byte per batch row and step at most, never times n, zero strides where
broadcast; resets whose leading dims fall into more than two groups of mergeable strides are copied
once to one byte per batch row and step).

Backends:

- ``reference``: a float64 / complex128 loop, the ground truth;
- ``cpu``: Numba, parallel over the batch of leading dims and sequential in time (n^2 work a step;
  a parallel-in-time scan needs n^3 matrix products and pays only with thousands of threads);
- ``cupy`` and ``numba``: the chunked parallel-in-time scan of :mod:`parscan.kernels.matrix_launch`
  (one kernel in ``scan.cu`` and its Numba twin; the kernel reads the resets).  Operands go in as
  views: broadcast leading dims and a time-constant A are zero strides, never materialised (leading
  dims that cannot be merged into one batch stride are copied once).  The backward is the same scan in
  reversed time; grad_A is one elementwise product per step, or one batched matrix product when A is
  constant in time (with resets, g and h selected to 0 at the reset steps first: two operand-sized
  temporaries).

``out=`` (forward) and ``out=(grad_A, grad_x, grad_h0)`` (backward) write the results into the caller's
arrays, with the checks of :func:`parscan.linear_scan` / :func:`parscan.linear_scan_backward`; the cpu
and CUDA backends compute h, grad_x and a full grad_A of the working dtype in place there (the others
are copied in).

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
from ._problem import _as_strided, _check_grad_outs, check_out
from ._threads import parallel_launch
from .kernels import matrix_launch
from .scan import _check_reverse, _grad_outs, _out_operand, linear_scan, linear_scan_backward

_HOST = ("cpu", "reference")
_CUDA = {"cupy": "parscan.kernels.cupy_scan", "numba": "parscan.kernels.numba_matrix"}


@njit(cache=True, inline="always")
def _reset_at(R, b, t):
    """The resets view ``R`` (bool, (Bo, Bi, T), batch row b at [b // Bi, b % Bi]; size-1 dims
    broadcast, so (1, 1, 1) False stands for none) at batch row b and step t."""
    Bi = R.shape[1]
    return R[b // Bi if R.shape[0] > 1 else 0, b % Bi, t if R.shape[2] > 1 else 0]


@njit(parallel=True, cache=True, fastmath={"contract"})
def _forward_cpu(A, x, h0, out, reverse, R):
    """``R``: the resets (see :func:`_reset_at`), where the state is dropped (``h_t = x_t``)."""
    B, T, n = x.shape
    shared = np.int64(0 if A.shape[0] > 1 else 1)  # one A for every batch row
    for b in prange(B):
        ab = np.int64(b) * (1 - shared)
        h = h0[b].copy()
        for s in range(T):
            t = T - 1 - s if reverse else s
            At = A[ab, t if A.shape[1] > 1 else 0]
            reset = _reset_at(R, b, t)
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
    for b in prange(B):
        ab = np.int64(b) * (1 - shared)
        g = np.zeros(n, h.dtype)
        for s in range(T):
            t = s if reverse else T - 1 - s      # walk against the forward's direction
            nxt = t - 1 if reverse else t + 1    # the step that read h_t
            if 0 <= nxt < T and not _reset_at(R, b, nxt):
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
            if _reset_at(R, b, t):
                continue  # A_t reads as 0: grad_A_t = 0
            prev = t + 1 if reverse else t - 1
            hp = h[b, prev] if 0 <= prev < T else h0[b]
            k = t if gA.shape[1] > 1 else 0
            for i in range(n):
                for j in range(n):
                    gA[b, k, i, j] += g[i] * np.conj(hp[j])
        first = T - 1 if reverse else 0
        A0 = A[ab, first if A.shape[1] > 1 else 0]
        first_reset = _reset_at(R, b, first)
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


def _reset_rows(R, t, B):
    """The resets view ``R`` ((Bo, Bi, T) bool, or None) at step t, as a (B,) bool array (or None)."""
    return None if R is None else np.reshape(R[:, :, t], (B,))


def _reference_forward(A, x, h0, reverse, R=None):
    acc = np.complex128 if np.iscomplexobj(A) or np.iscomplexobj(x) else np.float64
    A, x, h = A.astype(acc), x.astype(acc), h0.astype(acc).copy()
    A = np.broadcast_to(A, x.shape[:1] + A.shape[1:])  # a batch-shared A stays one copy
    out = np.empty(x.shape, acc)
    B, T = x.shape[:2]
    for s in range(T):
        t = T - 1 - s if reverse else s
        h = np.einsum("bij,bj->bi", A[:, t if A.shape[1] > 1 else 0], h) + x[:, t]
        r = _reset_rows(R, t, B)
        if r is not None:  # the state dropped (selected, not multiplied by 0: 0 * inf is NaN)
            h = np.where(r[:, None], x[:, t], h)
        out[:, t] = h
    return out


def _reference_backward(A, h, gh, h0, reverse, R=None):
    acc = np.complex128 if np.iscomplexobj(A) or np.iscomplexobj(h) else np.float64
    A, h, gh, h0 = (v.astype(acc) for v in (A, h, gh, h0))
    B, T, n = h.shape
    A = np.broadcast_to(A, (B,) + A.shape[1:])
    At = lambda t: A[:, t if A.shape[1] > 1 else 0]  # noqa: E731
    gx = np.zeros_like(h)
    gA = np.zeros((B, A.shape[1]) + A.shape[2:], acc)
    g = np.zeros((B, n), acc)
    order = range(T) if reverse else range(T - 1, -1, -1)
    for t in order:
        nxt = t - 1 if reverse else t + 1
        if 0 <= nxt < T:
            carried = np.einsum("bji,bj->bi", At(nxt).conj(), g)
            r = _reset_rows(R, nxt, B)
            g = gh[:, t] + (carried if r is None else np.where(r[:, None], 0, carried))
        else:
            g = gh[:, t].copy()
        gx[:, t] = g
        prev = t + 1 if reverse else t - 1
        hp = h[:, prev] if 0 <= prev < T else h0
        term = g[:, :, None] * hp.conj()[:, None, :]
        r = _reset_rows(R, t, B)
        gA[:, t if A.shape[1] > 1 else 0] += term if r is None else np.where(r[:, None, None], 0, term)
    first = T - 1 if reverse else 0
    gh0 = np.einsum("bji,bj->bi", At(first).conj(), g)
    r = _reset_rows(R, first, B)
    return gx, gA, gh0 if r is None else np.where(r[:, None], 0, gh0)


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


_NO_RESETS = np.zeros((1, 1, 1), np.bool_)  # the cpu kernels' "no resets": one False for every row and step
_NO_RESETS.setflags(write=False)  # read-only, as the resets views are (one compiled signature for both)


def _stride_groups(v, k):
    """``(size, stride)`` of the runs of ``v``'s first ``k`` dims whose strides merge into one dim (size-1
    dims skipped)."""
    groups = []
    for m, st in zip(v.shape[:k], v.strides[:k]):
        if m == 1:
            continue
        if groups and groups[-1][1] == m * st:
            groups[-1] = (groups[-1][0] * m, st)
        else:
            groups.append((m, st))
    return groups


def _merged_stride(v, k):
    """The one stride of ``v``'s first ``k`` dims taken as one flat dim (0 for none of size > 1), or None
    when their strides do not merge."""
    groups = _stride_groups(v, k)
    return None if len(groups) > 1 else groups[0][1] if groups else 0


def _resets_view(xp, r, lead_b, T, x_name):
    """The resets ``r`` (bool, broadcastable to ``lead_b + (T,)``) as a read-only (Bo, Bi, T) view over the
    flat batch (Bo * Bi = B; batch row b at ``[b // Bi, b % Bi]``), zero strides where broadcast: a view
    whenever the leading dims fall into at most two groups of mergeable strides (any resets of shape
    (T,), (B, T), (B1, 1, T), (1, B2, T), ...), else one copy of one byte per batch row and step (never
    times n).  A clear error when ``r`` does not broadcast."""
    want = tuple(lead_b) + (T,)
    try:
        ok = np.broadcast_shapes(tuple(r.shape), want) == want
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"resets has shape {tuple(r.shape)}, which does not broadcast to {x_name}'s shape without "
                         f"its last (state) axis, {want}: e.g. shape (T,) = ({T},) for resets shared by the batch, "
                         f"or {want} per batch row")
    v = xp.broadcast_to(r, want)
    groups = _stride_groups(v, len(want) - 1)
    if len(groups) > 2:  # rare (three or more leading dims in an unmergeable pattern): one byte per row and step
        v = xp.ascontiguousarray(v).reshape(math.prod(lead_b), T)
        groups = [(v.shape[0], v.strides[0])]
    (Bo, so), (Bi, si) = [(1, 0)] * (2 - len(groups)) + groups
    return _as_strided(xp, v, (Bo, Bi, T), (so, si, v.strides[-1]), False)


def _batched(xp, v, lead, tail, work):
    """CUDA: ``v`` in the working dtype, broadcast to ``lead + tail`` with the leading dims as one batch
    dim: a view where the strides allow it (a broadcast is a zero stride), else one copy."""
    v = xp.broadcast_to(v.astype(work, copy=False), lead + tail)
    stride = _merged_stride(v, len(lead)) if all(st % v.itemsize == 0 for st in v.strides) else None
    if stride is not None:
        return _as_strided(xp, v, (math.prod(lead),) + tail, (stride,) + v.strides[len(lead):], False)
    return xp.ascontiguousarray(v).reshape((math.prod(lead),) + tail)


def _out_view(xp, arr, lead, tail, work):
    """A caller's output array (shape ``lead + tail``) as a writable (B,) + tail view in the working dtype
    for a kernel to write into, or None (then the result is computed apart and copied in)."""
    if arr is None or arr.dtype != work or any(st % arr.itemsize for st in arr.strides):
        return None
    stride = _merged_stride(arr, len(lead))
    if stride is None:
        return None
    return _as_strided(xp, arr, (math.prod(lead),) + tuple(tail), (stride,) + arr.strides[len(lead):], True)


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


def _cuda_forward(impl, xp, A, x, h0, reverse, lead, T, n, work, R=None, out=None):
    """h over the flat batch, written into ``out`` ((B, T, n) of the working dtype) when given."""
    out = xp.empty((math.prod(lead), T, n), work) if out is None else out
    matrix_launch.scan(impl.matrix_pass, xp, _batched(xp, A, lead, (T, n, n), work),
                       _batched(xp, x, lead, (T, n), work),
                       None if h0 is None else _batched(xp, h0, lead, (n,), work), out, reverse=reverse, resets=R)
    return out


def _cuda_backward(impl, xp, A, h, gh, h0, reverse, lead, T, n, work, R=None, gx=None, gA=None):
    """``(grad_x, grad_A with A's time length, grad_h0)`` over the flat batch; ``R``: the resets view
    (see :func:`_resets_view`); ``gx`` / ``gA``: (B, T, n) / (B, T, n, n) arrays to write into, or None."""
    B = math.prod(lead)
    if T == 0:
        return (xp.empty((B, 0, n), work), xp.zeros((B, A.shape[-3], n, n), work),
                None if h0 is None else xp.zeros((B, n), work))
    Av = _batched(xp, A, lead, (T, n, n), work)
    hv, h0v = _batched(xp, h, lead, (T, n), work), None if h0 is None else _batched(xp, h0, lead, (n,), work)
    gx = xp.empty((B, T, n), work) if gx is None else gx
    # g_t = grad_h_t + A_{t+1}^H g_{t+1}: the scan in reversed time of A's conjugate transpose, one step on;
    # the kernel reads the resets at t + 1, where A_{t+1} is dropped
    matrix_launch.scan(impl.matrix_pass, xp, Av.swapaxes(-1, -2), _batched(xp, gh, lead, (T, n), work), None, gx,
                       reverse=not reverse, shift=-1 if reverse else 1, conj=True, resets=R)
    first = T - 1 if reverse else 0      # the step that read h0
    inner = slice(0, T - 1) if reverse else slice(1, T)
    prev = slice(1, T) if reverse else slice(0, T - 1)
    g_in, h_in, g0 = gx[:, inner], _conj(hv[:, prev]), gx[:, first]
    zero = np.dtype(work).type(0)

    def drop(v, steps):
        """``v`` ((B, ...) with the steps' axis next when ``steps`` is a slice) with 0 where ``R[:, steps]``:
        selected, not multiplied (0 * inf is NaN)."""
        if R is None:
            return v
        r = R[:, :, steps]
        r = r.reshape(r.shape + (1,) * (v.ndim - r.ndim + 1))
        return xp.where(r, zero, v.reshape(R.shape[:2] + v.shape[1:])).reshape(v.shape)

    term0 = None if h0v is None else drop(g0[:, :, None] * _conj(h0v)[:, None, :], first)  # g_0 h0^H
    if A.shape[-3] == 1:  # sum over time of g_t h_{t-1}^H: one batched matrix product
        gA = xp.matmul(drop(g_in, inner).swapaxes(1, 2), drop(h_in, inner))
        if term0 is not None:
            gA += term0
        gA = gA[:, None]
    else:
        gA = xp.empty((B, T, n, n), work) if gA is None else gA
        xp.multiply(g_in[..., :, None], h_in[..., None, :], out=gA[:, inner])
        gA[:, first] = 0 if term0 is None else term0
        if R is not None:  # grad_A_t = 0 where A_t was dropped
            xp.copyto(gA.reshape(R.shape[:2] + gA.shape[1:]), zero, where=R[..., None, None])
    gh0 = None if h0v is None else drop(xp.matmul(_conj(Av[:, first]).swapaxes(-1, -2), g0[..., None])[..., 0], first)
    return gx, gA, gh0


def _deliver(value, op, user, back, computed_there=False):
    """A result as the caller gets it: copied into the caller's ``out`` array (``op``, its Operand;
    ``user``, the object given) unless it was ``computed_there``, or else handed back in the caller's
    library."""
    if op is None:
        return back(value)
    if not computed_there:
        op.array[...] = value
    return user


def matrix_linear_scan(A, x, h0=None, *, reverse=False, backend=None, resets=None, out=None):
    """``h_t = A_t h_{t-1} + x_t`` for x (..., T, n), A (..., T or 1, n, n), h0 (..., n) (see module doc).

    ``resets`` (bool, broadcastable to x's shape without its last axis, ``(..., T)``; typically (T,)):
    where true the carried state is dropped, ``h_t = x_t`` (A_t reads as 0; ``reverse``: the state from
    t+1 is dropped).  Every backend; never materialised.

    ``out``: where to write the result: the result's shape (x's, unless A or h0 broadcast its leading
    dims) and dtype, x's library and device, writable, not overlapping the inputs (``out=x`` scans in
    place).

    Returns h (x's shape broadcast with the leading dims of A and h0) in the caller's library, dtype
    the result type of A, x and h0 (``out`` itself when given).  n = 1 runs as the elementwise
    :func:`parscan.linear_scan`.
    """
    reverse = _check_reverse(reverse)
    xo, xa = _host(x, "x")
    Ao, Aa = _host(A, "A")
    ho = None if h0 is None else as_operand(h0, "h0")
    ha = None if ho is None else ho.array
    ro = None if resets is None else as_flags(resets, "resets")
    oo = _out_operand(out)
    check_same_place(xo, Ao, ho, ro, oo)
    kind, impl = _select(backend, xo.on_gpu)
    lead, T, n, dt, work = _check(Aa, xa, ha, ("A", "x"))
    xp = array_module(xo)
    R = None if ro is None else _resets_view(xp, ro.array, lead, T, "x")
    if oo is not None:
        check_out(oo, lead + (T, n), dt, [xa, Aa, ha, None if ro is None else ro.array])
    if n == 1 and impl != "reference" and xa.shape[:-2] == lead:
        h = linear_scan(_as_given(Ao, Aa[..., 0]), _as_given(xo, xa), _as_given(ho, ha),
                        axis=-2, reverse=reverse, backend=backend, out=None if oo is None else _as_given(oo, oo.array),
                        resets=None if ro is None else _as_given(ro, ro.array[..., None]))
        return out if oo is not None else give_back(h, xo)
    target = None if oo is None else _out_view(xp, oo.array, lead, (T, n), work)
    if kind == "cuda":
        with _device(xo):
            res = _cuda_forward(impl, xp, Aa, xa, ha, reverse, lead, T, n, work, R, target)
    else:
        Ab, xb, hb = _prepare(Aa, xa, ha, lead, T, n, work)
        if T == 0:
            res = np.empty_like(xb) if target is None else target
        elif impl == "reference":
            res = _reference_forward(Ab, xb, hb, reverse, R)
        else:
            res = np.empty_like(xb) if target is None else target
            serial = _serial(xb.shape[0], T, n)
            with contextlib.nullcontext() if serial else parallel_launch():
                (_forward_cpu_serial if serial else _forward_cpu)(Ab, xb, hb, res, bool(reverse),
                                                                  _NO_RESETS if R is None else R)
    if oo is not None:
        return _deliver(res.reshape(lead + (T, n)), oo, out, None, target is not None and res is target)
    return give_back(res.reshape(lead + (T, n)).astype(dt, copy=False), xo)


def _reduce(g, shape):
    """Sum ``g`` down to ``shape`` (undo broadcasting)."""
    extra = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(extra))) if extra else g
    axes = tuple(i for i, (s, k) in enumerate(zip(shape, g.shape)) if s == 1 and k != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def matrix_linear_scan_backward(A, h, grad_h, h0=None, *, reverse=False, backend=None, resets=None, out=None):
    """``(grad_A, grad_x, grad_h0)`` of :func:`matrix_linear_scan` (formulas in the module doc).

    grad_A has A's shape and dtype (summed over what A was broadcast along), grad_x h's shape (the
    forward's result shape), grad_h0 h0's shape (None without h0).  ``resets``: the forward's; A reads
    as 0 there, so no gradient crosses a reset and grad_A gets nothing from a reset step.
    ``out=(grad_A, grad_x, grad_h0)`` (each an array of that shape and dtype, or None) receives them, as
    :func:`parscan.linear_scan_backward`'s ``out=``: grad_x, and grad_A when A is a full array of the
    working dtype, are computed in place there (the others are copied in); the outputs must not
    overlap the inputs or each other."""
    reverse = _check_reverse(reverse)
    ho_, ha = _host(h, "h")
    Ao, Aa = _host(A, "A")
    go, ga = _host(grad_h, "grad_h")
    h0o = None if h0 is None else as_operand(h0, "h0")
    h0a = None if h0o is None else h0o.array
    ro = None if resets is None else as_flags(resets, "resets")
    outs = _grad_outs(out)
    check_same_place(ho_, Ao, go, h0o, ro, *outs)
    kind, impl = _select(backend, ho_.on_gpu)
    if ga.shape != ha.shape:
        raise ValueError(f"grad_h must have h's shape {ha.shape}, got {ga.shape}")
    lead, T, n, dt, work = _check(Aa, ha, h0a, ("A", "h"))
    xp = array_module(ho_)
    R = None if ro is None else _resets_view(xp, ro.array, lead, T, "h")
    if any(o is not None for o in outs):
        _check_grad_outs(outs, (Aa.shape, lead + (T, n), None if h0a is None else h0a.shape),
                         (Aa.dtype, dt, None if h0a is None else h0a.dtype),
                         [ha, ga, Aa, h0a, None if ro is None else ro.array], h0a is not None)
    back = lambda v: None if v is None else give_back(v, ho_)  # noqa: E731
    users = out if out is not None else (None, None, None)
    if n == 1 and impl != "reference" and ha.shape[:-2] == lead:
        given = None if out is None else tuple(
            None if op is None else _as_given(op, op.array[..., 0] if k == 0 else op.array) for k, op in enumerate(outs))
        g_a, gx, gh0 = linear_scan_backward(_as_given(Ao, Aa[..., 0]), _as_given(ho_, ha), _as_given(go, ga),
                                            _as_given(h0o, h0a), axis=-2, reverse=reverse, backend=backend,
                                            resets=None if ro is None else _as_given(ro, ro.array[..., None]),
                                            out=given)
        return tuple(u if op is not None else (None if v is None else back(v))
                     for v, op, u in zip((None if g_a is None else g_a[..., None], gx, gh0), outs, users))
    # the kernels' results go straight into out's grad_x, and grad_A when A is full (no reduction, no cast)
    gx_t = None if outs[1] is None else _out_view(xp, outs[1].array, lead, (T, n), work)
    full_A = tuple(Aa.shape) == tuple(lead) + (T, n, n) and Aa.dtype == work and T > 1
    gA_t = None if outs[0] is None or not full_A or impl == "reference" else \
        _out_view(xp, outs[0].array, lead, (T, n, n), work)
    if kind == "cuda":
        with _device(ho_):
            gx, gA, gh0 = _cuda_backward(impl, xp, Aa, ha, ga, h0a, reverse, lead, T, n, work, R, gx_t, gA_t)
    else:
        Ab, hb, h0b = _prepare(Aa, ha, h0a, lead, T, n, work)
        gb = np.ascontiguousarray(np.broadcast_to(ga, ha.shape).reshape(hb.shape), hb.dtype)
        if T == 0:
            gx, gA, gh0 = np.empty_like(hb), np.zeros(hb.shape[:1] + Ab.shape[1:], work), np.zeros_like(h0b)
        elif impl == "reference":
            gx, gA, gh0 = _reference_backward(Ab, hb, gb, h0b, reverse, R)
        else:
            gx = np.empty_like(hb) if gx_t is None else gx_t
            if gA_t is None:
                gA = np.zeros(hb.shape[:1] + Ab.shape[1:], work)
            else:
                gA = gA_t
                gA[...] = 0  # the kernel sums into it
            gh0 = np.empty_like(h0b)
            serial = _serial(hb.shape[0], T, n)
            with contextlib.nullcontext() if serial else parallel_launch():
                (_backward_cpu_serial if serial else _backward_cpu)(Ab, hb, gb, h0b, gx, gA, gh0, bool(reverse),
                                                                    _NO_RESETS if R is None else R)
    A_there, x_there = gA_t is not None and gA is gA_t, gx_t is not None and gx is gx_t
    if not A_there:
        gA = _reduce(gA.reshape(lead + gA.shape[1:]), Aa.shape)
        if gA.dtype.kind == "c" and Aa.dtype.kind != "c":
            gA = gA.real  # a real A's gradient is the real part (PyTorch's convention)
        gA = xp.ascontiguousarray(gA.astype(Aa.dtype, copy=False))
    if not x_there:
        gx = gx.reshape(lead + (T, n)).astype(dt, copy=False)
    gh0 = None if h0a is None else xp.ascontiguousarray(
        _reduce(gh0.reshape(lead + (n,)), h0a.shape).astype(h0a.dtype, copy=False))
    return (_deliver(gA, outs[0], users[0], back, A_there), _deliver(gx, outs[1], users[1], back, x_there),
            _deliver(gh0, outs[2], users[2], back))
