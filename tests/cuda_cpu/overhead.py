"""The host work of a GPU call with the kernel launch a no-op (issue #15), on a machine without a GPU.

``python -m tests.cuda_cpu.overhead [--out DIR]`` runs ``linear_scan`` and ``linear_scan_backward`` on
16-element float32 "device" arrays of the CPU harness's stand-in ``cupy`` (``fake_cupy``) through the
``cupy`` and ``numba`` backends, as a training step calls them: the first call of each is run for real
(the CUDA C kernels on the CPU for ``cupy``) and checked against the reference; then the launches are
replaced by no-ops that count themselves (``RawKernel.__call__``; for ``numba``, ``numba_scan._launch``,
so the stream lookup and Numba's own kernel dispatch are not in the figure) and the stand-in's allocations by plain NumPy
ones (its own aligned, poisoned allocations cost ~6 us each, CuPy's pool about 1 us), and the call is
timed: a median over 3,000 calls with its min..max, the median time inside the stand-in's array
constructors, and the median of the rest (parscan's own Python, and the stand-in's views, each of which
runs a Python hook that CuPy's views do not).  Also reported, per call: the launches and the
allocations of device memory (and how many of them are zeroed, i.e. a memset on a device).

What this leaves out, and a device adds: CuPy's or Numba's per-argument launch marshalling, the
pool allocations and memsets themselves, and CUDA's launch latency.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time

import numpy as np

from . import fake_cupy, installed

REPEATS = 3000


def _timed(fn, counts, repeats=REPEATS):
    """Per call (us): the time, and the part of it spent in the stand-in's array constructors."""
    for _ in range(200):
        fn()
    ts, inner = [], []
    for _ in range(repeats):
        s0 = counts["stand_in_s"]
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
        inner.append(counts["stand_in_s"] - s0)
    return np.asarray(ts) * 1e6, np.asarray(inner) * 1e6


@contextlib.contextmanager
def _no_op_launches(cp):
    """Launches counted, not run; the stand-in's array constructors (``empty``, ``zeros``, ``full``) as
    cheap as NumPy's, counted (zeroed ones apart) and timed (``counts["stand_in_s"]``)."""
    from parscan import _backends
    from parscan.kernels import numba_scan

    counts = dict(launches=0, allocations=0, zeroed=0, stand_in_s=0.0)
    clock = time.perf_counter

    def launch(self, *args, **kwargs):
        counts["launches"] += 1

    def numba_launch(dev, kernel, blocks, threads, *args):  # numba_scan._launch: stream and dispatch
        counts["launches"] += 1

    def constructor(fill):
        def make(shape, dtype=float, *rest, **kw):
            t0 = clock()
            counts["allocations"] += 1
            counts["zeroed"] += fill == 0
            arr = (np.zeros(shape, dtype) if fill == 0 else np.empty(shape, dtype)).view(fake_cupy.ndarray)
            if fill not in (0, None):
                arr[...] = rest[0] if rest else kw["fill_value"]
            lo = arr.__array_interface__["data"][0]
            arr.extent = (lo, lo + arr.nbytes)
            counts["stand_in_s"] += clock() - t0
            return arr
        return make

    saved = (fake_cupy.RawKernel.__call__, numba_scan._launch, _backends._numba_cuda_reason, cp.empty, cp.zeros,
             cp.__dict__.get("full"))
    fake_cupy.RawKernel.__call__ = launch
    cp.empty, cp.zeros = constructor(None), constructor(0)
    full = constructor(1)
    cp.full = lambda shape, fill_value, dtype=None: full(shape, dtype, fill_value)
    _backends._numba_cuda_reason = lambda: ""  # numba-cuda's kernels are never launched here
    _backends.status.cache_clear()
    numba_scan._launch = numba_launch  # no Numba CUDA context here: no stream, no dispatch
    try:
        yield counts
    finally:
        (fake_cupy.RawKernel.__call__, numba_scan._launch, _backends._numba_cuda_reason, cp.empty, cp.zeros,
         full_) = saved
        if full_ is None:
            del cp.full
        else:
            cp.full = full_
        _backends.status.cache_clear()


def measure(repeats=REPEATS):
    import parscan
    from parscan import reference

    rows = []
    with installed() as cp:
        xh = np.random.default_rng(0).standard_normal(16).astype(np.float32)
        x, g = cp.asarray(xh), cp.asarray(xh[::-1].copy())
        h = parscan.linear_scan(0.9, x, backend="cupy")  # for real: the kernels on the CPU
        np.testing.assert_allclose(np.asarray(h), reference.linear_scan(0.9, xh), rtol=1e-5, atol=1e-6)
        parscan.linear_scan_backward(0.9, h, g, backend="cupy")
        with _no_op_launches(cp) as counts:
            for backend in ("cupy", "numba"):
                calls = {"forward": lambda: parscan.linear_scan(0.9, x, backend=backend),  # noqa: B023
                         "backward": lambda: parscan.linear_scan_backward(0.9, h, g, backend=backend)}  # noqa: B023
                for op, fn in calls.items():
                    fn()
                    before = dict(counts)
                    fn()
                    per_call = {k: counts[k] - before[k] for k in ("launches", "allocations", "zeroed")}
                    t, inner = _timed(fn, counts, repeats)
                    rows.append(dict(backend=backend, op=op, shape="16", dtype="float32", us=float(np.median(t)),
                                     us_range=[float(t.min()), float(t.max())], stand_in_us=float(np.median(inner)),
                                     own_us=float(np.median(t - inner)), target_us=10.0, **per_call))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="write overhead.json and overhead.md here")
    p.add_argument("--repeats", type=int, default=REPEATS)
    args = p.parse_args(argv)
    rows = measure(args.repeats)
    lines = ["| backend | op | us (median) | min..max | in the stand-in's constructors | the rest "
             "| launches | device allocations (zeroed) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['op']} | {r['us']:.2f} | {r['us_range'][0]:.2f}..{r['us_range'][1]:.1f} "
                     f"| {r['stand_in_us']:.2f} | {r['own_us']:.2f} | {r['launches']} | {r['allocations']} "
                     f"({r['zeroed']}) |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "overhead.json"), "w") as f:
            json.dump(dict(machine=platform.platform(), cpus=os.cpu_count(), rows=rows), f, indent=1)
        with open(os.path.join(args.out, "overhead.md"), "w") as f:
            f.write("# Host work of a GPU call, launch a no-op (tests/cuda_cpu/overhead.py)\n\n"
                    "16-element float32, scalar decay, cached plan; stand-in cupy arrays on the CPU. See the "
                    "module docstring for what is and is not in these figures.\n\n" + table + "\n")


if __name__ == "__main__":
    main()
