"""Where each argument lives, and how a result is handed back there.

Every public call starts here.  An argument is turned, zero-copy, into either a NumPy array (host) or
a CuPy array (CUDA), and the :class:`Operand` remembers which library it came from so that the result
can be returned as that library's array:

- ``numpy.ndarray`` and NumPy scalars: host;
- ``cupy.ndarray``: CUDA, on its own device;
- Numba CUDA device arrays (``__cuda_array_interface__``): CUDA, returned as Numba device arrays;
- under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), its device arrays (``numba.cuda.to_device``):
  CUDA device 0, ``simulated``; the simulator keeps their data in NumPy arrays, which the operand
  takes as they are, and results go back as simulator device arrays around NumPy results;
- any other ``__dlpack__`` producer (torch, JAX, ...): host or CUDA by its ``__dlpack_device__``, and
  returned through that library's ``from_dlpack``;
- any other ``__cuda_array_interface__`` producer: CUDA, returned as CuPy;
- Python ``int`` / ``float`` / ``complex`` scalars where a scalar makes sense (``a`` and ``h0``):
  they take part in dtype promotion as NumPy's "weak" scalars and live on any device.

Nothing here copies data, except the conversion of sequences (lists) to NumPy and of Python scalars
to 0-d arrays.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

#: dtypes the scans compute in, in promotion order
SUPPORTED_DTYPES = tuple(np.dtype(t) for t in ("float16", "float32", "float64", "complex64", "complex128"))

_DL_CPU, _DL_CUDA, _DL_CUDA_HOST, _DL_CUDA_MANAGED = 1, 2, 3, 13


@dataclass(frozen=True)
class Operand:
    """One argument, converted.

    ``array`` is a ``numpy.ndarray`` or ``cupy.ndarray`` (``None`` for a Python scalar, whose value is
    ``value``); ``library`` names where it came from (``"numpy"``, ``"cupy"``, ``"numba"``, ``"torch"``,
    ...; ``None`` for a scalar); ``device`` is ``None`` on the host, else the CUDA device id.
    ``simulated``: a Numba CUDA simulator device array, whose ``array`` is the NumPy array holding
    its data (on device 0 as far as placement goes; computed on with NumPy).
    """

    name: str
    array: Any
    library: str | None
    device: int | None
    value: Any = None
    simulated: bool = False

    @property
    def is_scalar(self) -> bool:
        return self.array is None or self.library is None

    @property
    def on_gpu(self) -> bool:
        return self.device is not None

    def where(self) -> str:
        if self.simulated:
            return "Numba CUDA simulator memory"
        return "host memory" if self.device is None else f"CUDA device {self.device}"

    @property
    def dtype_or_value(self):
        """What ``numpy.result_type`` should see: the array's dtype, or the weak Python scalar."""
        return self.value if self.array is None else self.array.dtype


def _cupy():
    import cupy  # noqa: PLC0415  (imported lazily: CuPy is optional and slow to import)

    return cupy


def cuda_simulator() -> bool:
    """Whether Numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1`` when numba was imported): then
    ``numba.cuda`` runs kernels on the CPU, its device arrays hold NumPy arrays, and CuPy cannot use them."""
    for module in ("numba.cuda.core.config", "numba.core.config"):
        config = sys.modules.get(module)
        if config is not None:
            return bool(getattr(config, "ENABLE_CUDASIM", 0))
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")  # what numba will read


def _simulator_array_type():
    """The simulator's device array class, if numba.cuda is loaded (the module loads with it, on or off)."""
    module = sys.modules.get("numba.cuda.simulator.cudadrv.devicearray")
    return None if module is None else module.FakeCUDAArray


def _top_module(obj) -> str:
    return type(obj).__module__.split(".", 1)[0]


def as_operand(obj, name: str, *, allow_scalar: bool = False) -> Operand:
    """Convert ``obj`` (argument ``name``) without copying; raise ``TypeError`` for what can't be scanned."""
    op = _convert(obj, name, allow_scalar)
    return op if op.array is None else _checked(op)


def as_flags(obj, name: str) -> Operand:
    """Convert a boolean array argument (``resets``) without copying, from the places ``as_operand`` takes."""
    if isinstance(obj, (bool, int, float, complex, np.generic)):
        raise TypeError(f"{name} must be a boolean array broadcastable to x (e.g. of shape (T,)), got "
                        f"{type(obj).__name__} {obj!r}; pass None for no {name}")
    op = _convert(obj, name, False)
    if op.array.dtype != np.bool_:
        raise TypeError(f"{name} has dtype {op.array.dtype}; it must be a boolean array (True where the "
                        f"state restarts): pass {name}.astype(bool), or build it with "
                        f"parscan.resets_from_offsets")
    return op


def _convert(obj, name: str, allow_scalar: bool) -> Operand:
    """``obj`` (argument ``name``) as an Operand, without copying and before its dtype is checked."""
    if isinstance(obj, (bool, np.bool_)):
        raise TypeError(f"{name} is a bool; parscan scans floating-point or complex data: pass a float, "
                        f"e.g. {name}={float(obj)!r}")
    if isinstance(obj, np.generic):  # before Python's types: numpy.float64 subclasses float, but is not weak
        if not allow_scalar:
            raise TypeError(f"{name} must be an array, got the NumPy scalar {obj!r}")
        return Operand(name, np.asarray(obj), None, None)
    if isinstance(obj, (int, float, complex)):
        if not allow_scalar:
            raise TypeError(f"{name} must be an array, got the Python scalar {obj!r}; wrap it, e.g. "
                            f"numpy.asarray([...], dtype=numpy.float32)")
        return Operand(name, None, None, None, value=obj)
    cp = sys.modules.get("cupy")  # before NumPy: a CuPy stand-in (the tests' CPU harness) may subclass it
    if cp is not None and isinstance(obj, cp.ndarray):
        return Operand(name, obj, "cupy", obj.device.id)
    if isinstance(obj, np.ndarray):
        return Operand(name, obj, "numpy", None)
    top = _top_module(obj)
    if top in ("jax", "jaxlib") and "Tracer" in type(obj).__name__:
        raise TypeError(f"{name} is a JAX tracer: parscan runs eagerly on concrete jax.Array values and "
                        f"cannot be traced by jax.jit / grad / vmap; under a transformation use "
                        f"parscan.jax.linear_scan (or parscan.jax.matrix_linear_scan), which can")
    sim = _simulator_array_type()
    if sim is not None and isinstance(obj, sim):  # its data is the NumPy array _ary (simulator's devicearray.py)
        return Operand(name, obj._ary, "numba", 0, simulated=True)
    if top == "numba" and hasattr(obj, "__cuda_array_interface__"):
        arr = _cupy().asarray(obj)
        return Operand(name, arr, "numba", arr.device.id)
    if hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__"):
        dev_type, dev_id = (int(v) for v in obj.__dlpack_device__())
        if dev_type in (_DL_CPU, _DL_CUDA_HOST):
            arr = np.from_dlpack(obj)
            return Operand(name, arr, top, None)
        if dev_type in (_DL_CUDA, _DL_CUDA_MANAGED):
            arr = _cupy().from_dlpack(obj)
            return Operand(name, arr, top, arr.device.id)
        raise ValueError(f"{name} lives on DLPack device type {dev_type}; parscan runs on the host (CPU) "
                         f"and on CUDA devices: move {name} to one of them first")
    if hasattr(obj, "__cuda_array_interface__"):
        arr = _cupy().asarray(obj)
        return Operand(name, arr, "cupy", arr.device.id)
    if isinstance(obj, (list, tuple)) or hasattr(obj, "__array_interface__") or hasattr(obj, "__array__"):
        try:
            arr = np.asarray(obj)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} could not be read as an array: {exc}") from None
        return Operand(name, arr, "numpy", None)
    raise TypeError(f"{name} must be an array (NumPy, CuPy, or any __dlpack__ / __cuda_array_interface__ "
                    f"producer such as a torch tensor), got {type(obj).__name__}")


def _checked(op: Operand) -> Operand:
    dt = op.array.dtype
    if dt not in SUPPORTED_DTYPES:
        kind = {"i": "an integer", "u": "an unsigned integer", "b": "a bool", "O": "an object",
                "U": "a string", "S": "a bytes", "M": "a datetime", "m": "a timedelta"}.get(dt.kind, "an unsupported")
        raise TypeError(f"{op.name} has {kind} dtype ({dt}); parscan scans float16, float32, float64, "
                        f"complex64 or complex128 data: cast it first, e.g. {op.name}.astype('float32')")
    return op


def check_same_place(x: Operand, *others: Operand | None) -> None:
    """Every non-scalar operand must live in x's library and on x's device (no hidden transfers)."""
    for op in others:
        if op is None or op.is_scalar:
            continue
        if op.device != x.device:
            hint = ("move it with numba.cuda.to_device(...)" if x.simulated else
                    "move it with cupy.asarray(...)" if x.on_gpu else "move it to the host, e.g. with .get()")
            raise ValueError(f"{op.name} is in {op.where()} but {x.name} is in {x.where()}; parscan never copies "
                             f"between devices behind your back: {hint}")
        if op.library != x.library:
            raise ValueError(f"{op.name} is a {op.library} array but {x.name} is a {x.library} array; pass arrays "
                             f"of one library (convert {op.name} zero-copy with {x.library}'s from_dlpack)")


def give_back(result, like: Operand):
    """Return ``result`` (NumPy or CuPy) as an array of ``like``'s library, zero-copy."""
    lib = like.library
    if lib in (None, "numpy", "cupy"):
        return result
    if like.simulated:  # (a result that is one already, from a call on simulator arrays, stays as it is)
        sim = _simulator_array_type()
        return result if isinstance(result, sim) else sim(result)
    if lib == "numba":
        from numba import cuda  # noqa: PLC0415

        return cuda.as_cuda_array(result)
    if lib == "torch":
        import torch  # noqa: PLC0415

        return torch.from_dlpack(result)
    if lib in ("jax", "jaxlib"):
        import jax.numpy as jnp  # noqa: PLC0415

        return jnp.from_dlpack(result)
    module = sys.modules.get(lib)
    convert = getattr(module, "from_dlpack", None)
    return convert(result) if convert is not None else result


def on_device_of(op: Operand):
    """A context in which CuPy's current device is ``op``'s (for CUDA operands; else it does nothing):
    a call's results, temporaries and launches then live on the data's device, whatever device is
    current in the caller's thread."""
    if op.on_gpu and not op.simulated:
        return _cupy().cuda.Device(op.device)
    return contextlib.nullcontext()


def array_module(op: Operand):
    """``numpy`` for host operands and simulator device arrays, ``cupy`` for CUDA operands."""
    return _cupy() if op.on_gpu and not op.simulated else np


def data_extent(arr) -> tuple[int, int]:
    """[low, high) byte addresses touched by ``arr`` (NumPy or CuPy), for overlap checks."""
    if arr.size == 0:
        return (0, 0)
    ptr = arr.__array_interface__["data"][0] if isinstance(arr, np.ndarray) else arr.data.ptr
    lo = hi = ptr
    for n, s in zip(arr.shape, arr.strides):
        if s > 0:
            hi += (n - 1) * s
        else:
            lo += (n - 1) * s
    return lo, hi + arr.itemsize


def overlaps(p, q) -> bool:
    """True when the memory spans of p and q (NumPy or CuPy arrays) intersect."""
    if type(p) is np.ndarray and type(q) is np.ndarray:
        return np.may_share_memory(p, q)  # the same bounds test, in C (a tenth of the time)
    lo1, hi1 = data_extent(p)
    lo2, hi2 = data_extent(q)
    return lo1 < hi2 and lo2 < hi1


def same_view(p, q) -> bool:
    """True when p and q are the very same elements in the same order (exact aliasing)."""
    return (data_extent(p) == data_extent(q) and p.shape == q.shape and p.strides == q.strides
            and p.dtype == q.dtype)
