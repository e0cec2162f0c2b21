"""Packed variable-length sequences: ``resets`` from sequence offsets, and each sequence's final state.

Many sequences of different lengths put end to end on one time axis (``cu_seqlens`` in
flash-linear-attention and Mamba-2) scan as one array with ``resets`` at every sequence start::

    offsets = [0, 3, 7, 8]                      # three sequences: steps 0-2, 3-6, 7
    resets = resets_from_offsets(offsets, 8)    # True at 0, 3 and 7
    h = parscan.linear_scan(a, x, resets=resets)
    last = segment_ends(h, offsets)             # h[..., [2, 6, 7]]

A per-sequence initial state ``h0_seq[k]`` is the caller's ``x[..., offsets[k]] += a[..., offsets[k]] *
h0_seq[k]`` before the scan (the reset drops the carried state, not x).
"""

from __future__ import annotations

import numpy as np

from ._arrays import array_module, as_operand


def _offsets(offsets, T):
    o = np.asarray(offsets.get() if hasattr(offsets, "get") else offsets)
    if o.ndim != 1 or o.size < 1 or o.dtype.kind not in "iu":
        raise TypeError(f"offsets must be a 1-d integer array (0, l1, l1 + l2, ..., T, as cu_seqlens), "
                        f"got {o.dtype} of shape {o.shape}")
    if isinstance(T, (bool, np.bool_)) or not isinstance(T, (int, np.integer)) or T < 0:
        raise TypeError(f"T must be a non-negative int (the time length), got {T!r}")
    if o[0] != 0 or o[-1] != T or np.any(np.diff(o) < 0):
        raise ValueError(f"offsets must start at 0, end at T = {T} and never decrease (cu_seqlens: 0, l1, "
                         f"l1 + l2, ..., T), got {o.tolist() if o.size <= 12 else o}")
    return o.astype(np.int64)


def resets_from_offsets(offsets, T, *, like=None):
    """The ``resets`` of sequences packed end to end: a bool array of shape (T,), True at every
    sequence start ``offsets[k]`` (k < len(offsets) - 1, empty sequences included, which restart at the
    same step as the next one).  ``like``: an array whose library (NumPy, CuPy) the result takes.

    >>> from parscan import resets_from_offsets
    >>> resets_from_offsets([0, 3, 7, 8], 8)
    array([ True, False, False,  True, False, False, False,  True])
    """
    o = _offsets(offsets, T)
    r = np.zeros(T, bool)
    starts = o[:-1]
    r[starts[starts < T]] = True
    if like is None:
        return r
    xp = array_module(as_operand(like, "like"))
    return r if xp is np else xp.asarray(r)


def segment_ends(h, offsets, *, axis=-1):
    """Each sequence's final state: ``h`` taken at ``offsets[1:] - 1`` along ``axis`` (a new array,
    the sequences on that axis); an empty sequence's final state is 0 (its initial state).

    >>> import numpy as np
    >>> from parscan import segment_ends
    >>> h = np.arange(8.0)
    >>> segment_ends(h, [0, 3, 3, 8])
    array([2., 0., 7.])
    """
    op = as_operand(h, "h")
    arr, xp = op.array, array_module(op)
    if arr.ndim == 0:
        raise ValueError("h is 0-d; it needs a time axis")
    ax = axis % arr.ndim if -arr.ndim <= axis < arr.ndim else None
    if ax is None:
        raise ValueError(f"axis={axis} is out of range for h with {arr.ndim} dimension(s)")
    o = _offsets(offsets, arr.shape[ax])
    ends = o[1:] - 1
    empty = o[1:] == o[:-1]
    out = xp.take(arr, xp.asarray(np.where(empty, 0, ends)), axis=ax) if arr.shape[ax] else \
        xp.zeros(arr.shape[:ax] + (len(ends),) + arr.shape[ax + 1:], arr.dtype)
    if empty.any():
        idx = [slice(None)] * arr.ndim
        idx[ax] = xp.asarray(np.flatnonzero(empty))
        out[tuple(idx)] = 0
    return out
