"""Suite ``roofline`` (GPU): forward and backward per backend, dtype and layout, as effective GB/s and % of the
device's own copy bandwidth.

Resets (issue #18): at the shapes with :data:`RESET_CHANNELS` channels (both layouts) the scan also runs with
resets of shape (T,) ((T, 1) channel-contiguous: broadcast over the channels), True every
:data:`RESET_EVERY` steps, forward and backward, timed in the same rounds as the same scan without them;
``ratio_vs_plain`` = resets time / plain time of the same round (target <= 1.10).
"""

from __future__ import annotations

import numpy as np

from .. import reference
from ..scan import linear_scan, linear_scan_backward
from ._common import _events, _gpu_inputs, _rotating, _stats

RESETS_BASIS = "time with resets / time without, same round"
RESET_EVERY = 1024
RESET_CHANNELS = 2**10  # the suite's shapes with this many channels also run with resets


def _roofline_shapes(quick):
    """(channels, length, layout) of every case: 2^27 elements (2^22 quick), channels x length in both layouts."""
    log_n = 22 if quick else 27
    chans = [0, 10] if quick else [0, 3, 7, 10, 14, 17]
    return [(2**c, 2 ** (log_n - c) if c < 17 else 2**10, lay) for c in chans
            for lay in ("time-contiguous", "channel-contiguous")]


def _check_resets(cp, backend, a, x, r, axis, tol):
    """Channel 0 with resets against the reference: the forward's first 4096 steps, the backward's last
    4096 (its gradients there depend on those steps alone)."""
    chan0 = (lambda v, sl: v[0, sl]) if axis == -1 else (lambda v, sl: v[sl, 0])
    flags = cp.asnumpy(r).reshape(-1)
    head, tail = slice(0, 4096), slice(-4096, None)
    h = linear_scan(a, x, axis=axis, backend=backend, resets=r)
    want = reference.linear_scan(cp.asnumpy(chan0(a, head)), cp.asnumpy(chan0(x, head)), resets=flags[head])
    ga, gx, _ = linear_scan_backward(a, h, x, axis=axis, backend=backend, resets=r)
    wa, wx, _ = reference.linear_scan_backward(cp.asnumpy(chan0(a, tail)), cp.asnumpy(chan0(h, tail)),
                                               cp.asnumpy(chan0(x, tail)), resets=flags[tail])
    got = [cp.asnumpy(chan0(h, head)), cp.asnumpy(chan0(gx, tail)), cp.asnumpy(chan0(ga, tail))[1:]]
    for g, w in zip(got, (want, wx, wa[1:])):
        if not np.allclose(g.astype(w.dtype), w, rtol=tol, atol=tol):
            raise AssertionError(f"{backend} with resets disagrees with the reference at {x.shape} axis {axis}")


def _resets_rows(cp, ctx, common, backend, sets, axis, nbytes):
    """The resets rows of one case (``common(name, direction)``: the row's leading fields): the plain
    scan and the scan with resets timed alternately (one call each a round), and their per-round ratio."""
    a, x = sets[0]
    T = x.shape[axis]
    flags = np.zeros(T, bool)
    flags[::RESET_EVERY] = True
    r = cp.asarray(flags if axis == -1 else flags[:, None])
    _check_resets(cp, backend, a, x, r, axis, 5e-3 if x.dtype == np.float16 else 1e-4)
    rows = []
    for direction in ("forward", "backward"):
        outs = [cp.empty_like(x) for _ in sets]
        for (sa, sx), o in zip(sets, outs):  # outs hold h: the backward's input
            linear_scan(sa, sx, axis=axis, out=o, backend=backend)
        plain = _rotating(sets, outs, direction, axis, backend)
        with_r = _rotating(sets, [cp.empty_like(x) for _ in sets] if direction == "forward" else outs,
                           direction, axis, backend, resets=r)
        tp, tr = [], []
        for _ in range(ctx["repeats"]):
            tp += _events(cp, plain, 1)
            tr += _events(cp, with_r, 1)
        pairs = np.array(tr) / np.array(tp)
        m, lo, hi = _stats(tr)
        rows.append(dict(common(f"{backend} resets", direction), resets=f"(T,) every {RESET_EVERY}", ms=m * 1e3,
                         ms_range=[lo * 1e3, hi * 1e3], plain_ms=_stats(tp)[0] * 1e3,
                         gbps=nbytes[direction] / m / 1e9, of_copy=nbytes[direction] / m / ctx["copy"],
                         ratio_vs_plain=float(np.median(pairs)),
                         ratio_vs_plain_range=[float(pairs.min()), float(pairs.max())], ratio_basis=RESETS_BASIS))
    return rows


def suite_roofline(ctx):
    cp = ctx["cupy"]
    rows = []
    l2 = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["l2CacheSize"]
    for backend in ctx["gpu_backends"]:
        for dtype in ctx["dtypes"]:
            for channels, length, lay in _roofline_shapes(ctx["quick"]):
                shape = (channels, length) if lay == "time-contiguous" else (length, channels)
                axis = -1 if lay == "time-contiguous" else 0
                sets = _gpu_inputs(cp, shape, dtype, l2)
                a, x = sets[0]
                h = linear_scan(a, x, axis=axis, backend=backend)
                sl = (slice(0, 1), slice(0, 2048)) if axis == -1 else (slice(0, 2048), slice(0, 1))
                want = reference.linear_scan(cp.asnumpy(a[sl]), cp.asnumpy(x[sl]), axis=axis)
                tol = 5e-3 if dtype == "float16" else 1e-4
                if not np.allclose(cp.asnumpy(h[sl]).astype(want.dtype), want, rtol=tol, atol=tol):
                    raise AssertionError(f"{backend} disagrees with the reference at {shape} {lay} {dtype}")
                item = np.dtype(dtype).itemsize
                nbytes = {"forward": 3 * item * x.size, "backward": 5 * item * x.size}

                def common(name, direction, dtype=dtype, channels=channels, length=length, lay=lay):
                    return dict(suite="roofline", name=name, direction=direction, dtype=dtype, channels=channels,
                                length=length, layout=lay)

                for direction in ("forward", "backward"):
                    outs = [cp.empty_like(x) for _ in sets]
                    fn = _rotating(sets, outs, direction, axis, backend)
                    m, lo, hi = _stats(_events(cp, fn, ctx["repeats"]))
                    rows.append(dict(common(backend, direction), ms=m * 1e3, ms_range=[lo * 1e3, hi * 1e3],
                                     gbps=nbytes[direction] / m / 1e9, of_copy=nbytes[direction] / m / ctx["copy"]))
                if channels == RESET_CHANNELS:
                    rows += _resets_rows(cp, ctx, common, backend, sets, axis, nbytes)
                ctx["progress"].step(f"roofline {backend} {dtype} {channels} x {length} {lay}")
    return rows
