"""The ground truth: the linear scan as a plain sequential loop in float64 / complex128.

Forward, along ``axis`` with ``T = x.shape[axis]``::

    h[t] = a[t] * h[t-1] + x[t]        t = 0, 1, ..., T-1,   h[-1] = h0 (0 when h0 is None)

and with ``reverse=True``::

    h[t] = a[t] * h[t+1] + x[t]        t = T-1, ..., 0,      h[T] = h0

Backward (forward direction; the reverse one is its mirror image), for ``L(h)`` with ``grad_h = dL/dh``
and PyTorch's convention for complex numbers (gradients are conjugate Wirtinger derivatives)::

    g[t]      = grad_h[t] + conj(a[t+1]) * g[t+1]     g[T] = 0        (grad_x = g)
    grad_a[t] = g[t] * conj(h[t-1])                   h[-1] = h0 (or 0)
    grad_h0   = conj(a[0]) * g[0]

With ``resets`` (booleans broadcastable to x), the carried state is dropped where ``resets[t]`` is true:
``h[t] = x[t]``, i.e. ``a[t]`` reads as 0, in the forward and in every formula of the backward (no
gradient crosses a reset, ``grad_a[t] = 0`` there, and ``grad_h0 = 0`` when ``resets[0]``).  Dropped
means selected, not multiplied by 0: an inf or NaN state (or h0, or gradient) before a reset does not
reach past it.

``grad_a`` and ``grad_h0`` are summed over the dimensions along which ``a`` and ``h0`` were broadcast;
for a real ``a`` (or ``h0``) with complex data they are the real part, the gradient of a real parameter.

Every other backend is tested against these functions.  They take NumPy arrays (or anything
``numpy.asarray`` accepts) and return NumPy arrays in float64 / complex128.

>>> import numpy as np
>>> linear_scan(np.array([0.5, 0.5, 0.5]), np.array([1.0, 1.0, 1.0]))
array([1.  , 1.5 , 1.75])
"""

from __future__ import annotations

import numpy as np

from ._problem import one_at_a_time, parts, run_backward


def _wide(*arrays):
    return np.complex128 if any(np.iscomplexobj(v) for v in arrays if v is not None) else np.float64


def scan_last_axis(a, x, h0=None, resets=None):
    """The forward loop with time on the last axis; ``a`` and ``resets`` broadcast to x, ``h0`` to
    ``x.shape[:-1]``."""
    wide = _wide(a, x, h0)
    x = np.asarray(x, dtype=wide)
    a = np.broadcast_to(np.asarray(a, dtype=wide), x.shape)
    r = None if resets is None else np.broadcast_to(resets, x.shape)
    h = np.zeros(x.shape[:-1], wide)
    if h0 is not None:
        h[...] = h0
    out = np.empty(x.shape, wide)
    for t in range(x.shape[-1]):
        h = a[..., t] * h + x[..., t]
        if r is not None:  # the state dropped: h = x (selected; 0 * inf would be NaN)
            h = np.where(r[..., t], x[..., t], h)
        out[..., t] = h
    return out


def scan_backward_last_axis(a, h, grad_h, h0=None, resets=None):
    """The backward loop with time on the last axis: ``(grad_a, grad_x, grad_h0)`` at full shape."""
    wide = _wide(a, h, grad_h, h0)
    h = np.asarray(h, dtype=wide)
    grad_h = np.asarray(grad_h, dtype=wide)
    a = np.broadcast_to(np.asarray(a, dtype=wide), h.shape)
    r = None if resets is None else np.broadcast_to(resets, h.shape)
    h_init = np.zeros(h.shape[:-1], wide)
    if h0 is not None:
        h_init[...] = h0
    grad_x = np.empty(h.shape, wide)
    grad_a = np.empty(h.shape, wide)
    g = np.zeros(h.shape[:-1], wide)
    coef = np.zeros(h.shape[:-1], wide)
    T = h.shape[-1]
    for t in range(T - 1, -1, -1):
        g = grad_h[..., t] + coef * g
        if r is not None and t + 1 < T:  # a[t + 1] reads as 0: nothing flows back from t + 1 (selected)
            g = np.where(r[..., t + 1], grad_h[..., t], g)
        grad_x[..., t] = g
        grad_a[..., t] = g * np.conj(h[..., t - 1] if t > 0 else h_init)
        coef = np.conj(a[..., t])
    grad_h0 = coef * g
    if r is not None:  # a reads as 0 there: its gradient is 0 (set, not multiplied), and none reaches h0
        grad_a[r] = 0
        if T:
            grad_h0 = np.where(r[..., 0], 0, grad_h0)
    return grad_a, grad_x, grad_h0


def _weak(v) -> bool:
    return isinstance(v, (int, float, complex)) and not isinstance(v, np.generic)


def _sum_to(g, shape):
    """Sum g over the leading and size-1 dims that broadcasting added to reach g.shape from shape."""
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead else g
    axes = tuple(d for d, n in enumerate(shape) if n == 1 and g.shape[d] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _time_last(r, shape, axis, reverse):
    """``resets`` broadcast to ``shape`` with time moved last (and reversed), or None."""
    if r is None:
        return None
    r = np.moveaxis(np.broadcast_to(np.asarray(r, dtype=bool), shape), axis, -1)
    return r[..., ::-1] if reverse else r


def linear_scan(a, x, h0=None, *, axis=-1, reverse=False, resets=None):
    """h with h[t] = a[t] * h[t-1] + x[t] along ``axis`` (see the module docstring), as float64/complex128."""
    x = np.asarray(x)
    a = np.broadcast_to(np.asarray(a), x.shape)
    xs, as_ = np.moveaxis(x, axis, -1), np.moveaxis(a, axis, -1)
    if reverse:
        xs, as_ = xs[..., ::-1], as_[..., ::-1]
    h = scan_last_axis(as_, xs, h0, _time_last(resets, x.shape, axis, reverse))
    if reverse:
        h = h[..., ::-1]
    return np.ascontiguousarray(np.moveaxis(h, -1, axis))


def linear_scan_backward(a, h, grad_h, h0=None, *, axis=-1, reverse=False, resets=None):
    """``(grad_a, grad_x, grad_h0)`` of ``linear_scan`` (see the module docstring)."""
    h = np.asarray(h)
    a_arr = np.asarray(a)
    a_full = np.broadcast_to(a_arr, h.shape)
    hs, gs, as_ = (np.moveaxis(v, axis, -1) for v in (h, np.asarray(grad_h), a_full))
    if reverse:
        hs, gs, as_ = hs[..., ::-1], gs[..., ::-1], as_[..., ::-1]
    ga, gx, gh0 = scan_backward_last_axis(as_, hs, gs, h0, _time_last(resets, h.shape, axis, reverse))
    if reverse:
        ga, gx = ga[..., ::-1], gx[..., ::-1]
    ga, gx = np.moveaxis(ga, -1, axis), np.moveaxis(gx, -1, axis)
    grad_a = _sum_to(ga, a_arr.shape).reshape(a_arr.shape)
    grad_h0 = None if h0 is None else _sum_to(gh0, np.shape(h0)).reshape(np.shape(h0))
    # a real parameter's gradient is the real part (as the public API returns it, PyTorch's convention);
    # a Python scalar is "weak": it takes the computation's type
    if a_arr.dtype.kind != "c" and not _weak(a):
        grad_a = grad_a.real
    if grad_h0 is not None and np.asarray(h0).dtype.kind != "c" and not _weak(h0):
        grad_h0 = grad_h0.real
    return grad_a, np.ascontiguousarray(gx), grad_h0


# ---- the "reference" backend: the same loops, run on a planned problem (host arrays only) ----

RESETS = True  # implements ``resets`` (see parscan.scan)


def _view4(s, shape):
    """A NumPy view of a canonical operand over the index space ``shape``."""
    item = s.buf.itemsize
    return np.lib.stride_tricks.as_strided(s.buf[s.off:], shape, [v * item for v in s.strides],
                                           writeable=s.buf.flags.writeable)


def forward(problem):
    for part in parts(problem):  # (one, unless the layout has more than three channel groups)
        _forward(part)


def backward(problem):
    run_backward(one_at_a_time(_backward), problem)  # part by part (block by block for a blocked grad_a)


def _forward(problem):
    shape = problem.shape
    a, x = _view4(problem.a, shape), _view4(problem.x, shape)
    h0 = None if problem.h0 is None else _view4(problem.h0, shape[:3] + (1,))[..., 0]
    r = None if problem.resets is None else _view4(problem.resets, shape)
    _view4(problem.out, shape)[...] = scan_last_axis(a, x, h0, r)


def _backward(problem):
    shape = problem.shape
    a, h, gh = (_view4(s, shape) for s in (problem.a, problem.h, problem.grad_h))
    h0 = None if problem.h0 is None else _view4(problem.h0, shape[:3] + (1,))[..., 0]
    r = None if problem.resets is None else _view4(problem.resets, shape)
    ga, gx, gh0 = scan_backward_last_axis(a, h, gh, h0, r)
    _view4(problem.grad_x, shape)[...] = gx
    if problem.grad_a.strides[3] == 0:
        _view4(problem.grad_a, shape[:3] + (1,))[...] = ga.sum(axis=-1, keepdims=True)
    else:
        _view4(problem.grad_a, shape)[...] = ga
    if problem.grad_h0 is not None:
        _view4(problem.grad_h0, shape[:3] + (1,))[..., 0] = gh0
