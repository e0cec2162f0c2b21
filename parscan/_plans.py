"""The plan cache: a call's plan (see ``_problem.ForwardPlan``) is made once per signature and replayed.

A signature is everything a plan depends on except where the data lives: for each argument its type,
shape, strides, dtype, device and (for ``out``) writability, whether ``out`` is ``x``, the axis, the
direction and the backend; for ``linear_scan_backward`` the same of each array of its ``out=`` tuple.
Whether arrays overlap depends on where they live, so a replay checks it again.  Arguments of other kinds (torch or JAX arrays, lists, bools, ...) have no
signature and are planned on every call.  Errors are never cached: a call that raises was planned and
is planned again.  The cache is a bounded LRU, safe to use from many threads (plans are immutable;
a replay allocates its own results).
"""

from __future__ import annotations

import itertools
import sys
import threading

import numpy as np

MAXSIZE = 512


class LRU:
    """A thread-safe least-recently-used mapping of at most ``maxsize`` entries.

    A hit only stamps its entry with the time of use (no lock, no reordering: the dict lookup and the
    stamp's store are each atomic); an insertion, under the lock, evicts the entry used longest ago
    when the mapping is full (a scan of at most ``maxsize`` stamps, on a miss only).  The hit and miss
    counts are statistics: concurrent updates may lose one.
    """

    def __init__(self, maxsize=MAXSIZE):
        self.maxsize = maxsize
        self._d = {}
        self._clock = itertools.count()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        e = self._d.get(key)
        if e is None:
            self.misses += 1
            return None
        e[1] = next(self._clock)
        self.hits += 1
        return e[0]

    def put(self, key, value):
        with self._lock:
            self._d[key] = [value, next(self._clock)]
            while len(self._d) > self.maxsize:
                del self._d[min(self._d, key=lambda k: self._d[k][1])]

    def clear(self):
        with self._lock:
            self._d.clear()
            self.hits = self.misses = 0

    def __len__(self):
        return len(self._d)


FORWARD = LRU()
BACKWARD = LRU()


def clear():
    """Forget every plan (e.g. after swapping the ``cupy`` module, as the tests' CPU harness does)."""
    FORWARD.clear()
    BACKWARD.clear()


_SCALARS = (float, int, complex)


def sig(v):
    """An argument's part of a signature; raises KeyError for arguments that have none."""
    t = type(v)
    if t is np.ndarray:
        return (t, v.shape, v.strides, v.dtype, v.flags.writeable)
    if v is None or t in _SCALARS:
        return t
    cp = sys.modules.get("cupy")
    if cp is not None and t is cp.ndarray:
        return (t, v.shape, v.strides, v.dtype, v.device.id)
    if isinstance(v, np.generic):
        return t
    raise KeyError(t)


def forward_key(a, x, h0, axis, reverse, out, backend, resets=None):
    if type(axis) is not int or type(reverse) is not bool or (backend is not None and type(backend) is not str):
        return None
    try:
        return (sig(a), sig(x), sig(h0), sig(out), out is x, axis, reverse, backend, sig(resets))
    except KeyError:
        return None


def backward_key(a, h, grad_h, h0, axis, reverse, backend, resets=None, out=None):
    if type(axis) is not int or type(reverse) is not bool or (backend is not None and type(backend) is not str):
        return None
    if out is not None and (type(out) not in (tuple, list) or len(out) != 3):
        return None  # planned, and refused there with the reason
    try:
        outs = None if out is None else tuple(sig(v) for v in out)
        return (sig(a), sig(h), sig(grad_h), sig(h0), axis, reverse, backend, sig(resets), outs)
    except KeyError:
        return None
