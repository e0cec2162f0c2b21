"""The CUDA C kernels on the CPU (test-only machinery).

``parscan/kernels/scan.cu`` is compiled by the host C++ compiler with ``cuda_host.h`` (the CUDA
built-ins parscan uses) and ``runtime.cpp`` (CUDA's execution model: every CUDA thread a fiber,
``__syncthreads`` a barrier over the block, ``__shared__`` one object per block, blocks started in a
given order with several in flight).  :func:`installed` puts a stand-in ``cupy`` module
(``fake_cupy``) in ``sys.modules``: parscan's CuPy backend then runs unchanged, from the public call
through planning and ``cupy_scan``'s own launch code to ``RawModule.get_function(name)(grid, block,
args)``, and the stand-in checks every argument against the compiled kernel's parameter types before
it runs the kernel on NumPy memory.

Every load and store the kernels make goes through a hook (GCC's kernel-address instrumentation in
call mode): an access outside the allocations of the launch's arguments fails the launch (a
memcheck), and with ``Schedule(record=True)`` each global access is logged for the traffic model
(``traffic.py``).

What it cannot show: the GPU's weaker memory ordering (accesses here are sequentially consistent),
warp-level timing, or speed.
"""

from __future__ import annotations

import contextlib
import sys

from . import fake_cupy
from .fake_cupy import Schedule, launches

__all__ = ["installed", "scheduled", "Schedule", "launches", "fake_cupy"]


@contextlib.contextmanager
def installed():
    """``sys.modules["cupy"]`` is the stand-in inside the block (parscan's caches reset around it)."""
    from parscan import _backends, _plans, _problem
    from parscan.kernels import cupy_scan

    saved = sys.modules.get("cupy")
    cp = fake_cupy.module()
    sys.modules["cupy"] = cp
    caches = (_backends.status.cache_clear, cupy_scan._module.cache_clear, cupy_scan._DUMMIES.clear,
              _problem._DEVICE_SCALARS.clear, _plans.clear)
    for clear in caches:
        clear()
    launches().clear()
    try:
        yield cp
    finally:
        if saved is None:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = saved
        for clear in caches:
            clear()


@contextlib.contextmanager
def scheduled(**kw):
    """Launches inside the block run with ``Schedule(**kw)``."""
    old = fake_cupy.schedule()
    fake_cupy._state.schedule = Schedule(**kw)
    try:
        yield fake_cupy._state.schedule
    finally:
        fake_cupy._state.schedule = old
