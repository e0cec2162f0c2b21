"""Suite ``roofline`` (GPU): forward and backward per backend, dtype and layout, as effective GB/s and % of the
device's own copy bandwidth."""

from __future__ import annotations

import numpy as np

from .. import reference
from ..scan import linear_scan
from ._common import _events, _gpu_inputs, _rotating, _stats


def suite_roofline(ctx):
    cp = ctx["cupy"]
    rows = []
    log_n = 22 if ctx["quick"] else 27
    chans = [0, 10] if ctx["quick"] else [0, 3, 7, 10, 14, 17]
    l2 = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["l2CacheSize"]
    for backend in ctx["gpu_backends"]:
        for dtype in ctx["dtypes"]:
            for c in chans:
                for lay in ("time-contiguous", "channel-contiguous"):
                    length = 2 ** (log_n - c) if c < 17 else 2**10
                    shape = (2**c, length) if lay == "time-contiguous" else (length, 2**c)
                    axis = -1 if lay == "time-contiguous" else 0
                    sets = _gpu_inputs(cp, shape, dtype, l2)
                    a, x = sets[0]
                    h = linear_scan(a, x, axis=axis, backend=backend)
                    sl = (slice(0, 1), slice(0, 2048)) if axis == -1 else (slice(0, 2048), slice(0, 1))
                    want = reference.linear_scan(a[sl].get(), x[sl].get(), axis=axis)
                    tol = 5e-3 if dtype == "float16" else 1e-4
                    if not np.allclose(h[sl].get().astype(want.dtype), want, rtol=tol, atol=tol):
                        raise AssertionError(f"{backend} disagrees with the reference at {shape} {lay} {dtype}")
                    item = np.dtype(dtype).itemsize
                    for direction in ("forward", "backward"):
                        outs = [cp.empty_like(x) for _ in sets]
                        fn = _rotating(sets, outs, direction, axis, backend)
                        m, lo, hi = _stats(_events(cp, fn, ctx["repeats"]))
                        nbytes = (3 if direction == "forward" else 5) * item * x.size
                        rows.append(dict(suite="roofline", name=backend, direction=direction, dtype=dtype,
                                         channels=2**c, length=length, layout=lay, ms=m * 1e3,
                                         ms_range=[lo * 1e3, hi * 1e3], gbps=nbytes / m / 1e9,
                                         of_copy=nbytes / m / ctx["copy"]))
                    ctx["progress"].step(f"roofline {backend} {dtype} {2**c} x {length} {lay}")
    return rows
