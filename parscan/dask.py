"""Scans over Dask arrays: the linear scan of arrays too large for one machine, chunk by chunk.

:func:`linear_scan`, :func:`linear_scan_backward`, :func:`matrix_linear_scan` and
:func:`matrix_linear_scan_backward` take ``dask.array.Array`` arguments chunked any way (along time,
along channels, both, unevenly) and return lazy Dask arrays.  Their semantics, broadcasting and dtypes
are those of the in-memory :func:`parscan.linear_scan`, :func:`parscan.linear_scan_backward`,
:func:`parscan.matrix_linear_scan` and :func:`parscan.matrix_linear_scan_backward`, which do all the
arithmetic: every task is one call of the in-memory API on NumPy chunks (the ``cpu`` backend) or CuPy
chunks (the GPU backends).  ``a``, ``x`` and ``h0`` may each be a Dask array, an in-memory array or a
scalar; Python scalars are rounded to the result dtype as the in-memory API rounds them.

The algorithm is the GPU kernels' at the scale of chunks.  A chunk maps the state before it to the
state after it, ``h_out = A_k h_in + H_k``, so, along time, per block of channels:

1. the first chunk is scanned from ``h0`` (that is its result; its last state is the first carry);
   every other chunk but the last is reduced to its transfer pair ``(A_k, H_k)``:
   ``H_k`` is the last state of ``linear_scan(a_k, x_k)`` (from zero) and ``A_k``, the product of the
   chunk's decays (0 if it holds a reset), is the last state of ``linear_scan(a_k, 0, h0=1,
   resets=r_k)`` over an array of zeros broadcast (never materialised) to the shape of ``a_k`` and
   ``r_k`` only: ``(T_k,)`` for a scalar decay, one task per chunk length for a decay constant in time;
2. the carries ``c_k = A_k c_{k-1} + H_k`` are themselves a linear scan, along the chunk axis: one
   small task per block of channels runs ``linear_scan(stack(A), stack(H), h0=c_0, axis=0)``
   (``method="scan"``, the default), or a chain of one-pair scans, one task a chunk
   (``method="sequential"``);
3. every other chunk is scanned again from its carry, ``linear_scan(a_k, x_k, h0=c_{k-1})``.

The matrix scan is the same with n x n pairs (``P_k`` is the last state of the matrix scan of zeros
from the identity, one batch row per column).  The backwards run the construction in reversed time:
each chunk's gradient flowing out of it is ``G_k = conj(A_k) G_{k+1} + D_k`` (``P_k^H`` for the
matrix scan), with ``D_k`` the grad_h0 of the chunk's in-memory backward from no incoming gradient,
and the chain of G is again one linear scan along the chunk axis (see :func:`linear_scan_backward`).

Each chunk is read at most twice, no chunk is ever gathered with another or rechunked, blocks of
channels are independent, and the graph has O(number of chunks) tasks.  float16 data is carried
across chunks in float32 (the in-memory scan's accumulation type): every chunk call computes in
float32 (scalars rounded to float16 first) and the results are rounded to float16 once.

``resets`` (a Dask or in-memory bool array broadcastable to x, cut to x's chunks like ``a``) go to
every chunk call, including the one that gives ``A_k``, so a chunk with a reset passes no state on.

Chunks must line up: a dimension that several Dask operands share (not broadcast) must be chunked the
same way in each (otherwise ``ValueError`` names the ``rechunk`` that fixes it: parscan never moves
data behind your back).  The result takes x's chunks where x covers a dimension, else those of the
Dask operand that does (the matrix scan broadcasts x's leading dims like the in-memory one), else
one chunk; in-memory operands are cut to those chunks.

Scheduling: chunk calls use the in-memory backends, so on a host worker each task runs Numba's
parallel kernels: set ``NUMBA_NUM_THREADS`` to the worker's thread count (``threads_per_worker``)
to avoid oversubscribing cores.  Dask's threaded scheduler (and workers with several threads) make
calls from several threads at once, which the in-memory API takes under every Numba threading layer
(under ``workqueue``, which aborts on concurrent parallel launches, the cpu backend serialises them:
see ``parscan._threads``).

>>> import dask.array as da, numpy as np, parscan.dask
>>> x = da.ones(6, chunks=2, dtype=np.float32)
>>> h = parscan.dask.linear_scan(0.5, x)        # lazy, chunks (2, 2, 2)
>>> h.compute()
array([1.     , 1.5    , 1.75   , 1.875  , 1.9375 , 1.96875], dtype=float32)
"""

from __future__ import annotations

import itertools
import math
import sys
import threading
from dataclasses import dataclass

import numpy as np

from ._problem import accumulation_dtype
from .matrix import _conj
from .matrix import matrix_linear_scan as _matrix_scan
from .matrix import matrix_linear_scan_backward as _matrix_scan_backward
from .scan import _check_reverse
from .scan import linear_scan as _scan
from .scan import linear_scan_backward as _scan_backward

__all__ = ["linear_scan", "linear_scan_backward", "matrix_linear_scan", "matrix_linear_scan_backward"]

#: how the carries are computed along time, unless a call says: ``"scan"``, one linear scan of the
#: stacked pairs per block of channels (graph depth 1), or ``"sequential"``, a chain of one-pair scans
#: (depth = chunks).  Chosen by measurement (benchmarks/README.md, "Dask").
DEFAULT_METHOD = "scan"
_METHODS = ("scan", "sequential")
_FANIN = 8  # reductions of broadcast gradients: a tree of sums with this fan-in


def _dask():
    try:
        import dask.array as da  # noqa: PLC0415  (optional dependency)
    except ImportError as exc:  # pragma: no cover - dask is in the test extra
        raise ImportError("parscan.dask needs Dask: pip install 'parscan[dask]' "
                          "(dask[array] and distributed)") from exc
    return da


# ---- operands ------------------------------------------------------------------------------------

def _is_dask(v) -> bool:
    return isinstance(v, _dask().Array)


def _arrayish(v):
    """Lists and tuples become NumPy arrays; arrays, scalars and None pass as they are."""
    return np.asarray(v) if isinstance(v, (list, tuple)) else v


def _is_value(v) -> bool:
    """A value every task takes whole: a Python or NumPy scalar, or an in-memory 0-d array."""
    return not _is_dask(v) and (np.ndim(v) == 0 if not hasattr(v, "ndim") else v.ndim == 0)


def _python_scalar(v) -> bool:
    return isinstance(v, (int, float, complex)) and not isinstance(v, (bool, np.generic))


def _taken(v, dtype):
    """``v`` as the in-memory API takes it: a Python scalar rounded to the result dtype (a NumPy scalar
    of that dtype, which keeps every chunk call's result dtype); anything else as it is."""
    return np.asarray(v, dtype=dtype)[()] if _python_scalar(v) else v


def _stub(v, shape=()):
    """An empty stand-in of ``v``'s library and dtype (a value stands in for itself), for a call of the
    in-memory API that checks the arguments and computes the result dtype without touching data."""
    if v is None or _is_value(v):
        return v
    like = v._meta if _is_dask(v) else v
    return np.empty_like(like, shape=shape)


def _check_known(v, name):
    if _is_dask(v) and any(math.isnan(c) for cs in v.chunks for c in cs):
        raise ValueError(f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes() first")


def _check_array(v, name):
    if v is not None and not hasattr(v, "ndim"):
        raise TypeError(f"{name} must be an array (a Dask array, or NumPy/CuPy), got {type(v).__name__}")


class _Op:
    """An operand lined up with the result's blocks: ``value`` is a Dask array whose first
    ``len(dims)`` axes map onto the result's core axes ``dims`` (size 1 = broadcast) and whose
    ``event`` trailing axes are one chunk each; or ``dims`` is None and ``value`` (a scalar, a 0-d
    in-memory array or None) goes whole to every task."""

    def __init__(self, value, dims=None, event=0):
        self.value, self.dims, self.event = value, dims, event

    @property
    def is_array(self):
        return self.dims is not None

    def arg(self, idx):
        """The task argument for the result's block ``idx``: a key of this array, or the value itself."""
        if self.dims is None:
            return self.value
        v = self.value
        own = tuple(0 if v.shape[j] == 1 else idx[d] for j, d in enumerate(self.dims))
        return (v.name,) + own + (0,) * self.event

    def covers(self, d) -> bool:
        return self.dims is not None and any(dd == d and self.value.shape[j] != 1 for j, dd in enumerate(self.dims))


def _dims(v, name, core_shape, targets, event, fix):
    """The result's core axes that ``v``'s core axes map onto (NumPy's right-aligned broadcasting onto
    the axes ``targets``), or the in-memory API's error."""
    shape = tuple(v.shape)
    core = shape[:len(shape) - event]
    want = tuple(core_shape[d] for d in targets)
    try:
        ok = len(core) <= len(want) and np.broadcast_shapes(core, want) == want
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name} has shape {shape}, which does not broadcast to {want}; {fix}")
    return tuple(targets[len(want) - len(core):])


def _layout(core_shape, operands):
    """The result's chunks along its core axes, and ``operands`` (``(name, value, dims, event)``, x
    first) as :class:`_Op` s cut to them.  An axis takes the chunks of the first Dask operand that
    covers it (one chunk if none does); every other Dask operand that covers it must match them."""
    da = _dask()
    chunks, source = [], []
    for d, n in enumerate(core_shape):
        got = ((n,), None)
        for name, v, dims, _ in operands:
            if _is_dask(v) and dims is not None:
                js = [j for j, dd in enumerate(dims) if dd == d and v.shape[j] != 1]
                if js:
                    got = (tuple(int(c) for c in v.chunks[js[0]]), (name, js[0]))
                    break
        chunks.append(got[0])
        source.append(got[1])
    placed = []
    for name, v, dims, event in operands:
        if dims is None:
            placed.append(_Op(v))
            continue
        core_nd = v.ndim - event
        want = tuple((1,) if v.shape[j] == 1 else chunks[d] for j, d in enumerate(dims)) + \
            tuple((n,) for n in v.shape[core_nd:])
        if not _is_dask(v):
            placed.append(_Op(da.from_array(v, chunks=want), dims, event))
            continue
        for j, d in enumerate(dims):
            if v.shape[j] != 1 and tuple(v.chunks[j]) != chunks[d]:
                other, oj = source[d]
                raise ValueError(
                    f"{name} is chunked {v.chunks[j]} along its axis {j} but {other} is chunked {chunks[d]} "
                    f"along its matching axis {oj}; parscan.dask never rechunks behind your back: pass "
                    f"{name}.rechunk({want!r}) (or rechunk {other} to match {name})")
        for j in range(core_nd, v.ndim):
            if len(v.chunks[j]) != 1:
                raise ValueError(f"{name} is chunked along its axis {j} ({v.chunks[j]}); the matrix scan couples "
                                 f"the n components, so that axis must be one chunk: pass "
                                 f"{name}.rechunk({{{j}: -1}})")
        placed.append(_Op(v, dims, event))
    return tuple(chunks), placed


def _value_or_dims(v, name, core_shape, targets, event, fix):
    return None if v is None or _is_value(v) else _dims(v, name, core_shape, targets, event, fix)


def _all(core_shape):
    return list(range(len(core_shape)))


def _but(core_shape, axis):
    return [d for d in range(len(core_shape)) if d != axis]


def _wide_for(dtype, acc) -> np.dtype:
    """The type to sum an operand's gradient parts in: acc, or its real counterpart for a real operand."""
    return acc if np.dtype(dtype).kind == "c" else np.empty(0, acc).real.dtype


# ---- the chunk tasks (module-level functions: they are pickled to workers) ------------------------

@dataclass(frozen=True)
class _Spec:
    """What every task of one call needs to know: the scan (``matrix``), the result's number of axes and
    time axis, direction, backend, the result dtype and the type carried between chunks in (float32
    for float16 data), and whether chunks are CuPy arrays."""

    matrix: bool
    ndim: int
    axis: int
    reverse: bool
    backend: str | None
    dtype: np.dtype
    acc: np.dtype
    cupy: bool

    @property
    def xp(self):
        if self.cupy:
            import cupy  # noqa: PLC0415

            return cupy
        return np

    @property
    def widened(self) -> bool:
        """Whether chunk calls compute in the carry type rather than the result dtype (float16)."""
        return self.acc != self.dtype


def _run(spec, a, x, h0, r, out=None):
    """One chunk scanned by the in-memory API."""
    if spec.matrix:
        return _matrix_scan(a, x, h0, reverse=spec.reverse, backend=spec.backend, resets=r, out=out)
    return _scan(a, x, h0, axis=spec.axis, reverse=spec.reverse, backend=spec.backend, resets=r, out=out)


_SCRATCH = threading.local()


def _run_scratch(spec, a, x, h0, r):
    """:func:`_run` into this worker thread's scratch array (one, of the last such call's shape, dtype
    and device, kept for the next): pass 1 keeps only a chunk's last state, so its full scan need not
    be new memory each chunk (a first touch of fresh pages costs as much as the scan on some hosts)."""
    if spec.matrix:  # (its result broadcasts x's leading dims with A's and h0's)
        return _run(spec, a, x, h0, r)
    # the result dtype is the carry type: h0 is a zero state of it (_zero_state)
    key = (type(x), tuple(x.shape), spec.acc, getattr(getattr(x, "device", None), "id", None))
    kept = getattr(_SCRATCH, "kept", None)
    if kept is not None and kept[0] == key:
        return _run(spec, a, x, h0, r, out=kept[1])
    h = _run(spec, a, x, h0, r)
    _SCRATCH.kept = (key, h)
    return h


def _run_backward(spec, a, h, g, h0, r):
    if spec.matrix:
        return _matrix_scan_backward(a, h, g, h0, reverse=spec.reverse, backend=spec.backend, resets=r)
    return _scan_backward(a, h, g, h0, axis=spec.axis, reverse=spec.reverse, backend=spec.backend, resets=r)


def _step(spec):
    """The index, along time, of a chunk's last step in scan order."""
    at = 0 if spec.reverse else -1
    return (Ellipsis, at, slice(None)) if spec.matrix else (slice(None),) * spec.axis + (at,)


def _last(spec, h, dtype=None):
    """A chunk's last state in scan order, without the time axis (a copy: a view would pin the chunk)."""
    v = h[_step(spec)]
    return v.copy() if dtype is None else v.astype(dtype, copy=True)


def _zero_state(spec, like):
    """A zero state in the carry type (it also makes the call's result dtype the carry type, which a, x
    alone may not give when h0 widens the result)."""
    return spec.xp.zeros(like.shape[-1:], spec.acc) if spec.matrix else spec.acc.type(0)


def _carried(spec, v, like):
    """The first chunk's initial state: ``v`` (taken) as it is, or widened to the carry type where the
    chunk calls compute in it (float16 data; None becomes zeros)."""
    if not spec.widened:
        return v
    return _zero_state(spec, like) if v is None else v.astype(spec.acc)


def _widen(v, dtype):
    return v if dtype is None or v is None else v.astype(dtype)


def _cast(v, dtype):
    return v.astype(dtype, copy=False)


def _item(t, i, dtype=None):
    v = t[i]
    return v if dtype is None else v.astype(dtype, copy=False)


def _decay(spec, a, r, length):
    """The product of a chunk's decays, 0 where the chunk holds a reset: the last state of the
    in-memory scan of zeros from a state of 1 (the identity, one batch row per column, for the matrix
    scan), over an array broadcast to the shape of ``a`` and ``r`` only (never materialised).  It runs
    in float64 (complex128 for a complex ``a``): a product of many decays rounds L times and, for a
    decay near 1 over a long chunk, crosses the slow denormal range much later than in float32; the
    result is rounded to the carry type once."""
    xp = spec.xp
    zdt, out = _decay_types(spec, a)
    zero = xp.zeros((), zdt)
    if spec.matrix:
        n = a.shape[-1]
        lead = np.broadcast_shapes(a.shape[:-3], () if r is None else np.shape(r)[:-1])
        cols = None if r is None else (r if r.ndim == 0 else r[..., None, :])
        h = _run(spec, a[..., None, :, :, :], xp.broadcast_to(zero, lead + (n, length, n)), xp.eye(n, dtype=zdt),
                 cols)
        return _last(spec, h, out).swapaxes(-1, -2)  # row j of the scan is P e_j, column j of P
    return _last(spec, _run(spec, a, xp.broadcast_to(zero, _decay_shape(spec, a, r, length)), zdt.type(1), r), out)


def _decay_types(spec, a):
    """(the type a chunk's decay product is computed in: float64, complex128 for a complex ``a``; the
    type it is rounded to: the carry type, or its real counterpart for a real ``a``)."""
    return np.dtype(np.complex128 if np.iscomplexobj(a) else np.float64), _wide_for(a.dtype, spec.acc)


def _decay_shape(spec, a, r, length):
    """The shape ``a`` and ``r`` broadcast to over a chunk of ``length`` steps (x's number of dims)."""
    shape = np.broadcast_shapes(np.shape(a), () if r is None else np.shape(r))
    shape = list((1,) * (spec.ndim - len(shape)) + shape)
    shape[spec.axis] = length
    return tuple(shape)


def _decay_constant(spec, a, r, length):
    """:func:`_decay` for a decay constant in time (and resets constant in time: every step or none), in
    the elementwise scan: ``a ** length`` in float64 (complex128), 0 where the resets are set (a power
    has no subnormal slow path, which a chained product near 1 over millions of steps falls into)."""
    xp = spec.xp
    wide, out = _decay_types(spec, a)
    A = xp.asarray(a, dtype=wide) ** length
    if r is not None:
        A = xp.where(xp.asarray(r), wide.type(0), A)
    # (a and the resets have length 1 along time here)
    return xp.broadcast_to(A, _decay_shape(spec, a, r, 1))[_step(spec)].astype(out)


def _chain(spec, start, pairs, decays, adjoint):
    """The carries after each pair, ``c_j = A_j c_{j-1} + H_j`` from ``c_{-1} = start``: the in-memory
    scan of the stacked pairs along a new chunk axis.  ``pairs``: ``(A, H)`` with A None where
    ``decays`` gives it (shared by chunks of one length); ``adjoint``: the backward's chain, whose
    pairs ``(A, D)`` combine as ``(conj(A), D)`` (``(P^H, D)`` for the matrix scan)."""
    xp = spec.xp
    As = [p[0] if d is None else d for p, d in zip(pairs, decays)]
    if adjoint:
        As = [_conj(A).swapaxes(-1, -2) if spec.matrix else _conj(A) for A in As]
    if spec.matrix:
        return _matrix_scan(xp.stack(As, axis=-3), xp.stack([p[1] for p in pairs], axis=-2), start,
                            backend=spec.backend)
    return _scan(xp.stack(As), xp.stack([p[1] for p in pairs]), start, axis=0, backend=spec.backend)


def _pick(spec, carries, j):
    """Carry ``j`` of :func:`_chain`'s result (all of it for ``j`` None: a link of the chain)."""
    if j is None:
        return carries
    return carries[..., j, :] if spec.matrix else carries[j]


def _link(spec, prev, pair, decay, adjoint):
    """One link of ``method="sequential"``: the carry after one more pair."""
    return _pick(spec, _chain(spec, prev, [pair], [decay], adjoint), 0)


def _fwd_only(spec, a, x, h0, r):
    """A block with a single time chunk: the in-memory call itself."""
    return _run(spec, a, x, h0, r)


def _fwd_head(spec, a, x, h0, r):
    """The first chunk, scanned from h0 in the carry type."""
    return _run(spec, a, x, _carried(spec, h0, x), r)


def _fwd_pair(spec, a, x, r, shared):
    """A chunk reduced to its pair ``(A, H)`` (A None when a task shared by chunks of its length gives it)."""
    H = _last(spec, _run_scratch(spec, a, x, _zero_state(spec, x), r))
    return (None if shared else _decay(spec, a, r, x.shape[-2 if spec.matrix else spec.axis])), H


def _fwd_second(spec, a, x, carries, j, r):
    """A chunk scanned again from its incoming carry, rounded to the result dtype."""
    return _cast(_run(spec, a, x, _pick(spec, carries, j), r), spec.dtype)


def _hprev(spec, h, chan_shape):
    """The state before the next chunk (the last of this one) in the carry type, as that chunk's h0;
    broadcast to the result block's shape (the matrix scan's leading dims may broadcast h)."""
    v = _last(spec, h, spec.acc)
    return v if chan_shape is None or tuple(v.shape) == chan_shape else spec.xp.broadcast_to(v, chan_shape).copy()


def _bwd_call(spec, a, h, g, h0, carries, j, r, widen_a, widen_h0, shape):
    """The in-memory backward of a chunk whose gradient receives the carry (the gradient flowing in from
    the chunk after it, added to grad_h at the chunk's last step: one copy of that chunk of grad_h;
    None for the last chunk).  ``shape``: the result block's (matrix scan: h and grad_h broadcast)."""
    xp = spec.xp
    if shape is not None and tuple(h.shape) != shape:
        h, g = xp.broadcast_to(h, shape), xp.broadcast_to(g, shape)
    if carries is not None:
        g = g.astype(spec.acc, copy=True)
        g[_step(spec)] += _pick(spec, carries, j)
    return _run_backward(spec, _widen(a, widen_a), h, g, _widen(h0, widen_h0), r)


def _bwd_pair(spec, a, g, r, shared, shape):
    """The backward's pair of a chunk: ``(A, D)``, D the grad_h0 of its in-memory backward from no
    incoming gradient (h is not read for it: it only feeds grad_a); :func:`_chain` combines them as
    ``(conj(A), D)`` (``(P^H, D)``)."""
    xp = spec.xp
    if shape is not None and tuple(g.shape) != shape:
        g = xp.broadcast_to(g, shape)
    zero_h = xp.broadcast_to(xp.zeros((), spec.acc), g.shape)
    chan = g.shape[:-2] + g.shape[-1:] if spec.matrix else g.shape[:spec.axis] + g.shape[spec.axis + 1:]
    D = _run_backward(spec, a, zero_h, g, xp.zeros(chan, spec.acc), r)[2]
    return (None if shared else _decay(spec, a, r, g.shape[-2 if spec.matrix else spec.axis])), D


def _sum(*parts):
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


# ---- graphs ---------------------------------------------------------------------------------------

class _Keys:
    """Fresh keys ``(name, n)`` for the intermediate tasks of one graph."""

    def __init__(self, name):
        self.name, self.n = name, itertools.count()

    def __call__(self, tag):
        return (f"{self.name}-{tag}", next(self.n))


def _tree_sum(dsk, keys, new):
    while len(keys) > 1:
        nxt = []
        for i in range(0, len(keys), _FANIN):
            group = keys[i:i + _FANIN]
            if len(group) == 1:
                nxt.append(group[0])
                continue
            k = new("sum")
            dsk[k] = (_sum,) + tuple(group)
            nxt.append(k)
        keys = nxt
    return keys[0]


def _channel_blocks(numblocks, axis):
    return itertools.product(*[range(n) if d != axis else (None,) for d, n in enumerate(numblocks)])


def _at(cidx, axis, k):
    return tuple(k if d == axis else c for d, c in enumerate(cidx))


def _method(method):
    method = DEFAULT_METHOD if method is None else method
    if method not in _METHODS:
        raise ValueError(f"method must be 'scan' or 'sequential' (or None for {DEFAULT_METHOD!r}), got {method!r}")
    return method


class _Decays:
    """Keys of the decay products shared by chunks of one length: where neither ``a`` nor the resets
    vary along time, ``A_k`` depends only on the chunk's length (one task per length and block of a)."""

    def __init__(self, dsk, spec, a, r, new):
        self.dsk, self.spec, self.a, self.r, self.new = dsk, spec, a, r, new
        self.shared = not (a.covers(spec.axis) or r.covers(spec.axis))
        self.keys = {}

    def __call__(self, idx, length):
        if not self.shared:
            return None
        ak, rk = self.a.arg(idx), self.r.arg(idx)
        key = (repr(ak), repr(rk), length)
        if key not in self.keys:
            k = self.keys[key] = self.new("decay")
            self.dsk[k] = (_decay if self.spec.matrix else _decay_constant, self.spec, ak, rk, length)
        return self.keys[key]


def _carry_tasks(dsk, spec, new, start, pairs, decays, method, adjoint):
    """Tasks for the carries after each of ``pairs`` (keys) from ``start``: ``[(key, j)]``, the carry
    after pair j being ``_pick(key, j)``.  ``decays``: the shared decay keys (None: in the pair)."""
    if not pairs:
        return []
    if method == "scan":
        k = new("carries")
        dsk[k] = (_chain, spec, start, list(pairs), list(decays), adjoint)
        return [(k, j) for j in range(len(pairs))]
    out, prev = [], start
    for pk, dk in zip(pairs, decays):
        k = new("link")
        dsk[k] = (_link, spec, prev, pk, dk, adjoint)
        out.append((k, None))
        prev = k
    return out


def _block_shape(chunks, idx):
    return tuple(c[i] for c, i in zip(chunks, idx))


def _graph_frame(name, spec, chunks, a, r):
    """What both graphs start from: (axis, blocks along the core dims, time blocks, their scan order,
    the n axis' block index of the matrix scan, the key maker, the graph, the decay products)."""
    core_nb = tuple(len(c) for c in chunks[:len(chunks) - spec.matrix])
    nt = core_nb[spec.axis]
    order = list(range(nt))[::-1] if spec.reverse else list(range(nt))
    new, dsk = _Keys(name), {}
    return spec.axis, core_nb, nt, order, (0,) if spec.matrix else (), new, dsk, _Decays(dsk, spec, a, r, new)


def _forward_graph(name, spec, chunks, x, a, h0, r, method):
    """The forward scan's tasks (module doc); output keys ``(name, *block index)``."""
    axis, core_nb, nt, order, ev, new, dsk, decays = _graph_frame(name, spec, chunks, a, r)
    for cidx in _channel_blocks(core_nb, axis):
        idx = [_at(cidx, axis, k) for k in order]  # in scan order
        out = [(name,) + i + ev for i in idx]
        if nt == 1:
            dsk[out[0]] = (_fwd_only, spec, a.arg(idx[0]), x.arg(idx[0]), h0.arg(cidx), r.arg(idx[0]))
            continue
        head = new("head") if spec.widened else out[0]
        dsk[head] = (_fwd_head, spec, a.arg(idx[0]), x.arg(idx[0]), h0.arg(cidx), r.arg(idx[0]))
        if spec.widened:
            dsk[out[0]] = (_cast, head, spec.dtype)
        start = new("last")
        dsk[start] = (_last, spec, head)
        pairs, shared = [], []
        for p in range(1, nt - 1):
            shared.append(decays(idx[p], chunks[axis][idx[p][axis]]))
            pairs.append(new("pair"))
            dsk[pairs[-1]] = (_fwd_pair, spec, a.arg(idx[p]), x.arg(idx[p]), r.arg(idx[p]), shared[-1] is not None)
        # (key, j): the carry into chunk p is _pick(key, j)
        incoming = [(start, None)] + _carry_tasks(dsk, spec, new, start, pairs, shared, method, False)
        for p in range(1, nt):
            key, j = incoming[p - 1]
            dsk[out[p]] = (_fwd_second, spec, a.arg(idx[p]), x.arg(idx[p]), key, j, r.arg(idx[p]))
    return dsk


def _backward_graph(name, spec, chunks, h, g, a, h0, r, method, widen_a, widen_h0, dtype):
    """The backward's tasks: grad_x blocks ``(name-grad-x, *block)`` and the parts of grad_a and grad_h0
    (the chunk calls, keyed by the block of a / h0 they contribute to)."""
    axis, core_nb, nt, order, ev, new, dsk, decays = _graph_frame(name, spec, chunks, a, r)
    ga_parts, gh0_parts = {}, {}
    gx_name = name + "-grad-x"
    for cidx in _channel_blocks(core_nb, axis):
        idx = [_at(cidx, axis, k) for k in order]  # in the forward's scan order
        shapes = [_block_shape(chunks, i + ev) for i in idx] if spec.matrix else [None] * nt
        chan = None
        if spec.matrix:
            chan = shapes[0][:-2] + shapes[0][-1:]
        calls = [new("call") for _ in range(nt)]
        h0s = [h0.arg(cidx)]  # each chunk's h0: the user's, then the state before the chunk
        for p in range(1, nt):
            h0s.append(new("hprev"))
            dsk[h0s[p]] = (_hprev, spec, h.arg(idx[p - 1]), chan)
        incoming = [(None, None)] * nt  # the gradient flowing into chunk p from the one after it
        if nt > 1:
            start = new("start")  # the last chunk (no incoming gradient): its grad_h0 starts the chain
            dsk[start] = (_item, calls[nt - 1], 2)
            pairs, shared = [], []
            for p in range(nt - 2, 0, -1):
                shared.append(decays(idx[p], chunks[axis][idx[p][axis]]))
                pairs.append(new("pair"))
                dsk[pairs[-1]] = (_bwd_pair, spec, a.arg(idx[p]), g.arg(idx[p]), r.arg(idx[p]), shared[-1] is not None,
                                  shapes[p])
            incoming[nt - 2] = (start, None)
            # pair j is chunk nt-2-j's; the gradient after it flows into chunk nt-3-j
            for j, kj in enumerate(_carry_tasks(dsk, spec, new, start, pairs, shared, method, True)):
                incoming[nt - 3 - j] = kj
        for p in range(nt):
            key, j = incoming[p]
            dsk[calls[p]] = (_bwd_call, spec, a.arg(idx[p]), h.arg(idx[p]), g.arg(idx[p]), h0s[p], key, j,
                             r.arg(idx[p]), widen_a, widen_h0 if p == 0 else None, shapes[p])
            dsk[(gx_name,) + idx[p] + ev] = (_item, calls[p], 1, dtype)
            ga_parts.setdefault(_part_index(a, idx[p]), []).append(calls[p])
        gh0_parts.setdefault(_part_index(h0, cidx), []).append(calls[0])
    return dsk, gx_name, ga_parts, gh0_parts


def _part_index(p, idx):
    """The block of operand ``p`` that the result's block ``idx`` contributes its gradient to (() for a
    value)."""
    if not p.is_array:
        return ()
    v = p.value
    return tuple(0 if v.shape[j] == 1 else idx[d] for j, d in enumerate(p.dims)) + (0,) * p.event


def _reduce_parts(dsk, name, parts, which, dtype, new):
    """Blocks ``(name, *block)`` of a gradient: item ``which`` of the calls on each block, summed over
    the calls that share it (a broadcast operand), in a tree."""
    for bidx, calls in parts.items():
        if len(calls) == 1:
            dsk[(name,) + bidx] = (_item, calls[0], which, dtype)
            continue
        keys = []
        for c in calls:
            keys.append(new("part"))
            dsk[keys[-1]] = (_item, c, which)
        dsk[(name,) + bidx] = (_cast, _tree_sum(dsk, keys, new), dtype)


def _array(dsk, name, deps, chunks, dtype, meta):
    da = _dask()
    from dask.highlevelgraph import HighLevelGraph  # noqa: PLC0415

    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[d for d in deps if _is_dask(d)])
    return da.Array(graph, name, chunks, dtype=dtype, meta=meta)


def _meta(like, dtype, ndim):
    return np.empty_like(like._meta, shape=(0,) * ndim, dtype=dtype)


def _is_cupy(like) -> bool:
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(like._meta, cp.ndarray)


def _tokenize(*args):
    from dask.base import tokenize  # noqa: PLC0415

    return tokenize(*args)


def _widening(spec, p, nblocks, dtype):
    """The type a broadcast operand is widened to in the chunk calls, so that its gradient's parts are
    summed across blocks in the accumulation type (None: no parts to sum, or it has that type)."""
    across = math.prod(nblocks) if not p.is_array else \
        math.prod(n for d, n in enumerate(nblocks) if not p.covers(d))
    w = _wide_for(dtype, spec.acc)
    return w if across > 1 and np.dtype(dtype) != w else None


def _backward(kind, spec, chunks, h, g, a, h0, r, method, ga_dtype, gh0_dtype, has_h0):
    """The backward's three lazy results from the placed operands."""
    token = _tokenize(kind, h.value, g.value, a.value, h0.value, r.value, spec, method)
    name = f"parscan-{kind}-backward-{token}"
    nblocks = tuple(len(c) for c in chunks[:len(chunks) - spec.matrix])
    widen_a = _widening(spec, a, nblocks, ga_dtype)
    widen_h0 = _widening(spec, h0, nblocks, gh0_dtype) if has_h0 else None
    dsk, gx_name, ga_parts, gh0_parts = _backward_graph(name, spec, chunks, h, g, a, h0, r, method, widen_a,
                                                        widen_h0, spec.dtype)
    new = _Keys(name + "-sum")
    ga_name, gh0_name = name + "-grad-a", name + "-grad-h0"
    _reduce_parts(dsk, ga_name, ga_parts, 0, ga_dtype, new)
    if has_h0:
        _reduce_parts(dsk, gh0_name, gh0_parts, 2, gh0_dtype, new)
    like = h.value
    deps = [h.value, g.value, a.value, h0.value, r.value]
    grad_x = _array(dsk, gx_name, deps, chunks, spec.dtype, _meta(like, spec.dtype, len(chunks)))

    def of(p, nm, dt):
        if p.is_array:
            return _array(dsk, nm, deps, p.value.chunks, dt, _meta(like, dt, p.value.ndim))
        return _array(dsk, nm, deps, (), dt, _meta(like, dt, 0))

    return of(a, ga_name, ga_dtype), grad_x, (of(h0, gh0_name, gh0_dtype) if has_h0 else None)


# ---- public API -----------------------------------------------------------------------------------

def linear_scan(a, x, h0=None, *, axis=-1, reverse=False, method=None, backend=None, resets=None):
    """The linear recurrence ``h[t] = a[t] * h[t-1] + x[t]`` along ``axis`` of Dask arrays, lazily.

    The semantics of :func:`parscan.linear_scan` (``h[-1] = h0``, or 0; ``reverse=True`` runs
    ``h[t] = a[t] * h[t+1] + x[t]`` from ``h[T] = h0``), chunk by chunk: each time chunk k is reduced
    to ``(A_k, H_k)`` (product of its decays, last state from zero), the carries
    ``c_k = A_k c_{k-1} + H_k`` are a linear scan along the chunk axis, and each chunk is scanned again
    from its carry (module doc).  Every chunk is read at most twice and never gathered; the result has
    x's chunks.

    Parameters
    ----------
    a : dask array, array or scalar
        Decays, broadcastable to ``x.shape`` (a scalar, a per-channel constant with a size-1 time
        axis, or a full array).  Axes it shares with x (not broadcast) must be chunked like x's.
    x : dask array or array
        Inputs; NumPy or CuPy chunks.  An in-memory x takes the chunks of a Dask ``a``/``h0``/``resets``
        (one chunk along axes they do not cover).
    h0 : dask array, array or scalar, optional
        Initial state, broadcastable to x's shape without ``axis``; zeros when None.
    axis : int
        The time axis.
    reverse : bool
        Run backwards in time.
    method : {None, "scan", "sequential"}
        How the carries are computed: one in-memory scan of the stacked pairs per block of channels
        (``"scan"``) or a chain of one-pair scans (``"sequential"``); None: :data:`DEFAULT_METHOD`.
    backend : str, optional
        Passed to the in-memory API for every chunk (None: "cpu" for NumPy chunks, "cupy" for CuPy).
    resets : dask array or bool array, optional
        Broadcastable to x's shape (typically (T,)): where true the carried state is dropped,
        ``h[t] = x[t]`` (``reverse``: the state from t+1 is dropped), as :func:`parscan.linear_scan`.
        Chunked like x along the axes they share (in-memory resets are cut to x's chunks).

    Returns
    -------
    h : dask array with x's shape and chunks, dtype the NumPy result type of a, x and h0 (Python
        scalars weak, rounded to it), as :func:`parscan.linear_scan`.

    Examples
    --------
    >>> import dask.array as da, numpy as np, parscan.dask
    >>> x = da.from_array(np.arange(6.0), chunks=(1, 2, 3))
    >>> parscan.dask.linear_scan(0.5, x, h0=2.0).compute()
    array([1.     , 1.5    , 2.75   , 4.375  , 6.1875 , 8.09375])
    """
    _dask()
    x, a, h0, resets = _arrayish(x), _arrayish(a), _arrayish(h0), _arrayish(resets)
    for v, n in ((a, "a"), (x, "x"), (h0, "h0"), (resets, "resets")):
        _check_known(v, n)
    # the in-memory API checks the arguments and gives the result dtype, on empty stand-ins
    dtype = np.dtype(_scan(_stub(a), _stub(x, (0,) * np.ndim(x)), _stub(h0), axis=axis, reverse=reverse,
                           backend=backend, resets=_stub(resets)).dtype)
    method = _method(method)
    axis = axis % x.ndim
    shape = tuple(x.shape)
    a_dims = _value_or_dims(a, "a", shape, _all(shape), 0,
                            "a must broadcast to x's shape; for a decay constant in time give a a size-1 time "
                            "axis (e.g. a[..., None] when axis=-1)")
    h0_dims = _value_or_dims(h0, "h0", shape, _but(shape, axis), 0,
                             "h0 must broadcast to x's shape without the time axis")
    r_dims = _value_or_dims(resets, "resets", shape, _all(shape), 0,
                            "resets must broadcast to x's shape: e.g. shape (T,) for resets shared by every channel")
    chunks, (xo, ao, ho, ro) = _layout(shape, [("x", x, tuple(range(x.ndim)), 0), ("a", a, a_dims, 0),
                                               ("h0", h0, h0_dims, 0), ("resets", resets, r_dims, 0)])
    ao.value, ho.value = _taken(ao.value, dtype), _taken(ho.value, dtype)
    spec = _Spec(False, x.ndim, axis, _check_reverse(reverse), backend, dtype, accumulation_dtype(dtype),
                 _is_cupy(xo.value))
    name = "parscan-linear-scan-" + _tokenize(xo.value, ao.value, ho.value, ro.value, spec, method)
    dsk = _forward_graph(name, spec, chunks, xo, ao, ho, ro, method)
    return _array(dsk, name, [xo.value, ao.value, ho.value, ro.value], chunks, dtype, _meta(xo.value, dtype, x.ndim))


def linear_scan_backward(a, h, grad_h, h0=None, *, axis=-1, reverse=False, method=None, backend=None,
                         resets=None):
    """Gradients ``(grad_a, grad_x, grad_h0)`` of ``h = linear_scan(a, x, h0, axis=axis, reverse=reverse)``.

    As :func:`parscan.linear_scan_backward` (forward direction; ``reverse=True`` mirrors time)::

        g[t]      = grad_h[t] + conj(a[t+1]) * g[t+1]      (g[T] = 0)       grad_x = g
        grad_a[t] = g[t] * conj(h[t-1])                    (h[-1] = h0, or 0)
        grad_h0   = conj(a[0]) * g[0]

    chunk by chunk in reversed time: chunk k's in-memory backward with no incoming gradient gives
    ``D_k`` (its grad_h0), and the gradient flowing out of it is ``G_k = conj(A_k) G_{k+1} + D_k``
    (``A_k`` the product of its decays): a linear scan along the chunk axis (``method``, as in
    :func:`linear_scan`).  ``G_{k+1}`` enters chunk k as an addition to ``grad_h`` at its last step
    (one copy of that chunk of grad_h), and ``h`` at the step before the chunk, the previous chunk's
    last state, is the chunk's h0.  grad_a and grad_h0 are summed over what a and h0 were broadcast
    along (a tree of sums across chunks, in the accumulation type).

    ``resets``: the forward's (as in :func:`linear_scan`): a reads as 0 at reset steps, so a chunk with
    a reset passes no gradient on to the chunks before it, and grad_a is 0 there.

    Returns lazy Dask arrays: grad_x with h's shape and chunks; grad_a with a's shape (a Dask array
    also for an in-memory or scalar a) and dtype; grad_h0 with h0's shape and dtype, or None.  h and
    grad_h must have the same shape and chunks.

    Examples
    --------
    >>> import dask.array as da, numpy as np, parscan.dask
    >>> h = parscan.dask.linear_scan(0.5, da.ones(3, chunks=1))
    >>> ga, gx, gh0 = parscan.dask.linear_scan_backward(0.5, h, da.ones(3, chunks=1))
    >>> gx.compute()
    array([1.75, 1.5 , 1.  ])
    """
    _dask()
    h, grad_h, a, h0, resets = _arrayish(h), _arrayish(grad_h), _arrayish(a), _arrayish(h0), _arrayish(resets)
    for v, n in ((h, "h"), (grad_h, "grad_h")):
        if not hasattr(v, "ndim"):
            raise TypeError(f"{n} must be an array (a Dask array, or NumPy/CuPy), got {type(v).__name__}")
    for v, n in ((a, "a"), (h, "h"), (grad_h, "grad_h"), (h0, "h0"), (resets, "resets")):
        _check_known(v, n)
    _same_shape_and_chunks(h, grad_h)
    sa, sx, sh0 = _scan_backward(_stub(a), _stub(h, (0,) * h.ndim), _stub(grad_h, (0,) * h.ndim), _stub(h0),
                                 axis=axis, reverse=reverse, backend=backend, resets=_stub(resets))
    dtype, ga_dtype = np.dtype(sx.dtype), np.dtype(sa.dtype)
    gh0_dtype = None if sh0 is None else np.dtype(sh0.dtype)
    method = _method(method)
    axis = axis % h.ndim
    shape = tuple(h.shape)
    a_dims = _value_or_dims(a, "a", shape, _all(shape), 0, "a must broadcast to h's shape (it is the forward's a)")
    h0_dims = _value_or_dims(h0, "h0", shape, _but(shape, axis), 0,
                             "h0 must broadcast to h's shape without the time axis")
    r_dims = _value_or_dims(resets, "resets", shape, _all(shape), 0, "resets must broadcast to h's shape")
    full = tuple(range(h.ndim))
    chunks, (ho_, go, ao, h0o, ro) = _layout(shape, [("h", h, full, 0), ("grad_h", grad_h, full, 0),
                                                     ("a", a, a_dims, 0), ("h0", h0, h0_dims, 0),
                                                     ("resets", resets, r_dims, 0)])
    ao.value, h0o.value = _taken(ao.value, dtype), _taken(h0o.value, dtype)
    spec = _Spec(False, h.ndim, axis, _check_reverse(reverse), backend, dtype, accumulation_dtype(dtype),
                 _is_cupy(ho_.value))
    return _backward("linear-scan", spec, chunks, ho_, go, ao, h0o, ro, method, ga_dtype, gh0_dtype, h0 is not None)


def _same_shape_and_chunks(h, grad_h):
    if tuple(grad_h.shape) != tuple(h.shape):
        raise ValueError(f"grad_h has shape {tuple(grad_h.shape)} but h has shape {tuple(h.shape)}; "
                         f"they must match (grad_h = dL/dh)")
    if _is_dask(h) and _is_dask(grad_h) and tuple(h.chunks) != tuple(grad_h.chunks):
        raise ValueError(f"grad_h is chunked {grad_h.chunks} but h is chunked {h.chunks}; they must match: pass "
                         f"grad_h.rechunk(h.chunks)")


def _matrix_shapes(A, x, h0, xname):
    """Checks of a matrix-scan call's shapes the empty stand-ins cannot make (they have no batch), and
    the result's core shape ``lead + (T,)``."""
    if x.ndim < 2:
        raise ValueError(f"{xname} must have shape (..., T, n), got {tuple(x.shape)}")
    T, n = x.shape[-2:]
    if A.ndim < 3 or tuple(A.shape[-2:]) != (n, n) or A.shape[-3] not in (1, T):
        raise ValueError(f"A must have shape (..., T, n, n) or (..., 1, n, n) with n = {n} and T = {T}, "
                         f"got {tuple(A.shape)}")
    if h0 is not None and (h0.ndim < 1 or tuple(h0.shape[-1:]) != (n,)):
        raise ValueError(f"h0 must have shape (..., {n}), got {tuple(h0.shape)}")
    try:
        lead = np.broadcast_shapes(tuple(x.shape[:-2]), tuple(A.shape[:-3]),
                                   () if h0 is None else tuple(h0.shape[:-1]))
    except ValueError:
        raise ValueError(f"the leading dims of A {tuple(A.shape[:-3])}, {xname} {tuple(x.shape[:-2])} and h0 do not "
                         f"broadcast") from None
    return lead + (T,)


def _matrix_operands(core, A, x, h0, resets, xname, extra=()):
    """The matrix scan's operands lined up with the result's blocks (x's leading dims may broadcast)."""
    axis = len(core) - 1
    x_dims = _dims(x, xname, core, _all(core), 1, f"{xname}'s leading dims must broadcast to the result's")
    A_dims = _dims(A, "A", core, _all(core), 2, "A's leading dims must broadcast to the result's")
    h0_dims = None if h0 is None else _dims(h0, "h0", core, _but(core, axis), 1,
                                            "h0 must broadcast to the result's shape without T")
    r_dims = _value_or_dims(resets, "resets", core, _all(core), 0,
                            f"resets must broadcast to {xname}'s shape without its last (state) axis: e.g. shape "
                            f"(T,) for resets shared by the batch")
    ops = [(xname, x, x_dims, 1)] + [(nm, v, x_dims, 1) for nm, v in extra] + \
        [("A", A, A_dims, 2), ("h0", h0, h0_dims, 1), ("resets", resets, r_dims, 0)]
    return _layout(core, ops)


def matrix_linear_scan(A, x, h0=None, *, reverse=False, method=None, backend=None, resets=None):
    """``h_t = A_t h_{t-1} + x_t`` for Dask arrays: x (..., T, n), A (..., T or 1, n, n), h0 (..., n).

    The semantics and dtypes of :func:`parscan.matrix_linear_scan` (leading dims of A, x and h0
    broadcast; the result has their broadcast shape), chunk by chunk along time (axis -2 of x) as
    :func:`linear_scan` does, with n x n pairs: a chunk maps ``h_in`` to ``P_k h_in + H_k`` with
    ``P_k = A_{e-1} ... A_s`` (the last state of the in-memory matrix scan of zeros from the identity),
    and the carries ``c_k = P_k c_{k-1} + H_k`` are a matrix scan along the chunk axis.  The n axis (and
    A's two) must be one chunk; leading axes and time may be chunked any way (shared axes alike in
    every Dask operand).  Where x is broadcast along a leading axis its one block serves every block of
    the result (the in-memory call broadcasts it; nothing is materialised or rechunked).  ``resets``
    (broadcastable to the result's shape without n, ``(..., T)``): as :func:`parscan.matrix_linear_scan`.

    Examples
    --------
    >>> import dask.array as da, numpy as np, parscan.dask
    >>> A = np.array([[[0.0, 1.0], [1.0, 0.0]]])            # swaps the two components
    >>> x = da.from_array(np.ones((4, 2)) * [1.0, 0.0], chunks=(2, 2))
    >>> parscan.dask.matrix_linear_scan(A, x).compute()
    array([[1., 0.],
           [1., 1.],
           [2., 1.],
           [2., 2.]])
    """
    _dask()
    x, A, h0, resets = _arrayish(x), _arrayish(A), _arrayish(h0), _arrayish(resets)
    for v, n in ((A, "A"), (x, "x"), (h0, "h0"), (resets, "resets")):
        _check_array(v, n)
        _check_known(v, n)
    core = _matrix_shapes(A, x, h0, "x")
    n = x.shape[-1]
    # argument checks and the result dtype by the in-memory API on empty stand-ins (T = 0, no batch)
    dtype = np.dtype(_matrix_scan(_stub(A, (0 if A.shape[-3] != 1 else 1, n, n)), _stub(x, (0, n)),
                                  None if h0 is None else _stub(h0, (n,)), reverse=reverse, backend=backend,
                                  resets=None if resets is None else _stub(resets, (0,))).dtype)
    method = _method(method)
    chunks, (xo, Ao, ho, ro) = _matrix_operands(core, A, x, h0, resets, "x")
    chunks = chunks + ((n,),)
    spec = _Spec(True, len(chunks), len(core) - 1, _check_reverse(reverse), backend, dtype, accumulation_dtype(dtype),
                 _is_cupy(xo.value))
    name = "parscan-matrix-linear-scan-" + _tokenize(xo.value, Ao.value, ho.value, ro.value, spec, method)
    dsk = _forward_graph(name, spec, chunks, xo, Ao, ho, ro, method)
    return _array(dsk, name, [xo.value, Ao.value, ho.value, ro.value], chunks, dtype,
                  _meta(xo.value, dtype, len(chunks)))


def matrix_linear_scan_backward(A, h, grad_h, h0=None, *, reverse=False, method=None, backend=None, resets=None):
    """``(grad_A, grad_x, grad_h0)`` of ``h = matrix_linear_scan(A, x, h0, reverse=reverse)`` for Dask arrays.

    As :func:`parscan.matrix_linear_scan_backward` (forward direction; ``reverse=True`` mirrors time)::

        g_t = grad_h_t + A_{t+1}^H g_{t+1}   (g_T = 0)    grad_x_t = g_t
        grad_A_t = g_t h_{t-1}^H                          grad_h0 = A_0^H g_0

    chunk by chunk in reversed time as :func:`linear_scan_backward`: the gradient flowing out of chunk
    k is ``G_k = P_k^H G_{k+1} + D_k`` (``P_k`` the chunk's ordered product of A, ``D_k`` the grad_h0 of
    its in-memory backward from no incoming gradient), a matrix scan along the chunk axis.  grad_A has
    A's shape and dtype and grad_h0 h0's (summed over what they were broadcast along, across chunks in
    the accumulation type), grad_x the result's shape and h's chunks; h and grad_h must have the same
    shape and chunks.

    Examples
    --------
    >>> import dask.array as da, numpy as np, parscan.dask
    >>> A = np.array([[[0.5, 0.0], [0.0, 0.5]]])
    >>> h = parscan.dask.matrix_linear_scan(A, da.ones((3, 2), chunks=(1, 2)))
    >>> gA, gx, gh0 = parscan.dask.matrix_linear_scan_backward(A, h, da.ones((3, 2), chunks=(1, 2)))
    >>> gx.compute()
    array([[1.75, 1.75],
           [1.5 , 1.5 ],
           [1.  , 1.  ]])
    """
    _dask()
    h, grad_h, A, h0, resets = _arrayish(h), _arrayish(grad_h), _arrayish(A), _arrayish(h0), _arrayish(resets)
    for v, n in ((A, "A"), (h, "h"), (grad_h, "grad_h"), (h0, "h0"), (resets, "resets")):
        _check_array(v, n)
        _check_known(v, n)
    _same_shape_and_chunks(h, grad_h)
    core = _matrix_shapes(A, h, h0, "h")
    n = h.shape[-1]
    sA, sx, sh0 = _matrix_scan_backward(_stub(A, (0 if A.shape[-3] != 1 else 1, n, n)), _stub(h, (0, n)),
                                        _stub(grad_h, (0, n)), None if h0 is None else _stub(h0, (n,)),
                                        reverse=reverse, backend=backend,
                                        resets=None if resets is None else _stub(resets, (0,)))
    dtype, ga_dtype = np.dtype(sx.dtype), np.dtype(sA.dtype)
    gh0_dtype = None if sh0 is None else np.dtype(sh0.dtype)
    method = _method(method)
    chunks, (ho_, go, Ao, h0o, ro) = _matrix_operands(core, A, h, h0, resets, "h", extra=[("grad_h", grad_h)])
    chunks = chunks + ((n,),)
    spec = _Spec(True, len(chunks), len(core) - 1, _check_reverse(reverse), backend, dtype, accumulation_dtype(dtype),
                 _is_cupy(ho_.value))
    return _backward("matrix-linear-scan", spec, chunks, ho_, go, Ao, h0o, ro, method, ga_dtype, gh0_dtype,
                     h0 is not None)
