"""The backend registry: names, where each runs, whether it works here and why not.

A backend is a module with ``forward(ScanProblem)`` and ``backward(ScanBackwardProblem)``; it knows
nothing of axes, frameworks or user-facing errors.  ``device`` says which arrays it takes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend works here; ``reason`` says why not (empty when available)."""

    name: str
    device: str  # "host" or "cuda"
    available: bool
    reason: str = ""

    def __str__(self):
        return f"{self.name} ({self.device}): " + ("available" if self.available else self.reason)


_DEVICE = {"cupy": "cuda", "numba": "cuda", "cpu": "host", "reference": "host"}
BACKENDS = tuple(_DEVICE)


def _cuda_reason() -> str:
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the machine
        return f"CuPy is not installed ({exc}); install parscan[cuda13] or parscan[cuda12]"
    try:
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return ""
    except Exception as exc:  # noqa: BLE001 - any driver/runtime failure means "no GPU here"
        return f"no usable CUDA device ({type(exc).__name__}: {exc})"
    return "no CUDA device"


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


def select(name: str | None, on_gpu: bool):
    """The backend module for ``name`` (None: the default for where the data lives)."""
    if name is None:
        name = "cupy" if on_gpu else "cpu"
    elif not isinstance(name, str) or name not in _DEVICE:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(map(repr, BACKENDS))} "
                         f"(or None for the default)")
    dev = _DEVICE[name]
    if dev == "cuda" and not on_gpu:
        raise ValueError(f"backend {name!r} runs on CUDA arrays but the inputs are in host memory; parscan "
                         f"does not copy behind your back: pass CuPy (or other CUDA) arrays, or use "
                         f"backend='cpu'")
    if dev == "host" and on_gpu:
        raise ValueError(f"backend {name!r} runs on host arrays but the inputs are on a CUDA device; use "
                         f"backend='cupy' or 'numba', or move the data to the host first")
    st = status(name)
    if not st.available:
        raise BackendUnavailable(f"backend {name!r} is not available here: {st.reason}")
    return importlib.import_module(f"parscan.{name}" if dev == "host" else f"parscan.kernels.{name}_scan")
