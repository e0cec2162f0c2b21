"""The public scans: adapt the arguments, plan, run a backend, hand the result back."""

from __future__ import annotations

import numpy as np

from . import _backends, _plans
from ._arrays import array_module, as_flags, as_operand, check_same_place, give_back, on_device_of
from ._problem import plan_backward, plan_forward


def _check_reverse(reverse) -> bool:
    """``reverse`` as a bool; ``TypeError`` for anything but a Python or NumPy bool (a string such as
    "no" is truthy, so it would silently run backwards)."""
    if isinstance(reverse, (bool, np.bool_)):
        return bool(reverse)
    raise TypeError(f"reverse must be a bool (True runs backwards in time), got {type(reverse).__name__} "
                    f"{reverse!r}; pass reverse=True or reverse=False")


def _writable_operand(v, name):
    """An ``out=`` array as an Operand.  Only arrays parscan can write into are taken: a list, a tuple
    or another object NumPy would copy (``numpy.asarray``) would receive nothing, the result lost."""
    if isinstance(v, (list, tuple)) or not any(hasattr(v, p) for p in _WRITABLE_PROTOCOLS):
        raise TypeError(f"{name} must be an array parscan can write into (NumPy, CuPy, or a __dlpack__ / "
                        f"__cuda_array_interface__ producer such as a torch tensor), got {type(v).__name__}: "
                        f"preallocate one (e.g. with numpy.empty_like), or drop it and use the returned array")
    return as_operand(v, name)


# the protocols of arrays parscan can write into (the Numba simulator's arrays have the first)
_WRITABLE_PROTOCOLS = ("__array_interface__", "__cuda_array_interface__", "__dlpack__")


def linear_scan(a, x, h0=None, *, axis=-1, reverse=False, out=None, backend=None, resets=None):
    """The linear recurrence ``h[t] = a[t] * h[t-1] + x[t]`` along ``axis``, computed in parallel.

    Parameters
    ----------
    a : array or scalar
        Decays, broadcastable to ``x.shape`` (a scalar, a per-channel constant with a size-1 time
        axis, or a full array).  A broadcast ``a`` is never materialised.
    x : array
        Inputs; ``T = x.shape[axis]``.  NumPy, CuPy, or any ``__dlpack__`` /
        ``__cuda_array_interface__`` producer (torch, JAX, Numba device arrays).
    h0 : array or scalar, optional
        Initial state ``h[-1]`` (``h[T]`` when ``reverse``), broadcastable to x's shape without
        ``axis``; zeros when None.
    axis : int
        The time axis.
    reverse : bool
        Run backwards in time: ``h[t] = a[t] * h[t+1] + x[t]``, ``h[T] = h0``.
    out : array, optional
        Where to write the result: x's shape, the result dtype, x's library and device, writable.
        ``out=x`` scans in place.
    backend : {None, "cupy", "numba", "cpu", "reference"}
        None picks "cupy" for CUDA arrays ("numba" for Numba CUDA simulator arrays) and "cpu" for host arrays.
    resets : bool array, optional
        Broadcastable to ``x.shape`` (typically shape (T,), or (B, 1, T) for a (B, C, T) x; never
        materialised): where ``resets[t]`` is true the carried state is dropped, ``h[t] = x[t]``
        (``reverse``: the state from t+1 is dropped).  Packed sequences: see
        :func:`parscan.resets_from_offsets` and :func:`parscan.segment_ends`.

    Returns
    -------
    h : array of x's library and device (``out`` itself when given), dtype the NumPy result type of
        a, x and h0 (float16, float32, float64, complex64 or complex128; float16 accumulates in
        float32).

    Examples
    --------
    >>> import numpy as np, parscan
    >>> parscan.linear_scan(0.5, np.ones(4, np.float32))
    array([1.   , 1.5  , 1.75 , 1.875], dtype=float32)
    >>> parscan.linear_scan(0.5, np.ones(4), resets=np.array([False, False, True, False]), backend="reference")
    array([1. , 1.5, 1. , 1.5])
    """
    key = _plans.forward_key(a, x, h0, axis, reverse, out, backend, resets)
    if key is not None:
        plan = _plans.FORWARD.get(key)
        if plan is not None:
            return plan.run(a, x, h0, out, resets)
    reverse = _check_reverse(reverse)
    xo = as_operand(x, "x")
    ao = as_operand(a, "a", allow_scalar=True)
    ho = None if h0 is None else as_operand(h0, "h0", allow_scalar=True)
    oo = _out_operand(out)
    ro = None if resets is None else as_flags(resets, "resets")
    check_same_place(xo, ao, ho, oo, ro)
    impl = _backends.select(backend, xo.on_gpu)
    with on_device_of(xo):  # results and scratch on x's device
        problem, _, finish, replay = plan_forward(array_module(xo), ao, xo, ho, oo, axis, reverse, ro)
        if problem is not None:
            impl.forward(problem)
        result = finish()
        if key is not None and xo.library in ("numpy", "cupy"):
            plan = replay(impl)
            if plan is not None:
                _plans.FORWARD.put(key, plan)
    return out if out is not None else give_back(result, xo)


def _out_operand(out):
    """``out=`` as an Operand (None when not given); JAX arrays refused (parscan never writes into them)."""
    if out is None:
        return None
    oo = _writable_operand(out, "out")
    if oo.library in ("jax", "jaxlib"):
        raise ValueError("out cannot be a JAX array: JAX arrays are immutable and parscan never writes into "
                         "JAX-owned memory; drop out= and use the returned jax.Array")
    return oo


def _grad_outs(out):
    """``out=(grad_a, grad_x, grad_h0)`` as Operands (None where not given)."""
    if out is None:
        return (None, None, None)
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise TypeError("out must be a tuple (grad_a, grad_x, grad_h0) of arrays or None, e.g. "
                        "out=(None, grad_x, None) to receive only grad_x")
    ops = tuple(None if v is None else _writable_operand(v, f"out's {n}")
                for v, n in zip(out, ("grad_a", "grad_x", "grad_h0")))
    if any(op is not None and op.library in ("jax", "jaxlib") for op in ops):
        raise ValueError("out cannot hold JAX arrays: JAX arrays are immutable (use parscan.jax under jit)")
    return ops


def linear_scan_backward(a, h, grad_h, h0=None, *, axis=-1, reverse=False, backend=None, resets=None, out=None):
    """Gradients of ``h = linear_scan(a, x, h0, axis=axis, reverse=reverse)``: ``(grad_a, grad_x, grad_h0)``.

    With ``g = grad_x`` and ``grad_h = dL/dh`` (forward direction; ``reverse=True`` mirrors time)::

        g[t]      = grad_h[t] + conj(a[t+1]) * g[t+1]      (g[T] = 0)
        grad_a[t] = g[t] * conj(h[t-1])                    (h[-1] = h0, or 0)
        grad_h0   = conj(a[0]) * g[0]

    With the forward's ``resets``, a reads as 0 where they are true: no gradient crosses a reset and
    ``grad_a`` is 0 there.

    ``grad_a`` has a's shape (summed over the dimensions a was broadcast along) and dtype,
    ``grad_x`` has h's shape, ``grad_h0`` has h0's shape, or is None when ``h0`` is None.
    ``out=(grad_a, grad_x, grad_h0)`` (each an array of that shape and dtype, or None) receives them:
    grad_x, and grad_a when a is a full array of the result dtype, are computed in place there (the
    others are copied in); the outputs must not overlap the inputs or each other.  Complex
    gradients follow PyTorch's convention (conjugates as above).  x is not needed: the gradient of a
    linear scan depends on x only through h.

    Examples
    --------
    >>> import numpy as np, parscan
    >>> a = np.full(3, 0.5); h = parscan.linear_scan(a, np.ones(3))
    >>> ga, gx, gh0 = parscan.linear_scan_backward(a, h, np.ones(3))
    >>> gx
    array([1.75, 1.5 , 1.  ])
    """
    key = _plans.backward_key(a, h, grad_h, h0, axis, reverse, backend, resets, out)
    if key is not None:
        plan = _plans.BACKWARD.get(key)
        if plan is not None:
            return plan.run(a, h, grad_h, h0, resets, None if out is None else tuple(out))
    reverse = _check_reverse(reverse)
    ho = as_operand(h, "h")
    ao = as_operand(a, "a", allow_scalar=True)
    go = as_operand(grad_h, "grad_h")
    h0o = None if h0 is None else as_operand(h0, "h0", allow_scalar=True)
    ro = None if resets is None else as_flags(resets, "resets")
    outs = _grad_outs(out)
    check_same_place(ho, ao, go, h0o, ro, *outs)
    impl = _backends.select(backend, ho.on_gpu)
    with on_device_of(ho):
        problem, finish, replay = plan_backward(array_module(ho), ao, ho, go, h0o, axis, reverse, ro, outs)
        if problem is not None:
            impl.backward(problem)
        grad_a, grad_x, grad_h0 = finish()
        if key is not None and ho.library in ("numpy", "cupy"):
            plan = replay(impl)
            if plan is not None:
                _plans.BACKWARD.put(key, plan)
    back = (lambda v: None if v is None else give_back(v, ho))
    return tuple(o if o is not None else back(v) for o, v in zip(out or (None,) * 3, (grad_a, grad_x, grad_h0)))
