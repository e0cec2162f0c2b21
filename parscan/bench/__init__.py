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

Every figure is a median over repeats with its min..max; inputs are random and checked against the
reference before timing.  Output: ``bench.json`` (machine, versions, every row), ``bench.md`` and, with
matplotlib, PNG plots, all under ``--out``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np

from .. import _backends, reference
from ..demo import _timed as _wall  # one warm-up call, then ``repeats`` timed calls
from ..scan import linear_scan, linear_scan_backward

PAPER_TABLE1 = {  # (m, T) -> the paper's parallel/serial speedup (Martin & Cundy 2018, Table 1)
    (4, 16): 0.06, (32, 16): 0.06, (128, 16): 0.05, (4, 256): 0.22, (32, 256): 0.22, (128, 256): 0.86,
    (4, 4096): 1.02, (32, 4096): 2.94, (128, 4096): 3.36, (4, 65536): 38.5, (32, 65536): 41.8,
    (128, 65536): 17.5}
GPU_SUITES = ("roofline", "paper", "peers", "deer-gpu")
SUITES = ("cpu", "latency", "deer") + GPU_SUITES


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


# ------------------------------------------------------------------------------------------- cpu

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


# ---------------------------------------------------------------------------------------- latency

def suite_latency(ctx):
    rows = []
    for name, st in _backends.available_backends().items():
        if not st.available:
            rows.append(dict(suite="latency", name=name, skipped=st.reason))
            continue
        if st.device == "cuda":
            import cupy

            x = cupy.ones(16, cupy.float32)
            sync = cupy.cuda.get_current_stream().synchronize
        else:
            x, sync = np.ones(16, np.float32), (lambda: None)
        linear_scan(0.5, x, backend=name)
        sync()
        ts = []
        for _ in range(200):
            t0 = time.perf_counter()
            linear_scan(0.5, x, backend=name)
            ts.append(time.perf_counter() - t0)
        sync()
        m, lo, hi = _stats(ts)
        rows.append(dict(suite="latency", name=name, us=m * 1e6, us_range=[lo * 1e6, hi * 1e6]))
        ctx["progress"].step(f"latency {name}")
    return rows


# ------------------------------------------------------------------------------------------- deer

def suite_deer(ctx):
    """A GRU (batch 16) by the sequential loop, DEER and quasi-DEER on the host (NumPy + cpu backend)."""
    from .. import deer

    rows = []
    Ts = (1024, 8192) if ctx["quick"] else (1024, 8192, 65536)
    ns = (1, 4) if ctx["quick"] else (1, 4, 16, 32)
    for n in ns:
        for T in Ts:
            cell = deer.GRUCell(1, n)
            p = cell.init_params(0)
            rng = np.random.default_rng(0)
            x, y0 = rng.standard_normal((T, 16, 1)), np.zeros((16, n))
            t_seq = _stats(_wall(lambda: deer.sequential(cell, p, x, y0), 1))[0]
            want = deer.sequential(cell, p, x, y0)
            for method in ("deer", "quasi"):
                deer.solve(cell, p, x[:16], y0, method=method)  # compile the kernels first
                y, info = deer.solve(cell, p, x, y0, method=method)
                t = _stats(_wall(lambda: deer.solve(cell, p, x, y0, method=method), 1 if ctx["quick"] else 3))[0]
                rows.append(dict(suite="deer", name=method, hidden=n, length=T, batch=16, ms=t * 1e3,
                                 sequential_ms=t_seq * 1e3, speedup=t_seq / t, iterations=info.iterations,
                                 converged=info.converged, max_error=float(np.abs(y - want).max())))
            ctx["progress"].step(f"deer n={n} T={T}")
    return rows


# -------------------------------------------------------------------------------------------- GPU

def suite_deer_gpu(ctx):
    """Issue #8's benchmark: a GRU (batch 16, float32) on the GPU by DEER and quasi-DEER (CuPy arrays,
    the default CUDA backend) against the sequential GRU stepped by one GPU kernel
    (``_baselines.gru_sequential_gpu``: the fastest plain sequential evaluation).  A configuration whose
    intermediates do not fit in device memory is listed as skipped, with the error."""
    cp = ctx["cupy"]
    from .. import _baselines, deer

    rows = []
    Ts = (1024, 65536) if ctx["quick"] else (1024, 16384, 131072, 1 << 20)
    ns = (1, 8) if ctx["quick"] else (1, 2, 4, 8, 16, 32, 64)
    ns, Ts, B = ctx.get("deer_sizes", (ns, Ts, 16))  # (tests shrink them)
    reps = 3
    for n in ns:
        for T in Ts:
            cell = deer.GRUCell(1, n)
            p = {k: cp.asarray(v) for k, v in cell.init_params(0, "float32").items()}
            x = cp.asarray(np.random.default_rng(0).standard_normal((T, B, 1)), cp.float32)
            y0 = cp.zeros((B, n), cp.float32)
            want = _baselines.gru_sequential_gpu(p, x, y0)
            t_seq, lo_s, hi_s = _stats(_events(cp, lambda: _baselines.gru_sequential_gpu(p, x, y0), reps))
            loop = {}
            if T <= 16384:  # the cell stepped from Python, one set of CuPy kernels a step (an unfused framework loop)
                t_loop = _stats(_events(cp, lambda: deer.sequential(cell, p, x, y0), 1))[0]
                loop = dict(loop_ms=t_loop * 1e3)
            for method in ("deer", "quasi"):
                row = dict(suite="deer-gpu", name=method, hidden=n, length=T, batch=B, sequential_ms=t_seq * 1e3,
                           sequential_ms_range=[lo_s * 1e3, hi_s * 1e3], **loop)
                solve = lambda: deer.solve(cell, p, x, y0, method=method, max_iter=200)  # noqa: E731
                try:
                    y, info = solve()
                    m, lo, hi = _stats(_events(cp, solve, reps))
                except cp.cuda.memory.OutOfMemoryError as exc:  # the Jacobians of long sequences
                    rows.append(dict(row, skipped=f"out of device memory ({exc})"))
                else:
                    if loop:
                        row["speedup_vs_loop"] = loop["loop_ms"] / (m * 1e3)
                    rows.append(dict(row, ms=m * 1e3, ms_range=[lo * 1e3, hi * 1e3], speedup=t_seq / m,
                                     iterations=info.iterations, converged=info.converged,
                                     max_error=float(cp.abs(y - want).max())))
                    del y
                cp.get_default_memory_pool().free_all_blocks()
            ctx["progress"].step(f"deer-gpu n={n} T={T}")
    return rows


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


def suite_roofline(ctx):
    cp = ctx["cupy"]
    rows = []
    log_n = 22 if ctx["quick"] else 27
    chans = [0, 10] if ctx["quick"] else [0, 3, 7, 10, 14, 17]
    l2 = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["l2CacheSize"]
    for backend in ctx["gpu_backends"]:
        for dtype in ctx["dtypes"]:
            for c in chans:
                for lay in ("time-contiguous", "channel-contiguous"):
                    length = 2 ** (log_n - c) if c < 17 else 2**10
                    shape = (2**c, length) if lay == "time-contiguous" else (length, 2**c)
                    axis = -1 if lay == "time-contiguous" else 0
                    sets = _gpu_inputs(cp, shape, dtype, l2)
                    a, x = sets[0]
                    h = linear_scan(a, x, axis=axis, backend=backend)
                    sl = (slice(0, 1), slice(0, 2048)) if axis == -1 else (slice(0, 2048), slice(0, 1))
                    want = reference.linear_scan(a[sl].get(), x[sl].get(), axis=axis)
                    tol = 5e-3 if dtype == "float16" else 1e-4
                    if not np.allclose(h[sl].get().astype(want.dtype), want, rtol=tol, atol=tol):
                        raise AssertionError(f"{backend} disagrees with the reference at {shape} {lay} {dtype}")
                    item = np.dtype(dtype).itemsize
                    for direction in ("forward", "backward"):
                        k = [0]
                        outs = [cp.empty_like(x) for _ in sets]

                        def fn():
                            i = k[0] % len(sets)
                            k[0] += 1
                            sa, sx = sets[i]
                            if direction == "forward":
                                linear_scan(sa, sx, axis=axis, out=outs[i], backend=backend)
                            else:
                                linear_scan_backward(sa, outs[i], sx, axis=axis, backend=backend)

                        m, lo, hi = _stats(_events(cp, fn, ctx["repeats"]))
                        nbytes = (3 if direction == "forward" else 5) * item * x.size
                        rows.append(dict(suite="roofline", name=backend, direction=direction, dtype=dtype,
                                         channels=2**c, length=length, layout=lay, ms=m * 1e3,
                                         ms_range=[lo * 1e3, hi * 1e3], gbps=nbytes / m / 1e9,
                                         of_copy=nbytes / m / ctx["copy"]))
                    ctx["progress"].step(f"roofline {backend} {dtype} {2**c} x {length} {lay}")
    return rows


def _serial_kernel(cp):
    from ..kernels import cupy_scan

    path = os.path.join(os.path.dirname(cupy_scan.SOURCE), "serial.cu")
    with open(path) as f:
        return cp.RawModule(code=f.read()).get_function("serial_scan_f32")


def suite_paper(ctx):
    cp = ctx["cupy"]
    serial = _serial_kernel(cp)
    rows = []
    Ts = (16, 256, 4096) if ctx["quick"] else (16, 256, 4096, 65536)
    for m in (4, 32, 128):
        for T in Ts:
            x = cp.random.standard_normal((T, m), dtype=cp.float32)  # (T, B=1, m), time-major
            a = cp.random.uniform(0.5, 0.999, (T, m), dtype=cp.float32)
            h = cp.empty_like(x)
            args = (a, x, h, np.int64(m), np.int64(T), np.int64(1), np.int64(m))
            t_ser = _stats(_events(cp, lambda: serial(((m + 127) // 128,), (128,), args), ctx["repeats"]))[0]
            want = h.copy()
            t_par = _stats(_events(cp, lambda: linear_scan(a, x, axis=0), ctx["repeats"]))[0]
            if not cp.allclose(linear_scan(a, x, axis=0), want, rtol=1e-4, atol=1e-4):
                raise AssertionError(f"linear_scan disagrees with the serial kernel at m={m}, T={T}")
            rows.append(dict(suite="paper", name="linear_scan vs serial", m=m, length=T, serial_us=t_ser * 1e6,
                             parallel_us=t_par * 1e6, speedup=t_ser / t_par, paper=PAPER_TABLE1[(m, T)]))
            ctx["progress"].step(f"paper m={m} T={T}")
    return rows


def _peer_heinsen(cp, a, x):
    """Log-space cumsum scan (Heinsen 2023) from CuPy primitives (complex logs handle negative values)."""
    la = cp.cumsum(cp.log(a.astype(cp.complex64)), axis=-1)
    return cp.exp(la + cp.log(cp.cumsum(cp.exp(cp.log(x.astype(cp.complex64)) - la), axis=-1))).real


def _peer_blelloch(cp, a, x):
    """A Hillis-Steele scan over pairs from CuPy array operations (log2 T passes)."""
    A, H = a.copy(), x.copy()
    d = 1
    while d < a.shape[-1]:
        H[..., d:] = A[..., d:] * H[..., :-d] + H[..., d:]
        A[..., d:] = A[..., d:] * A[..., :-d]
        d *= 2
    return H


def suite_peers(ctx):
    cp = ctx["cupy"]
    rows = []
    peers = {"heinsen log-space (cupy)": lambda a, x: _peer_heinsen(cp, a, x),
             "hillis-steele from array ops (cupy)": lambda a, x: _peer_blelloch(cp, a, x)}
    missing = {}
    try:
        import jax

        peers["jax.lax.associative_scan"] = _jax_peer(jax)
    except ImportError as exc:
        missing["jax.lax.associative_scan"] = f"jax not importable ({exc})"
    try:
        from accelerated_scan.warp import scan as warp_scan  # noqa: F401
        import torch

        peers["accelerated-scan warp"] = _torch_peer(torch, warp_scan)
    except ImportError as exc:
        missing["accelerated-scan warp"] = f"accelerated_scan/torch not importable ({exc})"
    missing["flash-linear-attention hgrn"] = "not wired into the harness yet"
    missing["torch associative_scan"] = "not wired into the harness yet"
    Ts = (2**7, 2**10, 2**13) if ctx["quick"] else tuple(2**k for k in range(7, 17))
    for T in Ts:
        shape = (8, 1536, T)
        x = cp.random.standard_normal(shape, dtype=cp.float32)
        a = cp.random.uniform(0.5, 0.999, shape, dtype=cp.float32)
        base = _stats(_events(cp, lambda: linear_scan(a, x), ctx["repeats"]))[0]
        rows.append(dict(suite="peers", name="parscan", length=T, ms=base * 1e3, gelem_s=x.size / base / 1e9))
        for name, fn in peers.items():
            try:
                t = _stats(_events(cp, lambda: fn(a, x), ctx["repeats"]))[0]
            except Exception as exc:  # noqa: BLE001 - a peer failing is reported, not fatal
                rows.append(dict(suite="peers", name=name, length=T, skipped=f"{type(exc).__name__}: {exc}"))
                continue
            rows.append(dict(suite="peers", name=name, length=T, ms=t * 1e3, gelem_s=x.size / t / 1e9,
                             parscan_speedup=t / base))
        ctx["progress"].step(f"peers T={T}")
    rows += [dict(suite="peers", name=n, skipped=why) for n, why in missing.items()]
    return rows


def _jax_peer(jax):
    import jax.numpy as jnp

    def combine(p, q):
        return q[0] * p[0], q[0] * p[1] + q[1]

    f = jax.jit(lambda a, x: jax.lax.associative_scan(combine, (a, x), axis=-1)[1])

    def run(a, x):
        out = f(jnp.from_dlpack(a), jnp.from_dlpack(x))
        out.block_until_ready()
        return out

    return run


def _torch_peer(torch, warp_scan):
    def run(a, x):
        return warp_scan(torch.from_dlpack(a), torch.from_dlpack(x))

    return run


# ----------------------------------------------------------------------------------------- driver

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
               cpu_shapes=_cpu_shapes(quick))
    if gpu:
        import cupy

        ctx["cupy"] = cupy
        ctx["copy"] = copy_bandwidth(cupy, ctx["repeats"])
    total = sum({"cpu": len(ctx["cpu_shapes"]) + 1, "latency": len(st), "deer": 6 if quick else 12, "roofline": 24 * len(dtypes) * len(gpu),
                 "paper": 12, "peers": 10, "deer-gpu": 4 if quick else 28}[s] for s in wanted)
    ctx["progress"] = Progress(total, progress)
    rows = []
    for s in wanted:
        rows += globals()[f"suite_{s.replace('-', '_')}"](ctx)
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
