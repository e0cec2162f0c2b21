"""Suite ``cpu``: the cpu backend vs NumPy's elementwise multiply of the same arrays, the float64 reference
loop, and ``scipy.signal.lfilter`` for constant decays."""

from __future__ import annotations

import numpy as np

from .. import reference
from ..scan import linear_scan, linear_scan_backward
from ._common import _stats, _wall


def _cpu_shapes(quick):
    log_n = 20 if quick else 24
    chans = [0, 6, 12] if quick else [0, 2, 4, 6, 8, 10, 12, 14, 16]
    return [(2**c, 2 ** (log_n - c), lay) for lay in ("time-contiguous", "channel-contiguous") for c in chans]


def suite_cpu(ctx):
    """Forward pairs are measured round-robin over all shapes (each round times every shape once), so
    a slow phase of a shared machine spreads over every shape instead of sinking one."""
    rows, cases = [], []
    for channels, length, lay in ctx["cpu_shapes"]:
        shape = (channels, length) if lay == "time-contiguous" else (length, channels)
        axis = -1 if lay == "time-contiguous" else 0
        rng = np.random.default_rng(0)
        a = rng.uniform(0.5, 0.999, shape).astype(np.float32)
        x = rng.standard_normal(shape).astype(np.float32)
        out = np.empty_like(x)
        h = linear_scan(a, x, axis=axis, backend="cpu")
        sl = (slice(0, 1), slice(0, 4096)) if axis == -1 else (slice(0, 4096), slice(0, 1))
        if not np.allclose(h[sl], reference.linear_scan(a[sl], x[sl], axis=axis), rtol=1e-4, atol=1e-4):
            raise AssertionError(f"cpu backend disagrees with the reference at {shape} {lay}")
        common = dict(suite="cpu", channels=channels, length=length, layout=lay, dtype="float32")
        bw = _wall(lambda: linear_scan_backward(a, h, x, axis=axis, backend="cpu"), ctx["repeats"])
        s, smin, smax = _stats(bw)
        rows.append(dict(common, name="cpu", direction="backward", ms=s * 1e3, ms_range=[smin * 1e3, smax * 1e3],
                         gbps=20 * x.size / s / 1e9))
        del h
        np.multiply(a, x, out=out)
        linear_scan(a, x, axis=axis, out=out, backend="cpu")
        cases.append((common, a, x, out, axis, [], []))
        ctx["progress"].step(f"cpu {channels} x {length} {lay}")
    for _ in range(ctx["repeats"]):
        for common, a, x, out, axis, mul, scan in cases:
            mul.extend(_wall(lambda: np.multiply(a, x, out=out), 1))  # noqa: B023 - called at once
            scan.extend(_wall(lambda: linear_scan(a, x, axis=axis, out=out, backend="cpu"), 1))  # noqa: B023
    for common, a, x, out, axis, mul, scan in cases:
        pairs = np.array(mul) / np.array(scan)
        s, smin, smax = _stats(scan)
        rows.append(dict(common, name="cpu", direction="forward", ms=s * 1e3, ms_range=[smin * 1e3, smax * 1e3],
                         gbps=12 * x.size / s / 1e9, multiply_gbps=12 * x.size / _stats(mul)[0] / 1e9,
                         ratio=float(np.median(pairs)), ratio_range=[float(pairs.min()), float(pairs.max())]))
    cases.clear()
    # the loop and scipy, on one shape each (the loop is slow: a 2^16-step slice)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 2**16)).astype(np.float32)
    a = rng.uniform(0.5, 0.999, x.shape).astype(np.float32)
    t_ref = _stats(_wall(lambda: reference.linear_scan(a[:4], x[:4]), 1))[0] * 16
    t_cpu = _stats(_wall(lambda: linear_scan(a, x, backend="cpu"), ctx["repeats"]))[0]
    rows.append(dict(suite="cpu", name="reference loop", direction="forward", channels=64, length=2**16,
                     layout="time-contiguous", dtype="float32", ms=t_ref * 1e3, cpu_ms=t_cpu * 1e3,
                     speedup_of_cpu=t_ref / t_cpu))
    try:
        from scipy.signal import lfilter
    except ImportError as exc:
        rows.append(dict(suite="cpu", name="scipy lfilter", skipped=f"scipy not importable ({exc})"))
    else:
        t_lf = _stats(_wall(lambda: lfilter([1.0], [1.0, -0.9], x, axis=-1), ctx["repeats"]))[0]
        t_c = _stats(_wall(lambda: linear_scan(np.float32(0.9), x, backend="cpu"), ctx["repeats"]))[0]
        rows.append(dict(suite="cpu", name="scipy lfilter", direction="forward", channels=64, length=2**16,
                         layout="time-contiguous", dtype="float32", ms=t_lf * 1e3, cpu_ms=t_c * 1e3,
                         speedup_of_cpu=t_lf / t_c))
    ctx["progress"].step("cpu baselines")
    return rows
