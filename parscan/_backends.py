"""The backend registry: names, where each runs, whether it works here and why not.

A backend is a module with ``forward(ScanProblem)`` and ``backward(ScanBackwardProblem)``; it knows
nothing of axes, frameworks or user-facing errors.  ``device`` says which arrays it takes.
"""

from __future__ import annotations

import ctypes
import importlib
import sys
from dataclasses import dataclass
from functools import lru_cache

from ._arrays import cuda_simulator


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend works here; ``reason`` says why not (empty when available); ``note`` says
    what runs it when that is worth knowing (the Numba CUDA simulator)."""

    name: str
    device: str  # "host" or "cuda"
    available: bool
    reason: str = ""
    note: str = ""

    def __str__(self):
        state = ("available" + (f" ({self.note})" if self.note else "")) if self.available else self.reason
        return f"{self.name} ({self.device}): {state}"


_DEVICE = {"cupy": "cuda", "numba": "cuda", "cpu": "host", "reference": "host"}
BACKENDS = tuple(_DEVICE)
_SIMULATOR = "Numba CUDA simulator"


NO_DRIVER = "no CUDA GPU or driver found (the NVIDIA driver's library, libcuda, is not installed)"


def _driver_loads() -> bool:
    """Whether the NVIDIA driver's library loads (without it there is no GPU to use, whatever the
    CUDA runtime's error says: CuPy reports a missing driver as "driver version is insufficient")."""
    for name in ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            pass
    return False


def _cuda_reason() -> str:
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the machine
        return f"CuPy is not installed ({exc}); install parscan[cuda13] or parscan[cuda12]"
    try:
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return ""
    except Exception as exc:  # noqa: BLE001 - any driver/runtime failure means "no GPU here"
        if not _driver_loads():
            return NO_DRIVER
        if "InsufficientDriver" in str(exc):
            return (f"the NVIDIA driver is older than CuPy's CUDA runtime ({exc}): update the driver, or use "
                    f"parscan[cuda12]")
        return f"no usable CUDA device ({type(exc).__name__}: {exc})"
    return "no CUDA GPU found (the NVIDIA driver is installed but reports no device)"


def _numba_cuda_reason() -> str:
    try:
        from numba import cuda
    except ImportError as exc:  # pragma: no cover - depends on the machine
        return f"numba-cuda is not installed ({exc}); install parscan[cuda13] or parscan[cuda12]"
    try:
        return "" if cuda.is_available() else "Numba finds no usable CUDA device or driver"
    except Exception as exc:  # noqa: BLE001  # pragma: no cover
        return f"Numba cannot use CUDA ({type(exc).__name__}: {exc})"


@lru_cache(maxsize=None)
def status(name: str) -> BackendStatus:
    dev = _DEVICE[name]
    if name == "cpu":
        try:
            importlib.import_module("numba")
        except ImportError as exc:  # pragma: no cover
            return BackendStatus(name, dev, False, f"Numba is not installed ({exc}): pip install numba")
    if dev == "cuda" and cuda_simulator():
        if name == "numba":
            reason = _numba_cuda_reason()
            return BackendStatus(name, dev, not reason, reason, "" if reason else _SIMULATOR)
        return BackendStatus(name, dev, False, f"the {_SIMULATOR} is on (NUMBA_ENABLE_CUDASIM=1): its device "
                                               f"arrays hold host memory, which CuPy cannot use; use backend='numba'")
    if dev == "cuda":
        reason = _cuda_reason() or (_numba_cuda_reason() if name == "numba" else "")
        return BackendStatus(name, dev, not reason, reason)
    return BackendStatus(name, dev, True)


def available_backends() -> dict[str, BackendStatus]:
    """Every backend with whether it works on this machine, and why not.

    >>> import parscan
    >>> parscan.available_backends()["reference"].available
    True
    """
    return {name: status(name) for name in BACKENDS}


class BackendUnavailable(RuntimeError):
    """The named backend cannot run on this machine (its message says why and what to do)."""


def default(on_gpu: bool) -> str:
    """The backend for ``backend=None``: "cpu" for host data; "cupy" for CUDA data, or "numba" when
    Numba's CUDA simulator is on (its device arrays are the only CUDA data then, and CuPy cannot run them)."""
    if not on_gpu:
        return "cpu"
    return "numba" if cuda_simulator() else "cupy"


def check_device(name: str, on_gpu: bool) -> None:
    """Raise ``ValueError`` when backend ``name`` does not run where the data is (nothing is copied)."""
    if _DEVICE[name] == "cuda" and not on_gpu:
        what = ("simulator device arrays (numba.cuda.to_device; the Numba CUDA simulator is on)"
                if cuda_simulator() else "CuPy (or other CUDA) arrays")
        raise ValueError(f"backend {name!r} runs on CUDA arrays but the inputs are in host memory; parscan "
                         f"does not copy behind your back: pass {what}, or use backend='cpu'")
    if _DEVICE[name] == "host" and on_gpu:
        raise ValueError(f"backend {name!r} runs on host arrays but the inputs are on a CUDA device; use "
                         f"backend='cupy' or 'numba', or move the data to the host first")


def select(name: str | None, on_gpu: bool):
    """The backend module for ``name`` (None: the default for where the data lives)."""
    if name is None:
        name = default(on_gpu)
    elif not isinstance(name, str) or name not in _DEVICE:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(map(repr, BACKENDS))} "
                         f"(or None for the default)")
    check_device(name, on_gpu)
    st = status(name)
    if not st.available:
        raise BackendUnavailable(f"backend {name!r} is not available here: {st.reason}")
    return importlib.import_module(f"parscan.{name}" if _DEVICE[name] == "host" else f"parscan.kernels.{name}_scan")
