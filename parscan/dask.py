"""Scans over Dask arrays: the linear scan of arrays too large for one machine, chunk by chunk.

:func:`linear_scan`, :func:`linear_scan_backward` and :func:`matrix_linear_scan` take
``dask.array.Array`` arguments chunked any way (along time, along channels, both, unevenly) and
return lazy Dask arrays with x's chunks.  Their semantics, broadcasting and dtypes are those of the
in-memory :func:`parscan.linear_scan`, :func:`parscan.linear_scan_backward` and
:func:`parscan.matrix_linear_scan`, which run every chunk (NumPy chunks on the ``cpu`` backend, CuPy
chunks on the GPU).  ``a``, ``x`` and ``h0`` may each be a Dask array, an in-memory array or a scalar.

The algorithm is the GPU kernels' at the scale of chunks.  A chunk of T_k steps maps a state
``h_in`` to ``h_out = A_k h_in + H_k``, where ``A_k = a[s] a[s+1] ... a[s+T_k-1]`` (``a ** T_k`` for a
decay constant in time, never materialised) and ``H_k`` is the chunk's last state when scanned from
zero.  So, along time, per block of channels:

1. every chunk but the first and the last is scanned from zero and reduced to its pair
   ``(A_k, H_k)`` (the scan itself is dropped); the first chunk is scanned from ``h0``: that is its
   result, and its last state is the first carry;
2. the pairs, the size of a chunk without its time axis, are combined along time into the carries
   ``c_{k+1} = A_k c_k + H_k``: by a Brent-Kung tree of the associative
   ``(A2, H2) o (A1, H1) = (A2 A1, A2 H1 + H2)`` (``method="blelloch"``, the default: 2 log2(chunks)
   levels, about two tiny tasks a chunk) or a chain (``method="sequential"``: one task a chunk, as
   many levels);
3. every other chunk is scanned again from its carry, ``linear_scan(a_k, x_k, h0=c_k)``.

Each chunk is read at most twice, no chunk is ever gathered with another or rechunked, blocks of
channels are independent, and the graph has O(number of chunks) tasks.  float16 data is carried
across chunks in float32 (the in-memory scan's accumulation type): pass 1 and the carries run in
float32 and the second pass scans from the float32 carry and rounds the result to float16 once.

The backward is the same construction in reversed time (see :func:`linear_scan_backward`).

``resets`` (issue #18; a Dask or in-memory bool array broadcastable to x, cut to x's chunks like
``a``) go to every chunk call, and a chunk with a reset has ``A_k = 0``: the product of its effective
decays, which are 0 at reset steps (the matrix scan: ``P_k = 0`` for the batch rows with a reset).

Chunks must line up: a dimension of ``a`` or ``h0`` that is not broadcast must be chunked like x's
(a Dask array with other chunks raises ``ValueError`` with the ``rechunk`` that fixes it: parscan
never moves data behind your back).  In-memory operands are cut to x's chunks; an in-memory x takes
the chunks of a Dask ``a`` or ``h0`` where they have them and is one chunk elsewhere.

Scheduling: chunk calls use the in-memory backends, so on a host worker each task runs Numba's
parallel kernels: set ``NUMBA_NUM_THREADS`` to the worker's thread count (``threads_per_worker``)
to avoid oversubscribing cores.  Dask's threaded scheduler (and workers with several threads) call
the kernels from several threads at once, which needs Numba's ``omp`` or ``tbb`` threading layer
(``workqueue`` is not thread-safe).

>>> import dask.array as da, numpy as np, parscan.dask
>>> x = da.ones(6, chunks=2, dtype=np.float32)
>>> h = parscan.dask.linear_scan(0.5, x)        # lazy, chunks (2, 2, 2)
>>> h.compute()
array([1.     , 1.5    , 1.75   , 1.875  , 1.9375 , 1.96875], dtype=float32)
"""

from __future__ import annotations

import itertools
import math
from functools import partial

import numpy as np

from .matrix import matrix_linear_scan as _matrix_scan
from .scan import linear_scan as _scan
from .scan import linear_scan_backward as _scan_backward

__all__ = ["linear_scan", "linear_scan_backward", "matrix_linear_scan"]

#: how the chunk pairs are combined along time, unless a call says.  Chosen by measurement (``parscan
#: bench --suite dask``, benchmarks/README.md): the tree is as fast as the chain when the chunks' own
#: work dominates (1 GiB in 64 chunks) and up to twice as fast when the scheduler's latency does
#: (small chunks, hundreds of them), where the chain waits one round trip per chunk.
DEFAULT_METHOD = "blelloch"
_METHODS = ("sequential", "blelloch")
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
    da = _dask()
    return isinstance(v, da.Array)


def _arrayish(v):
    """Lists and tuples become NumPy arrays; arrays, scalars and None pass as they are."""
    return np.asarray(v) if isinstance(v, (list, tuple)) else v


def _is_value(v) -> bool:
    """A value every task takes whole: a Python or NumPy scalar, or an in-memory 0-d array."""
    return not _is_dask(v) and (np.ndim(v) == 0 if not hasattr(v, "ndim") else v.ndim == 0)


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


class _Placed:
    """An operand lined up with x's blocks: ``value`` is a Dask array whose first ``len(dims)`` axes
    map onto x's (core) axes ``dims`` (size 1 = broadcast) and whose ``event`` trailing axes are one
    chunk each; or ``dims`` is None and ``value`` (a scalar or None) goes whole to every task."""

    def __init__(self, value, dims=None, event=0):
        self.value, self.dims, self.event = value, dims, event

    @property
    def is_array(self):
        return self.dims is not None

    def arg(self, idx):
        """The task argument for x's block ``idx``: a key of this array, or the value itself."""
        if self.dims is None:
            return self.value
        v = self.value
        own = tuple(0 if v.shape[j] == 1 else idx[d] for j, d in enumerate(self.dims))
        return (v.name,) + own + (0,) * self.event

    def covers(self, d) -> bool:
        return self.dims is not None and any(dd == d and self.value.shape[j] != 1 for j, dd in enumerate(self.dims))


def _targets(core_shape, axis, kind):
    """x's core axes an operand's core axes are right-aligned onto: all of them (``a``), or all but
    time (``h0``)."""
    return list(range(len(core_shape))) if kind == "a" else [d for d in range(len(core_shape)) if d != axis]


def _check_shape(v, name, core_shape, targets, event, fix):
    """Right-aligned broadcasting of ``v``'s core axes onto x's axes ``targets`` (the in-memory rule)."""
    shape = tuple(v.shape)
    core = shape[:len(shape) - event] if event else shape
    want = tuple(core_shape[d] for d in targets)
    if len(core) > len(want) or any(n not in (1, w) for n, w in zip(core[::-1], want[::-1])):
        raise ValueError(f"{name} has shape {shape}, which does not broadcast to {want}; {fix}")
    return targets[len(want) - len(core):]


def _x_chunks(x, core_shape, event, others):
    """Chunks for an in-memory x: those of the Dask operands that cover an axis, else one chunk."""
    chunks = []
    for d, n in enumerate(core_shape):
        got = (n,)
        for v, dims in others:
            if _is_dask(v):
                js = [j for j, dd in enumerate(dims) if dd == d and v.shape[j] != 1]
                if js:
                    got = v.chunks[js[0]]
                    break
        chunks.append(got)
    return tuple(chunks) + tuple((n,) for n in x.shape[len(core_shape):])


def _place(v, name, x, dims, event):
    """``v`` as a :class:`_Placed` lined up with x: in-memory arrays are cut to x's chunks; a Dask
    array must already be chunked like x along the axes it shares with it."""
    da = _dask()
    if v is None or _is_value(v):
        return _Placed(v)
    core_nd = v.ndim - event
    want = tuple((1,) if v.shape[j] == 1 else x.chunks[d] for j, d in enumerate(dims)) + \
        tuple((n,) for n in v.shape[core_nd:])
    if not _is_dask(v):
        return _Placed(da.from_array(v, chunks=want), tuple(dims), event)
    for j, d in enumerate(dims):
        if v.shape[j] != 1 and tuple(v.chunks[j]) != tuple(x.chunks[d]):
            raise ValueError(
                f"{name} is chunked {v.chunks[j]} along its axis {j} but x is chunked {x.chunks[d]} along "
                f"the matching axis {d}; parscan.dask never rechunks behind your back: pass "
                f"{name}.rechunk({_fmt_chunks(want)}) (or rechunk x to match {name})")
    for j in range(core_nd, v.ndim):
        if len(v.chunks[j]) != 1:
            raise ValueError(f"{name} is chunked along its axis {j} ({v.chunks[j]}); the matrix scan couples "
                             f"the n components, so that axis must be one chunk: pass "
                             f"{name}.rechunk({{{j}: -1}})")
    return _Placed(v, tuple(dims), event)


def _fmt_chunks(chunks):
    return "(" + ", ".join(str(tuple(c)) if len(c) > 1 else f"({c[0]},)" for c in chunks) + ")"


def _as_dask_x(x, name, core_shape, event, others):
    """x (or h) as a Dask array: as it is, or an in-memory array cut into blocks (see the module doc)."""
    da = _dask()
    if _is_dask(x):
        for j in range(len(core_shape), x.ndim):
            if len(x.chunks[j]) != 1:
                raise ValueError(f"{name} is chunked along its last axis ({x.chunks[j]}); the matrix scan "
                                 f"couples the n components, so that axis must be one chunk: pass "
                                 f"{name}.rechunk({{{j}: -1}})")
        return x
    return da.from_array(x, chunks=_x_chunks(x, core_shape, event, others))


def _acc(dtype) -> np.dtype:
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def _wide_for(dtype, acc) -> np.dtype:
    """The type to sum an operand's gradient parts in: acc, or its real counterpart for a real operand."""
    return acc if np.dtype(dtype).kind == "c" else np.empty(0, acc).real.dtype


def _dtype_of(v):
    return np.asarray(v).dtype if not hasattr(v, "dtype") else np.dtype(v.dtype)


# ---- the chunk tasks (module-level functions: they are pickled to workers) ------------------------

def _tail(v, axis, at):
    """The state at index ``at`` (-1 or 0) of ``axis``, copied (a view would pin the chunk)."""
    idx = (slice(None),) * (axis % v.ndim) + (at,)
    return v[idx].copy()


def _cast(v, dtype):
    return v.astype(dtype, copy=False)


def _decay_product(a, length, axis, ndim, acc):
    """``a[s] ... a[s+L-1]`` over a block of ``length`` steps, without its time axis: ``a ** L`` where a
    is a value or constant in time (never materialised), else the product along time."""
    if not hasattr(a, "ndim") or a.ndim == 0:
        return np.power(acc.type(a), length)  # a NumPy scalar: combines with NumPy or CuPy states
    a = a.reshape((1,) * (ndim - a.ndim) + a.shape)
    if a.shape[axis] == 1:
        return np.power(a.astype(acc).squeeze(axis), length)
    return a.prod(axis=axis, dtype=acc)


def _reset_any(r, axis, ndim):
    """Whether a block of ``resets`` has a reset anywhere along time, without its time axis (None: no
    resets)."""
    if r is None:
        return None
    r = r.reshape((1,) * (ndim - r.ndim) + r.shape)
    return r.any(axis=axis)


def _cut(A, any_reset):
    """A block's decay product with a reset in the block: 0 (the state before the block never reaches
    past the reset)."""
    if any_reset is None:
        return A
    return np.where(any_reset, 0, A).astype(A.dtype, copy=False)  # CuPy blocks: cupy.where, by dispatch


def _compose(first, second):
    """The pair of a span followed by another: ``(A2 A1, A2 H1 + H2)``; ``A1`` None for a span that
    starts at the sequence's beginning (its A is never needed)."""
    A1, H1 = first
    A2, H2 = second
    return (None if A1 is None else A2 * A1), A2 * H1 + H2


def _compose_matrix(first, second):
    P1, H1 = first
    P2, H2 = second
    return (None if P1 is None else P2 @ P1), (P2 @ H1[..., None])[..., 0] + H2


def _start(state):
    """The carry out of the first chunk as the head of the pair sequence."""
    return None, state


def _fwd_first(a, x, h0, r, *, axis, reverse, acc, backend):
    """The first chunk scanned from h0 in the carry type (float16 data: float32)."""
    h0 = acc.type(0) if h0 is None else (h0.astype(acc) if hasattr(h0, "astype") else acc.type(h0))
    return _scan(a, x, h0, axis=axis, reverse=reverse, backend=backend, resets=r)


def _fwd_pair(a, x, r, *, axis, reverse, acc, backend):
    """A chunk scanned from zero, reduced to its pair ``(A, H)`` (A = 0 when the chunk has a reset)."""
    h = _scan(a, x, acc.type(0), axis=axis, reverse=reverse, backend=backend, resets=r)
    A = _cut(_decay_product(a, x.shape[axis], axis, x.ndim, acc), _reset_any(r, axis, x.ndim))
    return A, _tail(h, axis, 0 if reverse else -1)


def _fwd_second(a, x, pair, r, *, axis, reverse, dtype, backend):
    """A chunk scanned from its incoming carry (the state of the pair before it)."""
    return _cast(_scan(a, x, pair[1], axis=axis, reverse=reverse, backend=backend, resets=r), dtype)


def _fwd_only(a, x, h0, r, *, axis, reverse, backend):
    return _scan(a, x, h0, axis=axis, reverse=reverse, backend=backend, resets=r)


def _bwd_pair(a, g, r, *, axis, reverse, acc, backend):
    """The backward's pair of a chunk: ``(conj(A), conj(a[s]) g[s])`` with ``g`` from zero incoming
    gradient (grad_h0 of a call with a per-channel h0; h is not read: it only feeds grad_a); with
    resets, a reads as 0 at reset steps (A = 0 when the chunk has one)."""
    xp_zero = np.zeros_like(g, shape=(), dtype=acc)
    h = np.broadcast_to(xp_zero, g.shape)
    chan = g.shape[:axis] + g.shape[axis + 1:]
    h0 = np.zeros_like(g, shape=chan, dtype=acc)
    _, _, d = _scan_backward(a, h, g, h0, axis=axis, reverse=reverse, backend=backend, resets=r)
    A = _cut(_decay_product(a, g.shape[axis], axis, g.ndim, acc), _reset_any(r, axis, g.ndim))
    return (A.conj() if A.dtype.kind == "c" else A), d


def _bwd_call(a, h, g, h0, carry, r, *, axis, reverse, acc, widen_a, widen_h0, backend):
    """``linear_scan_backward`` of a chunk whose gradient receives ``carry`` (the conj(a) g flowing in
    from the chunk after it, added to grad_h at the chunk's last step; None for the last chunk)."""
    if carry is not None:
        g = g.astype(acc, copy=True)
        g[(slice(None),) * axis + (0 if reverse else -1,)] += carry[1]
    if widen_a is not None:
        a = a.astype(widen_a) if hasattr(a, "astype") else widen_a.type(a)
    if widen_h0 is not None and h0 is not None:
        h0 = h0.astype(widen_h0) if hasattr(h0, "astype") else widen_h0.type(h0)
    return _scan_backward(a, h, g, h0, axis=axis, reverse=reverse, backend=backend, resets=r)


def _item(t, i, dtype=None):
    v = t[i]
    return v if dtype is None else v.astype(dtype, copy=False)


def _sum(*parts):
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def _matrix_product(A, length, reverse, acc):
    """The ordered product of a block's matrices: ``A[e-1] ... A[s]`` (``A[s] ... A[e-1]`` in reverse),
    by pairwise products (log2(L) batched matmuls); ``A ** L`` for A constant in time."""
    A = A.astype(acc, copy=False)
    if A.shape[-3] == 1:
        return np.linalg.matrix_power(A[..., 0, :, :], length)
    if reverse:
        A = A[..., ::-1, :, :]
    while A.shape[-3] > 1:
        L = A.shape[-3]
        prod = A[..., 1:L:2, :, :] @ A[..., 0:L - 1:2, :, :]  # later @ earlier
        A = np.concatenate([prod, A[..., L - 1:, :, :]], axis=-3) if L % 2 else prod
    return A[..., 0, :, :]


def _mat_first(A, x, h0, r, *, reverse, acc, backend):
    if h0 is None:
        h0 = np.zeros_like(x, shape=x.shape[-1:], dtype=acc)
    return _matrix_scan(A, x, h0.astype(acc, copy=False), reverse=reverse, backend=backend, resets=r)


def _mat_pair(A, x, r, *, reverse, acc, backend):
    h = _matrix_scan(A, x, np.zeros_like(x, shape=x.shape[-1:], dtype=acc), reverse=reverse, backend=backend,
                     resets=r)
    P = _matrix_product(A, x.shape[-2], reverse, acc)
    any_r = _reset_any(r, -1, x.ndim - 1)
    return _cut(P, None if any_r is None else any_r[..., None, None]), _tail(h, -2, 0 if reverse else -1)


def _mat_second(A, x, pair, r, *, reverse, dtype, backend):
    return _cast(_matrix_scan(A, x, pair[1], reverse=reverse, backend=backend, resets=r), dtype)


def _mat_only(A, x, h0, r, *, reverse, backend):
    return _matrix_scan(A, x, h0, reverse=reverse, backend=backend, resets=r)


# ---- graphs ---------------------------------------------------------------------------------------

class _Keys:
    """Fresh keys ``(name, *idx)`` for the intermediate tasks of one graph."""

    def __init__(self, name):
        self.name, self.n = name, itertools.count()

    def __call__(self, tag):
        return (f"{self.name}-{tag}", next(self.n))


def _prefix(dsk, items, compose, method, new):
    """Keys of the inclusive prefixes ``items[0] o ... o items[j]`` of the pair sequence ``items``."""
    if method == "sequential":
        out = [items[0]]
        for it in items[1:]:
            k = new("carry")
            dsk[k] = (compose, out[-1], it)
            out.append(k)
        return out
    if len(items) <= 1:  # Brent-Kung: combine neighbours, recurse on the half, fill in the evens
        return list(items)
    up = []
    for i in range(len(items) // 2):
        k = new("up")
        dsk[k] = (compose, items[2 * i], items[2 * i + 1])
        up.append(k)
    pre = _prefix(dsk, up, compose, method, new)
    out = [items[0]]
    for j in range(1, len(items)):
        if j % 2:
            out.append(pre[j // 2])
        else:
            k = new("down")
            dsk[k] = (compose, pre[j // 2 - 1], items[j])
            out.append(k)
    return out


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
        raise ValueError(f"method must be 'sequential' or 'blelloch' (or None for {DEFAULT_METHOD!r}), "
                         f"got {method!r}")
    return method


def _forward_graph(name, x, core_nd, axis, reverse, a, h0, r, method, tasks):
    """The forward scan's tasks (see the module doc); output keys ``(name, *block index)``.  ``r``: the
    placed resets (value None for none)."""
    only, first, pair, second, compose, dtype, acc = tasks
    nb = x.numblocks[:core_nd]
    nt = nb[axis]
    order = list(range(nt))[::-1] if reverse else list(range(nt))
    tail_at = 0 if reverse else -1
    new = _Keys(name)
    ev = (0,) * (x.ndim - core_nd)
    dsk = {}
    for cidx in _channel_blocks(nb, axis):
        idx = [_at(cidx, axis, k) for k in order]  # in scan order
        xk = [(x.name,) + i + ev for i in idx]
        if nt == 1:
            dsk[(name,) + idx[0] + ev] = (only, a.arg(idx[0]), xk[0], h0.arg(cidx), r.arg(idx[0]))
            continue
        head = (name,) + idx[0] + ev
        if dtype != acc:  # float16: the first chunk in float32, rounded once; the carry stays float32
            head = new("first")
            dsk[(name,) + idx[0] + ev] = (_cast, head, dtype)
        dsk[head] = (first, a.arg(idx[0]), xk[0], h0.arg(cidx), r.arg(idx[0]))
        items = [new("start")]
        dsk[items[0]] = (_start, (_tail, head, axis, tail_at))
        for p in range(1, nt - 1):
            k = new("pair")
            dsk[k] = (pair, a.arg(idx[p]), xk[p], r.arg(idx[p]))
            items.append(k)
        carries = _prefix(dsk, items, compose, method, new)
        for p in range(1, nt):
            dsk[(name,) + idx[p] + ev] = (second, a.arg(idx[p]), xk[p], carries[p - 1], r.arg(idx[p]))
    return dsk


def _array(dsk, name, deps, chunks, dtype, meta):
    da = _dask()
    from dask.highlevelgraph import HighLevelGraph  # noqa: PLC0415

    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[d for d in deps if _is_dask(d)])
    return da.Array(graph, name, chunks, dtype=dtype, meta=meta)


def _meta(like, dtype, ndim):
    m = like._meta
    return np.empty_like(m, shape=(0,) * ndim, dtype=dtype)


# ---- public API -----------------------------------------------------------------------------------

def linear_scan(a, x, h0=None, *, axis=-1, reverse=False, method=None, backend=None, resets=None):
    """The linear recurrence ``h[t] = a[t] * h[t-1] + x[t]`` along ``axis`` of Dask arrays, lazily.

    The semantics of :func:`parscan.linear_scan` (``h[-1] = h0``, or 0; ``reverse=True`` runs
    ``h[t] = a[t] * h[t+1] + x[t]`` from ``h[T] = h0``), chunk by chunk: each time chunk k is reduced
    to ``(A_k, H_k)`` (product of its decays, last state from zero), the carries
    ``c_{k+1} = A_k c_k + H_k`` are combined along time, and each chunk is scanned from its carry
    (module doc).  Every chunk is read at most twice and never gathered; the result has x's chunks.

    Parameters
    ----------
    a : dask array, array or scalar
        Decays, broadcastable to ``x.shape`` (a scalar, a per-channel constant with a size-1 time
        axis, or a full array).  Axes it shares with x (not broadcast) must be chunked like x's.
    x : dask array or array
        Inputs; NumPy or CuPy chunks.  An in-memory x takes the chunks of a Dask ``a``/``h0`` (one
        chunk along axes they do not cover).
    h0 : dask array, array or scalar, optional
        Initial state, broadcastable to x's shape without ``axis``; zeros when None.
    axis : int
        The time axis.
    reverse : bool
        Run backwards in time.
    method : {None, "sequential", "blelloch"}
        How the chunk pairs are combined along time: a chain (``"sequential"``, depth = chunks) or a
        Brent-Kung tree (``"blelloch"``, depth 2 log2(chunks)); None: :data:`DEFAULT_METHOD`.
    backend : str, optional
        Passed to :func:`parscan.linear_scan` for every chunk (None: "cpu" for NumPy chunks, "cupy"
        for CuPy chunks).
    resets : dask array or bool array, optional
        Broadcastable to x's shape (typically (T,)): where true the carried state is dropped,
        ``h[t] = x[t]`` (``reverse``: the state from t+1 is dropped), as :func:`parscan.linear_scan`.
        Chunked like x along the axes they share (in-memory resets are cut to x's chunks).  A chunk
        with a reset passes on no state from before it: its decay product is 0.

    Returns
    -------
    h : dask array with x's shape and chunks, dtype the NumPy result type of a, x and h0 (Python
        scalars weak), as :func:`parscan.linear_scan`.

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
    dtype = _scan(_stub(a), _stub(x, (0,) * np.ndim(x)), _stub(h0), axis=axis, reverse=reverse, backend=backend,
                  resets=_stub(resets)).dtype
    method = _method(method)
    axis = axis % x.ndim
    shape = tuple(x.shape)
    fix_a = ("a must broadcast to x's shape; for a decay constant in time give a a size-1 time axis "
             "(e.g. a[..., None] when axis=-1)")
    fix_h0 = "h0 must broadcast to x's shape without the time axis"
    a_dims = None if _is_value(a) else _check_shape(a, "a", shape, _targets(shape, axis, "a"), 0, fix_a)
    h0_dims = None if h0 is None or _is_value(h0) else _check_shape(
        h0, "h0", shape, _targets(shape, axis, "h0"), 0, fix_h0)
    r_dims = _resets_dims(resets, shape, axis)
    x = _as_dask_x(x, "x", shape, 0, [(a, a_dims), (h0, h0_dims), (resets, r_dims)])
    pa = _place(a, "a", x, a_dims, 0)
    ph0 = _place(h0, "h0", x, h0_dims, 0)
    pr = _place(resets, "resets", x, r_dims, 0)
    acc = _acc(dtype)
    kw = dict(axis=axis, reverse=bool(reverse), backend=backend)
    tasks = (partial(_fwd_only, **kw), partial(_fwd_first, acc=acc, **kw), partial(_fwd_pair, acc=acc, **kw),
             partial(_fwd_second, dtype=dtype, **kw), _compose, dtype, acc)
    from dask.base import tokenize  # noqa: PLC0415

    name = "parscan-linear-scan-" + tokenize(pa.value, x, ph0.value, axis, reverse, method, backend, dtype,
                                             pr.value)
    dsk = _forward_graph(name, x, x.ndim, axis, reverse, pa, ph0, pr, method, tasks)
    return _array(dsk, name, [x, pa.value, ph0.value, pr.value], x.chunks, dtype, _meta(x, dtype, x.ndim))


def _resets_dims(resets, core_shape, axis):
    """x's axes that ``resets``' axes map onto (right-aligned broadcasting, as ``a``), or None for no
    resets or a 0-d array (every task takes it whole)."""
    if resets is None or _is_value(resets):
        return None
    return _check_shape(resets, "resets", core_shape, _targets(core_shape, axis, "a"), 0,
                        "resets must broadcast to x's shape (without the matrix scan's state axis): e.g. shape "
                        "(T,) for resets shared by every channel")


def linear_scan_backward(a, h, grad_h, h0=None, *, axis=-1, reverse=False, method=None, backend=None,
                         resets=None):
    """Gradients ``(grad_a, grad_x, grad_h0)`` of ``h = linear_scan(a, x, h0, axis=axis, reverse=reverse)``.

    As :func:`parscan.linear_scan_backward` (forward direction; ``reverse=True`` mirrors time)::

        g[t]      = grad_h[t] + conj(a[t+1]) * g[t+1]      (g[T] = 0)       grad_x = g
        grad_a[t] = g[t] * conj(h[t-1])                    (h[-1] = h0, or 0)
        grad_h0   = conj(a[0]) * g[0]

    chunk by chunk in reversed time: a chunk [s, e) scanned with no incoming gradient gives
    ``D = conj(a[s]) g[s]`` (its grad_h0), and the gradient flowing out of it is
    ``c_out = conj(A) c_in + D`` with ``A`` the product of its decays; ``c_in`` enters the chunk as an
    addition to ``grad_h`` at its last step (one copy of that chunk of grad_h), and ``h[s-1]``, the
    previous chunk's last state, is the chunk's h0.  grad_a and grad_h0 are summed over what a and h0
    were broadcast along (a tree of sums across chunks, in the accumulation type).

    ``resets``: the forward's (as in :func:`linear_scan`): a reads as 0 at reset steps, so a chunk with
    a reset passes no gradient on to the chunks before it (its ``A`` is 0), and grad_a is 0 there.

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
    if tuple(grad_h.shape) != tuple(h.shape):
        raise ValueError(f"grad_h has shape {tuple(grad_h.shape)} but h has shape {tuple(h.shape)}; "
                         f"they must match (grad_h = dL/dh)")
    sa, sx, sh0 = _scan_backward(_stub(a), _stub(h, (0,) * h.ndim), _stub(grad_h, (0,) * h.ndim), _stub(h0),
                                 axis=axis, reverse=reverse, backend=backend, resets=_stub(resets))
    dtype = np.dtype(sx.dtype)
    ga_dtype, gh0_dtype = np.dtype(sa.dtype), None if sh0 is None else np.dtype(sh0.dtype)
    method = _method(method)
    axis = axis % h.ndim
    shape = tuple(h.shape)
    a_dims = None if _is_value(a) else _check_shape(a, "a", shape, _targets(shape, axis, "a"), 0,
                                                   "a must broadcast to h's shape (it is the forward's a)")
    h0_dims = None if h0 is None or _is_value(h0) else _check_shape(
        h0, "h0", shape, _targets(shape, axis, "h0"), 0, "h0 must broadcast to h's shape without the time axis")
    if _is_dask(h) and _is_dask(grad_h) and tuple(h.chunks) != tuple(grad_h.chunks):
        raise ValueError(f"grad_h is chunked {grad_h.chunks} but h is chunked {h.chunks}; they must match: pass "
                         f"grad_h.rechunk(h.chunks)")
    r_dims = _resets_dims(resets, shape, axis)
    others = [(a, a_dims), (h0, h0_dims), (resets, r_dims)]
    if _is_dask(grad_h) and not _is_dask(h):
        h = _as_dask_x(h, "h", shape, 0, [(grad_h, tuple(range(h.ndim)))])
    h = _as_dask_x(h, "h", shape, 0, others)
    grad_h = grad_h if _is_dask(grad_h) else _dask().from_array(grad_h, chunks=h.chunks)
    pa = _place(a, "a", h, a_dims, 0)
    ph0 = _place(h0, "h0", h, h0_dims, 0)
    pr = _place(resets, "resets", h, r_dims, 0)
    acc = _acc(dtype)
    from dask.base import tokenize  # noqa: PLC0415

    name = "parscan-linear-scan-backward-" + tokenize(pa.value, h, grad_h, ph0.value, axis, reverse, method,
                                                     backend, dtype, pr.value)
    nb = h.numblocks
    nt = nb[axis]
    order = list(range(nt))[::-1] if reverse else list(range(nt))
    tail_at = 0 if reverse else -1
    new = _Keys(name)

    def widen(p, dt):
        """A broadcast operand whose gradient is summed across blocks: the type to sum its parts in
        (the accumulation type), or None when it has that type already."""
        across = math.prod(nb) if not p.is_array else math.prod(n for d, n in enumerate(nb) if not p.covers(d))
        w = _wide_for(dt, acc)
        return w if across > 1 and dt != w else None

    kw = dict(axis=axis, reverse=bool(reverse), backend=backend)
    call = partial(_bwd_call, acc=acc, widen_a=widen(pa, ga_dtype),
                   widen_h0=None if h0 is None else widen(ph0, gh0_dtype), **kw)
    pair = partial(_bwd_pair, acc=acc, **kw)
    dsk = {}
    ga_parts, gh0_parts = {}, {}
    gx_name = name + "-grad-x"
    for cidx in _channel_blocks(nb, axis):
        idx = [_at(cidx, axis, k) for k in order]  # in the forward's scan order
        hk = [(h.name,) + i for i in idx]
        gk = [(grad_h.name,) + i for i in idx]
        calls = [new("call") for _ in range(nt)]
        h0s = [ph0.arg(cidx)]  # each chunk's h0: the user's, then the state before the chunk
        for p in range(1, nt):
            h0s.append(new("hprev"))
            dsk[h0s[p]] = (_cast, (_tail, hk[p - 1], axis, tail_at), acc)
        carries = [None] * nt  # the gradient flowing into each chunk from the one after it
        if nt > 1:
            # the last chunk (no incoming gradient) starts the sequence with its grad_h0, conj(a[s]) g[s]
            items = [new("start")]
            dsk[items[0]] = (_start, (_item, calls[nt - 1], 2))
            for p in range(nt - 2, 0, -1):
                items.append(new("pair"))
                dsk[items[-1]] = (pair, pa.arg(idx[p]), gk[p], pr.arg(idx[p]))
            for j, k in enumerate(_prefix(dsk, items, _compose, method, new)):
                carries[nt - 2 - j] = k  # the prefix through chunk nt-1-j flows into chunk nt-2-j
        for p in range(nt):
            dsk[calls[p]] = (call, pa.arg(idx[p]), hk[p], gk[p], h0s[p], carries[p], pr.arg(idx[p]))
            dsk[(gx_name,) + idx[p]] = (_item, calls[p], 1, dtype)
            ga_parts.setdefault(_part_index(pa, idx[p]), []).append(calls[p])
        if h0 is not None:
            gh0_parts.setdefault(_part_index(ph0, cidx), []).append(calls[0])
    ga_name, gh0_name = name + "-grad-a", name + "-grad-h0"
    _reduce_parts(dsk, ga_name, ga_parts, 0, ga_dtype, new)
    if h0 is not None:
        _reduce_parts(dsk, gh0_name, gh0_parts, 2, gh0_dtype, new)
    deps = [h, grad_h, pa.value, ph0.value, pr.value]
    grad_x = _array(dsk, gx_name, deps, h.chunks, dtype, _meta(h, dtype, h.ndim))
    grad_a = _array(dsk, ga_name, deps, pa.value.chunks if pa.is_array else (), ga_dtype,
                    _meta(h, ga_dtype, pa.value.ndim if pa.is_array else 0))
    grad_h0 = None if h0 is None else _array(dsk, gh0_name, deps, ph0.value.chunks if ph0.is_array else (),
                                             gh0_dtype, _meta(h, gh0_dtype, ph0.value.ndim if ph0.is_array else 0))
    return grad_a, grad_x, grad_h0


def _part_index(p, idx):
    """The block of operand ``p`` that x's block ``idx`` contributes its gradient to (() for a value)."""
    if not p.is_array:
        return ()
    v = p.value
    return tuple(0 if v.shape[j] == 1 else idx[d] for j, d in enumerate(p.dims))


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


def matrix_linear_scan(A, x, h0=None, *, reverse=False, method=None, backend=None, resets=None):
    """``h_t = A_t h_{t-1} + x_t`` for Dask arrays: x (..., T, n), A (..., T or 1, n, n), h0 (..., n).

    The semantics and dtypes of :func:`parscan.matrix_linear_scan`, chunk by chunk along time
    (axis -2 of x) as :func:`linear_scan` does, with n x n pairs: a chunk maps ``h_in`` to
    ``P_k h_in + H_k`` with ``P_k = A_{e-1} ... A_s`` (``A ** T_k`` for A constant in time) and the
    carries are ``c_{k+1} = P_k c_k + H_k``.  The n axis (and A's two) must be one chunk; leading
    axes and time may be chunked any way, A's and h0's leading axes like x's where not broadcast.
    x must carry the result's leading shape (broadcast x first if A or h0 add batch axes).
    ``resets`` (broadcastable to x's shape without n, ``(..., T)``; chunked like x there): as
    :func:`parscan.matrix_linear_scan`; a chunk with a reset has ``P_k = 0``.

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
        if v is not None and not hasattr(v, "ndim"):
            raise TypeError(f"{n} must be an array (a Dask array, or NumPy/CuPy), got {type(v).__name__}")
        _check_known(v, n)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (..., T, n), got {tuple(x.shape)}")
    n = x.shape[-1]
    # argument checks and the result dtype by the in-memory API on empty stand-ins (T = 0, no batch)
    A_stub = _stub(A, (0,) + tuple(A.shape[-2:])) if A.ndim >= 3 else A
    dtype = np.dtype(_matrix_scan(A_stub, _stub(x, (0, n)), None if h0 is None else _stub(h0, tuple(h0.shape[-1:])),
                                  reverse=reverse, backend=backend,
                                  resets=None if resets is None else _stub(resets, (0,))).dtype)
    method = _method(method)
    T = x.shape[-2]
    if A.shape[-3] not in (1, T):
        raise ValueError(f"A must have shape (..., T, n, n) or (..., 1, n, n) with n = {n} and T = {T}, "
                         f"got {tuple(A.shape)}")
    core = tuple(x.shape[:-1])  # (..., T): the axes that are chunked; n is one chunk
    axis = len(core) - 1
    lead = core[:-1]
    try:
        full = np.broadcast_shapes(lead, tuple(A.shape[:-3]), () if h0 is None else tuple(h0.shape[:-1]))
    except ValueError:
        raise ValueError(f"the leading dims of A {tuple(A.shape[:-3])}, x {lead} and h0 do not broadcast") from None
    if full != lead:
        raise ValueError(f"x has leading shape {lead} but A and h0 broadcast it to {full}; parscan.dask keeps x's "
                         f"chunks, so give x the full shape first (dask.array.broadcast_to(x, {full + (T, n)}))")
    A_dims = _check_shape(A, "A", core, _targets(core, axis, "a"), 2, "A's leading dims must broadcast to x's")
    h0_dims = None if h0 is None else _check_shape(h0, "h0", core, _targets(core, axis, "h0"), 1,
                                                   "h0 must broadcast to x's shape without T")
    r_dims = _resets_dims(resets, core, axis)
    x = _as_dask_x(x, "x", core, 1, [(A, A_dims), (h0, h0_dims), (resets, r_dims)])
    pA = _place(A, "A", x, A_dims, 2)
    ph0 = _place(h0, "h0", x, h0_dims, 1)
    pr = _place(resets, "resets", x, r_dims, 0)
    acc = _acc(dtype)
    kw = dict(reverse=bool(reverse), backend=backend)
    tasks = (partial(_mat_only, **kw), partial(_mat_first, acc=acc, **kw), partial(_mat_pair, acc=acc, **kw),
             partial(_mat_second, dtype=dtype, **kw), _compose_matrix, dtype, acc)
    from dask.base import tokenize  # noqa: PLC0415

    name = "parscan-matrix-linear-scan-" + tokenize(pA.value, x, ph0.value, reverse, method, backend, dtype,
                                                    pr.value)
    dsk = _forward_graph(name, x, len(core), axis, reverse, pA, ph0, pr, method, tasks)
    return _array(dsk, name, [x, pA.value, ph0.value, pr.value], x.chunks, dtype, _meta(x, dtype, x.ndim))
