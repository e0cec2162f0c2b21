"""``parscan demo``: one scan on the best backend here, checked, timed and compared with the loop."""

from __future__ import annotations

import sys
import time

import numpy as np

from . import _backends, reference
from .scan import linear_scan


def best_backend() -> str:
    """The fastest backend that works here: a CUDA one when there is a GPU, else cpu (reference, the
    plain float64 loop, only when Numba is missing)."""
    st = _backends.available_backends()
    return next(n for n in ("cupy", "numba", "cpu", "reference") if st[n].available)


def _flush(echo):
    if echo is print:
        sys.stdout.flush()


def _timed(fn, repeats, sync=lambda: None):
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return np.array(times)


def run(channels=64, length=2**18, dtype="float32", backend=None, repeats=7, check_channels=2, echo=print):
    """Run the demo; returns a dict of what it printed.  ``channels``, ``length`` and ``repeats`` must be
    >= 1; the backend must be available here (``BackendUnavailable`` otherwise, saying why).

    The sequential loop it compares with runs in the data's dtype, except float16: Numba has no float16
    arithmetic on the CPU, so that loop runs on float32 copies (the scans accumulate float16 in
    float32 too)."""
    for name, v in (("channels", channels), ("length", length), ("repeats", repeats)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    backend = backend or best_backend()
    on_gpu = _backends.status(backend).device == "cuda"
    _backends.select(backend, on_gpu)  # BackendUnavailable, saying why, when it cannot run here
    rng = np.random.default_rng(0)
    a_host = rng.uniform(0.5, 0.999, (channels, length)).astype(dtype)
    x_host = rng.standard_normal((channels, length)).astype(dtype)
    sync = lambda: None  # noqa: E731
    if on_gpu:
        import cupy

        a, x = cupy.asarray(a_host), cupy.asarray(x_host)
        sync = cupy.cuda.get_current_stream().synchronize
    else:
        a, x = a_host, x_host
    echo("parscan demo: linear_scan h[t] = a[t]*h[t-1] + x[t]")
    if backend != "reference":
        echo(f"  warm-up    the first call compiles the {backend} backend's kernels unless they are cached ...")
        _flush(echo)
    out = linear_scan(a, x, backend=backend)
    times = _timed(lambda: linear_scan(a, x, out=out, backend=backend), repeats, sync)
    h = out.get() if on_gpu else out
    k = min(check_channels, channels)
    ref = reference.linear_scan(a_host[:k], x_host[:k])
    err = float(np.max(np.abs(h[:k] - ref)) / max(1.0, float(np.max(np.abs(ref)))))

    from ._baselines import serial_scan

    loop_dtype = np.float32 if a_host.dtype == np.float16 else a_host.dtype  # Numba: no float16 on the CPU
    a_loop, x_loop = a_host.astype(loop_dtype, copy=False), x_host.astype(loop_dtype, copy=False)
    serial_out = np.empty_like(x_loop)
    serial = _timed(lambda: serial_scan(a_loop, x_loop, serial_out), max(1, repeats // 2))
    n = channels * length
    med = float(np.median(times))
    nbytes = a_host.nbytes + x_host.nbytes + h.nbytes
    res = dict(backend=backend, shape=(channels, length), dtype=dtype, seconds=med,
               spread=(float(times.min()), float(times.max())), elements_per_s=n / med,
               gbytes_per_s=nbytes / med / 1e9, speedup_vs_serial=float(np.median(serial)) / med,
               max_rel_error=err)
    echo(f"  shape      {channels} channels x {length} steps ({n:,} elements), {dtype}")
    echo(f"  backend    {backend}")
    echo(f"  time       {med * 1e3:.3g} ms median of {repeats} (min {times.min() * 1e3:.3g}, "
         f"max {times.max() * 1e3:.3g})")
    echo(f"  throughput {n / med / 1e9:.2f} Gelem/s, {res['gbytes_per_s']:.1f} GB/s effective "
         f"(a, x read + h written)")
    echo(f"  speedup    {res['speedup_vs_serial']:.2g}x over the sequential loop (compiled, one core, "
         f"{'in float32, ' if loop_dtype != a_host.dtype else ''}{np.median(serial) * 1e3:.3g} ms)")
    echo(f"  check      max error vs the float64 reference on {k} channel(s): {err:.2e} (relative)")
    return res
