"""What the suites share: the progress bar, medians, wall-clock and CUDA-event timing, GPU inputs rotated past
L2, and the device's copy bandwidth."""

from __future__ import annotations

import sys

import numpy as np

from ..demo import _timed as _wall  # noqa: F401 - one warm-up call, then ``repeats`` timed calls


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total, enabled=True, stream=None):
        self.total, self.done, self.enabled = max(1, total), 0, enabled
        self.stream = stream or sys.stderr

    def step(self, label=""):
        self.done += 1
        if self.enabled:
            w = 30
            k = int(w * self.done / self.total)
            print(f"\r[{'#' * k}{'.' * (w - k)}] {self.done}/{self.total} {label[:60]:60s}", end="",
                  file=self.stream, flush=True)

    def close(self):
        if self.enabled:
            print(file=self.stream)


def _stats(times):
    t = np.asarray(times)
    return float(np.median(t)), float(t.min()), float(t.max())


def _events(cp, fn, repeats):
    fn()
    cp.cuda.Device().synchronize()
    out = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        out.append(cp.cuda.get_elapsed_time(start, stop) * 1e-3)
    return out


def copy_bandwidth(cp, repeats):
    """Device-to-device copy bandwidth (bytes read + written per second) of a 1 GiB array."""
    src = cp.random.standard_normal(1 << 28, dtype=cp.float32)
    dst = cp.empty_like(src)
    return 2 * src.nbytes / _stats(_events(cp, lambda: cp.copyto(dst, src), repeats))[0]


def _gpu_inputs(cp, shape, dtype, l2_bytes):
    """Sets of (a, x) to rotate through so that each call reads from DRAM, not L2."""
    one = np.dtype(dtype).itemsize * int(np.prod(shape)) * 2
    sets = max(1, -(-4 * l2_bytes // max(one, 1)))
    out = []
    for k in range(min(sets, 8)):
        rs = cp.random.RandomState(k)
        x = rs.standard_normal(shape).astype(dtype)
        a = rs.uniform(0.5, 0.999, shape).astype(dtype)
        out.append((a, x))
    return out


def _rotating(sets, outs, direction, axis, backend, resets=None):
    """A call of no arguments that scans the next of ``sets`` (inputs rotated past L2) into its ``outs``
    (forward), or runs the backward from that out as h (backward), on ``backend``, with ``resets``."""
    from ..scan import linear_scan, linear_scan_backward

    k = [0]

    def fn():
        i = k[0] % len(sets)
        k[0] += 1
        sa, sx = sets[i]
        if direction == "forward":
            linear_scan(sa, sx, axis=axis, out=outs[i], backend=backend, resets=resets)
        else:
            linear_scan_backward(sa, outs[i], sx, axis=axis, backend=backend, resets=resets)

    return fn
