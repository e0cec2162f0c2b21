"""Suite ``cpu``: the cpu backend vs NumPy's elementwise multiply of the same arrays, the float64 reference
loop, and ``scipy.signal.lfilter`` for constant decays.

Both directions are compared with the multiply's bandwidth measured in the same round:

- forward: ``ratio`` = multiply time / scan time (both move 12 bytes an element in float32);
- backward: ``ratio_20B`` = (multiply time x 20/12) / backward time, i.e. the backward's bandwidth at its
  minimum of 20 bytes an element (reads a, h, grad_h; writes grad_a, grad_x) over the multiply's.  The
  backward is timed as users call it (``linear_scan_backward``, fresh gradient arrays each call).

Target (issue #15): both >= 0.5 at every shape.

Resets (issue #18): at the suite's 64-channel shapes (both layouts) the scan also runs with resets of
shape (T,) (broadcast over the channels), True every 1,024 steps, forward and backward, timed in the same
rounds; ``ratio_vs_plain`` = resets time / plain time of the same round (target <= 1.10).
"""

from __future__ import annotations

import numpy as np

from .. import reference
from ..scan import linear_scan, linear_scan_backward
from ._common import _stats, _wall

FWD_BASIS = "multiply time / scan time"
BWD_BASIS = "multiply time x 20/12 / backward time"
RESETS_BASIS = "time with resets / time without, same round"
RESET_EVERY = 1024
RESET_CHANNELS = 64  # the suite's shapes with this many channels also run with resets


def _cpu_shapes(quick):
    """(channels, length, layout): one 1-D channel, then channels x length in both layouts."""
    log_n = 20 if quick else 24
    chans = [0, 6, 12] if quick else [0, 2, 4, 6, 8, 10, 12, 14, 16]
    return [(1, 2**log_n, "1-D")] + [(2**c, 2 ** (log_n - c), lay) for lay in ("time-contiguous", "channel-contiguous")
                                     for c in chans]


def _layout(channels, length, lay):
    """(shape, axis) of a case."""
    if lay == "1-D":
        return (length,), -1
    if lay == "time-contiguous":
        return (channels, length), -1
    return (length, channels), 0


def _check(a, x, h, axis, lay):
    """Channel 0 against the reference: the forward's first 4096 steps, the backward's last 4096 (its
    gradients there depend on those steps alone; grad_a from the second step, which needs h[t-1])."""
    def chan0(v, sl):
        return v[sl] if lay == "1-D" else (v[0, sl] if axis == -1 else v[sl, 0])

    head, tail = slice(0, 4096), slice(-4096, None)
    if not np.allclose(chan0(h, head), reference.linear_scan(chan0(a, head), chan0(x, head)), rtol=1e-4, atol=1e-4):
        raise AssertionError(f"cpu forward disagrees with the reference at {a.shape} {lay}")
    ga, gx, _ = linear_scan_backward(a, h, x, axis=axis, backend="cpu")
    rga, rgx, _ = reference.linear_scan_backward(chan0(a, tail), chan0(h, tail), chan0(x, tail))
    if not (np.allclose(chan0(gx, tail), rgx, rtol=1e-4, atol=1e-4)
            and np.allclose(chan0(ga, tail)[1:], rga[1:], rtol=1e-4, atol=1e-4)):
        raise AssertionError(f"cpu backward disagrees with the reference at {a.shape} {lay}")


def _check_resets(a, x, h, r, axis, lay):
    """The scan with resets ``r`` (of shape (T,) or (T, 1)), channel 0, as ``_check``."""
    def chan0(v, sl):
        return v[0, sl] if axis == -1 else v[sl, 0]

    flags = r.reshape(-1)
    head, tail = slice(0, 4096), slice(-4096, None)
    want = reference.linear_scan(chan0(a, head), chan0(x, head), resets=flags[head])
    if not np.allclose(chan0(h, head), want, rtol=1e-4, atol=1e-4):
        raise AssertionError(f"cpu forward with resets disagrees with the reference at {a.shape} {lay}")
    ga, gx, _ = linear_scan_backward(a, h, x, axis=axis, backend="cpu", resets=r)
    rga, rgx, _ = reference.linear_scan_backward(chan0(a, tail), chan0(h, tail), chan0(x, tail), resets=flags[tail])
    if not (np.allclose(chan0(gx, tail), rgx, rtol=1e-4, atol=1e-4)
            and np.allclose(chan0(ga, tail)[1:], rga[1:], rtol=1e-4, atol=1e-4)):
        raise AssertionError(f"cpu backward with resets disagrees with the reference at {a.shape} {lay}")


def _resets_rows(common, fwd, bwd, rs):
    """The resets rows of one case: times and the per-round ratios to the plain scan's."""
    rows = []
    for direction, plain, timed in (("forward", fwd, rs["fwd"]), ("backward", bwd, rs["bwd"])):
        pairs = np.array(timed) / np.array(plain)
        s, smin, smax = _stats(timed)
        rows.append(dict(common, name="cpu resets", direction=direction, resets=f"(T,) every {RESET_EVERY}",
                         ms=s * 1e3, ms_range=[smin * 1e3, smax * 1e3], plain_ms=_stats(plain)[0] * 1e3,
                         ratio_vs_plain=float(np.median(pairs)),
                         ratio_vs_plain_range=[float(pairs.min()), float(pairs.max())], ratio_basis=RESETS_BASIS))
    return rows


def _timed_resets(a, x, axis, rs, backward):
    """One timed call (after one warm-up) of the scan with resets: forward into rs["out"], or the backward
    of h = rs["out"] with grad_h = x."""
    r, h = rs["r"], rs["out"]
    if backward:
        return _wall(lambda: linear_scan_backward(a, h, x, axis=axis, backend="cpu", resets=r), 1)
    return _wall(lambda: linear_scan(a, x, axis=axis, out=h, backend="cpu", resets=r), 1)


def suite_cpu(ctx):
    """Measured round-robin over all shapes (each round times every shape once: multiply, forward, backward),
    so a slow phase of a shared machine spreads over every shape instead of sinking one."""
    rows, cases = [], []
    for channels, length, lay in ctx["cpu_shapes"]:
        shape, axis = _layout(channels, length, lay)
        rng = np.random.default_rng(0)
        a = rng.uniform(0.5, 0.999, shape).astype(np.float32)
        x = rng.standard_normal(shape).astype(np.float32)
        out = np.empty_like(x)
        linear_scan(a, x, axis=axis, out=out, backend="cpu")
        _check(a, x, out, axis, lay)
        common = dict(suite="cpu", channels=channels, length=length, layout=lay, dtype="float32")
        rs = None
        if channels == RESET_CHANNELS and lay != "1-D":
            flags = np.zeros(length, bool)
            flags[::RESET_EVERY] = True
            r = flags if axis == -1 else flags[:, None]
            rs = dict(r=r, out=np.empty_like(x), fwd=[], bwd=[])
            linear_scan(a, x, axis=axis, out=rs["out"], backend="cpu", resets=r)
            _check_resets(a, x, rs["out"], r, axis, lay)
        cases.append((common, a, x, out, axis, [], [], [], rs))
        ctx["progress"].step(f"cpu {channels} x {length} {lay}")
    for _ in range(ctx["repeats"]):
        for common, a, x, out, axis, mul, fwd, bwd, rs in cases:
            # out holds h after the forward (same inputs every time): the backward's h; grad_h = x
            mul.extend(_wall(lambda: np.multiply(a, x, out=out), 1))  # noqa: B023 - called at once
            fwd.extend(_wall(lambda: linear_scan(a, x, axis=axis, out=out, backend="cpu"), 1))  # noqa: B023
            if rs is not None:  # the same scan with resets, next to the plain one
                rs["fwd"].extend(_timed_resets(a, x, axis, rs, False))
            bwd.extend(_wall(lambda: linear_scan_backward(a, out, x, axis=axis, backend="cpu"), 1))  # noqa: B023
            if rs is not None:
                rs["bwd"].extend(_timed_resets(a, x, axis, rs, True))
    for common, a, x, out, axis, mul, fwd, bwd, rs in cases:
        m = np.array(mul)
        mul_gbps = 12 * x.size / _stats(mul)[0] / 1e9
        pairs = m / np.array(fwd)
        s, smin, smax = _stats(fwd)
        rows.append(dict(common, name="cpu", direction="forward", ms=s * 1e3, ms_range=[smin * 1e3, smax * 1e3],
                         gbps=12 * x.size / s / 1e9, multiply_gbps=mul_gbps,
                         ratio=float(np.median(pairs)), ratio_range=[float(pairs.min()), float(pairs.max())],
                         ratio_basis=FWD_BASIS))
        pairs = m * (20 / 12) / np.array(bwd)
        s, smin, smax = _stats(bwd)
        rows.append(dict(common, name="cpu", direction="backward", ms=s * 1e3, ms_range=[smin * 1e3, smax * 1e3],
                         gbps=20 * x.size / s / 1e9, multiply_gbps=mul_gbps,
                         ratio_20B=float(np.median(pairs)), ratio_20B_range=[float(pairs.min()), float(pairs.max())],
                         ratio_basis=BWD_BASIS))
        if rs is not None:
            rows.extend(_resets_rows(common, fwd, bwd, rs))
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
