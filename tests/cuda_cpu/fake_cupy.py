"""A stand-in for the ``cupy`` module: NumPy memory as "device" memory, and a ``RawModule`` that builds
the kernel source with the host compiler and runs its kernels on the CPU (see the package docstring).

Only what parscan's CUDA paths use is real: ``ndarray`` (a NumPy subclass with ``.device``), the array
functions (NumPy's, results turned into device arrays; ``empty`` filled with 0xff bytes, NaN in
floating point, so a read of unwritten memory shows), ``cuda.Device``, ``cuda.runtime``,
``RawModule`` / ``RawKernel``.  ``asarray`` of a host array copies it "to the device", as CuPy does.

Every array the stand-in allocates (its constructors, ``asarray`` of host data, NumPy functions' new
results, and new arrays made by the arrays' own methods and operators: ``astype``, ``copy``, ``sum``,
arithmetic, ...) is counted by the :func:`counting` contexts open at the time; views are not.
"""

from __future__ import annotations

import ctypes
import threading
import types
import contextlib
from dataclasses import dataclass, field

import numpy as np

from . import build


class ndarray(np.ndarray):  # noqa: N801 - CuPy's name
    """A "device" array: NumPy memory standing in for memory on a CUDA device (0, or 1 when
    ``DEVICES`` is 2), the device current when it was made, as CuPy places new arrays."""

    extent = None  # (lo, hi) bytes of the allocation this array lives in, inherited by views
    dev_id = 0

    def __array_finalize__(self, obj):
        # a view shares its source's allocation (and device); a new array (astype, a ufunc's result)
        # owns its own, on the current device
        view = self.base is not None and isinstance(obj, ndarray)
        self.extent = getattr(obj, "extent", None) if self.base is not None else None
        self.dev_id = obj.dev_id if view else _state.device
        if _new_memory(self, obj):
            _count(self)

    @property
    def device(self):
        return _device_object(self.dev_id)

    def get(self):
        """A host copy (as ``cupy.ndarray.get``)."""
        return np.array(self, copy=True).view(np.ndarray)


@dataclass
class Allocations:
    """What the stand-in allocated inside a :func:`counting` block: arrays, their bytes, the largest's."""

    arrays: int = 0
    bytes: int = 0
    largest: int = 0
    shapes: list = field(default_factory=list)  # (shape, dtype) of each, in order

    def __str__(self):
        return f"{self.arrays} arrays, {self.bytes} bytes (largest {self.largest}): {self.shapes[:8]}"


_COUNTERS: list = []  # the open counting() blocks' Allocations (any thread's: the tests count one call)


def _count(arr):
    for c in _COUNTERS:
        c.arrays += 1
        c.bytes += arr.nbytes
        c.largest = max(c.largest, arr.nbytes)
        c.shapes.append((arr.shape, arr.dtype.name))


@contextlib.contextmanager
def counting():
    """``with counting() as c:`` c (:class:`Allocations`) counts every array the stand-in allocates
    inside the block (see the module docstring)."""
    c = Allocations()
    _COUNTERS.append(c)
    try:
        yield c
    finally:
        _COUNTERS.remove(c)


def _new_memory(arr, obj):
    """Whether ``arr`` (being finalized from ``obj``) is new memory: an array of its own (``astype``,
    ``copy``), or the wrapper of a new NumPy array holding exactly its bytes: a ufunc's or reduction's
    result (wrapped from ``obj``, an input that lives elsewhere) or a NumPy result made a device array
    (``obj`` is that result).  Views share their owner (NumPy collapses ``base`` to it) and are not."""
    owner = arr.base
    if owner is None:
        return True
    if type(owner) is not np.ndarray or owner.base is not None or owner.nbytes != arr.nbytes:
        return False
    return obj is owner or (isinstance(obj, ndarray) and (obj if obj.base is None else obj.base) is not owner)


ALIGN = 256  # CuPy's memory pool hands out 256-byte aligned blocks; sectors are counted from there


def _alloc(shape, dtype, order="C", fill=None):
    """Memory 256-byte aligned, uninitialised or every byte ``fill``."""
    dtype = np.dtype(dtype)
    shape = (shape,) if np.ndim(shape) == 0 else tuple(shape)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    if fill is not None:
        raw.fill(fill)
    off = -raw.__array_interface__["data"][0] % ALIGN
    flat = raw[off:off + nbytes].view(dtype)
    arr = (flat.reshape(shape, order=order) if flat.size else np.empty(shape, dtype, order)).view(ndarray)
    lo = arr.__array_interface__["data"][0]
    arr.extent = (lo, lo + nbytes)
    _count(arr)
    return arr


def _aligned(v):
    """A new array moved into aligned memory (NumPy's own allocations are only 16-byte aligned)."""
    if v.base is None and v.__array_interface__["data"][0] % ALIGN and v.size:
        out = _alloc(v.shape, v.dtype, "F" if v.flags.f_contiguous and not v.flags.c_contiguous else "C")
        out[...] = v
        return out
    return v.view(ndarray)


def _dev(v):
    if isinstance(v, np.ndarray) and not isinstance(v, ndarray):
        return _aligned(v)
    if isinstance(v, tuple):
        return tuple(_dev(u) for u in v)
    if isinstance(v, list):
        return [_dev(u) for u in v]
    return v


def _wrap(fn):
    def call(*args, **kwargs):
        return _dev(fn(*args, **kwargs))

    call.__name__ = getattr(fn, "__name__", "function")
    call.__doc__ = fn.__doc__
    return call


class _Namespace(types.ModuleType):
    """NumPy's functions (and submodules) with results as device arrays."""

    def __init__(self, name, target):
        super().__init__(name)
        self._target = target

    def __getattr__(self, name):
        v = getattr(self._target, name)
        if isinstance(v, types.ModuleType):
            return _Namespace(f"{self.__name__}.{name}", v)
        if callable(v) and not isinstance(v, type):
            return _wrap(v)
        return v


DEVICES = 1  # "devices" the stand-in has; a test may set 2 to check placement on a second one


def _current() -> int:
    return _state.device


class Device:
    """``cupy.cuda.Device``: as a context, the current device of the thread (a stack, as CuPy's)."""

    def __init__(self, id=None):  # noqa: A002 - CuPy's name
        id = _current() if id is None else int(id)  # noqa: A001
        if not 0 <= id < DEVICES:
            raise ValueError(f"the CPU harness has {DEVICES} device(s); got device {id}")
        self.id = id

    def __enter__(self):
        _state.stack.append(_state.device)
        _state.device = self.id
        return self

    def __exit__(self, *exc):
        _state.device = _state.stack.pop()
        return False

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def synchronize(self):
        """Nothing runs asynchronously here: launches return when their kernel has run."""


class _Stream:
    ptr = 0


class _Runtime:
    @staticmethod
    def getDeviceCount():  # noqa: N802
        return DEVICES

    @staticmethod
    def getDevice():  # noqa: N802
        return _current()


def empty(shape, dtype=float, order="C"):
    return _alloc(shape, dtype, order, fill=0xFF)  # reads of unwritten memory show as NaN


def zeros(shape, dtype=float, order="C"):
    return _alloc(shape, dtype, order, fill=0)


def empty_like(a, dtype=None, order="K", subok=True, shape=None):
    a = np.asarray(a)
    order = "F" if order in ("F", "A", "K") and a.flags.f_contiguous and not a.flags.c_contiguous else "C"
    return empty(a.shape if shape is None else shape, a.dtype if dtype is None else dtype, order)


def asarray(a, dtype=None, order=None):
    """Device arrays pass through (cast if asked); host data is copied to the "device"."""
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else _dev(a.astype(dtype))
    host = np.asarray(a, dtype=dtype)
    out = _alloc(host.shape, host.dtype, "F" if host.flags.f_contiguous and not host.flags.c_contiguous else "C")
    out[...] = host
    return out


def _as_strided(x, shape=None, strides=None, **kw):
    return np.lib.stride_tricks.as_strided(x, shape, strides, subok=True, **kw)


# ---- scheduling and recording of launches ----------------------------------------------------------

@dataclass
class Schedule:
    """How launches run: ``seed`` 0 starts blocks in order, one at a time, each block's threads in
    turn; a nonzero seed shuffles the block start order, keeps ``in_flight`` blocks resident and picks
    the next thread at random among all resident blocks (yielding at atomics and fences with
    probability ``1 / yield_every``).  ``record`` logs every global access for the traffic model."""

    seed: int = 0
    in_flight: int = 1
    yield_every: int = 4
    record: bool = False


@dataclass
class Launch:
    """One launch as the harness ran it."""

    name: str
    grid: tuple
    block: tuple
    args: tuple
    regions: list = field(default_factory=list)   # (lo, hi, arg index) of each pointer's allocation
    polls: tuple = (0, 0, 0, 0)                    # status polls that read EMPTY, AGGREGATE, INCLUSIVE, other
    switches: int = 0
    records: np.ndarray | None = None              # REC_DTYPE, when recorded


REC_DTYPE = np.dtype([("addr", "u8"), ("pc", "u8"), ("seq", "u8"), ("block", "u4"), ("thread", "u4"),
                      ("size", "u4"), ("store", "u4")])

class _State(threading.local):
    device = 0  # the thread's current device

    def __init__(self):  # per thread
        self.stack = []  # the devices current before each Device context entered


_DEVICE_OBJECTS: dict = {}


def _device_object(i):
    """A device's ``Device`` object, made once (``ndarray.device`` as cheap as CuPy's)."""
    d = _DEVICE_OBJECTS.get(i)
    if d is None:
        d = _DEVICE_OBJECTS.setdefault(i, Device(i))
    return d


_state = _State()
_lock = threading.Lock()  # the runtime is one global scheduler: one launch at a time


def schedule() -> Schedule:
    if not hasattr(_state, "schedule"):
        _state.schedule = Schedule()
    return _state.schedule


def launches() -> list[Launch]:
    """Launches since the stand-in was installed (or last cleared)."""
    if not hasattr(_state, "launches"):
        _state.launches = []
    return _state.launches


def _owner(arr):
    """The array that owns ``arr``'s memory (through views and as_strided's wrappers)."""
    while True:
        b = arr.base
        if isinstance(b, np.ndarray):
            arr = b
        elif b is not None and isinstance(getattr(b, "base", None), np.ndarray):
            arr = b.base
        else:
            return arr


def _extent(arr):
    lo = hi = arr.__array_interface__["data"][0]
    for n, s in zip(arr.shape, arr.strides):
        if n == 0:
            return lo, lo
        if s > 0:
            hi += (n - 1) * s
        else:
            lo += (n - 1) * s
    return lo, hi + arr.itemsize


_KIND = {"f": "f", "i": "i", "u": "u", "c": "x", "b": "u"}


def _code(dtype) -> str:
    d = np.dtype(dtype)
    kind = "x" if d == np.float16 else _KIND.get(d.kind, "?")
    return f"{d.itemsize}{kind}"


_CTYPES = {"p": "a pointer to", "s": ""}


def _describe(code: str) -> str:
    what = {"f": "floating", "i": "signed integer", "u": "unsigned integer", "x": "struct"}[code[-1]]
    return f"{_CTYPES[code[0]]} a {code[1:-1]}-byte {what}".replace("  ", " ").strip()


class RawKernel:
    def __init__(self, module, name, entry, signature, max_threads):
        self.module, self.name, self._entry, self.signature = module, name, entry, signature
        self.max_threads = max_threads

    def _marshal(self, args):
        """One buffer per argument holding what CuPy would pass (a device pointer, or the scalar's
        bytes as its NumPy type: Python ints as int64, floats as float64), checked against the
        kernel's parameter types so that a wrong count, size or kind fails as it would on a device."""
        if not isinstance(args, tuple):
            raise TypeError(f"{self.name}: kernel arguments must be a tuple, got {type(args).__name__}")
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name} takes {len(self.signature)} arguments, got {len(args)}")
        keep, ptrs, regions = [], [], []
        for i, (v, code) in enumerate(zip(args, self.signature)):
            where = f"argument {i} of {self.name}"
            if code[0] == "p":
                if not isinstance(v, ndarray):
                    raise TypeError(f"{where} is {_describe(code)} but got {type(v).__name__} "
                                    f"(a device array is needed)")
                if _code(v.dtype) != code[1:]:
                    raise TypeError(f"{where} points to {code[1:]} elements ({_describe(code)}) but the array "
                                    f"holds {v.dtype}")
                if v.dev_id != _current():
                    raise RuntimeError(f"{where} lives on device {v.dev_id} but the kernel is launched on "
                                       f"device {_current()}: an illegal address on a device without peer access")
                buf = ctypes.c_void_p(v.__array_interface__["data"][0])
                lo, hi = v.extent or _extent(_owner(v))
                regions.append((lo, hi, i))
            else:
                if isinstance(v, bool):
                    v = np.bool_(v)
                elif isinstance(v, int):
                    v = np.int64(v)
                elif isinstance(v, float):
                    v = np.float64(v)
                if not isinstance(v, np.generic):
                    raise TypeError(f"{where}: unsupported argument type {type(v).__name__}")
                if _code(v.dtype) != code[1:]:
                    raise TypeError(f"{where} is {_describe(code)} ({code}) but got {v.dtype.name}: on a device "
                                    f"this would shift every later argument")
                raw = np.array(v).tobytes()
                buf = ctypes.create_string_buffer(raw, len(raw))
            keep.append(buf)
            ptrs.append(ctypes.addressof(buf))
        arr = (ctypes.c_void_p * max(1, len(ptrs)))(*ptrs)
        return arr, keep, regions

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        threads = block[0] * block[1] * block[2]
        if threads > self.max_threads:
            raise RuntimeError(f"{self.name}: {threads} threads a block exceed the kernel's launch bounds "
                               f"({self.max_threads}): CUDA_ERROR_INVALID_VALUE on a device")
        if shared_mem:
            raise NotImplementedError("the CPU harness has no dynamic shared memory")
        argv, keep, regions = self._marshal(args)
        nblocks = grid[0] * grid[1] * grid[2]
        sch = schedule()
        order = np.arange(nblocks, dtype=np.uint32)
        if sch.seed:
            np.random.default_rng(sch.seed).shuffle(order)
        reg = np.array([(lo, hi) for lo, hi, _ in regions] or [(0, 0)], dtype=np.uint64)
        rt = self.module.library.lib
        limit = 2000 * nblocks * threads + 10**6
        with _lock:
            rc = rt.parscan_launch(ctypes.c_void_p(self._entry), argv, *(ctypes.c_uint(g) for g in grid),
                                   *(ctypes.c_uint(b) for b in block), order.ctypes.data_as(ctypes.c_void_p),
                                   ctypes.c_int(sch.in_flight if sch.seed else 1), ctypes.c_uint64(sch.seed),
                                   ctypes.c_uint(sch.yield_every), reg.ctypes.data_as(ctypes.c_void_p),
                                   ctypes.c_int(len(regions)), ctypes.c_int(int(sch.record)),
                                   ctypes.c_uint64(limit))
            rt.parscan_error.restype = ctypes.c_char_p
            rt.parscan_switches.restype = ctypes.c_uint64
            rt.parscan_polls.restype = ctypes.c_long
            rt.parscan_records.restype = ctypes.c_uint64
            rec = Launch(self.name, grid, block, args, regions, tuple(rt.parscan_polls(k) for k in range(4)),
                         rt.parscan_switches())
            if sch.record:
                p = ctypes.c_void_p()
                n = rt.parscan_records(ctypes.byref(p))
                rec.records = (np.frombuffer((ctypes.c_char * (n * REC_DTYPE.itemsize)).from_address(p.value),
                                             REC_DTYPE).copy() if n else np.zeros(0, REC_DTYPE))
            err = rt.parscan_error().decode() if rc else ""
        del keep
        launches().append(rec)
        if rc:
            raise RuntimeError(f"{self.name} <<<{grid}, {block}>>> failed in the CPU harness: {err}")


class RawModule:
    """``cupy.RawModule(code=..., options=..., name_expressions=...)``, built with the host compiler
    on first use (as CuPy compiles lazily)."""

    def __init__(self, code=None, options=(), name_expressions=None, **kwargs):
        if code is None or not name_expressions:
            raise TypeError("the CPU harness's RawModule takes code= and name_expressions=")
        self.code, self.options, self.names = code, tuple(options), list(name_expressions)
        self._library = None

    @property
    def library(self):
        if self._library is None:
            self._library = build.build(self.code, self.names, self.options)
        return self._library

    def get_function(self, name):
        if name not in self.names:
            raise KeyError(f"{name!r} is not one of the module's name_expressions")
        entry, sig = self.library.kernels[name]
        base = name.split("<", 1)[0].strip()
        bound = build.launch_bounds(self.code).get(base, 1024)
        return RawKernel(self, name, entry, sig, bound)


def module() -> types.ModuleType:
    """A fresh ``cupy`` stand-in module."""
    m = _Namespace("cupy", np)
    m.ndarray = ndarray
    m.empty, m.zeros, m.empty_like, m.asarray = empty, zeros, empty_like, asarray
    m.array = lambda a, dtype=None, copy=True, order=None: asarray(a, dtype, order) if copy is False else (
        _dev(np.array(a, dtype=dtype, copy=True)) if isinstance(a, ndarray) else asarray(a, dtype, order))
    m.asnumpy = lambda a: np.array(a, copy=True).view(np.ndarray)
    m.RawModule, m.RawKernel = RawModule, RawKernel
    m.cuda = types.SimpleNamespace(Device=Device, runtime=_Runtime, get_current_stream=lambda: _Stream(),
                                   is_available=lambda: True)
    lib = types.ModuleType("cupy.lib")
    lib.stride_tricks = types.SimpleNamespace(as_strided=_as_strided)
    m.lib = lib
    m.__file__ = __file__
    m.__version__ = "cpu-harness"
    m.harness = True
    return m
