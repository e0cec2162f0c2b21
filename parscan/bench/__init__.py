"""``parscan bench``: every backend against the physical limit and the alternatives, in one run.

Suites (``--suite``, comma-separated; default all that can run here):

- ``cpu``: the cpu backend vs NumPy's elementwise multiply of the same arrays (the same bytes moved;
  timed alternately, ratio = median over the pairs), the float64 reference loop, and
  ``scipy.signal.lfilter`` for constant decays.  Targets: ratio >= 0.5 everywhere, >= 0.8 with >= 64
  channels (issue #2).
- ``latency``: the Python overhead of one call on a tiny input, per available backend.
- ``deer``: a GRU (batch 16, hidden 1..32, T = 1k..64k) by the sequential loop, DEER and quasi-DEER on
  the host.
- ``deer-gpu`` (GPU): the same GRU (hidden 1..64, T = 1k..1M, float32) by DEER and quasi-DEER on CuPy
  arrays against the sequential GRU stepped by one GPU kernel; speedup = sequential / DEER time (and,
  up to T = 16k, against the cell stepped from Python with CuPy, an unfused framework loop).
  Goals (issue #8): >= 1000x at n = 1, T = 1M; faster than sequential at n = 32.
- ``roofline`` (GPU): forward and backward per backend, dtype and layout, 1 x 2^27 .. 2^17 x 2^10,
  as effective GB/s and % of the device's own device-to-device copy bandwidth measured in the same run.
- ``paper`` (GPU): Martin & Cundy's Table 1 (minibatch 1, m = 4/32/128, T = 16..65,536), the
  auto-dispatched ``linear_scan`` vs the naive one-thread-per-channel serial kernel, beside the paper.
- ``peers`` (GPU): the same problems through the peers that are importable; each missing one is
  listed with the reason.
- ``dask``: ``parscan.dask.linear_scan`` of 2^28 float32 elements in 64 time chunks on a LocalCluster of
  2 worker processes vs ``dask.array.cumsum`` of the same x (target <= 1.5x) and one in-memory
  ``linear_scan``; throughput per worker (issue #17).
- ``jax``: ``parscan.jax.linear_scan`` under ``jax.jit`` vs ``jax.lax.associative_scan`` and ``lax.scan``,
  forward and forward+backward, on JAX's default backend (CPU here, the GPU on a device).

Every figure is a median over repeats with its min..max; inputs are random and checked against the
reference before timing.  Output: ``bench.json`` (machine, versions, every row), ``bench.md`` and, with
matplotlib, PNG plots, all under ``--out``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Callable, NamedTuple

import numpy as np

from .. import _backends
from . import cpu, deer, deer_gpu, jax, latency, paper, peers, roofline
from . import dask as dask_suite
from ._common import Progress, copy_bandwidth


class Suite(NamedTuple):
    run: Callable  # run(ctx) -> rows
    steps: Callable  # steps(ctx, backends) -> how many progress steps run(ctx) takes
    gpu: bool = False  # needs a CUDA device (skipped with the reason where there is none)


# Every suite, in run and report order.  A new suite is one module with its suite function and one line here.
SUITES = {
    "cpu": Suite(cpu.suite_cpu, lambda ctx, st: len(ctx["cpu_shapes"]) + 1),
    "latency": Suite(latency.suite_latency, lambda ctx, st: len(st) + 1),
    "deer": Suite(deer.suite_deer, lambda ctx, st: 6 if ctx["quick"] else 12),
    "roofline": Suite(roofline.suite_roofline, lambda ctx, st: 24 * len(ctx["dtypes"]) * len(ctx["gpu_backends"]),
                      gpu=True),
    "paper": Suite(paper.suite_paper, lambda ctx, st: 12, gpu=True),
    "peers": Suite(peers.suite_peers, lambda ctx, st: 10, gpu=True),
    "deer-gpu": Suite(deer_gpu.suite_deer_gpu, lambda ctx, st: 4 if ctx["quick"] else 28, gpu=True),
    "dask": Suite(dask_suite.suite_dask, lambda ctx, st: 2),
    "jax": Suite(jax.suite_jax, jax._steps),
}
GPU_SUITES = tuple(name for name, s in SUITES.items() if s.gpu)


def _meta(ctx):
    meta = dict(machine=platform.machine(), processor=platform.processor() or platform.uname().machine,
                cpus=os.cpu_count(), python=platform.python_version(), numpy=np.__version__,
                date=time.strftime("%Y-%m-%d %H:%M"), quick=ctx["quick"])
    try:
        import numba

        meta.update(numba=numba.__version__, numba_threads=numba.get_num_threads())
    except ImportError:  # pragma: no cover
        pass
    cp = ctx.get("cupy")
    if cp is not None:
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        meta.update(device=props["name"].decode(), driver=cp.cuda.runtime.driverGetVersion(),
                    runtime=cp.cuda.runtime.runtimeGetVersion(), cupy=cp.__version__,
                    copy_gbps=ctx["copy"] / 1e9)
    return meta


def _markdown(meta, rows, skipped_suites):
    lines = [f"# parscan bench ({meta.get('device', meta['processor'])}, {meta['date']})", ""]
    lines.append("Machine: " + ", ".join(f"{k} {v}" for k, v in meta.items() if k not in ("date",)))
    for suite, why in skipped_suites.items():
        lines += ["", f"Suite `{suite}` skipped: {why}"]
    for suite in SUITES:
        rs = [r for r in rows if r["suite"] == suite]
        if not rs:
            continue
        keys = [k for k in rs[0] if k not in ("suite",)]
        for r in rs[1:]:
            keys += [k for k in r if k not in keys and k != "suite"]
        lines += ["", f"## {suite}", "", "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
        for r in rs:
            cells = []
            for k in keys:
                v = r.get(k, "")
                cells.append(f"{v:.4g}" if isinstance(v, float) else
                             ("..".join(f"{u:.4g}" for u in v) if isinstance(v, list) else str(v)))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plots(rows, out, meta):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return [f"plots skipped: matplotlib not importable ({exc})"]
    made = []
    cpu = [r for r in rows if r["suite"] == "cpu" and r.get("ratio") is not None]
    if cpu:
        fig, ax = plt.subplots(figsize=(7, 4))
        for lay in ("time-contiguous", "channel-contiguous"):
            rs = [r for r in cpu if r["layout"] == lay]
            ax.plot([r["channels"] for r in rs], [r["ratio"] for r in rs], "o-", label=lay)
        ax.axhline(0.8, ls="--", c="gray", lw=1)
        ax.axhline(0.5, ls=":", c="gray", lw=1)
        ax.set(xscale="log", xlabel="channels (same total elements)", ylabel="scan / NumPy multiply bandwidth",
               title="cpu backend, float32 forward")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "bench-cpu.png"), dpi=100)
        plt.close(fig)
        made.append("bench-cpu.png")
    roof = [r for r in rows if r["suite"] == "roofline"]
    if roof:
        fig, ax = plt.subplots(figsize=(8, 5))
        for key in sorted({(r["name"], r["direction"], r["dtype"], r["layout"]) for r in roof}):
            rs = [r for r in roof if (r["name"], r["direction"], r["dtype"], r["layout"]) == key]
            ax.plot([r["length"] for r in rs], [r["gbps"] for r in rs], "o-", label=" ".join(key), lw=1)
        ax.axhline(meta["copy_gbps"], c="k", lw=1, ls="--", label="device copy")
        ax.set(xscale="log", xlabel="T (channels x T fixed)", ylabel="GB/s", title=meta.get("device", ""))
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "bench-roofline.png"), dpi=100)
        plt.close(fig)
        made.append("bench-roofline.png")
    return made


def run(suites=None, quick=False, dtypes=("float32", "float16", "float64", "complex64"), out=".",
        repeats=None, progress=True):
    """Run ``suites`` (None: every suite that can run here); returns (meta, rows, skipped suites)."""
    st = _backends.available_backends()
    gpu = [n for n in ("cupy", "numba") if st[n].available]
    wanted = list(suites) if suites else list(SUITES)
    bad = [s for s in wanted if s not in SUITES]
    if bad:
        raise ValueError(f"unknown suite(s) {bad}; choose from {', '.join(SUITES)}")
    skipped = {}
    if not gpu:
        for s in GPU_SUITES:
            if s in wanted:
                wanted.remove(s)
                skipped[s] = f"needs a CUDA device ({st['cupy'].reason})"
    ctx = dict(quick=quick, repeats=repeats or (5 if quick else 15), dtypes=tuple(dtypes), gpu_backends=gpu,
               cpu_shapes=cpu._cpu_shapes(quick))
    if gpu:
        import cupy

        ctx["cupy"] = cupy
        ctx["copy"] = copy_bandwidth(cupy, ctx["repeats"])
    total = sum(SUITES[s].steps(ctx, st) for s in wanted)
    ctx["progress"] = Progress(total, progress)
    rows = []
    for s in wanted:
        rows += SUITES[s].run(ctx)
    ctx["progress"].close()
    meta = _meta(ctx)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows, skipped_suites=skipped), f, indent=1)
    notes = _plots(rows, out, meta)
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(_markdown(meta, rows, skipped))
    meta["outputs"] = ["bench.json", "bench.md"] + [n for n in notes if n.endswith(".png")]
    meta["notes"] = [n for n in notes if not n.endswith(".png")]
    return meta, rows, skipped
