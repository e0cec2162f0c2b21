"""Suite ``paper`` (GPU): Martin & Cundy's Table 1, the auto-dispatched ``linear_scan`` vs the naive
one-thread-per-channel serial kernel, beside the paper."""

from __future__ import annotations

import os

import numpy as np

from ..scan import linear_scan
from ._common import _events, _stats

PAPER_TABLE1 = {  # (m, T) -> the paper's parallel/serial speedup (Martin & Cundy 2018, Table 1)
    (4, 16): 0.06, (32, 16): 0.06, (128, 16): 0.05, (4, 256): 0.22, (32, 256): 0.22, (128, 256): 0.86,
    (4, 4096): 1.02, (32, 4096): 2.94, (128, 4096): 3.36, (4, 65536): 38.5, (32, 65536): 41.8,
    (128, 65536): 17.5}


def _serial_kernel(cp):
    from ..kernels import cupy_scan

    path = os.path.join(os.path.dirname(cupy_scan.SOURCE), "serial.cu")
    with open(path) as f:
        return cp.RawModule(code=f.read()).get_function("serial_scan_f32")


def suite_paper(ctx):
    cp = ctx["cupy"]
    serial = _serial_kernel(cp)
    rows = []
    Ts = (16, 256, 4096) if ctx["quick"] else (16, 256, 4096, 65536)
    for m in (4, 32, 128):
        for T in Ts:
            x = cp.random.standard_normal((T, m), dtype=cp.float32)  # (T, B=1, m), time-major
            a = cp.random.uniform(0.5, 0.999, (T, m), dtype=cp.float32)
            h = cp.empty_like(x)
            args = (a, x, h, np.int64(m), np.int64(T), np.int64(1), np.int64(m))
            t_ser = _stats(_events(cp, lambda: serial(((m + 127) // 128,), (128,), args), ctx["repeats"]))[0]
            want = h.copy()
            t_par = _stats(_events(cp, lambda: linear_scan(a, x, axis=0), ctx["repeats"]))[0]
            if not cp.allclose(linear_scan(a, x, axis=0), want, rtol=1e-4, atol=1e-4):
                raise AssertionError(f"linear_scan disagrees with the serial kernel at m={m}, T={T}")
            rows.append(dict(suite="paper", name="linear_scan vs serial", m=m, length=T, serial_us=t_ser * 1e6,
                             parallel_us=t_par * 1e6, speedup=t_ser / t_par, paper=PAPER_TABLE1[(m, T)]))
            ctx["progress"].step(f"paper m={m} T={T}")
    return rows
