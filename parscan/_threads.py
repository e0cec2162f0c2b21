"""Numba's threading layers and concurrent calls.

Numba runs ``parallel=True`` kernels on one of three layers, picked at the first parallel launch:
``tbb`` and ``omp`` take launches from many Python threads at once, ``workqueue`` (the fallback where
neither library is installed) aborts the process when two threads launch at the same time.  So the
parallel kernels' launches go through :func:`parallel_launch`: a lock while the layer is unknown (the
first launch picks it) and for good under ``workqueue``; nothing under ``omp`` or ``tbb``.  Asking
which layer runs starts none (so a worker's ``NUMBA_NUM_THREADS``, set before its first launch, still
takes effect).
"""

from __future__ import annotations

import contextlib
import threading

_LOCK = threading.Lock()
_FREE = contextlib.nullcontext()
_LAYER: list = []  # the layer, once started


def parallel_launch():
    """The context to launch a parallel Numba kernel in (see the module docstring)."""
    if _LAYER:
        return _LOCK if _LAYER[0] == "workqueue" else _FREE
    import numba  # noqa: PLC0415

    try:
        _LAYER.append(numba.threading_layer())
    except ValueError:  # no parallel launch yet: this one picks the layer
        return _LOCK
    return parallel_launch()
