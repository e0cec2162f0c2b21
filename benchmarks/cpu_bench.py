"""CPU benchmark: the cpu backend against NumPy's elementwise multiply of the same arrays.

Both move the same bytes (read a and x, write the result), so ``multiply time / scan time`` is the
fraction of the machine's practical memory bandwidth the scan reaches.  The two are timed alternately
in one run, on the same arrays; the ratio reported is the median over the (multiply, scan) pairs, so
that a noisy neighbour slowing one pair does not skew it, with its min..max beside the medians of the
times and the min..max of the scan time.  Targets (issue #2):
>= 0.5 for every shape from 1 x 2^24 to 2^16 x 2^8 in both layouts, >= 0.8 with >= 64 channels.

    python benchmarks/cpu_bench.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numba
import numpy as np

import parscan
from parscan import reference


def _time(fn, repeats):
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure(channels, length, layout, dtype, repeats, backward=False):
    rng = np.random.default_rng(0)
    shape = (channels, length) if layout == "time-contiguous" else (length, channels)
    axis = -1 if layout == "time-contiguous" else 0
    a = rng.uniform(0.5, 0.999, shape).astype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    out = np.empty_like(x)
    h = parscan.linear_scan(a, x, axis=axis, backend="cpu")
    # correctness first: the first channel's first 4096 steps against the float64 loop
    ch = (slice(0, 1), slice(0, 4096)) if axis == -1 else (slice(0, 4096), slice(0, 1))
    ok = np.allclose(h[ch], reference.linear_scan(a[ch], x[ch], axis=axis), rtol=1e-4, atol=1e-4)
    if not ok:
        raise AssertionError(f"cpu backend disagrees with the reference at {shape} {layout}")
    mul, scan = [], []
    for _ in range(repeats):  # alternate so that both see the same machine state
        mul += _time(lambda: np.multiply(a, x, out=out), 1)
        if backward:
            scan += _time(lambda: parscan.linear_scan_backward(a, h, x, axis=axis, backend="cpu"), 1)
        else:
            scan += _time(lambda: parscan.linear_scan(a, x, axis=axis, out=out, backend="cpu"), 1)
    m, s = float(np.median(mul)), float(np.median(scan))
    pairs = np.array(mul) / np.array(scan)
    nbytes = 3 * x.nbytes if not backward else 5 * x.nbytes
    return dict(channels=channels, length=length, layout=layout, dtype=dtype, direction="backward" if backward else "forward",
                scan_ms=s * 1e3, scan_ms_range=[min(scan) * 1e3, max(scan) * 1e3], multiply_ms=m * 1e3,
                scan_gbps=nbytes / s / 1e9, multiply_gbps=3 * x.nbytes / m / 1e9,
                ratio=float(np.median(pairs)) if not backward else None,
                ratio_range=[float(pairs.min()), float(pairs.max())] if not backward else None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2^20 elements, three shapes (seconds)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    log_n = 20 if args.quick else 24
    chans = [0, 6, 12] if args.quick else [0, 2, 4, 6, 8, 10, 12, 14, 16]
    rows = []
    for layout in ("time-contiguous", "channel-contiguous"):
        for lc in chans:
            for backward in (False, True):
                r = measure(2**lc, 2 ** (log_n - lc), layout, "float32", 3 if args.quick else args.repeats, backward)
                rows.append(r)
                extra = f"  ratio {r['ratio']:.2f}" if r["ratio"] is not None else ""
                print(f"{layout:18s} {r['direction']:8s} {r['channels']:6d} x {r['length']:9d}  "
                      f"{r['scan_ms']:8.2f} ms  {r['scan_gbps']:6.1f} GB/s  (multiply {r['multiply_gbps']:.1f} GB/s){extra}",
                      flush=True)
    meta = dict(machine=platform.machine(), processor=platform.processor(), cpus=os.cpu_count(),
                numba_threads=numba.get_num_threads(), numpy=np.__version__, numba=numba.__version__,
                parscan=parscan.__version__, python=platform.python_version(), quick=args.quick,
                date=time.strftime("%Y-%m-%d"))
    os.makedirs(args.out, exist_ok=True)
    tag = "cpu-quick" if args.quick else "cpu"
    with open(os.path.join(args.out, f"{tag}.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    fwd = [r for r in rows if r["direction"] == "forward"]
    worst = min(r["ratio"] for r in fwd)
    worst64 = min((r["ratio"] for r in fwd if r["channels"] >= 64), default=float("nan"))
    lines = [f"# cpu backend vs NumPy multiply ({meta['cpus']} CPUs, {meta['numba_threads']} Numba threads, "
             f"float32, {meta['date']})", "",
             "Ratio = NumPy multiply time / scan time on the same arrays (both read a, x and write one array), "
             "the median over alternating (multiply, scan) pairs with its min..max; times are medians with the "
             "min..max of the scan time.", "",
             "| layout | direction | channels x T | scan ms (min..max) | scan GB/s | multiply GB/s | ratio (min..max) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ratio = (f"{r['ratio']:.2f} ({r['ratio_range'][0]:.2f}..{r['ratio_range'][1]:.2f})"
                 if r["ratio"] is not None else "-")
        lines.append(f"| {r['layout']} | {r['direction']} | {r['channels']} x {r['length']} | {r['scan_ms']:.2f} "
                     f"({r['scan_ms_range'][0]:.2f}..{r['scan_ms_range'][1]:.2f}) | {r['scan_gbps']:.1f} | "
                     f"{r['multiply_gbps']:.1f} | {ratio} |")
    lines += ["", f"Worst forward ratio: {worst:.2f} (target >= 0.5); with >= 64 channels: {worst64:.2f} (target >= 0.8).",
              "Backward rows count 20 bytes/element (a, h, grad_h read; grad_a, grad_x written)."]
    with open(os.path.join(args.out, f"{tag}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(lines[-2])


if __name__ == "__main__":
    main()
