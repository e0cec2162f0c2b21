"""Suite ``deer``: a GRU by the sequential loop, DEER and quasi-DEER on the host."""

from __future__ import annotations

import numpy as np

from ._common import _stats, _wall


def suite_deer(ctx):
    """A GRU (batch 16) by the sequential loop, DEER and quasi-DEER on the host (NumPy + cpu backend)."""
    from .. import deer

    rows = []
    Ts = (1024, 8192) if ctx["quick"] else (1024, 8192, 65536)
    ns = (1, 4) if ctx["quick"] else (1, 4, 16, 32)
    for n in ns:
        for T in Ts:
            cell = deer.GRUCell(1, n)
            p = cell.init_params(0)
            rng = np.random.default_rng(0)
            x, y0 = rng.standard_normal((T, 16, 1)), np.zeros((16, n))
            t_seq = _stats(_wall(lambda: deer.sequential(cell, p, x, y0), 1))[0]
            want = deer.sequential(cell, p, x, y0)
            for method in ("deer", "quasi"):
                deer.solve(cell, p, x[:16], y0, method=method)  # compile the kernels first
                y, info = deer.solve(cell, p, x, y0, method=method)
                t = _stats(_wall(lambda: deer.solve(cell, p, x, y0, method=method), 1 if ctx["quick"] else 3))[0]
                rows.append(dict(suite="deer", name=method, hidden=n, length=T, batch=16, ms=t * 1e3,
                                 sequential_ms=t_seq * 1e3, speedup=t_seq / t, iterations=info.iterations,
                                 converged=info.converged, max_error=float(np.abs(y - want).max())))
            ctx["progress"].step(f"deer n={n} T={T}")
    return rows
