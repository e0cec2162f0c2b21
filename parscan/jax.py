"""JAX embedding: parscan's scans as jittable, differentiable, vmappable JAX functions (``parscan[jax]``).

- :func:`linear_scan` ``h[t] = a[t] * h[t-1] + x[t]`` and :func:`matrix_linear_scan`
  ``h_t = A_t h_{t-1} + x_t``: the contract of :func:`parscan.linear_scan` /
  :func:`parscan.matrix_linear_scan` on ``jax.Array`` values, usable eagerly and under ``jax.jit``,
  ``jax.grad`` / ``value_and_grad`` / ``vjp``, ``jax.vmap`` and ``jax.checkpoint``.
- :class:`GILRLSTM`: :class:`parscan.layers.GILRLSTM`'s hand-written forward and backward as a
  jittable, differentiable function of a params pytree (the same parameter names).

How it runs.  Each scan is one ``jax.experimental.buffer_callback`` (jax >= 0.6.1): XLA hands the
callback its input buffers and the output buffers it has allocated, and the callback runs parscan's
public functions on them, zero-copy:

- on the CPU the buffers are NumPy views of XLA's memory and the ``cpu`` backend writes the scan
  straight into XLA's output buffer (``parscan.linear_scan(..., out=<XLA's buffer>)``; output buffers
  of 32 MiB and more are first advised to use transparent huge pages on Linux, as NumPy does for its
  own arrays: see :func:`_hugepages`);
- on a CUDA GPU the buffers are CuPy views of XLA's device memory (through
  ``__cuda_array_interface__``) and the ``cupy`` backend's kernels are queued on XLA's computation
  stream (``cupy.cuda.ExternalStream(ctx.stream)``): no copy, no host round trip, no synchronisation.

There is no second planner and no second copy of the math: the callbacks call
:func:`parscan.linear_scan`, :func:`parscan.linear_scan_backward`, :func:`parscan.matrix_linear_scan`,
:func:`parscan.matrix_linear_scan_backward` and the layer's own ``forward`` / ``backward``.

Gradients.  Each scan is a ``jax.custom_vjp`` whose backward is parscan's fused backward (grads for
a, x and h0; a's summed over the dimensions it was broadcast along).  JAX's convention for complex
numbers is the transpose without conjugation; parscan's backward follows PyTorch's (``conj(a)`` and
``conj(h)`` in its recurrences), so the JAX backward is parscan's backward of ``conj(a)``, ``conj(h)``
and ``conj(h0)`` with JAX's cotangent as it is (the conjugates cancel; complex dtypes only: one
elementwise pass over h, and over a and h0 where they are complex).  Forward mode (``jax.jvp``,
``jax.jacfwd``, ``jax.linearize``) is not available: eagerly parscan raises a ``TypeError`` that says
so; under ``jax.jit`` (or from ``jax.linearize``'s function) JAX raises its own ``TypeError: can't
apply forward-mode autodiff (jvp) to a custom_vjp function``.  Use reverse mode (``jax.vjp``,
``jax.grad``, ``jax.jacrev``).

Compilation.  The callbacks are made once for each set of static arguments (axis, direction, whether h0
is given, ...) and reused: JAX keys its compiled computations on the callback object, so eager calls
compile XLA once per shape and dtype, like a jitted function.

vmap.  The callbacks are called once with the whole batch (``vmap_method="expand_dims"``: batched
operands gain a leading batch axis, unbatched ones a leading axis of size 1 that broadcasts, never
materialised); the time axis is counted from the end, so no Python loop runs over the batch.
(:class:`GILRLSTM` maps its callbacks sequentially: its batch is already an axis of x.)

Copies.  The forward writes into XLA's buffer, and the backward writes grad_x (and grad_a of a full a)
into XLA's buffers (``linear_scan_backward(..., out=...)``); a grad_a summed over broadcast dimensions
and grad_h0 are copied in (their size is a's or h0's); the matrix scan likewise
(``matrix_linear_scan(..., out=...)`` and its backward's ``out=``).  :class:`GILRLSTM`'s forward and
backward are the layer's own, which allocate their results: the forward copies h, the final state and
the eight intermediates its backward needs into XLA's buffers, the backward the gradients (dx and the
parameters').  bfloat16, which NumPy and CuPy lack, is computed in float32 (a cast copy each way, in
JAX); complex gradients conjugate h (above).  Everything else reaches the kernels as it is.

GPU memory.  parscan's own temporaries (the look-back's status words, a reduced grad_a before it is
copied, the matrix scan's results) come from CuPy's memory pool, beside XLA's: leave room for them
when XLA preallocates (``XLA_PYTHON_CLIENT_MEM_FRACTION``, or ``XLA_PYTHON_CLIENT_PREALLOCATE=false``;
about 2x the gradients of the largest scan).

Errors.  Wrong dtypes, shapes or axes raise at trace time the exceptions parscan raises for NumPy
arrays, with the same messages (the checks run on zero-stride stand-ins of the arguments: no memory,
no compute).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import importlib
import math
import mmap
import sys

import jax
import jax.numpy as jnp
import numpy as np

MIN_JAX = "0.6.1"  # the first release with jax.experimental.buffer_callback (and its vmap_method)
try:
    from jax.experimental.buffer_callback import buffer_callback
except ImportError as exc:  # pragma: no cover - depends on the installed jax
    raise ImportError(f"parscan.jax needs jax >= {MIN_JAX} (jax.experimental.buffer_callback); this is jax "
                      f"{jax.__version__}: pip install -U 'jax>={MIN_JAX}'") from exc

from . import layers as _layers
from ._arrays import as_flags, as_operand
from ._problem import _broadcast, _h0_view, _resets_view, normalize_axis
from .matrix import _check as _matrix_check
from .matrix import _resets_view as _matrix_resets_view
from .matrix import matrix_linear_scan as _matrix_scan
from .matrix import matrix_linear_scan_backward as _matrix_scan_backward
from .scan import _check_reverse
from .scan import linear_scan as _scan
from .scan import linear_scan_backward as _scan_backward

__all__ = ["linear_scan", "matrix_linear_scan", "GILRLSTM"]

_DL_CPU, _DL_CUDA, _DL_CUDA_HOST, _DL_CUDA_MANAGED = 1, 2, 3, 13
_BF16 = jnp.dtype(jnp.bfloat16)
# plan_forward's advice for an a that does not broadcast (tests/test_jax_jit.py checks they agree)
_A_FIX = ("a must broadcast to x's shape; for a decay constant in time give a a size-1 time axis "
          "(e.g. a[..., None] when axis=-1)")


# ----------------------------------------------------------------------------- buffers -> arrays

def _cupy_view(cp, buf, device):
    """XLA's device buffer as a CuPy array over the same memory (``__cuda_array_interface__``)."""
    cai = buf.__cuda_array_interface__
    shape, dtype = tuple(cai["shape"]), np.dtype(cai["typestr"])
    mem = cp.cuda.UnownedMemory(cai["data"][0], dtype.itemsize * math.prod(shape), buf, device)
    return cp.ndarray(shape, dtype, cp.cuda.MemoryPointer(mem, 0), cai.get("strides"))


def _numpy_madvises_hugepages():
    """Whether NumPy asks Linux for transparent huge pages on its large allocations (its default there;
    ``NUMPY_MADVISE_HUGEPAGE=0`` turns it off)."""
    if not sys.platform.startswith("linux"):
        return False
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return bool(importlib.import_module(mod)._get_madvise_hugepage())
        except (ImportError, AttributeError):
            continue
    return False


_HUGE_MIN = 1 << 25  # 32 MiB: glibc maps allocations this large afresh each time (smaller ones reuse its heap)
_MADV_HUGEPAGE = 14
_madvise = None
if _numpy_madvises_hugepages():
    try:
        _madvise = ctypes.CDLL(None, use_errno=True).madvise
        _madvise.argtypes, _madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):  # pragma: no cover - no libc madvise
        _madvise = None


def _hugepages(arr):
    """Ask Linux for transparent huge pages on a large output buffer of XLA's before it is first written,
    as NumPy does for its own allocations (``madvise(MADV_HUGEPAGE)``).  XLA's CPU buffers come from
    malloc, which maps those of 32 MiB and more afresh for every call: faulting them in 4 KiB pages from
    the scan's threads cost ~40% of a 2^23..2^24-element float32 scan under jit here (2-core VM; smaller
    buffers reuse malloc's heap, already faulted in, where the hint gains nothing).  Only a hint: the
    contents and the mapping stay XLA's, and a refusal leaves the pages as they were."""
    if _madvise is not None and arr.nbytes >= _HUGE_MIN:
        start = arr.ctypes.data
        skip = -start % mmap.PAGESIZE
        _madvise(start + skip, arr.nbytes - skip, _MADV_HUGEPAGE)  # failures leave the pages as they were


def _host_view(buf, writeable):
    arr = np.asarray(buf)  # a view of XLA's memory (Buffer.__array__ is zero-copy on the CPU)
    if not writeable:
        arr = arr.view()
        arr.flags.writeable = False  # inputs are never written
    else:
        _hugepages(arr)
    return arr


@contextlib.contextmanager
def _arrays(ctx, outs, ins):
    """``(xp, outs, ins)``: the callback's buffers as NumPy (CPU) or CuPy (CUDA, with XLA's stream as
    CuPy's current stream while the block runs) arrays, zero-copy; inputs read-only on the host."""
    kind, device = (int(v) for v in outs[0].__dlpack_device__())
    if kind == _DL_CPU:
        yield np, [_host_view(b, True) for b in outs], [_host_view(b, False) for b in ins]
    elif kind in (_DL_CUDA, _DL_CUDA_MANAGED):
        import cupy as cp  # noqa: PLC0415

        with cp.cuda.Device(device), cp.cuda.ExternalStream(int(ctx.stream), device):
            yield cp, [_cupy_view(cp, b, device) for b in outs], [_cupy_view(cp, b, device) for b in ins]
    else:
        raise RuntimeError(f"parscan.jax runs on the CPU and on CUDA GPUs; XLA gave it a buffer on DLPack "
                           f"device type {kind}: run the computation on the CPU or a CUDA GPU")


def _fit(xp, v, shape):
    """``v`` broadcast (a zero-stride view) to ``shape``: under vmap an unbatched operand has a batch
    axis of 1 where the results have the batch size."""
    return v if tuple(v.shape) == tuple(shape) else xp.broadcast_to(v, shape)


def _memo(factory):
    """``factory(*static)`` memoised: one callback object for each set of static arguments.  JAX keys its
    compiled computations (the eager dispatch cache, jit's lowering) on the callback, which hashes by
    identity: a new function object per call would compile XLA again on every eager call."""
    return functools.lru_cache(maxsize=None)(factory)


def _call(callback, outs, args, vmap_method="expand_dims"):
    return buffer_callback(callback, outs, vmap_method=vmap_method)(*args)


# ----------------------------------------------------------------------------- arguments

def _standin(v):
    """What parscan's checks see of ``v``: Python scalars as they are, arrays as read-only zero-stride
    NumPy views of their shape and dtype (bfloat16 as float32, which is how it is computed)."""
    if v is None or isinstance(v, (bool, int, float, complex, np.bool_)):
        return v
    if not hasattr(v, "dtype") or not hasattr(v, "shape"):
        if isinstance(v, (list, tuple)):
            v = np.asarray(v)
        else:
            return v  # as_operand says what it is
    dt = np.dtype(np.float32) if v.dtype == _BF16 else np.dtype(v.dtype)
    return np.broadcast_to(np.zeros((), dt), tuple(v.shape))


def _weak(v) -> bool:
    try:
        return bool(jax.typeof(v).weak_type)
    except TypeError:
        return False


def _jax_inputs(values):
    """``(arrays, result dtype, compute dtype)``: JAX's promotion of the values (Python scalars weak),
    bfloat16 computed in float32; scalars, weakly typed and bfloat16 arrays are cast to the compute
    dtype (so that NumPy's promotion of what the callback sees is the compute dtype)."""
    values = [np.asarray(v) if isinstance(v, (list, tuple)) else v for v in values]
    present = [v for v in values if v is not None]
    res = jnp.result_type(*present)
    work = jnp.dtype(jnp.float32) if res == _BF16 else jnp.dtype(res)
    out = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        cast = isinstance(v, (int, float, complex)) or _weak(v)
        v = jnp.asarray(v)
        if cast or v.dtype == _BF16:
            v = v.astype(work)  # a copy for bfloat16 (no NumPy type); a scalar otherwise
        out.append(v)
    return out, jnp.dtype(res), work


def _lead(v, ndim):
    """``v`` with leading size-1 axes up to ``ndim`` dims (a reshape: free in XLA)."""
    return v if v.ndim == ndim else v.reshape((1,) * (ndim - v.ndim) + v.shape)


def _conj(v):
    return jnp.conj(v) if v is not None and jnp.iscomplexobj(v) else v


def _as_primal(g, dtype):
    """A cotangent in its primal's dtype (the real part for a real primal)."""
    if jnp.iscomplexobj(g) and not jnp.issubdtype(dtype, jnp.complexfloating):
        g = g.real
    return g.astype(dtype)


def _sds(v):
    return jax.ShapeDtypeStruct(v.shape, v.dtype)


_NO_JVP = "can't apply forward-mode autodiff"


@contextlib.contextmanager
def _reverse_mode_only(name):
    """JAX's error for forward mode through a custom_vjp, where it is raised inside the call (eager
    ``jax.jvp`` / ``jax.jacfwd``), as parscan's: what has no forward mode and what to use instead."""
    try:
        yield
    except TypeError as exc:
        if _NO_JVP not in str(exc):
            raise
        raise TypeError(f"parscan.jax.{name} has no forward-mode derivative (jax.jvp, jax.jacfwd, jax.linearize): "
                        f"its derivative is parscan's fused backward, a jax.custom_vjp; differentiate in reverse "
                        f"mode instead (jax.vjp, jax.grad, jax.jacrev)") from exc


# ----------------------------------------------------------------------------- linear_scan

def _optional(has_h0, rest):
    """``(h0, resets)`` from the optional operands after the required ones (each there when present)."""
    rest = list(rest)
    h0 = rest.pop(0) if has_h0 else None
    return h0, (rest.pop(0) if rest else None)


@_memo
def _scan_callback(axis, reverse, has_h0):
    def callback(ctx, out, a, x, *opt):
        with _arrays(ctx, [out], [a, x, *opt]) as (xp, (o,), (av, xv, *optv)):
            h0v, rv = _optional(has_h0, optv)
            _scan(av, _fit(xp, xv, o.shape), h0v, axis=axis, reverse=reverse, out=o, resets=rv)

    return callback


@_memo
def _scan_backward_callback(axis, reverse, has_h0):
    def callback(ctx, outs, a, h, g, *opt):
        with _arrays(ctx, outs, [a, h, g, *opt]) as (xp, outs, (av, hv, gv, *optv)):
            h0v, rv = _optional(has_h0, optv)
            ga_o, gx_o = outs[0], outs[1]
            h0v = _fit(xp, h0v, outs[2].shape) if h0v is not None else None
            # into XLA's buffers: grad_x (and a full grad_a) computed there, a reduced grad_a and grad_h0
            # copied in
            _scan_backward(_fit(xp, av, ga_o.shape), _fit(xp, hv, gx_o.shape), _fit(xp, gv, gx_o.shape), h0v,
                           axis=axis, reverse=reverse, resets=rv,
                           out=(ga_o, gx_o, outs[2] if h0v is not None else None))

    return callback


def _present(*vs):
    return tuple(v for v in vs if v is not None)


def _scan_call(a, x, h0, r, axis, reverse):
    dtype = np.result_type(*(v.dtype for v in (a, x, h0) if v is not None))
    return _call(_scan_callback(axis, reverse, h0 is not None),
                 jax.ShapeDtypeStruct(x.shape, dtype), (a, x) + _present(h0, r))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _scan_vjp(a, x, h0, r, axis, reverse, x_dtype):
    return _scan_call(a, x, h0, r, axis, reverse)


def _scan_fwd(a, x, h0, r, axis, reverse, x_dtype):
    h = _scan_call(a, x, h0, r, axis, reverse)
    return h, (a, h, h0, r)


def _scan_bwd(axis, reverse, x_dtype, res, ct):
    a, h, h0, r = res
    outs = (_sds(a), _sds(h)) + (() if h0 is None else (_sds(h0),))
    # JAX's convention (no conjugates) from parscan's backward: conjugated a, h and h0 (see the module doc)
    args = (_conj(a), _conj(h), ct) + _present(_conj(h0), r)
    grads = _call(_scan_backward_callback(axis, reverse, h0 is not None), outs, args)
    gh0 = None if h0 is None else grads[2]
    return grads[0], _as_primal(grads[1], x_dtype), gh0, None  # resets: no gradient


_scan_vjp.defvjp(_scan_fwd, _scan_bwd)


def _check_scan(a, x, h0, axis, resets=None):
    """parscan.linear_scan's argument checks (same exceptions and messages), at trace time."""
    xo = as_operand(_standin(x), "x")
    ao = as_operand(_standin(a), "a", allow_scalar=True)
    ho = None if h0 is None else as_operand(_standin(h0), "h0", allow_scalar=True)
    ro = None if resets is None else as_flags(_standin(resets), "resets")
    xa = xo.array
    if xa.ndim == 0:
        raise ValueError("x is 0-d; it needs at least one dimension, the time axis")
    ax = normalize_axis(axis, xa.ndim)
    dtype = np.result_type(*(op.dtype_or_value for op in (ao, xo, ho) if op is not None))
    _broadcast(np, ao, xa.shape, dtype, "a", _A_FIX)
    if ho is not None:
        _h0_view(np, ho, xa.shape, ax, dtype)
    _resets_view(np, ro, xa.shape, "x")
    return ax


def _resets_operand(resets, ndim):
    """``resets`` as a bool jax array with leading size-1 axes up to ``ndim`` (so that under vmap a
    batched one lines up with x's batch axis), or None."""
    return None if resets is None else _lead(jnp.asarray(resets), ndim)


def linear_scan(a, x, h0=None, *, axis=-1, reverse=False, resets=None):
    """``h[t] = a[t] * h[t-1] + x[t]`` along ``axis`` on JAX arrays: jittable, differentiable, vmappable.

    The contract of :func:`parscan.linear_scan` (``h[-1] = h0``, zeros when None; ``reverse=True``
    runs ``h[t] = a[t] * h[t+1] + x[t]`` from ``h[T] = h0``; ``a`` broadcasts to x's shape and is never
    materialised; ``h0`` broadcasts to x's shape without ``axis``; the result dtype is the promotion
    of a, x and h0 with Python scalars weak; float16 accumulates in float32; bfloat16 is computed in
    float32 and rounded back), returning a ``jax.Array``.  There is no ``out=``: JAX arrays are
    immutable (XLA's own output buffer is written in place).  ``resets``: a bool array broadcastable
    to x (typically (T,); batched under vmap like any operand) where the carried state is dropped,
    ``h[t] = x[t]``; it gets no gradient, and none crosses a reset (issue #18).

    Gradients (``jax.grad``, ``jax.vjp``) with respect to ``a``, ``x`` and ``h0`` are parscan's fused
    backward (:func:`parscan.linear_scan_backward`; ``grad_a`` summed over what ``a`` was broadcast
    along); with ``g = dL/dx`` and cotangent ``dL/dh`` (JAX's convention: no conjugates)::

        g[t] = dL/dh[t] + a[t+1] g[t+1],   dL/da[t] = g[t] h[t-1],   dL/dh0 = a[0] g[0]

    Forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``) raises a ``TypeError``: use reverse mode.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, parscan.jax
    >>> parscan.jax.linear_scan(0.5, jnp.ones(4))
    Array([1.   , 1.5  , 1.75 , 1.875], dtype=float32)
    >>> jax.grad(lambda a: parscan.jax.linear_scan(a, jnp.ones(3)).sum())(jnp.float32(0.5))
    Array(3., dtype=float32)
    """
    ax = _check_scan(a, x, h0, axis, resets)
    (a, x, h0), res, work = _jax_inputs((a, x, h0))
    a = _lead(a, x.ndim)
    h0 = None if h0 is None else _lead(h0, x.ndim - 1)
    with _reverse_mode_only("linear_scan"):
        h = _scan_vjp(a, x, h0, _resets_operand(resets, x.ndim), ax - x.ndim, _check_reverse(reverse),
                      jnp.dtype(x.dtype))
    return h if h.dtype == res else h.astype(res)


# ----------------------------------------------------------------------------- matrix_linear_scan

@_memo
def _matrix_callback(reverse, has_h0):
    def callback(ctx, out, A, x, *opt):
        with _arrays(ctx, [out], [A, x, *opt]) as (xp, (o,), (Av, xv, *optv)):
            h0v, rv = _optional(has_h0, optv)
            if rv is not None:  # the in-memory call broadcasts x with A's and h0's leading dims, not with resets'
                xv = _fit(xp, xv, o.shape)
            _matrix_scan(Av, xv, h0v, reverse=reverse, resets=rv, out=o)  # the kernels write XLA's buffer

    return callback


@_memo
def _matrix_backward_callback(reverse, has_h0):
    def callback(ctx, outs, A, h, g, *opt):
        with _arrays(ctx, outs, [A, h, g, *opt]) as (xp, outs, (Av, hv, gv, *optv)):
            h0v, rv = _optional(has_h0, optv)
            h0v = _fit(xp, h0v, outs[2].shape) if h0v is not None else None
            # grad_x (and a full grad_A of the working dtype) written by the kernels, the others copied in
            _matrix_scan_backward(_fit(xp, Av, outs[0].shape), _fit(xp, hv, outs[1].shape), _fit(xp, gv, outs[1].shape),
                                  h0v, reverse=reverse, resets=rv,
                                  out=(outs[0], outs[1], outs[2] if h0v is not None else None))

    return callback


def _matrix_call(A, x, h0, r, reverse, out_shape):
    dtype = np.result_type(*(v.dtype for v in (A, x, h0) if v is not None))
    return _call(_matrix_callback(reverse, h0 is not None), jax.ShapeDtypeStruct(out_shape, dtype),
                 (A, x) + _present(h0, r))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _matrix_vjp(A, x, h0, r, reverse, out_shape, x_meta):
    return _matrix_call(A, x, h0, r, reverse, out_shape)


def _matrix_fwd(A, x, h0, r, reverse, out_shape, x_meta):
    h = _matrix_call(A, x, h0, r, reverse, out_shape)
    return h, (A, h, h0, r)


def _matrix_bwd(reverse, out_shape, x_meta, res, ct):
    (x_shape, x_dtype), (A, h, h0, r) = x_meta, res
    outs = (_sds(A), _sds(h)) + (() if h0 is None else (_sds(h0),))
    args = (_conj(A), _conj(h), ct) + _present(_conj(h0), r)  # JAX's convention, as _scan_bwd
    grads = _call(_matrix_backward_callback(reverse, h0 is not None), outs, args)
    gA, gx = grads[0], grads[1]
    # x broadcasts against A's and h0's leading dims: sum over the ones it was broadcast along
    axes = tuple(d for d, (n, m) in enumerate(zip(x_shape[:-2], gx.shape[:-2])) if n == 1 and m != 1)
    if axes:
        gx = gx.sum(axis=axes, keepdims=True)
    return gA, _as_primal(gx, x_dtype), None if h0 is None else grads[2], None


_matrix_vjp.defvjp(_matrix_fwd, _matrix_bwd)


def matrix_linear_scan(A, x, h0=None, *, reverse=False, resets=None):
    """``h_t = A_t h_{t-1} + x_t`` on JAX arrays (dense n x n coefficients): jittable, differentiable,
    vmappable.

    The contract of :func:`parscan.matrix_linear_scan`: x (..., T, n), A (..., T, n, n) or
    (..., 1, n, n) (constant in time), h0 (..., n) or None (zeros); leading dims broadcast; the
    result has x's shape broadcast with the leading dims of A and h0, dtype their promotion (float16
    computed in float32; bfloat16 computed in float32 and rounded back).  ``reverse=True`` runs
    ``h_t = A_t h_{t+1} + x_t`` from ``h_T = h0``.  Gradients (reverse mode) are
    :func:`parscan.matrix_linear_scan_backward` (JAX's convention: ``g_t = dL/dh_t + A_{t+1}^T
    g_{t+1}``, ``dL/dA_t = g_t h_{t-1}^T``, ``dL/dh0 = A_0^T g_0``), summed over broadcast dims.
    ``resets`` (bool, broadcastable to the result's shape without n, ``(..., T)``; no gradient): A_t
    reads as 0 where true, ``h_t = x_t``.

    Examples
    --------
    >>> import jax.numpy as jnp, parscan.jax
    >>> A = jnp.array([[[0.0, 1.0], [1.0, 0.0]]])          # swap the two components, constant in time
    >>> parscan.jax.matrix_linear_scan(A, jnp.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    Array([[1., 0.],
           [0., 1.],
           [1., 0.]], dtype=float32)
    """
    names = ("A", "x")
    xs = as_operand(_standin(x), "x").array
    As = as_operand(_standin(A), "A").array
    hs = None if h0 is None else as_operand(_standin(h0), "h0").array
    lead, T, n, _, _ = _matrix_check(As, xs, hs, names)
    if resets is not None:
        _matrix_resets_view(np, as_flags(_standin(resets), "resets").array, lead, T, "x")  # its shape check
    (A, x, h0), res, work = _jax_inputs((A, x, h0))
    k = len(lead)
    A, x = _lead(A, k + 3), _lead(x, k + 2)
    h0 = None if h0 is None else _lead(h0, k + 1)
    r = _resets_operand(resets, k + 1)
    with _reverse_mode_only("matrix_linear_scan"):
        h = _matrix_vjp(A, x, h0, r, _check_reverse(reverse), tuple(lead) + (T, n),
                        (tuple(x.shape), jnp.dtype(x.dtype)))
    return h if h.dtype == res else h.astype(res)


# ----------------------------------------------------------------------------- GILR-LSTM

_PARAMS = ("W_g", "b_g", "W_j", "b_j", "W", "U", "b")
_CACHE = ("g", "j", "s", "f", "i", "o", "z", "c")  # what the backward needs of the forward (besides x, s0, c0)


@functools.lru_cache(maxsize=None)
def _template(m, n, dtype):
    return _layers.GILRLSTM(m, n, dtype=dtype, seed=0)


def _layer(meta, xp, params):
    """A :class:`parscan.layers.GILRLSTM` of sizes ``meta`` whose parameters are ``params`` (views of
    XLA's buffers), on ``xp``."""
    layer = copy.copy(_template(*meta))
    layer.xp = xp
    layer.params = dict(zip(_PARAMS, params))
    return layer


@_memo
def _gilr_callback(meta):
    def callback(ctx, outs, *ins):
        with _arrays(ctx, outs, ins) as (xp, outs, ins):
            params, (x, s0, c0), r = ins[:7], ins[7:10], (ins[10] if len(ins) > 10 else None)
            h, (sT, cT), cache = _layer(meta, xp, params).forward(x, (s0, c0), r)
            _, _, _, g, j, s, _, f, i, o, z, c, _ = cache
            for dst, src in zip(outs, (h, sT, cT, g, j, s, f, i, o, z, c)):
                dst[...] = src  # copies: the layer allocates its results

    return callback


@_memo
def _gilr_backward_callback(meta):
    def callback(ctx, outs, *ins):
        with _arrays(ctx, outs, ins) as (xp, outs, ins):
            params, (x, s0, c0), saved, (gh, gs, gc) = ins[:7], ins[7:10], ins[10:18], ins[18:21]
            g, j, s, f, i, o, z, c = saved
            T, B = x.shape[:2]
            r = _layers._resets(xp, ins[21], T, B) if len(ins) > 21 else None
            sp = _layers._zero_at(xp, r, xp.concatenate([s0[None], s[:-1]], axis=0)) if len(s) else s
            cache = (x, s0, c0, g, j, s, sp, f, i, o, z, c, r)
            dx, grads, (ds0, dc0) = _layer(meta, xp, params).backward(gh, cache, (gs, gc))
            for dst, src in zip(outs, [grads[k] for k in _PARAMS] + [dx, ds0, dc0]):
                dst[...] = src  # copies: the layer allocates its results

    return callback


def _gilr_outs(x, n):
    T, B, _ = x.shape
    seq = jax.ShapeDtypeStruct((T, B, n), x.dtype)
    last = jax.ShapeDtypeStruct((B, n), x.dtype)
    return (seq, last, last) + (seq,) * len(_CACHE)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _gilr_vjp(params, x, s0, c0, r, meta):
    h, sT, cT, *_ = _call(_gilr_callback(meta), _gilr_outs(x, meta[1]),
                          (*params, x, s0, c0) + _present(r), "sequential")
    return h, sT, cT


def _gilr_fwd(params, x, s0, c0, r, meta):
    h, sT, cT, *saved = _call(_gilr_callback(meta), _gilr_outs(x, meta[1]),
                              (*params, x, s0, c0) + _present(r), "sequential")
    return (h, sT, cT), (params, x, s0, c0, r, saved)


def _gilr_bwd(meta, res, cts):
    params, x, s0, c0, r, saved = res
    outs = tuple(_sds(p) for p in params) + (_sds(x), _sds(s0), _sds(c0))
    grads = _call(_gilr_backward_callback(meta), outs,
                  (*params, x, s0, c0, *saved, *cts) + _present(r), "sequential")
    return tuple(grads[:7]), grads[7], grads[8], grads[9], None  # resets: no gradient


_gilr_vjp.defvjp(_gilr_fwd, _gilr_bwd)


class GILRLSTM:
    """:class:`parscan.layers.GILRLSTM` for JAX: ``h, (s_T, c_T) = layer(params, x, state=None)``.

    ``params`` is a dict (a pytree) with the names and shapes of :class:`parscan.GILRLSTM`'s
    parameters (``W_g (m, n)``, ``b_g (n,)``, ``W_j (m, n)``, ``b_j (n,)``, ``W (m, 4n)``,
    ``U (n, 4n)``, ``b (4n,)``); :meth:`init` gives the initial values of ``parscan.GILRLSTM`` with
    the same seed.  x is (T, B, m), time-major; ``state`` is ``(s0, c0)``, each (B, n), or None
    (zeros); ``resets`` (``layer(params, x, state, resets)``), a bool array of shape (T,) or (T, B),
    restarts the layer where a packed sequence starts (see :class:`parscan.layers.GILRLSTM`).  The call is
    jittable and differentiable in params, x and state (``jax.grad``,
    ``jax.value_and_grad``): forward and backward are the layer's own hand-written passes, run on
    XLA's buffers through ``jax.experimental.buffer_callback`` (both scans are ``linear_scan`` calls),
    so the gradients are exactly ``parscan.GILRLSTM.backward``'s.  Under ``jax.vmap`` the callbacks
    run once a batch element (sequentially); batch in x's B axis instead.

    Equations (sigma the logistic sigmoid; gate blocks f, i, o, z)::

        g = sigma(x W_g + b_g),  j = tanh(x W_j + b_j),  s_t = g_t s_{t-1} + (1 - g_t) j_t
        [f, i, o, z]_t = x_t W + s_{t-1} U + b,  c_t = f_t c_{t-1} + i_t z_t,  h_t = o_t c_t

    Examples
    --------
    >>> import jax, jax.numpy as jnp, parscan.jax
    >>> layer = parscan.jax.GILRLSTM(3, 8, seed=0)
    >>> params = layer.init()
    >>> x = jnp.ones((100, 2, 3))
    >>> loss = lambda p: layer(p, x)[0][-1].sum()
    >>> grads = jax.jit(jax.grad(loss))(params)
    >>> sorted(grads) == sorted(params)
    True
    """

    def __init__(self, input_size, hidden_size, *, dtype="float32", seed=None, forget_bias=1.0):
        self._init = _layers.GILRLSTM(input_size, hidden_size, dtype=dtype, seed=seed, forget_bias=forget_bias)
        self.input_size, self.hidden_size = self._init.input_size, self._init.hidden_size
        self.dtype = self._init.dtype
        if self.dtype == np.float64 and not jax.config.read("jax_enable_x64"):
            raise TypeError("dtype float64 needs JAX's 64-bit mode: jax.config.update('jax_enable_x64', True) "
                            "first, or use dtype='float32'")

    def init(self):
        """The initial parameters (those of ``parscan.GILRLSTM`` with the same arguments), as JAX arrays."""
        return {k: jnp.asarray(np.array(v)) for k, v in self._init.params.items()}

    def _shapes(self):
        m, n = self.input_size, self.hidden_size
        return {"W_g": (m, n), "b_g": (n,), "W_j": (m, n), "b_j": (n,), "W": (m, 4 * n), "U": (n, 4 * n),
                "b": (4 * n,)}

    def __call__(self, params, x, state=None, resets=None):
        want = self._shapes()
        if not isinstance(params, dict) or set(params) != set(want):
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ValueError(f"params must be a dict with the keys {sorted(want)}, got {got}; use layer.init()")
        for k, shape in want.items():
            p = params[k]
            if tuple(jnp.shape(p)) != shape or jnp.result_type(p) != self.dtype:
                raise ValueError(f"params[{k!r}] must have shape {shape} and dtype {self.dtype}, got "
                                 f"{tuple(jnp.shape(p))} {jnp.result_type(p)}")
        _layers._check_x(_standin(x), self.input_size, self.dtype)
        T, B, _ = x.shape
        x = jnp.asarray(x, self.dtype)
        n = self.hidden_size
        if state is None:
            s0 = c0 = jnp.zeros((B, n), self.dtype)
        else:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise ValueError(f"state must be None or a tuple of 2 arrays of shape ({B}, {n})")
            s0, c0 = (jnp.asarray(v, self.dtype) for v in state)
            if s0.shape != (B, n) or c0.shape != (B, n):
                raise ValueError(f"state entries must have shape ({B}, {n}), got {s0.shape}, {c0.shape}")
        if resets is not None:  # the layer's own checks, at trace time
            _layers._resets(np, _standin(resets), T, B)
            resets = jnp.asarray(resets)
        meta = (self.input_size, n, self.dtype.name)
        with _reverse_mode_only("GILRLSTM"):
            h, sT, cT = _gilr_vjp(tuple(params[k] for k in _PARAMS), x, s0, c0, resets, meta)
        return h, (sT, cT)
