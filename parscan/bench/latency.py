"""Suite ``latency``: what one call costs on a tiny input, where the Python around the kernel is the work.

Rows (float32, a scalar decay, no h0; every figure a median over interleaved calls with its min..max):

- ``cpu`` / ``reference``: ``linear_scan`` and ``linear_scan_backward`` on (16,) and (4, 64), and, for
  the cpu backend, ``ratio`` = the call's time / ``scipy.signal.lfilter``'s on the same input, timed
  call for call in the same loop (the median of the per-pair ratios).  The backward is compared with
  the same single lfilter (it does the forward's work and more).  Targets (issue #15): forward <= 2.5,
  backward <= 4.
- ``torch``: ``parscan.torch.linear_scan`` on CPU tensors without and with a gradient wanted, ``over_plain``
  = its time minus the plain NumPy call's in the same loop (target: a few microseconds).
- ``matrix``, ``gilr-lstm``: ``matrix_linear_scan`` (n = 2, T = 16) and the GILR-LSTM layer's forward and
  backward (T = 16, batch 1, 4 -> 8 units) on the cpu backend, for the record.
- ``cupy`` / ``numba`` (CUDA device): host time of a forward call (no synchronisation in the loop; the
  kernel runs behind), i.e. the Python and launch work a training step pays per scan.
"""

from __future__ import annotations

import time

import numpy as np

from .. import _backends
from ..scan import linear_scan, linear_scan_backward
from ._common import _stats

SHAPES = ((16,), (4, 64))
TARGETS = {"forward": 2.5, "backward": 4.0}


def _interleaved(fns, repeats, warm=50):
    """Seconds per call of each function, called in turn ``repeats`` times (after ``warm`` rounds)."""
    for _ in range(warm):
        for f in fns:
            f()
    ts = [[] for _ in fns]
    clock = time.perf_counter
    for _ in range(repeats):
        for f, t in zip(fns, ts):
            t0 = clock()
            f()
            t.append(clock() - t0)
    return [np.asarray(t) for t in ts]


def _us(t):
    m, lo, hi = _stats(t)
    return dict(us=m * 1e6, us_range=[lo * 1e6, hi * 1e6])


def _ratio(t, base):
    r = t / base
    m, lo, hi = _stats(r)
    return dict(ratio=m, ratio_range=[lo, hi], baseline_us=float(np.median(base)) * 1e6)


def _host_rows(name, repeats):
    try:
        from scipy.signal import lfilter
    except ImportError:  # scipy is in the bench extra; without it the ratios are left out
        lfilter = None
    rows = []
    for shape in SHAPES:
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape).astype(np.float32)
        g = rng.standard_normal(shape).astype(np.float32)
        h = linear_scan(0.9, x, backend=name)
        fwd = lambda: linear_scan(0.9, x, backend=name)  # noqa: E731
        bwd = lambda: linear_scan_backward(0.9, h, g, backend=name)  # noqa: E731
        fns = [fwd, bwd]
        if lfilter is not None:
            b_, a_ = np.array([1.0], np.float32), np.array([1.0, -0.9], np.float32)
            if not np.allclose(lfilter(b_, a_, x, axis=-1), h, rtol=1e-5, atol=1e-5):
                raise AssertionError(f"{name} forward disagrees with lfilter at {shape}")
            fns.append(lambda: lfilter(b_, a_, x, axis=-1))  # noqa: B023 - called at once
        times = _interleaved(fns, repeats)
        for direction, t in zip(("forward", "backward"), times):
            row = dict(suite="latency", name=name, op=direction, shape=" x ".join(map(str, shape)), **_us(t))
            if lfilter is not None and name == "cpu":
                row.update(_ratio(t, times[2]), target=TARGETS[direction])
            rows.append(row)
    return rows


def _torch_rows(repeats):
    try:
        import torch

        from .. import torch as pt
    except ImportError as e:
        return [dict(suite="latency", name="torch", skipped=f"torch is not importable ({e})")]
    rows = []
    x = np.ones(16, np.float32)
    xt, at = torch.ones(16), torch.tensor(0.9)
    xg = torch.ones(16, requires_grad=True)
    plain = lambda: linear_scan(0.9, x)  # noqa: E731
    t_plain, t_op, t_grad = _interleaved([plain, lambda: pt.linear_scan(at, xt), lambda: pt.linear_scan(at, xg)],
                                         repeats)
    for op, t in (("forward", t_op), ("forward, grad wanted", t_grad)):
        over = t - t_plain
        m, lo, hi = _stats(over)
        rows.append(dict(suite="latency", name="torch", op=op, shape="16", **_us(t),
                         over_plain_us=m * 1e6, over_plain_range=[lo * 1e6, hi * 1e6]))
    return rows


def _other_rows(repeats):
    from .. import layers
    from ..matrix import matrix_linear_scan

    rng = np.random.default_rng(0)
    A = (0.5 * rng.standard_normal((16, 2, 2))).astype(np.float32)
    xm = rng.standard_normal((16, 2)).astype(np.float32)
    layer = layers.GILRLSTM(4, 8, seed=0)
    xl = rng.standard_normal((16, 1, 4)).astype(np.float32)
    hl, state, cache = layer.forward(xl)
    gl = np.ones_like(hl)
    t_m, t_lf, t_lb = _interleaved([lambda: matrix_linear_scan(A, xm), lambda: layer.forward(xl),
                                    lambda: layer.backward(gl, cache)], repeats)
    return [dict(suite="latency", name="matrix", op="forward", shape="16 x 2", **_us(t_m)),
            dict(suite="latency", name="gilr-lstm", op="forward", shape="16 x 1 x 4", **_us(t_lf)),
            dict(suite="latency", name="gilr-lstm", op="backward", shape="16 x 1 x 4", **_us(t_lb))]


def _gpu_row(name, repeats):
    import cupy

    x = cupy.ones(16, cupy.float32)
    sync = cupy.cuda.get_current_stream().synchronize
    linear_scan(0.5, x, backend=name)
    sync()
    (t,) = _interleaved([lambda: linear_scan(0.5, x, backend=name)], repeats)
    sync()
    return dict(suite="latency", name=name, op="forward (host time)", shape="16", **_us(t))


def suite_latency(ctx):
    repeats = 300 if ctx["quick"] else 3000
    rows = []
    for name, st in _backends.available_backends().items():
        if not st.available:
            rows.append(dict(suite="latency", name=name, skipped=st.reason))
        elif st.device == "cuda":
            rows.append(_gpu_row(name, repeats))
        else:
            rows.extend(_host_rows(name, repeats if name == "cpu" else repeats // 10))
        ctx["progress"].step(f"latency {name}")
    rows.extend(_torch_rows(repeats))
    rows.extend(_other_rows(repeats // 3))
    ctx["progress"].step("latency torch, matrix, layers")
    return rows
