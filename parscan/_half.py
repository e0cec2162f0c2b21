"""IEEE binary16 <-> float32 for Numba CPU kernels, which have no float16 type.

Host float16 buffers are passed to the kernels viewed as ``uint16``; ``load`` widens every element
type to its accumulation type (uint16 bit patterns to float32, anything else unchanged) and ``store``
narrows back with round-to-nearest-even, so one kernel source serves every dtype.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload


@njit(cache=True)
def half_to_float(bits):
    b = np.int32(bits)
    e = (b >> 10) & 0x1F
    m = b & 0x3FF
    if e == 0:
        v = np.float32(m) * np.float32(5.960464477539063e-08)  # m * 2**-24, exact
    elif e == 31:
        v = np.float32(np.inf) if m == 0 else np.float32(np.nan)
    else:
        v = np.float32(m + 1024) * np.float32(math.ldexp(1.0, e - 25))
    return -v if (b >> 15) & 1 else v


@njit(cache=True)
def float_to_half(f):
    v = np.float64(f)
    if v != v:
        return np.uint16(0x7E00)
    sign = 0x8000 if math.copysign(1.0, v) < 0 else 0
    v = abs(v)
    if v >= 65520.0:  # at or past the midpoint between the largest half and 2**16: infinity
        return np.uint16(sign | 0x7C00)
    if v < 6.103515625e-05:  # below 2**-14: subnormal (a rounding up to 0x400 is the smallest normal)
        return np.uint16(sign | int(np.rint(v * 16777216.0)))
    e = math.frexp(v)[1] - 1  # v = [1, 2) * 2**e
    m = int(np.rint(math.ldexp(v, 10 - e)))
    if m == 2048:
        m = 1024
        e += 1
    return np.uint16(sign | ((e + 15) << 10) | (m - 1024))


def load(v):
    """The value of one element in its accumulation type."""


@overload(load)
def _load(v):
    if isinstance(v, types.Integer):
        return lambda v: half_to_float(v)
    return lambda v: v


def load_as(v, like):
    """The value of one element widened to the type of ``like`` (the accumulator)."""


@overload(load_as)
def _load_as(v, like):
    ty = like
    if isinstance(v, types.Integer):
        return lambda v, like: ty(half_to_float(v))
    if v == like:
        return lambda v, like: v
    return lambda v, like: ty(v)


def store(v, buf):
    """``v`` converted for storing into ``buf``."""


@overload(store)
def _store(v, buf):
    if isinstance(buf.dtype, types.Integer):
        return lambda v, buf: float_to_half(v)
    return lambda v, buf: v


def conj(v):
    """Complex conjugate; the identity on real values."""


@overload(conj)
def _conj(v):
    if isinstance(v, types.Complex):
        return lambda v: v.conjugate()
    return lambda v: v


def host_view(buf):
    """The array a kernel gets for ``buf``: float16 as its uint16 bit pattern, anything else as is."""
    return buf.view(np.uint16) if buf.dtype == np.float16 else buf
