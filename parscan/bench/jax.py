"""Suite ``jax``: :func:`parscan.jax.linear_scan` under ``jax.jit`` vs ``jax.lax.associative_scan`` and a
``lax.scan`` loop (both jitted) on the same arrays, float32, forward and forward+backward
(``jax.value_and_grad`` of ``sum(h * w)`` with respect to a and x).

Shapes: on JAX's CPU backend, every shape of the cpu suite (``parscan.bench.cpu``: one channel, then 4 ..
65,536 channels in both layouts, 2^24 elements; with ``--quick`` its quick shapes, 2^20 elements); on a CUDA
GPU (JAX's default backend), the peers' shapes (8, 1536, T), T = 4096 .. 65,536, time-contiguous.  Each
round times every implementation once on every shape (a slow phase of a shared machine spreads over all);
``speedup_*`` = the other's time / parscan's in the same round, median over the rounds with min..max.
Correctness is checked against associative_scan before timing.  A ``lax.scan`` over more than 2^16 steps is
timed on the first 2^16 steps and scaled by T / 2^16 (its cost is linear in T; ``lax_scan_extrapolated_from``
says so).  On the CPU each row also has ``cpu_backend_ms``: the cpu backend called directly on NumPy copies
of the arrays in the same round (the forward into a preallocated out; forward+backward adds
``linear_scan_backward`` with fresh gradients), i.e. what the scan itself costs without JAX around it.

The CPU run holds a, x and w of every shape (3.6 GB at 2^24 elements; 6.3 GB peak RSS) and takes a while
on two cores (12 minutes with ``--repeats 5`` on a loaded 2-core VM: compiling, checking and warming up at
2^24 elements, associative_scan above all); ``--repeats`` sets the rounds.

Target (issue #16): on the device >= 10x associative_scan at (8, 1536, 65,536) (``target_met`` in that row);
on the CPU, faster than both at every shape (``target_met`` in every CPU row: both speedups above 1).
"""

from __future__ import annotations

import time

import numpy as np

from ._common import _stats

LAX_SCAN_MAX_T = 2**16
GPU_SHAPES = [((8, 1536, t), -1) for t in (4096, 16384, 65536)]
GPU_TARGET = ((8, 1536, 65536), 10.0)  # speedup over associative_scan wanted at this shape


def _shapes(ctx, on_gpu):
    """[(shape, axis, layout)] for this run."""
    if on_gpu:
        return [(s, ax, "time-contiguous") for s, ax in (GPU_SHAPES[:1] if ctx["quick"] else GPU_SHAPES)]
    from .cpu import _layout

    return [(*_layout(c, n, lay), lay) for c, n, lay in ctx["cpu_shapes"]]


def _steps(ctx, st):
    """Progress steps: one a shape (checks), one a round."""
    try:
        import jax

        on_gpu = jax.default_backend() == "gpu"
    except ImportError:
        return 1
    return len(_shapes(ctx, on_gpu)) + ctx["repeats"]


def _once(jax, f, args):
    """Seconds of one call of a compiled, warmed-up ``f``, until its results are ready."""
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - t0


def _implementations(jax, jnp, lax, pj, axis):
    def assoc(a, x):
        return lax.associative_scan(lambda l, r: (l[0] * r[0], r[0] * l[1] + r[1]), (a, x), axis=axis)[1]

    def loop(a, x):
        def step(h, ax):
            h = ax[0] * h + ax[1]
            return h, h

        am, xm = jnp.moveaxis(a, axis, 0), jnp.moveaxis(x, axis, 0)
        return jnp.moveaxis(lax.scan(step, jnp.zeros_like(xm[0]), (am, xm))[1], 0, axis)

    def parscan_(a, x):
        return pj.linear_scan(a, x, axis=axis)

    impls = {"parscan": parscan_, "associative_scan": assoc, "lax.scan": loop}
    out = {}
    for name, f in impls.items():
        fb = jax.value_and_grad(lambda a, x, w, f=f: jnp.sum(f(a, x) * w), (0, 1))
        out[name] = (jax.jit(f), jax.jit(fb))
    return out


def _cpu_backend(a, x, w, axis, outs):
    """(forward, forward+backward) of the cpu backend itself on the arrays (read-only NumPy views of JAX's
    buffers), as calls; the forward's out is one of ``outs`` (one per size, shared by the shapes)."""
    from ..scan import linear_scan, linear_scan_backward

    a, x, w = (np.asarray(v) for v in (a, x, w))
    out = outs.setdefault((x.size, x.dtype.str), np.empty(x.size, x.dtype)).reshape(x.shape)

    def fwd():
        linear_scan(a, x, axis=axis, out=out, backend="cpu")

    def fb():
        linear_scan(a, x, axis=axis, out=out, backend="cpu")
        linear_scan_backward(a, out, w, axis=axis, backend="cpu")

    fwd()
    fb()
    return fwd, fb


def _wall(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def _check(impls, a, x, w, shape, lay):
    """parscan against associative_scan: the forward and both gradients."""
    import jax.numpy as jnp

    h = impls["parscan"][0](a, x)
    href = impls["associative_scan"][0](a, x)
    if not float(jnp.max(jnp.abs(h - href))) <= 1e-4 * max(1.0, float(jnp.max(jnp.abs(href)))):
        raise AssertionError(f"parscan.jax forward disagrees with associative_scan at {shape} {lay}")
    (_, g), (_, gref) = impls["parscan"][1](a, x, w), impls["associative_scan"][1](a, x, w)
    for u, v in zip(g, gref):
        if not float(jnp.max(jnp.abs(u - v))) <= 1e-3 * max(1.0, float(jnp.max(jnp.abs(v)))):
            raise AssertionError(f"parscan.jax gradients disagree with associative_scan at {shape} {lay}")


def suite_jax(ctx):
    try:
        import jax
        import jax.numpy as jnp
        from jax import lax

        from .. import jax as pj
    except ImportError as exc:
        return [dict(suite="jax", name="parscan.jax", skipped=f"jax not importable ({exc})")]
    on_gpu = jax.default_backend() == "gpu"
    if not on_gpu and ctx.get("gpu_backends"):
        return [dict(suite="jax", name="parscan.jax", skipped=f"a CUDA device is here but JAX's backend is "
                     f"{jax.default_backend()!r} (no CUDA plugin): install jax[cuda12] or jax[cuda13] to time the "
                     f"GPU path")]
    device = jax.devices()[0]
    rows, cases, outs = [], [], {}
    for shape, axis, lay in _shapes(ctx, on_gpu):
        rng = np.random.default_rng(0)
        put = lambda v: jax.device_put(v, device)  # noqa: E731
        a = put(rng.uniform(0.5, 0.999, shape).astype(np.float32))
        x = put(rng.standard_normal(shape).astype(np.float32))
        w = put(rng.standard_normal(shape).astype(np.float32))
        T = shape[axis]
        impls = _implementations(jax, jnp, lax, pj, axis)
        short = None
        if T > LAX_SCAN_MAX_T:  # the loop on a prefix of the sequence, scaled
            idx = [slice(None)] * len(shape)
            idx[axis] = slice(0, LAX_SCAN_MAX_T)
            short = tuple(v[tuple(idx)] for v in (a, x, w))
        _check(impls, a, x, w, shape, lay)  # correctness first
        for name, (f, fb) in impls.items():  # compile (and warm) every function before the timed rounds
            args = short if (name == "lax.scan" and short is not None) else (a, x, w)
            jax.block_until_ready(f(*args[:2]))
            jax.block_until_ready(fb(*args))
        direct = None if on_gpu else _cpu_backend(a, x, w, axis, outs)
        times = {(n, d): [] for n in list(impls) + ["cpu backend"] for d in ("forward", "forward+backward")}
        cases.append((shape, axis, lay, impls, (a, x, w), short, direct, times))
        ctx["progress"].step(f"jax {shape} {lay}")
    for r in range(ctx["repeats"]):
        for shape, axis, lay, impls, args, short, direct, times in cases:
            for name, (f, fb) in impls.items():
                use = short if (name == "lax.scan" and short is not None) else args
                k = (shape[axis] / LAX_SCAN_MAX_T) if use is short else 1.0
                times[(name, "forward")].append(k * _once(jax, f, use[:2]))
                times[(name, "forward+backward")].append(k * _once(jax, fb, use))
            if direct is not None:
                times[("cpu backend", "forward")].append(_wall(direct[0]))
                times[("cpu backend", "forward+backward")].append(_wall(direct[1]))
        ctx["progress"].step(f"jax round {r + 1}")
    for shape, axis, lay, impls, args, short, direct, times in cases:
        for direction in ("forward", "forward+backward"):
            mine = np.asarray(times[("parscan", direction)])
            s, smin, smax = _stats(mine)
            row = dict(suite="jax", name="parscan.jax", backend=jax.default_backend(), direction=direction,
                       shape=list(shape), layout=lay, dtype="float32", ms=s * 1e3, ms_range=[smin * 1e3, smax * 1e3])
            for other, key in (("associative_scan", "associative_scan"), ("lax.scan", "lax_scan")):
                theirs = np.asarray(times[(other, direction)])
                t, tmin, tmax = _stats(theirs)
                ratio = theirs / mine
                row[f"{key}_ms"] = t * 1e3
                row[f"{key}_ms_range"] = [tmin * 1e3, tmax * 1e3]
                row[f"speedup_{key}"] = float(np.median(ratio))
                row[f"speedup_{key}_range"] = [float(ratio.min()), float(ratio.max())]
            if short is not None:
                row["lax_scan_extrapolated_from"] = LAX_SCAN_MAX_T
            if direct is not None:
                c, cmin, _ = _stats(times[("cpu backend", direction)])
                row["cpu_backend_ms"] = c * 1e3
                row["cpu_backend_ms_min"] = cmin * 1e3
                row["target"] = "faster than associative_scan and lax.scan"
                row["target_met"] = bool(row["speedup_associative_scan"] > 1 and row["speedup_lax_scan"] > 1)
            elif tuple(shape) == GPU_TARGET[0]:
                row["target"] = f">= {GPU_TARGET[1]:g}x associative_scan"
                row["target_met"] = bool(row["speedup_associative_scan"] >= GPU_TARGET[1])
            rows.append(row)
    return rows
