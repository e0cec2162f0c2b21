"""Suite ``deer-gpu`` (GPU): the GRU by DEER and quasi-DEER on CuPy arrays against the sequential GRU stepped
by one GPU kernel (issue #8)."""

from __future__ import annotations

import numpy as np

from ._common import _events, _stats


def suite_deer_gpu(ctx):
    """Issue #8's benchmark: a GRU (batch 16, float32) on the GPU by DEER and quasi-DEER (CuPy arrays,
    the default CUDA backend) against the sequential GRU stepped by one GPU kernel
    (``_baselines.gru_sequential_gpu``: the fastest plain sequential evaluation).  A configuration whose
    intermediates do not fit in device memory is listed as skipped, with the error."""
    cp = ctx["cupy"]
    from .. import _baselines, deer

    rows = []
    Ts = (1024, 65536) if ctx["quick"] else (1024, 16384, 131072, 1 << 20)
    ns = (1, 8) if ctx["quick"] else (1, 2, 4, 8, 16, 32, 64)
    ns, Ts, B = ctx.get("deer_sizes", (ns, Ts, 16))  # (tests shrink them)
    reps = 3
    for n in ns:
        for T in Ts:
            cell = deer.GRUCell(1, n)
            p = {k: cp.asarray(v) for k, v in cell.init_params(0, "float32").items()}
            x = cp.asarray(np.random.default_rng(0).standard_normal((T, B, 1)), cp.float32)
            y0 = cp.zeros((B, n), cp.float32)
            want = _baselines.gru_sequential_gpu(p, x, y0)
            t_seq, lo_s, hi_s = _stats(_events(cp, lambda: _baselines.gru_sequential_gpu(p, x, y0), reps))
            loop = {}
            if T <= 16384:  # the cell stepped from Python, one set of CuPy kernels a step (an unfused framework loop)
                t_loop = _stats(_events(cp, lambda: deer.sequential(cell, p, x, y0), 1))[0]
                loop = dict(loop_ms=t_loop * 1e3)
            for method in ("deer", "quasi"):
                row = dict(suite="deer-gpu", name=method, hidden=n, length=T, batch=B, sequential_ms=t_seq * 1e3,
                           sequential_ms_range=[lo_s * 1e3, hi_s * 1e3], **loop)
                solve = lambda: deer.solve(cell, p, x, y0, method=method, max_iter=200)  # noqa: E731
                try:
                    y, info = solve()
                    m, lo, hi = _stats(_events(cp, solve, reps))
                except cp.cuda.memory.OutOfMemoryError as exc:  # the Jacobians of long sequences
                    rows.append(dict(row, skipped=f"out of device memory ({exc})"))
                else:
                    if loop:
                        row["speedup_vs_loop"] = loop["loop_ms"] / (m * 1e3)
                    rows.append(dict(row, ms=m * 1e3, ms_range=[lo * 1e3, hi * 1e3], speedup=t_seq / m,
                                     iterations=info.iterations, converged=info.converged,
                                     max_error=float(cp.abs(y - want).max())))
                    del y
                cp.get_default_memory_pool().free_all_blocks()
            ctx["progress"].step(f"deer-gpu n={n} T={T}")
    return rows
