"""Suite ``latency``: the Python overhead of one call on a tiny input, per available backend."""

from __future__ import annotations

import time

import numpy as np

from .. import _backends
from ..scan import linear_scan
from ._common import _stats


def suite_latency(ctx):
    rows = []
    for name, st in _backends.available_backends().items():
        if not st.available:
            rows.append(dict(suite="latency", name=name, skipped=st.reason))
            continue
        if st.device == "cuda":
            import cupy

            x = cupy.ones(16, cupy.float32)
            sync = cupy.cuda.get_current_stream().synchronize
        else:
            x, sync = np.ones(16, np.float32), (lambda: None)
        linear_scan(0.5, x, backend=name)
        sync()
        ts = []
        for _ in range(200):
            t0 = time.perf_counter()
            linear_scan(0.5, x, backend=name)
            ts.append(time.perf_counter() - t0)
        sync()
        m, lo, hi = _stats(ts)
        rows.append(dict(suite="latency", name=name, us=m * 1e6, us_range=[lo * 1e6, hi * 1e6]))
        ctx["progress"].step(f"latency {name}")
    return rows
