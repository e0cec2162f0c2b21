"""GPU benchmark (issue #3's first script; the full harness is issue #5): every CUDA backend against
the device's own device-to-device copy bandwidth, measured in the same run.

Bytes counted: forward 12 per float32 element (read a, x; write h), backward 20 (read a, h, grad_h;
write grad_a, grad_x).  CUDA events, warm-up, median and min..max over repeats; inputs are checked
against the reference on a slice before timing.

    python benchmarks/gpu_bench.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import parscan
from parscan import reference


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
    src = cp.random.standard_normal(1 << 28, dtype=cp.float32)
    dst = cp.empty_like(src)
    ts = _events(cp, lambda: cp.copyto(dst, src), repeats)
    return 2 * src.nbytes / float(np.median(ts))


def measure(cp, backend, channels, length, layout, repeats, backward):
    shape = (channels, length) if layout == "time-contiguous" else (length, channels)
    axis = -1 if layout == "time-contiguous" else 0
    a = cp.random.uniform(0.5, 0.999, shape, dtype=cp.float32)
    x = cp.random.standard_normal(shape, dtype=cp.float32)
    h = parscan.linear_scan(a, x, axis=axis, backend=backend)
    sl = (slice(0, 1), slice(0, 4096)) if axis == -1 else (slice(0, 4096), slice(0, 1))
    want = reference.linear_scan(a[sl].get(), x[sl].get(), axis=axis)
    if not np.allclose(h[sl].get(), want, rtol=1e-4, atol=1e-4):
        raise AssertionError(f"{backend} disagrees with the reference at {shape} {layout}")
    if backward:
        fn = lambda: parscan.linear_scan_backward(a, h, x, axis=axis, backend=backend)  # noqa: E731
    else:
        out = cp.empty_like(x)
        fn = lambda: parscan.linear_scan(a, x, axis=axis, out=out, backend=backend)  # noqa: E731
    ts = _events(cp, fn, repeats)
    nbytes = (20 if backward else 12) * x.size
    med = float(np.median(ts))
    return dict(backend=backend, channels=channels, length=length, layout=layout,
                direction="backward" if backward else "forward", ms=med * 1e3,
                ms_range=[min(ts) * 1e3, max(ts) * 1e3], gbps=nbytes / med / 1e9)


def latency(cp, backend, repeats=200):
    x = cp.ones(16, cp.float32)
    parscan.linear_scan(0.5, x, backend=backend)
    cp.cuda.Device().synchronize()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        parscan.linear_scan(0.5, x, backend=backend)
        ts.append(time.perf_counter() - t0)
    cp.cuda.Device().synchronize()
    return float(np.median(ts)) * 1e6


def main(argv=None):
    import cupy as cp

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--backends", default="cupy,numba")
    args = p.parse_args(argv)
    log_n = 22 if args.quick else 26
    chans = [0, 8, 16] if args.quick else [0, 2, 4, 6, 8, 10, 12, 14, 16]
    copy = copy_bandwidth(cp, args.repeats)
    print(f"device-to-device copy: {copy / 1e9:.0f} GB/s (read + write)", flush=True)
    rows, lat = [], {}
    for backend in args.backends.split(","):
        lat[backend] = latency(cp, backend)
        print(f"{backend}: Python overhead of a tiny call {lat[backend]:.1f} us", flush=True)
        for layout in ("time-contiguous", "channel-contiguous"):
            for lc in chans:
                for backward in (False, True):
                    r = measure(cp, backend, 2**lc, 2 ** (log_n - lc), layout, args.repeats, backward)
                    r["of_copy"] = r["gbps"] * 1e9 / copy
                    rows.append(r)
                    print(f"{backend:6s} {layout:18s} {r['direction']:8s} {r['channels']:6d} x {r['length']:9d}"
                          f"  {r['ms']:8.3f} ms  {r['gbps']:7.1f} GB/s  {100 * r['of_copy']:5.1f}% of copy",
                          flush=True)
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    meta = dict(device=props["name"].decode(), driver=cp.cuda.runtime.driverGetVersion(),
                runtime=cp.cuda.runtime.runtimeGetVersion(), cupy=cp.__version__, parscan=parscan.__version__,
                copy_gbps=copy / 1e9, latency_us=lat, quick=args.quick, date=time.strftime("%Y-%m-%d"))
    os.makedirs(args.out, exist_ok=True)
    tag = "gpu-quick" if args.quick else "gpu"
    with open(os.path.join(args.out, f"{tag}.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    lines = [f"# GPU scans vs device copy bandwidth ({meta['device']}, {meta['date']})", "",
             f"Copy bandwidth {copy / 1e9:.0f} GB/s (read + write). Python overhead of a tiny call: "
             + ", ".join(f"{k} {v:.1f} us" for k, v in lat.items()), "",
             "| backend | layout | direction | channels x T | ms (min..max) | GB/s | % of copy |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['layout']} | {r['direction']} | {r['channels']} x {r['length']} | "
                     f"{r['ms']:.3f} ({r['ms_range'][0]:.3f}..{r['ms_range'][1]:.3f}) | {r['gbps']:.0f} | "
                     f"{100 * r['of_copy']:.1f} |")
    with open(os.path.join(args.out, f"{tag}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
