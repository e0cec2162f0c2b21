"""The plan: a scan call reduced to the one canonical form every backend understands.

Any call ``linear_scan(a, x, h0, axis, reverse, out)`` becomes a problem over the index space
``(C0, C1, C2, T)``: three channel dimensions and time.  Each operand is a :class:`Strided`: a flat 1-D
buffer, the element offset of index ``(0, 0, 0, 0)`` and four element strides (0 where the operand is
broadcast).  Element ``(i, j, k, t)`` of an operand is ``buf[off + i*s0 + j*s1 + k*s2 + t*st]``.

How x's dimensions map onto that space is decided here, once, in plain Python:

- time is x's ``axis``; ``reverse=True`` is folded into the views (time stride negated, offset moved to
  the last step), so backends only ever run forward in time;
- the other dimensions of size > 1 are ordered by x's stride (largest first, so the innermost channel
  dimension ``C2`` is the one closest to contiguous) and adjacent ones are merged where *every* operand
  allows it (``stride[d] == shape[d+1] * stride[d+1]``).  A broadcast ``a`` or ``h0`` keeps stride 0 in
  the dimensions it is broadcast over and is never materialised;
- the three innermost channel groups are the canonical problem's; where more remain (5-D and more,
  with a pattern of strides that will not merge) the outer ones are the problem's ``outer`` groups,
  which the driver iterates (:func:`parts`, :func:`run_forward`, the plans' replays): one canonical
  problem a part, on views of the same buffers, so no layout costs a copy of an input.
  ``resets`` never add a part where the others fit in three groups: where their broadcast would break
  that they alone are copied, over the fewest dimensions that make them merge;
- results and temporaries are allocated contiguous in canonical order, so they never stop a merge.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ._arrays import Operand, overlaps, same_view

MAX_CHANNEL_GROUPS = 3


@dataclass(frozen=True)
class Strided:
    """An operand in canonical form: element ``(i, j, k, t)`` is ``buf[off + i*s0 + j*s1 + k*s2 + t*st]``.

    ``outer``: the element strides of the problem's outer channel groups (see :func:`parts`): element
    ``(o..., i, j, k, t)`` is ``buf[off + sum(o * outer) + ...]``; empty for a problem without them."""

    buf: Any
    off: int
    strides: tuple[int, int, int, int]
    outer: tuple[int, ...] = ()

    @property
    def dtype(self):
        return self.buf.dtype


@dataclass(frozen=True)
class ScanProblem:
    """Forward: ``out[c, t] = a[c, t] * out[c, t-1] + x[c, t]`` for t = 0..T-1, ``out[c, -1] = h0[c]``.

    ``h0`` is None for a zero initial state; its time stride is 0.  ``acc_dtype`` is the type to
    accumulate in (float32 for float16 data).  ``resets`` (a bool buffer, or None): where
    ``resets[c, t]`` is true the carried state is dropped, ``out[c, t] = x[c, t]`` (a[c, t] reads as 0).
    """

    shape: tuple[int, int, int, int]
    a: Strided
    x: Strided
    h0: Strided | None
    out: Strided
    dtype: np.dtype
    acc_dtype: np.dtype
    resets: Strided | None = None
    outer: tuple[int, ...] = ()  # the sizes of the outer channel groups, iterated by the driver (parts)


@dataclass(frozen=True)
class ScanBackwardProblem:
    """Backward of :class:`ScanProblem` (time already oriented forward, conjugates for complex).

    ``g[c, t] = grad_h[c, t] + conj(a[c, t+1]) * g[c, t+1]`` (``g[c, T] = 0``) is written to ``grad_x``;
    ``grad_a[c, t] = g[c, t] * conj(h[c, t-1])`` with ``h[c, -1] = h0[c]`` (0 when h0 is None); where
    ``grad_a``'s time stride is 0 (``a`` constant in time) its single element per channel receives the
    sum over t.  ``grad_h0[c] = conj(a[c, 0]) * g[c, 0]`` when ``grad_h0`` is not None.  With
    ``resets``, a reads as 0 where ``resets[c, t]`` is true: no gradient crosses a reset, and ``grad_a``
    is 0 there.

    ``grad_a_sum`` (a :class:`GradASum`, or None): grad_a is computed a block of channels at a time
    into ``grad_a``, a scratch of one block that every block reuses, and each block's values go into
    ``grad_a_sum.total`` (see :func:`blocks`, run by :func:`run_backward`).
    """

    shape: tuple[int, int, int, int]
    a: Strided
    h: Strided
    grad_h: Strided
    h0: Strided | None
    grad_x: Strided
    grad_a: Strided
    grad_h0: Strided | None
    dtype: np.dtype
    acc_dtype: np.dtype
    resets: Strided | None = None
    outer: tuple[int, ...] = ()
    grad_a_sum: GradASum | None = None


@dataclass(frozen=True)
class GradASum:
    """Where a backward problem's grad_a goes when it is not computed in place (a decay broadcast over
    channels and varying in time, or of another dtype than the result): a scratch of grad_a at x's
    size would be an operand-sized temporary, so the channels run in blocks (canonical channel dim
    ``dim`` in blocks of ``size`` indices, the dims before it one index at a time) through one scratch
    of a block, and after each block its grad_a is summed over the dims ``total`` is broadcast along
    (its 0 strides) and added into ``total`` (``add``: zeroed first), or, with no such dims, written
    there (cast to its dtype).  A block's sum goes first into the scratch's buffer from element
    ``partial`` on (after the largest block's grad_a), so a block allocates nothing.  ``xp``: the
    array module of the buffers."""

    xp: Any
    total: Strided
    dim: int
    size: int
    add: bool
    partial: int


GRAD_A_BLOCK_MIN = 1 << 16  # elements: a block smaller than this runs the parallel kernels poorly
GRAD_A_SCRATCH = 8  # a block's grad_a scratch is at most 1/GRAD_A_SCRATCH of h's bytes (or the minimum)


# the operands in the order the backends' launchers take their buffers (see run_forward)
_FORWARD_OPERANDS = ("a", "x", "h0", "out", "resets")
_BACKWARD_OPERANDS = ("a", "h", "grad_h", "h0", "grad_x", "grad_a", "grad_h0", "resets")


def _operand_names(problem):
    return _FORWARD_OPERANDS if isinstance(problem, ScanProblem) else _BACKWARD_OPERANDS


def _operands(problem):
    """The problem's operands in the launchers' order, then a blocked grad_a's total (which the
    launchers do not take; see :class:`GradASum`) where it has one."""
    ops = [getattr(problem, n) for n in _operand_names(problem)]
    gsum = getattr(problem, "grad_a_sum", None)
    return ops if gsum is None else ops + [gsum.total]


def split_parts(problem):
    """``(first, shifts)``: ``problem`` as canonical parts, one per index of its outer channel groups.
    ``first`` is the part at the lowest address of every operand (no outer groups); part ``k`` is
    ``first`` with each operand's buffer advanced by ``shifts[k][i]`` elements (operand i in
    :func:`_operands`' order; None for an absent one), so every part has ``first``'s offsets and strides
    and one launcher prepared for ``first`` runs them all, each on views of the same buffers."""
    names = _operand_names(problem)
    ops = _operands(problem)
    if not problem.outer:
        return problem, [tuple(None if s is None else 0 for s in ops)]
    lows = [None if s is None else sum(min(0, (n - 1) * st) for n, st in zip(problem.outer, s.outer)) for s in ops]
    moved = [None if s is None else Strided(s.buf, s.off + k, s.strides) for s, k in zip(ops, lows)]
    kw = {n: s for n, s in zip(names, moved) if s is not None}
    if len(ops) > len(names):
        kw["grad_a_sum"] = replace(problem.grad_a_sum, total=moved[-1])
    first = replace(problem, outer=(), **kw)
    shifts = [tuple(None if s is None else sum(i * st for i, st in zip(idx, s.outer)) - low
                    for s, low in zip(ops, lows))
              for idx in itertools.product(*(range(n) for n in problem.outer))]
    return first, shifts


def each_part(run, bufs, shifts, after=None):
    """``run(*bufs)`` once per part: each buffer advanced by its part's shift (a view, no copy).  With
    ``after`` (a blocked grad_a, see :func:`adder`) ``bufs`` ends with grad_a's total, which ``run``
    does not take, and ``after(part's buffers)`` follows each run."""
    n = len(bufs) - (after is not None)
    for part in shifts:
        views = [b if k is None or k == 0 else b[k:] for b, k in zip(bufs, part)]
        run(*views[:n])
        if after is not None:
            after(views)


def parts(problem):
    """The canonical problems (no outer groups) that together make ``problem``, on views of its
    buffers (not for a blocked grad_a: :func:`run_backward` runs those)."""
    assert getattr(problem, "grad_a_sum", None) is None
    first, shifts = split_parts(problem)
    ops = [(n, getattr(first, n)) for n in _operand_names(problem)]
    return [first if not any(part) else
            replace(first, **{n: Strided(s.buf[k:], s.off, s.strides) for (n, s), k in zip(ops, part) if k})
            for part in shifts]


def one_at_a_time(fn):
    """A launcher (see :func:`run_forward`) for a backend that takes one canonical problem (no outer
    groups) at a time: ``fn(problem)`` for each part, its operands on the part's buffers."""
    def launcher(first):
        names = _operand_names(first)

        def run(*bufs):
            fn(replace(first, **{n: Strided(b, s.off, s.strides) for n, b in zip(names, bufs)
                                 if (s := getattr(first, n)) is not None}))
        return run
    return launcher


def blocks(problem):
    """The problems that together make ``problem``: itself, or for a blocked grad_a (see
    :class:`GradASum`) one for the blocks of ``size`` and one for the smaller last block where there
    is one, each with the blocks (and the indices of the dims before ``dim``) as outer groups, on views
    of the same buffers, grad_a the one scratch (outer strides 0) packed in grad_h's memory order."""
    gsum = getattr(problem, "grad_a_sum", None)
    if gsum is None:
        return [problem]
    k, b = gsum.dim, gsum.size
    count, rest = divmod(problem.shape[k], b)
    before = problem.shape[:k]
    out = []
    for size, n, start in ((b, count, 0), (rest, 1, count * b)):
        if not size or not n:
            continue
        shape = (1,) * k + (size,) + problem.shape[k + 1:]
        outer = problem.outer + before + (n,)

        def cut(s):
            st = s.strides
            return Strided(s.buf, s.off + start * st[k], (0,) * k + st[k:], s.outer + st[:k] + (b * st[k],))
        kw = {name: cut(s) for name, s in zip(_operand_names(problem), _operands(problem)) if s is not None}
        g = kw["grad_h"].strides
        kw["grad_a"] = Strided(problem.grad_a.buf, 0, _packed(shape, g), (0,) * len(outer))
        out.append(replace(problem, shape=shape, outer=outer, grad_a_sum=replace(gsum, total=cut(gsum.total)), **kw))
    return out


def _packed(shape, like):
    """Contiguous element strides for ``shape``, dims ordered as the strides ``like`` order them (0 for
    a dim of size 1)."""
    strides, step = [0] * len(shape), 1
    for d in sorted(range(len(shape)), key=lambda d: abs(like[d])):
        strides[d] = step if shape[d] > 1 else 0
        step *= shape[d]
    return tuple(strides)


def block_split(shape, limit):
    """``(dim, size)`` for :class:`GradASum`: the first canonical channel dim whose blocks of ``size``
    indices (``size * prod(shape[dim+1:])`` elements, ``shape`` being ``(C0, C1, C2, T)``) can stay
    within ``limit`` elements, in equal blocks (the last may be smaller); one channel at least."""
    for k in range(3):
        inner = math.prod(shape[k + 1:])
        if inner <= limit:
            n = shape[k]
            nblocks = -(-n // (limit // inner))
            return k, -(-n // nblocks)
    return 2, 1


def adder(first):
    """``bufs -> after`` for :func:`each_part` of ``first`` (a part of a blocked grad_a) on the buffers
    ``bufs``, or None."""
    gsum = getattr(first, "grad_a_sum", None)
    if gsum is None:
        return None
    return functools.partial(_block_adder, gsum, first.shape, first.grad_a, _operand_names(first).index("grad_a"))


def _block_adder(gsum, shape, scratch, at, bufs):
    """``after(views)``: a block's grad_a (``scratch``'s geometry in ``bufs[at]``, the same buffer for
    every part) into its place in the total (``views[-1]``, the part's): summed over the dims the total
    is broadcast along, added (or written)."""
    xp, total = gsum.xp, gsum.total
    g = _view(xp, Strided(bufs[at], scratch.off, scratch.strides), shape)
    summed = _summed(total, shape)
    if summed:
        sizes = tuple(1 if d in summed else n for d, n in enumerate(shape))
        partial = _view(xp, Strided(bufs[at], gsum.partial, _packed(sizes, scratch.strides)), sizes, True)
    real = g.dtype.kind == "c" and total.buf.dtype.kind != "c"  # a real decay of complex data

    def after(views):
        t = _view(xp, Strided(views[-1], total.off, total.strides), shape, True)
        v = g.sum(axis=summed, keepdims=True, out=partial) if summed else g
        v = v.real if real else v
        if gsum.add:
            t += v
        else:
            t[...] = v
    return after


def _summed(total: Strided, shape):
    """The dims of ``shape`` (a block's) that the total is broadcast along."""
    return tuple(d for d in range(4) if total.strides[d] == 0 and shape[d] > 1)


def _view(xp, s: Strided, shape, writeable=False):
    """Operand ``s`` over ``shape`` as an array (a view; 0 strides as size 1, negative ones as flips)."""
    item = s.buf.itemsize
    base = s.off + sum((n - 1) * st for n, st in zip(shape, s.strides) if st < 0)
    v = _as_strided(xp, s.buf[base:], [n if st else 1 for n, st in zip(shape, s.strides)],
                    [abs(st) * item for st in s.strides], writeable)
    return v[tuple(slice(None, None, -1) if st < 0 else slice(None) for st in s.strides)]


def accumulation_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def normalize_axis(axis, ndim: int, name: str = "x") -> int:
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis} is out of range for {name} with {ndim} dimension(s); "
                         f"use an axis in {-ndim}..{ndim - 1}")
    return int(axis) % ndim


def _ptr(arr) -> int:
    return arr.__array_interface__["data"][0] if isinstance(arr, np.ndarray) else arr.data.ptr


def _as_strided(xp, arr, shape, strides, writeable):
    if xp is np:
        return np.lib.stride_tricks.as_strided(arr, shape, strides, writeable=writeable)
    return xp.lib.stride_tricks.as_strided(arr, shape, strides)


def flat_buffer(xp, v, writeable: bool = False):
    """``(buf, off)``: a 1-d view of the memory ``v`` spans (from its lowest-addressed element) and
    the element offset of ``v[0, ..., 0]`` in it, so ``v[idx] == buf[off + sum(idx * strides // itemsize)]``."""
    item = v.itemsize
    corner = tuple(slice(n - 1, n) if s < 0 else slice(0, 1) for n, s in zip(v.shape, v.strides))
    base = v[corner]
    lo = _ptr(base)
    hi = lo + sum((n - 1) * abs(s) for n, s in zip(v.shape, v.strides))
    buf = _as_strided(xp, base, ((hi - lo) // item + 1,), (item,), writeable)
    return buf, (_ptr(v) - lo) // item


class Canon:
    """The mapping of an N-d shape with a time ``axis`` onto ``(C0, C1, C2, T)``.

    ``views`` are the operands broadcast to ``shape`` (a time length of 1 is allowed for h0-like
    operands).  The first view orders the channel dimensions.
    """

    def __init__(self, xp, shape, axis, reverse, views):
        self.xp, self.shape, self.axis, self.reverse = xp, tuple(shape), axis, bool(reverse)
        ref = views[0]
        chan = sorted((d for d in range(len(shape)) if d != axis), key=lambda d: -abs(ref.strides[d]))
        # new arrays copy x's memory order (time included), so results keep the caller's layout
        self.order = tuple(sorted(range(len(shape)), key=lambda d: -abs(ref.strides[d])))
        groups: list[list[int]] = []
        for d in (d for d in chan if shape[d] != 1):
            if groups and all(v.strides[groups[-1][-1]] == shape[d] * v.strides[d] for v in views):
                groups[-1].append(d)
            else:
                groups.append([d])
        self.groups = groups
        self.inner, self.outer = groups[-MAX_CHANNEL_GROUPS:], groups[:-MAX_CHANNEL_GROUPS]
        size = lambda g: math.prod(shape[d] for d in g)  # noqa: E731
        self.channel_shape = tuple([1] * (MAX_CHANNEL_GROUPS - len(self.inner)) + [size(g) for g in self.inner])
        self.outer_shape = tuple(size(g) for g in self.outer)  # the driver's parts (see parts)

    @property
    def fits(self) -> bool:
        return len(self.groups) <= MAX_CHANNEL_GROUPS

    def strided(self, v, writeable: bool = False) -> Strided:
        """``v`` (shape == self.shape, or time length 1) as a canonical :class:`Strided`."""
        item = v.itemsize
        bstrides = [v.strides[g[-1]] for g in self.inner]
        bstrides = [0] * (MAX_CHANNEL_GROUPS - len(bstrides)) + bstrides + [v.strides[self.axis]]
        if any(s % item for s in v.strides):
            raise AssertionError("misaligned strides must have been copied by the planner")
        es = [s // item for s in bstrides]
        T = v.shape[self.axis]
        if T == 1:
            es[3] = 0
        buf, off = flat_buffer(self.xp, v, writeable)
        if self.reverse and T > 1:
            off += (T - 1) * es[3]
            es[3] = -es[3]
        return Strided(buf, off, tuple(es), tuple(v.strides[g[-1]] // item for g in self.outer))

    def alloc(self, dtype, tlen: int | None = None, sizes=None, zero: bool = False):
        """A new array of ``shape`` (time length ``tlen``; or of ``sizes``), contiguous in canonical order
        (zeroed where ``zero``)."""
        alloc, perm = _alloc_recipe(self, tlen, sizes)
        arr = (self.xp.zeros if zero else self.xp.empty)(alloc, dtype=dtype)
        return arr if perm is None else arr.transpose(perm)

    def merges(self, v) -> bool:
        """Whether ``v`` (of ``shape``) merges as the groups do, so that its canonical strides hold."""
        return all(v.strides[p] == self.shape[d] * v.strides[d] for g in self.groups for p, d in zip(g, g[1:]))


def _well_aligned(v) -> bool:
    return all(s % v.itemsize == 0 for s in v.strides)


def _broadcast(xp, op: Operand, shape, dtype, name, fix):
    """Operand ``op`` as a read-only view broadcast to ``shape`` (scalars become 0-d arrays of dtype)."""
    if op.array is None:
        arr = xp.asarray(op.value, dtype=dtype)
    elif op.library is None and xp is not np:
        arr = xp.asarray(op.array)  # a NumPy scalar next to CUDA data: one tiny value
    else:
        arr = op.array
    try:
        return xp.broadcast_to(arr, shape)
    except ValueError:
        raise ValueError(f"{name} has shape {tuple(arr.shape)}, which does not broadcast to {tuple(shape)}; "
                         f"{fix}") from None


def _canonical(xp, shape, axis, reverse, views, flags=None):
    """A Canon for ``views`` (see module doc): groups beyond three are outer parts, never a copy.

    ``flags``: the index in ``views`` of the resets, which never split the others' layout into parts:
    where the others merge into three groups and the resets' broadcast breaks that, the resets alone
    are copied, materialised over just the dimensions of the groups they break (one byte an element of
    those).  (Where the others need parts anyway, the resets are one more view over them.)"""
    views = [v if _well_aligned(v) else xp.ascontiguousarray(v) for v in views]
    canon = Canon(xp, shape, axis, reverse, views)
    if canon.fits or flags is None:
        return canon, views
    rest = [v for i, v in enumerate(views) if i != flags]
    plain = Canon(xp, shape, axis, reverse, rest)
    if not plain.fits:
        return canon, views
    rest.insert(flags, _compact_flags(xp, views[flags], plain))
    return Canon(xp, shape, axis, reverse, rest), rest


def _compact_flags(xp, r, canon: Canon):
    """The resets ``r`` (a view broadcast to ``canon.shape``) in a form that merges with the operands
    ``canon`` was planned for into at most three channel groups: ``r`` itself where its strides allow
    (x's groups split where r breaks them), else the smallest copy that does: r materialised over the
    fewest (by size) of the dimensions it is broadcast along, laid out in the operands' memory order,
    at its own size (1: stride 0) everywhere else."""
    shape = canon.shape

    def groups(strides):  # canon's groups split wherever these strides break a merge
        return sum(1 + sum(strides[p] != shape[d] * strides[d] for p, d in zip(g, g[1:])) for g in canon.groups)

    if groups(r.strides) <= MAX_CHANNEL_GROUPS:
        return r
    base = [shape[d] if r.strides[d] else 1 for d in range(len(shape))]
    free = [d for g in canon.groups for d in g if base[d] == 1]  # broadcast dims inside a group
    best = None
    for k in range(len(free) + 1):
        for extra in itertools.combinations(free, k):
            sizes = [shape[d] if d in extra else n for d, n in enumerate(base)]
            strides, step = [0] * len(shape), 1
            for d in reversed(canon.order):  # C order over the operands' memory order
                strides[d] = step if sizes[d] > 1 else 0
                step *= sizes[d]
            if groups(strides) <= MAX_CHANNEL_GROUPS and (best is None or step < best[0]):
                best = (step, sizes)
    sizes = best[1]  # materialising every broadcast dim of the groups always merges as the operands do
    new = xp.empty([sizes[d] for d in canon.order], dtype=r.dtype).transpose(np.argsort(canon.order))
    new[...] = r[tuple(slice(0, n) for n in sizes)]
    return xp.broadcast_to(new, shape)


def _h0_view(xp, op, x_shape, axis, dtype):
    """h0 broadcast to x's shape with a time length of 1, in the compute dtype."""
    chan_shape = x_shape[:axis] + x_shape[axis + 1:]
    v = _broadcast(xp, op, chan_shape, dtype, "h0",
                   f"h0 must broadcast to x's shape without the time axis, {tuple(chan_shape)}")
    v = xp.expand_dims(v, axis)
    return v if v.dtype == dtype else v.astype(dtype)  # one value per channel: cast to the compute type


def _distinct_elements(arr) -> bool:
    """A sufficient test that no two elements of ``arr`` overlap: with dims ordered by |stride|, each
    stride clears the whole extent of the smaller ones (true of every ordinary layout).  An empty array
    has no elements to share (NumPy may give it zero strides)."""
    if arr.size == 0:
        return True
    extent = arr.itemsize
    for n, s in sorted(((n, abs(s)) for n, s in zip(arr.shape, arr.strides) if n > 1), key=lambda p: p[1]):
        if s < extent:
            return False
        extent = s * (n - 1) + extent
    return True


def check_out(out: Operand, shape, dtype, inputs) -> None:
    arr = out.array
    if arr is None:
        raise TypeError("out must be an array, not a scalar")
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(arr.shape)} but the result has shape {tuple(shape)}; "
                         f"allocate out with x's shape")
    if arr.dtype != dtype:
        raise TypeError(f"out has dtype {arr.dtype} but the result has dtype {dtype}; pass out with "
                        f"dtype {dtype} (the result type of a, x and h0)")
    if isinstance(arr, np.ndarray) and not arr.flags.writeable:
        raise ValueError("out is read-only; pass a writable array")
    if not _distinct_elements(arr):
        raise ValueError("out has elements that share memory (a zero stride, as in a broadcast view, or "
                         "strides that interleave); pass an array whose elements are distinct")
    for v in inputs:
        if v is not None and v.size and arr.size and overlaps(arr, v) and not same_view(arr, v):
            raise ValueError("out overlaps an input without being exactly that input; pass a separate "
                             "array, or out=x to scan in place")


def _resets_view(xp, resets: Operand | None, shape, what):
    """``resets`` broadcast to ``shape`` (a read-only bool view, never materialised), or None."""
    if resets is None:
        return None
    return _broadcast(xp, resets, shape, np.bool_, "resets",
                      f"resets must broadcast to {what}'s shape {tuple(shape)}: e.g. shape (T,) for a reset "
                      f"pattern shared by every channel, or (B, 1, T) per batch row of a (B, C, T) {what}")


def plan_forward(xp, a: Operand, x: Operand, h0: Operand | None, out: Operand | None, axis, reverse,
                 resets: Operand | None = None):
    """Return ``(problem or None, result, finish, plan)``; run the problem, then ``finish()`` returns
    result; ``plan(impl)`` is the :class:`ForwardPlan` that replays this call with ``impl`` (or None)."""
    xa = x.array
    if xa.ndim == 0:
        raise ValueError("x is 0-d; it needs at least one dimension, the time axis")
    axis = normalize_axis(axis, xa.ndim)
    shape = tuple(xa.shape)
    dtype = np.result_type(*(op.dtype_or_value for op in (a, x, h0) if op is not None))
    av = _broadcast(xp, a, shape, dtype, "a",
                    "a must broadcast to x's shape; for a decay constant in time give a a size-1 time "
                    "axis (e.g. a[..., None] when axis=-1)")
    h0v = None if h0 is None else _h0_view(xp, h0, shape, axis, dtype)
    rv = _resets_view(xp, resets, shape, "x")
    if out is not None:
        check_out(out, shape, dtype, [xa, None if a.is_scalar else a.array,
                                      None if h0 is None or h0.is_scalar else h0.array,
                                      None if resets is None else resets.array])
    if xa.size == 0:
        result = out.array if out is not None else xp.empty(shape, dtype)
        return None, result, lambda: result, lambda impl: None
    inputs = [xa, av] + ([h0v] if h0v is not None else []) + ([rv] if rv is not None else [])
    user_out = None if out is None else out.array
    merge = inputs + ([user_out] if user_out is not None else [])
    canon, merged = _canonical(xp, shape, axis, reverse, merge, None if rv is None else len(inputs) - 1)
    copied_out = user_out is not None and merged[-1] is not user_out
    target = canon.alloc(dtype) if user_out is None or copied_out else user_out
    if copied_out and any(same_view(user_out, v) for v in inputs):
        # in place into a layout that had to be copied: the copy of x is the one to scan
        target = merged[0]
    views = merged[:len(inputs)]
    problem = ScanProblem(
        shape=canon.channel_shape + (shape[axis],),
        a=canon.strided(views[1]),
        x=canon.strided(views[0]),
        h0=canon.strided(views[2]) if h0v is not None else None,
        out=canon.strided(target, writeable=True),
        dtype=np.dtype(dtype),
        acc_dtype=accumulation_dtype(dtype),
        resets=canon.strided(views[-1]) if rv is not None else None,
        outer=canon.outer_shape,
    )

    def finish():
        if user_out is not None and target is not user_out:
            user_out[...] = target
            return user_out
        return target

    return problem, target, finish, lambda impl: capture_forward(xp, impl, a, x, h0, out, problem, views, target,
                                                                None if copied_out else canon, resets)


def _run(launcher, problem, *args):
    for sub in blocks(problem):
        first, shifts = split_parts(sub)
        bufs = [None if s is None else s.buf for s in _operands(sub)]
        add = adder(first)
        each_part(launcher(first, *args), bufs, shifts, add and add(bufs))


def run_forward(launcher, problem: ScanProblem, *args):
    """Run ``problem`` once by a backend's ``launcher(problem, *args)`` (see the backends' interface),
    which is prepared once and run for each of its parts (see :func:`split_parts`)."""
    _run(launcher, problem, *args)


def run_backward(launcher, problem: ScanBackwardProblem, *args):
    """Run ``problem`` once by a backend's ``launcher(problem, *args)``, part by part."""
    _run(launcher, problem, *args)


def _copy_into(out, value):
    out[...] = value
    return out


def _reduce_to(xp, g, padded_shape, shape, dtype):
    """Sum ``g`` over the dims where ``padded_shape`` is 1 (broadcast), reshape to ``shape``, cast."""
    axes = tuple(d for d, (n, m) in enumerate(zip(padded_shape, g.shape)) if n == 1 and m != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    g = g.reshape(shape)
    if g.dtype.kind == "c" and np.dtype(dtype).kind != "c":
        g = g.real
    return g.astype(dtype, copy=False)


def _grad_a_blocks(xp, canon: Canon, shape4, a_padded, a_dtype, acc, add: bool, h_bytes: int):
    """``(total, GradASum, scratch elements)`` for a grad_a computed a block of channels at a time (see
    :class:`GradASum`).  ``total``: where a is broadcast over channels (``add``), a's padded shape,
    zeroed, in ``acc`` (its real type for a real a; cast at the end where a's dtype differs); else the
    result itself (x's shape, a's dtype).  A block is at most 1/GRAD_A_SCRATCH of h's bytes, or
    GRAD_A_BLOCK_MIN elements where that is more.  None where the total's layout would not merge as
    the operands' do (a decay given with zero strides of its own): that call runs unblocked."""
    dtype = (acc if np.dtype(a_dtype).kind == "c" else np.finfo(acc).dtype) if add else a_dtype
    total = canon.alloc(dtype, sizes=a_padded, zero=add)  # (a_padded is x's shape where nothing is summed)
    view = _as_strided(xp, total, canon.shape, [0 if n == 1 else st for n, st in zip(total.shape, total.strides)],
                       True)
    if not canon.merges(view):
        return None
    dim, size = block_split(shape4, max(GRAD_A_BLOCK_MIN, h_bytes // (GRAD_A_SCRATCH * acc.itemsize)))
    block = (1,) * dim + (size,) + tuple(shape4[dim + 1:])
    strided = canon.strided(view, writeable=True)
    summed = _summed(strided, block)
    n = math.prod(block)
    gsum = GradASum(xp, strided, dim, size, add, n)
    return total, gsum, n + (math.prod(k for d, k in enumerate(block) if d not in summed) if summed else 0)


def _reducer(xp, g_shape, g_dtype, padded_shape, shape, dtype):
    """``g -> _reduce_to(xp, g, padded_shape, shape, dtype)`` for a ``g`` of ``g_shape`` and ``g_dtype``,
    with what that needs decided once: most replays need a reshape at most."""
    axes = any(n == 1 and m != 1 for n, m in zip(padded_shape, g_shape))
    if not axes and np.dtype(g_dtype) == np.dtype(dtype):
        shape = tuple(shape)
        return (lambda g: g) if tuple(g_shape) == shape else (lambda g: g.reshape(shape))
    return lambda g: _reduce_to(xp, g, padded_shape, shape, dtype)


def _check_grad_outs(outs, shapes, dtypes, inputs, has_h0):
    """The arrays of ``linear_scan_backward``'s ``out=(grad_a, grad_x, grad_h0)`` (Operands or None)."""
    names = ("grad_a", "grad_x", "grad_h0")
    if outs[2] is not None and not has_h0:
        raise ValueError("out's grad_h0 is given but h0 is None (there is no grad_h0); pass None in its place")
    for op, shape, dtype, name in zip(outs, shapes, dtypes, names):
        if op is None:
            continue
        arr = op.array
        if arr is None:
            raise TypeError(f"out's {name} must be an array or None, not a scalar")
        if tuple(arr.shape) != tuple(shape) or arr.dtype != dtype:
            raise ValueError(f"out's {name} has shape {tuple(arr.shape)} and dtype {arr.dtype} but {name} has "
                             f"shape {tuple(shape)} and dtype {np.dtype(dtype)}; allocate it so")
        if isinstance(arr, np.ndarray) and not arr.flags.writeable:
            raise ValueError(f"out's {name} is read-only; pass a writable array")
        if not _distinct_elements(arr):
            raise ValueError(f"out's {name} has elements that share memory (a zero stride, as in a broadcast "
                             f"view); pass an array whose elements are distinct")
    check_grad_outs_apart([None if o is None else o.array for o in outs], inputs)


def check_grad_outs_apart(user, inputs):
    """No array of ``linear_scan_backward``'s ``out=`` (``user``: arrays or None) overlaps an input or
    another of them; run on every call, replayed ones too (the signature says nothing of addresses)."""
    for i, arr in enumerate(user):
        if arr is None or not arr.size:
            continue
        for v in [o for j, o in enumerate(user) if o is not None and j != i] + list(inputs):
            if v is not None and not isinstance(v, (int, float, complex, np.generic)) and v.size and overlaps(arr, v):
                name = ("grad_a", "grad_x", "grad_h0")[i]
                raise ValueError(f"out's {name} overlaps an input or another output; pass separate arrays")


def plan_backward(xp, a: Operand, h: Operand, grad_h: Operand, h0: Operand | None, axis, reverse,
                  resets: Operand | None = None, outs=(None, None, None)):
    """Return ``(problem or None, finish, plan)``; ``finish()`` returns ``(grad_a, grad_x, grad_h0)``;
    ``plan(impl)`` is the :class:`BackwardPlan` that replays this call with ``impl`` (or None).
    ``outs``: Operands (or None) receiving grad_a, grad_x, grad_h0 (``linear_scan_backward``'s ``out=``):
    grad_x, and a full-shape grad_a of the result dtype, are computed in place there; the others are
    computed as usual and copied in (a reduction's result, or h0's size)."""
    ha, gha = h.array, grad_h.array
    if ha.ndim == 0:
        raise ValueError("h is 0-d; it needs at least one dimension, the time axis")
    if tuple(gha.shape) != tuple(ha.shape):
        raise ValueError(f"grad_h has shape {tuple(gha.shape)} but h has shape {tuple(ha.shape)}; "
                         f"they must match (grad_h = dL/dh)")
    axis = normalize_axis(axis, ha.ndim, "h")
    shape = tuple(ha.shape)
    dtype = np.dtype(np.result_type(*(op.dtype_or_value for op in (a, h, grad_h, h0) if op is not None)))
    acc = accumulation_dtype(dtype)
    av = _broadcast(xp, a, shape, dtype, "a", "a must broadcast to h's shape (it is the forward's a)")
    h0v = None if h0 is None else _h0_view(xp, h0, shape, axis, dtype)
    a_shape = () if a.array is None else tuple(a.array.shape)
    a_dtype = dtype if a.array is None else a.array.dtype
    a_padded = (1,) * (len(shape) - len(a_shape)) + a_shape
    h0_shape = None if h0 is None else (() if h0.array is None else tuple(h0.array.shape))
    h0_dtype = None if h0 is None else (dtype if h0.array is None else h0.array.dtype)
    h0_padded = None if h0 is None else (
        (1,) * (len(shape) - 1 - len(h0_shape)) + h0_shape)
    if h0_padded is not None:
        h0_padded = h0_padded[:axis] + (1,) + h0_padded[axis:]

    user = [None if o is None else o.array for o in outs]
    if any(o is not None for o in outs):
        _check_grad_outs(outs, (a_shape, shape, h0_shape), (a_dtype, dtype, h0_dtype),
                         [ha, gha, a.array, None if h0 is None else h0.array,
                          None if resets is None else resets.array], h0 is not None)

    def given(results):  # the results, copied into the outs given (where not computed there)
        return tuple(r if u is None else (u if r is u else _copy_into(u, r)) for r, u in zip(results, user))

    if ha.size == 0:
        grad_x = xp.zeros(shape, dtype)
        grad_a = xp.zeros(a_shape, a_dtype)
        grad_h0 = None if h0 is None else xp.zeros(h0_shape, h0_dtype)
        return None, lambda: given((grad_a, grad_x, grad_h0)), lambda impl: None

    rv = _resets_view(xp, resets, shape, "h")
    T = shape[axis]
    time_const = a_padded[axis] == 1 and T > 1
    chan_bcast = any(a_padded[d] == 1 and shape[d] != 1 for d in range(len(shape)) if d != axis)
    direct = not chan_bcast and a_dtype == dtype
    inputs = [ha, gha, av] + ([h0v] if h0v is not None else []) + ([rv] if rv is not None else [])
    # outs computed in place take part in the merge of dimensions, like the forward's out
    ga_user = user[0] if direct and not time_const and user[0] is not None and user[0].ndim == len(shape) else None
    ga = None
    targets = [v for v in (user[1], ga_user) if v is not None]
    canon, merged = _canonical(xp, shape, axis, reverse, inputs + targets, None if rv is None else len(inputs) - 1)
    views = merged[:len(inputs)]
    kept = [m is t for m, t in zip(merged[len(inputs):], targets)]  # False: the layout was copied
    grad_x = user[1] if user[1] is not None and kept[0] else canon.alloc(dtype)
    shape4 = canon.channel_shape + (T,)
    blocked = None
    if ga_user is not None and kept[-1]:
        ga = ga_user
    elif not direct and not time_const:  # grad_a by blocks of channels (see GradASum)
        blocked = _grad_a_blocks(xp, canon, shape4, a_padded, a_dtype, acc, chan_bcast, ha.size * ha.itemsize)
    if blocked is not None:
        total, gsum, nscratch = blocked
        ga = xp.empty(nscratch, acc)
    elif ga is None:
        ga = canon.alloc(dtype if direct else acc, 1 if time_const else T)
    gh0 = None if h0v is None else canon.alloc(acc, 1)
    problem = ScanBackwardProblem(
        shape=shape4,
        a=canon.strided(views[2]),
        h=canon.strided(views[0]),
        grad_h=canon.strided(views[1]),
        h0=canon.strided(views[3]) if h0v is not None else None,
        resets=canon.strided(views[-1]) if rv is not None else None,
        grad_x=canon.strided(grad_x, writeable=True),
        grad_a=Strided(ga, 0, (0, 0, 0, 0)) if blocked else canon.strided(ga, writeable=True),  # (see blocks)
        grad_h0=None if gh0 is None else canon.strided(gh0, writeable=True),
        dtype=dtype,
        acc_dtype=acc,
        outer=canon.outer_shape,
        grad_a_sum=gsum if blocked else None,
    )
    ga_full = total if blocked else ga  # grad_a at a's padded shape (or x's), to reduce to a's

    def finish():
        grad_a = ga if ga is ga_user else _reduce_to(xp, ga_full, a_padded, a_shape, a_dtype)
        grad_h0 = None if gh0 is None else _reduce_to(xp, gh0, h0_padded, h0_shape, h0_dtype)
        return given((grad_a, grad_x, grad_h0))

    def plan(impl):
        out_srcs = (None if ga is not ga_user else _source(xp, outs[0], ga_user, problem.grad_a),
                    None if user[1] is None or grad_x is not user[1] else _source(xp, outs[1], grad_x,
                                                                                  problem.grad_x))
        if user[1] is not None and (out_srcs[1] is None or out_srcs[1][0] not in (_RAVEL, _FLAT, _RESHAPE, _SELF)):
            return None  # grad_x is computed elsewhere and copied into out (its layout was copied)
        if ga_user is not None and (out_srcs[0] is None or out_srcs[0][0] not in (_RAVEL, _FLAT, _RESHAPE, _SELF)):
            return None
        srcs = (_source(xp, a, views[2], problem.a), _source(xp, h, views[0], problem.h),
                _source(xp, grad_h, views[1], problem.grad_h),
                None if h0 is None else _source(xp, h0, views[3], problem.h0),
                None if resets is None else _source(xp, resets, views[-1], problem.resets))
        if (None in srcs[:3] or (h0 is not None and srcs[3] is None) or (resets is not None and srcs[4] is None)
                or len(views[0].shape) != len(shape)):
            return None
        p = BackwardPlan()
        p.xp, p.impl, p.dtype, p.acc = xp, impl, dtype, acc
        p.dev = h.device if xp is not np else None
        launcher = getattr(impl, "backward_launcher", None)
        runs = []
        for sub in blocks(problem):
            first, shifts = split_parts(sub)
            geo = tuple(None if s is None else (s.off, s.strides) for s in (
                first.a, first.h, first.grad_h, first.h0, first.grad_x, first.grad_a, first.grad_h0, first.resets))
            runs.append((first.shape, geo, shifts, None if launcher is None else launcher(first), adder(first)))
        p.runs = tuple(runs)
        allocs = (_alloc_recipe(canon), _alloc_recipe(canon, 1 if time_const else T),
                  None if gh0 is None else _alloc_recipe(canon, 1))
        p.fetch = tuple(None if s is None else _fetcher(s, xp) for s in srcs)
        p.new = (functools.partial(_new, xp, allocs[0], dtype),
                 functools.partial(_new, xp, ((ga.size,), None), acc) if blocked else
                 functools.partial(_new, xp, allocs[1], ga.dtype),
                 None if gh0 is None else functools.partial(_new, xp, allocs[2], acc))
        p.new_sum = None if not blocked else functools.partial(_new, xp, _alloc_recipe(canon, sizes=a_padded),
                                                               total.dtype, gsum.add)
        p.out_srcs = out_srcs
        p.reduce_a = _reducer(xp, ga_full.shape, ga_full.dtype, a_padded, a_shape, a_dtype)
        p.reduce_h0 = None if gh0 is None else _reducer(xp, gh0.shape, gh0.dtype, h0_padded, h0_shape, h0_dtype)
        return p

    return problem, finish, plan



# ---- plans: a planned call's decisions, kept to serve later calls of the same signature ----------
#
# A call's signature (types, shapes, strides, dtypes, devices of its arguments, axis, direction, the
# backend, whether out is x) decides everything above except where the data lives.  After a call is
# planned, ``capture_*`` records how to rebuild each operand's flat buffer from a later call's
# arguments; the offsets and strides are kept.  A later call of the same signature then only makes
# the buffers, allocates its results and runs the backend (``parscan._plans`` holds the cache).
# Anything a plan cannot rebuild from the arguments alone (a cast, a copy into canonical order, an
# empty problem) is not captured: such calls are planned every time.

_RAVEL, _FLAT, _SCALAR, _NPSCALAR, _RESHAPE, _SELF = range(6)


def _source(xp, op: Operand, view, s: Strided):
    """How to rebuild ``s.buf`` (the flat buffer of ``view``, derived from argument ``op``) from a later
    call's argument; None when it cannot be."""
    if op.array is None:
        return (_SCALAR, s.buf.dtype)
    if op.library is None:  # a NumPy scalar
        return (_NPSCALAR, None) if xp is np and view.dtype == op.array.dtype else None
    arr = op.array
    if view.dtype != arr.dtype or op.library not in ("numpy", "cupy"):
        return None
    if arr.ndim == 0:  # one element: a view of it
        return (_NPSCALAR, None) if xp is np else None
    buf, _ = flat_buffer(xp, arr)
    if _ptr(buf) != _ptr(s.buf) or buf.size != s.buf.size:
        return None  # the operand is not the argument's own memory (a copy was made)
    if arr.ndim == 1 and arr.strides[0] == arr.itemsize:
        return (_SELF, None)  # a contiguous vector is its own flat buffer
    if xp is np and all(st >= 0 for st in arr.strides):
        if arr.size == buf.size and _distinct_elements(arr):
            return (_RAVEL, None)  # contiguous in memory order: ravel("K") is the flat buffer, a view
            # (decided without calling ravel here, which copies an array that is not)
    elif arr.flags.c_contiguous and arr.size == buf.size:
        return (_RESHAPE, None)  # (CuPy) C-contiguous: reshape(-1) is the flat buffer, a view
    return (_FLAT, None)


_DEVICE_SCALARS: dict = {}
DEVICE_SCALARS = 256  # distinct (value, dtype, device) kept; never evicted (see _device_scalar)


def _device_scalar(xp, v, dtype):
    """A Python scalar as a one-element device array, made once per value, dtype and device: a replayed
    call with a scalar decay then costs no allocation and no fill launch.  The fill is complete (the
    device synchronised, once) before the array is shared, so launches on any stream read the value;
    entries are never freed (a kernel in flight on another stream may still read one), so the cache
    stops growing at ``DEVICE_SCALARS`` entries and later values get an array of their own per call."""
    return _device_scalar_entry(xp, v, dtype)[0]


def _device_scalar_entry(xp, v, dtype):
    """``(array, shared)``: :func:`_device_scalar`'s array, and whether it is the cache's (complete and
    kept: safe to hand to later calls) rather than one of this call's own."""
    if type(v) is float:  # the sign of a zero matters (it reaches the result)
        key = (xp.cuda.runtime.getDevice(), dtype.str, v, v == 0 and math.copysign(1.0, v))
    else:
        key = (xp.cuda.runtime.getDevice(), dtype.str, v, math.copysign(1.0, v.real), math.copysign(1.0, v.imag))
    arr = _DEVICE_SCALARS.get(key)
    if arr is not None:
        return arr, True
    arr = xp.full(1, v, dtype)
    if len(_DEVICE_SCALARS) < DEVICE_SCALARS:
        xp.cuda.Device().synchronize()
        return _DEVICE_SCALARS.setdefault(key, arr), True
    return arr, False


def _fetcher(src, xp, writeable=False):
    """``v -> _fetch(src, xp, v, writeable)``, with what that needs decided once; a CUDA plan's scalar
    keeps its last nonzero value's device array (plans are per device, so the value decides)."""
    kind, dtype = src
    if kind == _SELF and (xp is not np or writeable):
        return lambda v: v
    if kind == _RESHAPE:
        return lambda v: v.reshape(-1)
    if kind == _SCALAR and xp is not np:
        last = [None]

        def scalar(v):
            m = last[0]
            if m is not None and m[0] == v:
                return m[1]
            arr, shared = _device_scalar_entry(xp, v, dtype)
            if shared and v != 0:  # a zero's sign is not in ==
                last[0] = (v, arr)
            return arr
        return scalar
    return lambda v: _fetch(src, xp, v, writeable)


def _fetch(src, xp, v, writeable=False):
    """The flat buffer of a later call's argument ``v``; host inputs read-only, as ``flat_buffer`` makes
    them on a planned call (a backend compiled for read-only inputs is not compiled again)."""
    kind, dtype = src
    if kind == _SELF:
        if xp is np and not writeable and v.flags.writeable:
            v = v.view()
            v.flags.writeable = False
        return v
    if kind == _RAVEL:
        buf = v.ravel("K")
    elif kind == _RESHAPE:
        return v.reshape(-1)
    elif kind == _SCALAR:
        if xp is not np:
            return _device_scalar(xp, v, dtype)
        buf = xp.full(1, v, dtype)
    elif kind == _NPSCALAR:
        buf = np.asarray(v).reshape(1)
    else:
        return flat_buffer(xp, v, writeable)[0]
    if xp is np and not writeable:
        buf.flags.writeable = False
    return buf


def _alloc_recipe(canon: Canon, tlen=None, sizes=None):
    shape = list(canon.shape if sizes is None else sizes)
    if tlen is not None:
        shape[canon.axis] = tlen
    alloc = tuple(shape[d] for d in canon.order)
    perm = tuple(int(p) for p in np.argsort(canon.order))
    return alloc, None if perm == tuple(range(len(perm))) else perm


def _new(xp, recipe, dtype, zero=False):
    """A new array by an :func:`_alloc_recipe` (zeroed where ``zero``), and its flat buffer (offset 0, writable)."""
    alloc, perm = recipe
    arr = (xp.zeros if zero else xp.empty)(alloc, dtype)
    if len(alloc) == 1:
        return arr, arr
    buf = arr.reshape(-1)
    return (arr if perm is None else arr.transpose(perm)), buf


class ForwardPlan:
    """A planned forward call, replayed for the arguments of a later call of the same signature."""

    __slots__ = ("xp", "impl", "shape", "dtype", "acc", "geo", "out_src", "check_overlap", "launch", "dev",
                 "fetch", "new_out", "shifts")

    def run(self, a, x, h0, out, resets=None):
        xp = self.xp
        if self.dev is not None and xp.cuda.runtime.getDevice() != self.dev:
            with xp.cuda.Device(self.dev):  # results and scratch on the data's device
                return self.run(a, x, h0, out, resets)
        if out is None:
            target, obuf = self.new_out()
        else:
            if self.check_overlap:
                for v in (x, a, h0, resets):
                    if v is not None and not isinstance(v, (int, float, complex, np.generic)) and v.size \
                            and overlaps(out, v) and not same_view(out, v):
                        raise ValueError("out overlaps an input without being exactly that input; pass a "
                                         "separate array, or out=x to scan in place")
            target = out
            obuf = _fetch(self.out_src, xp, out, True)
        fa, fx, fh, fr = self.fetch
        ba, bx = fa(a), fx(x)
        bh = None if fh is None else fh(h0)
        br = None if fr is None else fr(resets)
        bufs = (ba, bx, bh, obuf, br)
        if self.launch is not None and len(self.shifts) == 1:  # the backend's launcher prepared for this geometry
            self.launch(*bufs)
        else:  # part by part (see split_parts)
            each_part(self.launch or self._problem, bufs, self.shifts)
        return target

    def _problem(self, ba, bx, bh, obuf, br):
        """Run the problem of these buffers (a part's) by the backend's ``forward``."""
        geo = self.geo
        self.impl.forward(ScanProblem(self.shape, Strided(ba, *geo[0]), Strided(bx, *geo[1]),
                                      None if bh is None else Strided(bh, *geo[2]), Strided(obuf, *geo[3]),
                                      self.dtype, self.acc, None if br is None else Strided(br, *geo[4])))


def capture_forward(xp, impl, a, x, h0, out, problem, views, target, canon, resets=None):
    """The :class:`ForwardPlan` of a call just planned (None when it cannot be replayed)."""
    user_out = None if out is None else out.array
    if problem is None or canon is None:
        return None
    srcs = [_source(xp, a, views[1], problem.a), _source(xp, x, views[0], problem.x)]
    srcs.append(None if h0 is None else _source(xp, h0, views[2], problem.h0))
    srcs.append(None if resets is None else _source(xp, resets, views[-1], problem.resets))
    if srcs[0] is None or srcs[1] is None or (h0 is not None and srcs[2] is None) or \
            (resets is not None and srcs[3] is None):
        return None
    p = ForwardPlan()
    p.xp, p.impl, p.shape, p.dtype, p.acc = xp, impl, problem.shape, problem.dtype, problem.acc_dtype
    p.fetch = tuple(None if s is None else _fetcher(s, xp) for s in srcs)
    first, p.shifts = split_parts(problem)
    p.geo = tuple((s.off, s.strides) if s is not None else None
                  for s in (first.a, first.x, first.h0, first.out, first.resets))
    p.out_src, p.check_overlap = None, False
    p.dev = x.device if xp is not np else None
    launcher = getattr(impl, "forward_launcher", None)
    p.launch = None if launcher is None else launcher(first)
    if user_out is None:
        p.new_out = functools.partial(_new, xp, _alloc_recipe(canon), problem.dtype)
    else:
        if target is not user_out:
            return None  # the result is copied into out: not replayed
        p.out_src = _source(xp, out, user_out, problem.out)
        if p.out_src is None or p.out_src[0] not in (_RAVEL, _FLAT, _RESHAPE, _SELF):
            return None
        p.check_overlap = not same_view(user_out, x.array)  # out=x: in place
    return p


class BackwardPlan:
    """A planned backward call, replayed for the arguments of a later call of the same signature."""

    __slots__ = ("xp", "impl", "dtype", "acc", "runs", "out_srcs", "reduce_a", "reduce_h0", "dev", "fetch", "new",
                 "new_sum")

    def run(self, a, h, grad_h, h0, resets=None, out=None):
        """``out``: ``linear_scan_backward``'s ``out=`` tuple (the signature's: the same arrays given or
        None), or None."""
        xp = self.xp
        if self.dev is not None and xp.cuda.runtime.getDevice() != self.dev:
            with xp.cuda.Device(self.dev):
                return self.run(a, h, grad_h, h0, resets, out)
        if out is not None:
            check_grad_outs_apart(out, (h, grad_h, a, h0, resets))
        fa, fh, fg, f0, fr = self.fetch
        ins = (fa(a), fh(h), fg(grad_h), None if f0 is None else f0(h0))
        br = None if fr is None else fr(resets)
        qsrc, xsrc = self.out_srcs
        new_x, new_q, new_0 = self.new
        if xsrc is not None:
            grad_x, bx = out[1], _fetch(xsrc, xp, out[1], True)
        else:
            grad_x, bx = new_x()
        if qsrc is not None:
            ga, ba = out[0], _fetch(qsrc, xp, out[0], True)
        else:
            ga, ba = new_q()
        gh0, b0 = (None, None) if new_0 is None else new_0()
        bufs = (*ins, bx, ba, b0, br)
        if self.new_sum is not None:  # grad_a by blocks, into its total (see GradASum)
            ga, total = self.new_sum()
            bufs += (total,)
        for shape, geo, shifts, launch, after in self.runs:
            if launch is not None and len(shifts) == 1 and after is None:  # the launcher prepared for this geometry
                launch(*bufs)
            else:  # part by part (see split_parts)
                each_part(launch or functools.partial(self._problem, shape, geo), bufs, shifts, after and after(bufs))
        grad_a = ga if qsrc is not None else self.reduce_a(ga)
        grad_h0 = None if gh0 is None else self.reduce_h0(gh0)
        if out is None:
            return grad_a, grad_x, grad_h0
        return tuple(r if u is None or u is r else _copy_into(u, r) for r, u in zip((grad_a, grad_x, grad_h0), out))

    def _problem(self, shape, geo, *bufs):
        """Run the problem of these buffers (a part's, of ``shape`` and ``geo``) by the backend's ``backward``."""
        self.impl.backward(ScanBackwardProblem(
            shape, *(None if b is None else Strided(b, *g) for b, g in zip(bufs[:7], geo)),
            self.dtype, self.acc, None if bufs[7] is None else Strided(bufs[7], *geo[7])))
