"""``parscan check``: validate an install on this machine and write a report to send.

On a machine with a CUDA device every GPU backend that loads (``cupy``, ``numba``) runs a randomized set
of cases (:func:`make_cases`: forward, backward and the matrix scan; every dtype; time-contiguous,
channel-contiguous, strided and negative-stride layouts; h0 or none; reverse; full, per-channel and
scalar decays; ``out=`` new or aliasing x; sizes from empty to a few million elements, sequences spanning
many tiles) on device arrays, and every result is copied to the host and compared in float64 with
:mod:`parscan.reference`.  Each case also checks that the inputs are unmodified, that the result has the
right type, dtype and shape, and that nothing was written outside ``out``.  Then a short roofline:
forward and backward bandwidth on a large float32 array in both layouts, as a share of the device's
copy bandwidth measured in the same run.  Without a CUDA device it says so and checks the ``cpu``
backend over smaller cases.

The report (JSON) holds the versions (parscan, Python, NumPy, Numba, numba-cuda, CuPy), the machine, the
GPU (name, compute capability, memory, driver, CUDA runtime, NVRTC), why each backend is or is not
available, every case with its result, every mismatch, the summary and the roofline rows.  Exit status:
0 when everything matches, 1 on any mismatch or error, 2 for bad usage.  A run in which nothing
finishes for :data:`STALL_S` seconds (a kernel that never returns) writes the report as it stands and
exits 1.

Where the cases run is injected (:class:`Target`: a backend name and the array module of its inputs), so
the GPU path (device arrays, device info, the roofline) runs in the tests with NumPy standing in for CuPy
and the ``cpu`` backend standing in for a GPU backend.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _backends, reference
from .bench import Progress, copy_bandwidth
from .bench._common import _events, _gpu_inputs, _rotating, _stats
from .matrix import matrix_linear_scan, matrix_linear_scan_backward
from .scan import linear_scan, linear_scan_backward

DTYPES = ("float16", "float32", "float64", "complex64", "complex128")
#: allowed error relative to max(1, max |reference|) (as in the test suite; float16 is stored with 11 bits)
TOL = {"float16": 4e-3, "float32": 2e-5, "float64": 1e-12, "complex64": 2e-5, "complex128": 1e-12}
OPS = ("forward", "backward")
LAYOUTS = ("time-contiguous", "channel-contiguous", "strided", "negative")
MATRIX_NS = (1, 2, 3, 8)
MATRIX_LAYOUTS = ("contiguous", "strided", "negative")
GPU_BACKENDS = ("cupy", "numba")
CHECKABLE = ("cupy", "numba", "cpu")
DEFAULT_OUT = "parscan-check.json"

# Size classes: (name, weight, (channels lo, hi), (T lo, hi)), drawn log-uniformly.  GPU sizes run up to a
# few million elements and 2^18 steps (128 tiles of 2048 steps); the host ones keep the check well under a
# minute on two cores.  ``quick`` drops the last class.
SIZES = {
    "gpu": [("tiny", 0.15, (1, 5), (0, 40)), ("small", 0.3, (1, 64), (41, 5000)),
            ("many-tiles", 0.3, (1, 8), (5000, 1 << 18)), ("large", 0.25, (256, 1024), (1024, 8192))],
    "cpu": [("tiny", 0.2, (1, 5), (0, 40)), ("small", 0.4, (1, 32), (41, 3000)),
            ("many-tiles", 0.25, (1, 4), (3000, 40000)), ("large", 0.15, (32, 128), (512, 2048))],
}
# matrix scan: (batch lo, hi), (T lo, hi)
MATRIX_SIZES = {"gpu": ((1, 8), (1, 20000)), "cpu": ((1, 4), (1, 2000))}
ROOFLINE_LOG2 = {False: 26, True: 24}  # elements of the roofline arrays (quick: 2^24)
ROOFLINE_CHANNELS = 64
STALL_S = 300.0  # no progress for this long: write the report as it stands and exit 1 (a hung kernel)


class UsageError(ValueError):
    """Bad arguments (exit status 2)."""


# ---------------------------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class Case:
    """One check.  ``a``: "full", "per-channel", "scalar", "real-full", "real-per-channel" (a real decay
    with complex data); for the matrix scan "full" (A per batch row and step) or "constant" (one A).
    ``h0``: "none", "full" or "scalar".  ``out``: forward "none", "new" or "x" (in place); backward "none"
    or "alias" (grad_h is h itself).  ``decay``: "fast" (|a| in [0.5, 0.95]) or "slow" ([0.99, 0.9999]).
    The data come from ``numpy.random.default_rng([seed, id])``."""

    id: int
    op: str
    dtype: str
    shape: tuple
    axis: int
    layout: str
    a: str
    h0: str
    reverse: bool
    out: str
    decay: str
    size: str
    seed: int

    def label(self) -> str:
        return (f"#{self.id} {self.op} {self.dtype} {'x'.join(map(str, self.shape))} axis={self.axis} "
                f"{self.layout} a={self.a} h0={self.h0}{' reverse' if self.reverse else ''}"
                f"{'' if self.out == 'none' else ' out=' + self.out}")


def _log_int(rng, lo, hi):
    """An integer in [lo, hi], log-uniform."""
    return min(hi, max(lo, int(math.exp(rng.uniform(math.log(lo + 1), math.log(hi + 2)))) - 1))


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _draw(rng, cid, op, dtype, layout, profile, quick, seed, n=None):
    if op.startswith("matrix"):
        (blo, bhi), (tlo, thi) = MATRIX_SIZES[profile]
        if quick:
            thi = min(thi, 500)
        B, T = _log_int(rng, blo, bhi), _log_int(rng, tlo, thi)
        return Case(cid, op, dtype, (B, T, n), 1, layout, _pick(rng, ("full", "constant")),
                    _pick(rng, ("none", "full")), bool(rng.integers(2)), "none", "fast", f"n={n}", seed)
    classes = SIZES[profile][:-1] if quick else SIZES[profile]
    w = np.array([c[1] for c in classes])
    name, _, (clo, chi), (tlo, thi) = classes[int(rng.choice(len(classes), p=w / w.sum()))]
    C, T = _log_int(rng, clo, chi), _log_int(rng, tlo, thi)
    if layout in ("time-contiguous", "channel-contiguous"):
        time_last = layout == "time-contiguous"
    else:
        time_last = bool(rng.integers(2))
    batch = 2 if C >= 4 and rng.random() < 0.3 else 1  # sometimes a leading batch dim: (B, C/B, T)
    chans = (batch, C // batch) if batch > 1 else (C,)
    if time_last:
        shape, axis = chans + (T,), len(chans)
    else:  # time before the channels: (T, C) or (B, T, C)
        shape, axis = chans[:-1] + (T, chans[-1]), len(chans) - 1
    a_kinds = ["full", "per-channel", "scalar"]
    if dtype.startswith("complex"):
        a_kinds += ["real-full", "real-per-channel"]
    outs = ("none", "new", "x") if op == "forward" else ("none", "alias")
    return Case(cid, op, dtype, shape, axis, layout, _pick(rng, a_kinds), _pick(rng, ("none", "full", "scalar")),
                bool(rng.integers(2)), outs[int(rng.choice(len(outs), p=[0.5, 0.25, 0.25] if len(outs) == 3
                                                           else [0.7, 0.3]))],
                _pick(rng, ("fast", "slow")), name, seed)


def make_cases(seed=0, count=None, profile="cpu", quick=False, dtypes=DTYPES):
    """The cases of one run: every (op, dtype, layout) of the elementwise scans and every n of
    :data:`MATRIX_NS` for the matrix scan's forward and backward once (in a seeded random order; the rest
    of each case drawn at random), then, up to ``count``, more random ones.  ``count`` below the number of
    combinations takes the first ``count``.  ``dtypes`` narrows the dtypes."""
    rng = np.random.default_rng(seed)
    dtypes = tuple(dtypes)
    combos = [(op, dt, lay, None) for op in OPS for dt in dtypes for lay in LAYOUTS]
    combos += [(f"matrix-{op}", _pick(rng, dtypes), _pick(rng, MATRIX_LAYOUTS), n) for op in OPS for n in MATRIX_NS]
    combos = [combos[i] for i in rng.permutation(len(combos))]
    count = len(combos) if count is None else int(count)
    while len(combos) < count:
        if rng.random() < 0.15:
            combos.append((f"matrix-{_pick(rng, OPS)}", _pick(rng, dtypes), _pick(rng, MATRIX_LAYOUTS),
                           _pick(rng, MATRIX_NS)))
        else:
            combos.append((_pick(rng, OPS), _pick(rng, dtypes), _pick(rng, LAYOUTS), None))
    return [_draw(rng, i, op, dt, lay, profile, quick, seed, n) for i, (op, dt, lay, n) in enumerate(combos[:count])]


# ----------------------------------------------------------------------------------------------- data

def _rand(rng, shape, dtype, kind="x", decay="fast"):
    dt = np.dtype(dtype)
    if kind == "a":
        lo, hi = (0.5, 0.95) if decay == "fast" else (0.99, 0.9999)
        v = rng.uniform(lo, hi, shape)
        if dt.kind == "c":
            v = v * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
    else:
        v = rng.standard_normal(shape)
        if dt.kind == "c":
            v = v + 1j * rng.standard_normal(shape)
    return np.asarray(v).astype(dt)


def _scalar(rng, dtype, kind):
    """A Python scalar (NumPy's weak scalar: it takes the data's dtype) exact in float16, so that every
    backend and the reference see the same value whatever precision it is converted to."""
    lo, hi = (0.5, 0.95) if kind == "a" else (-1.0, 1.0)
    v = float(rng.uniform(lo, hi))
    if np.dtype(dtype).kind == "c":
        z = v * np.exp(1j * rng.uniform(-np.pi, np.pi))
        return complex(float(np.float16(z.real)), float(np.float16(z.imag)))
    return float(np.float16(v))


def _real(dtype):
    return np.dtype(dtype).type(0).real.dtype


@dataclass(frozen=True)
class Target:
    """Where cases run: ``backend`` (the name given to parscan) on inputs of the array module ``xp``
    (CuPy for a CUDA backend, NumPy for a host one); ``gpu`` says whether this is the CUDA path (device
    info, roofline, GPU sizes).  The tests pass NumPy as ``xp`` with ``gpu=True`` to run that path."""

    backend: str
    xp: Any
    gpu: bool

    def to_host(self, v):
        if v is None or isinstance(v, (int, float, complex)):
            return v
        return np.asarray(self.xp.asnumpy(v)) if self.gpu else np.asarray(v)


_EVERY = slice(None, None, 2)
_FLIP = slice(None, None, -1)
#: elements of sentinel before and after the memory of every placed array (see :func:`_place`)
PAD = 64


def _sentinel(dtype):
    """What fills a placed array's buffer around it: NaN (a read of it shows in the result; a write
    over it is told apart by its bits)."""
    return np.dtype(dtype).type(np.nan)


@dataclass(frozen=True)
class _Buffer:
    """The memory a placed array views: ``flat`` on the target (``PAD`` sentinels, the body, ``PAD``
    sentinels); the array is ``flat[PAD:-PAD].reshape(body)[index]``."""

    flat: Any
    body: tuple
    index: tuple


def _place(t: Target, host, layout):
    """A copy of ``host`` on ``t``'s device in ``layout`` (``host`` stays as it was, to compare with):
    ``(array, its _Buffer)``.  Every layout views a buffer filled with the sentinel, ``PAD`` elements
    larger at either end, so that a write outside the array (or a read, which gives NaN) shows."""
    nd = host.ndim
    if layout == "strided":  # every other element of a body twice as large in every dim
        body, index = tuple(2 * n for n in host.shape), (_EVERY,) * nd
    elif layout == "negative":  # reversed memory order in every dim
        body, index = host.shape, (_FLIP,) * nd
    else:  # C order (the case's shape puts time or the channels last)
        body, index = host.shape, (Ellipsis,)
    size = math.prod(body)
    flat = t.xp.full(size + 2 * PAD, _sentinel(host.dtype), host.dtype)
    arr = flat[PAD:PAD + size].reshape(body)[index]
    arr[...] = t.xp.array(np.ascontiguousarray(host), copy=True)
    return arr, _Buffer(flat, body, index)


def _max_abs(v):
    return float(np.max(np.abs(v))) if v is not None and np.size(v) else 0.0


def _compare(name, got, want, dtype, reduced=1, bound=0.0, factor=1.0):
    """``(scaled error, tolerance, problem or None)``.  Error = max |got - want| / scale with scale =
    max(1, max |want|); for an output summed over ``reduced`` terms each at most ``bound`` in size, the
    scale is at least sqrt(reduced) * bound (rounding in a sum grows with the terms, not the result).
    Tolerance: ``TOL[dtype] * factor`` (see :func:`_memory_factor`)."""
    got, want = np.asarray(got), np.asarray(want)
    tol = TOL[dtype] * factor
    if got.shape != want.shape:
        return math.inf, tol, f"{name}: shape {got.shape}, expected {want.shape}"
    if not want.size:
        return 0.0, tol, None
    scale = max(1.0, _max_abs(want), math.sqrt(reduced) * bound if reduced > 1 else 0.0)
    diff = np.abs(got.astype(want.dtype) - want)
    err = float(np.max(diff)) / scale if not np.isnan(diff).any() else math.inf
    if err <= tol:
        return err, tol, None
    return err, tol, f"{name}: scaled error {err:.3g} > tolerance {tol:.3g}"


def _memory_factor(a, T):
    """sqrt(L / 20) (at least 1) for the memory length L = min(T, 1 / (1 - max |a|)) of the recurrence:
    rounding errors add up over L steps as a random walk; the test suite's TOL holds for |a| <= 0.95,
    L = 20.  Decays near 1 (0.9999) thus get up to ~22x the tolerance, still far below what a wrong
    carry or a lost step gives (an error of the order of the values)."""
    amax = _max_abs(a)
    L = T if amax >= 1 else min(T, 1.0 / (1.0 - amax))
    return max(1.0, math.sqrt(L / 20.0))


class _Checker:
    """Runs one case on one target, collecting outputs' errors and problems."""

    def __init__(self, case: Case, t: Target):
        self.case, self.t = case, t
        self.errors, self.problems, self.inputs = {}, [], []
        self.factor = 1.0  # tolerance factor of this case (_memory_factor)

    def place(self, host, layout, name, check_unmodified=True):
        arr, buf = _place(self.t, host, layout)
        if check_unmodified:
            self.inputs.append((name, arr, host))
        return arr, buf

    def compare(self, name, got, want, reduced=1, bound=0.0, library=True):
        """``got`` (on the target) against the float64 ``want``; ``library``: got must be an array of the
        inputs' library (not asked of the gradient of a Python scalar)."""
        if got is None or want is None:
            if (got is None) != (want is None):
                self.problems.append(f"{name}: got {type(got).__name__}, expected {type(want).__name__}")
            return
        if library and not isinstance(got, self.t.xp.ndarray):
            self.problems.append(f"{name}: a {type(got).__module__}.{type(got).__name__}, expected an array of "
                                 f"the inputs' library")
        err, tol, problem = _compare(name, self.t.to_host(got), want, self.case.dtype, reduced, bound, self.factor)
        self.errors[name] = err
        if problem:
            self.problems.append(problem)

    def expect_dtype(self, name, got, dtype):
        if got is not None and np.dtype(got.dtype) != np.dtype(dtype):
            self.problems.append(f"{name}: dtype {got.dtype}, expected {np.dtype(dtype)}")

    def inputs_unmodified(self, skip=()):
        for name, arr, host in self.inputs:
            if name not in skip and not np.array_equal(self.t.to_host(arr), host):
                self.problems.append(f"input {name} was modified")

    def gaps_untouched(self, name, buf):
        """Every element of ``buf`` (a :class:`_Buffer`) outside its array still holds the sentinel, bit
        for bit: the padding before and after it and the gaps of a strided layout."""
        if buf is None:
            return
        rest = np.array(self.t.to_host(buf.flat), copy=True)
        fill = _sentinel(rest.dtype)
        rest[PAD:rest.size - PAD].reshape(buf.body)[buf.index] = fill
        changed = rest.view(np.uint8).reshape(rest.size, -1) != np.full(1, fill).view(np.uint8)
        n = int(np.count_nonzero(changed.any(axis=1)))
        if n:
            self.problems.append(f"{name}: written outside the array ({n} element(s) of its buffer)")


def _forward_case(c: Case, k: _Checker, rng, place_x=True):
    dt = c.dtype
    x = _rand(rng, c.shape, dt)
    chan_shape = c.shape[:c.axis] + c.shape[c.axis + 1:]
    a_dt = _real(dt) if c.a.startswith("real") else dt
    if c.a == "scalar":
        a_h = a_d = _scalar(rng, dt, "a")
    else:
        a_shape = c.shape if c.a.endswith("full") else c.shape[:c.axis] + (1,) + c.shape[c.axis + 1:]
        a_h = _rand(rng, a_shape, a_dt, "a", c.decay)
        a_d = k.place(a_h, c.layout, "a")[0]
    if c.h0 == "scalar":
        h0_h = h0_d = _scalar(rng, dt, "x")
    elif c.h0 == "full":
        h0_h = _rand(rng, chan_shape, dt)
        h0_d = k.place(h0_h, c.layout, "h0")[0]
    else:
        h0_h = h0_d = None
    x_d, x_buf = k.place(x, c.layout, "x") if place_x else (None, None)
    return x, x_d, x_buf, a_h, a_d, a_dt, h0_h, h0_d


def run_forward(c: Case, k: _Checker, rng):
    x, x_d, x_buf, a_h, a_d, _, h0_h, h0_d = _forward_case(c, k, rng)
    out_d, buf = None, None
    if c.out == "new":
        out_d, buf = k.place(np.zeros(c.shape, c.dtype), c.layout, "out", check_unmodified=False)
    elif c.out == "x":
        out_d, buf = x_d, x_buf
    want = reference.linear_scan(a_h, x, h0_h, axis=c.axis, reverse=c.reverse)
    k.factor = _memory_factor(a_h, c.shape[c.axis])
    h = linear_scan(a_d, x_d, h0_d, axis=c.axis, reverse=c.reverse, out=out_d, backend=k.t.backend)
    if out_d is not None and h is not out_d:
        k.problems.append("the result is not the out= array")
    k.expect_dtype("h", h, c.dtype)
    k.compare("h", h, want)
    k.inputs_unmodified(skip=("x",) if c.out == "x" else ())
    k.gaps_untouched("out", buf)


def run_backward(c: Case, k: _Checker, rng):
    x, _, _, a_h, a_d, a_dt, h0_h, h0_d = _forward_case(c, k, rng, place_x=False)
    h_h = reference.linear_scan(a_h, x, h0_h, axis=c.axis, reverse=c.reverse).astype(c.dtype)
    gh_h = h_h if c.out == "alias" else _rand(rng, c.shape, c.dtype)
    wa, wx, wh0 = reference.linear_scan_backward(a_h, h_h, gh_h, h0_h, axis=c.axis, reverse=c.reverse)
    big = max(_max_abs(wa), _max_abs(wx), _max_abs(wh0))
    if c.dtype == "float16" and big > 1e3:  # keep the gradients in float16's range (they are linear in grad_h)
        f = 1e3 / big
        if c.out == "alias":  # grad_h is h: scale both (h of x scaled alike), the gradients go as f
            h_h = gh_h = (h_h * math.sqrt(f)).astype(c.dtype)
        else:
            gh_h = (gh_h * f).astype(c.dtype)
        wa, wx, wh0 = reference.linear_scan_backward(a_h, h_h, gh_h, h0_h, axis=c.axis, reverse=c.reverse)
    h_d = k.place(h_h, c.layout, "h")[0]
    gh_d = h_d if c.out == "alias" else k.place(gh_h, c.layout, "grad_h")[0]
    k.factor = _memory_factor(a_h, c.shape[c.axis])
    ga, gx, gh0 = linear_scan_backward(a_d, h_d, gh_d, h0_d, axis=c.axis, reverse=c.reverse, backend=k.t.backend)
    size = math.prod(c.shape)
    bound = _max_abs(wx) * max(_max_abs(h_h), _max_abs(h0_h), 1.0)
    k.expect_dtype("grad_x", gx, c.dtype)
    if c.a != "scalar":
        k.expect_dtype("grad_a", ga, a_dt)
    k.compare("grad_x", gx, wx)
    k.compare("grad_a", ga, wa, size // max(1, int(np.size(a_h))), bound, library=c.a != "scalar")
    k.compare("grad_h0", gh0, wh0, c.shape[c.axis] and size // c.shape[c.axis] // max(1, int(np.size(h0_h))),
              _max_abs(wx) * max(1.0, _max_abs(a_h)), library=c.h0 != "scalar")
    k.inputs_unmodified()


def _matrix_inputs(c: Case, k: _Checker, rng):
    B, T, n = c.shape
    dt = c.dtype
    A_shape = (B, T, n, n) if c.a == "full" else (1, n, n)
    A = _rand(rng, A_shape, "complex128" if dt.startswith("complex") else "float64")
    A *= 0.9 / np.linalg.norm(A.reshape(-1, n, n), 2, axis=(1, 2)).max(initial=1e-300)  # a contraction
    A_h = A.astype(dt)
    x = _rand(rng, c.shape, dt)
    h0_h = _rand(rng, (B, n), dt) if c.h0 == "full" else None
    A_d = k.place(A_h, c.layout, "A")[0]
    h0_d = None if h0_h is None else k.place(h0_h, c.layout, "h0")[0]
    return A_h, A_d, x, h0_h, h0_d


def _wide(v):
    return None if v is None else v.astype(np.complex128 if v.dtype.kind == "c" else np.float64)


def run_matrix(c: Case, k: _Checker, rng):
    A_h, A_d, x, h0_h, h0_d = _matrix_inputs(c, k, rng)
    want = matrix_linear_scan(_wide(A_h), _wide(x), _wide(h0_h), reverse=c.reverse, backend="reference")
    if c.op == "matrix-forward":
        x_d = k.place(x, c.layout, "x")[0]
        h = matrix_linear_scan(A_d, x_d, h0_d, reverse=c.reverse, backend=k.t.backend)
        k.expect_dtype("h", h, c.dtype)
        k.compare("h", h, want)
    else:
        h_h = want.astype(c.dtype)
        gh_h = _rand(rng, c.shape, c.dtype)
        h_d, gh_d = k.place(h_h, c.layout, "h")[0], k.place(gh_h, c.layout, "grad_h")[0]
        wA, wx, wh0 = matrix_linear_scan_backward(_wide(A_h), _wide(h_h), _wide(gh_h), _wide(h0_h),
                                                  reverse=c.reverse, backend="reference")
        gA, gx, gh0 = matrix_linear_scan_backward(A_d, h_d, gh_d, h0_d, reverse=c.reverse, backend=k.t.backend)
        B, T, n = c.shape
        bound = _max_abs(wx) * max(_max_abs(h_h), _max_abs(h0_h), 1.0)
        k.expect_dtype("grad_x", gx, c.dtype)
        k.compare("grad_x", gx, wx)
        k.compare("grad_A", gA, wA, n * B * T // (A_h.size // n), bound)
        k.compare("grad_h0", gh0, wh0, n, _max_abs(wx))
    k.inputs_unmodified()


_RUN = {"forward": run_forward, "backward": run_backward, "matrix-forward": run_matrix,
        "matrix-backward": run_matrix}


def run_case(c: Case, t: Target) -> dict:
    """One case on one target: a JSON-ready dict with ``status`` "pass", "mismatch" or "error"."""
    k = _Checker(c, t)
    t0 = time.perf_counter()
    try:
        _RUN[c.op](c, k, np.random.default_rng([c.seed, c.id]))
        status = "mismatch" if k.problems else "pass"
    except Exception as exc:  # noqa: BLE001 - any failure of a valid call is a finding to report
        status = "error"
        k.problems.append(f"{type(exc).__name__}: {str(exc)[:500]}")
    tol = TOL[c.dtype] * k.factor
    return dict(case=c.id, backend=t.backend, status=status, problems=k.problems,
                max_scaled_error={n: (e if math.isfinite(e) else None) for n, e in k.errors.items()},
                tolerance=tol, worst_of_tolerance=max([e / tol for e in k.errors.values()], default=0.0)
                if all(math.isfinite(e) for e in k.errors.values()) else None,
                seconds=round(time.perf_counter() - t0, 4))


# ------------------------------------------------------------------------------------------- roofline

def _free_pool(cp):
    pool = getattr(cp, "get_default_memory_pool", None)
    if pool is not None:
        pool().free_all_blocks()


def _window_check(cp, backend, a, x, h, axis, direction):
    """The first and last 4096 steps of channel 0 against the reference, from the result's own incoming
    state (forward) or with the full incoming gradient (backward: the last window is exact): the worst
    error as a share of its tolerance."""
    T = x.shape[axis]
    sel = (lambda s, e: (0, slice(s, e))) if axis in (-1, 1) else (lambda s, e: (slice(s, e), 0))
    worst = 0.0
    for s, e in ((0, min(T, 4096)), (max(0, T - 4096), T)):
        aw, xw = cp.asnumpy(a[sel(s, e)]), cp.asnumpy(x[sel(s, e)])
        hin = float(cp.asnumpy(h[sel(s - 1, s)])[0]) if s else None
        f = _memory_factor(aw, e - s)
        if direction == "forward":
            err, tol, _ = _compare("h", cp.asnumpy(h[sel(s, e)]), reference.linear_scan(aw, xw, hin), "float32",
                                   factor=f)
            worst = max(worst, err / tol)
        elif e == T:
            hw = cp.asnumpy(h[sel(s, e)])
            ga, gx, _ = linear_scan_backward(a, h, x, axis=axis, backend=backend)
            wa, wx, _ = reference.linear_scan_backward(aw, hw, xw, hin)
            for got, want in ((gx, wx), (ga, wa)):
                err, tol, _ = _compare("grad", cp.asnumpy(got[sel(s, e)]), want, "float32", factor=f)
                worst = max(worst, err / tol)
    return worst


def roofline(cp, backends, log2n=26, repeats=10, progress=None):
    """Forward and backward GB/s of each CUDA backend on a float32 array of 2^log2n elements (fewer when
    free memory is short) with ROOFLINE_CHANNELS channels, time-contiguous and channel-contiguous, timed
    with CUDA events (one warm-up call, ``repeats`` timed calls, median) and as a share of the copy
    bandwidth measured here.  Bytes: forward a, x read + h written; backward a, h, grad_h read + grad_a,
    grad_x written.  Each problem is checked on two windows against the reference before it is timed."""
    copy = copy_bandwidth(cp, repeats)
    _free_pool(cp)
    if progress:
        progress.step("roofline: copy bandwidth")
    free = cp.cuda.runtime.memGetInfo()[0]
    n = 1 << log2n
    while n > 1 << 16 and 7 * 4 * n > 0.8 * free:  # a, x, h, grad_a, grad_x and headroom
        n //= 2
    l2 = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["l2CacheSize"]
    rows, C = [], ROOFLINE_CHANNELS
    for backend in backends:
        for lay in ("time-contiguous", "channel-contiguous"):
            shape, axis = ((C, n // C), -1) if lay == "time-contiguous" else ((n // C, C), 0)
            sets = _gpu_inputs(cp, shape, "float32", l2)
            outs = [cp.empty_like(x) for _, x in sets]
            for (sa, sx), o in zip(sets, outs):  # every set's h, the backward's input
                linear_scan(sa, sx, axis=axis, out=o, backend=backend)
            for direction in ("forward", "backward"):
                worst = _window_check(cp, backend, *sets[0], outs[0], axis, direction)
                fn = _rotating(sets, outs, direction, axis, backend)
                m, lo, hi = _stats(_events(cp, fn, repeats))
                nbytes = (3 if direction == "forward" else 5) * 4 * n
                rows.append(dict(backend=backend, direction=direction, layout=lay, shape=list(shape),
                                 dtype="float32", ms=m * 1e3, ms_range=[lo * 1e3, hi * 1e3], gbps=nbytes / m / 1e9,
                                 of_copy=nbytes / m / copy, copy_gbps=copy / 1e9, checked_of_tolerance=worst,
                                 checked=worst <= 1.0))
                if progress:
                    progress.step(f"roofline {backend} {direction} {lay}")
            del sets, outs
            _free_pool(cp)
    return rows


# ---------------------------------------------------------------------------------------- environment

def _dist_version(*names):
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cuda_version(v):
    return f"{v // 1000}.{v % 1000 // 10}" if isinstance(v, int) else v


def environment():
    """Versions and the machine (no GPU needed)."""
    from . import __version__

    env = dict(parscan=__version__, python=platform.python_version(), numpy=np.__version__,
               platform=platform.platform(), machine=platform.machine(),
               processor=platform.processor() or platform.uname().machine, cpus=os.cpu_count(),
               numba=_dist_version("numba"), numba_cuda=_dist_version("numba-cuda"),
               cupy=_dist_version("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy"))
    try:
        import numba

        env["numba_threads"] = numba.get_num_threads()
    except Exception:  # noqa: BLE001  # pragma: no cover
        pass
    env["backends"] = {n: dict(device=s.device, available=s.available, reason=s.reason)
                       for n, s in _backends.available_backends().items()}
    return env


def gpu_info(cp):
    """The current CUDA device as CuPy sees it, the driver and runtime versions (and nvidia-smi's driver
    release where that tool is on the PATH)."""
    rt = cp.cuda.runtime
    dev = cp.cuda.Device()
    props = rt.getDeviceProperties(dev.id)
    free, total = rt.memGetInfo()
    name = props["name"]
    info = dict(name=name.decode() if isinstance(name, bytes) else str(name), device_id=dev.id,
                device_count=rt.getDeviceCount(), compute_capability=f"{props['major']}.{props['minor']}",
                multiprocessors=props.get("multiProcessorCount"), l2_bytes=props.get("l2CacheSize"),
                memory_gib=round(total / 2**30, 2), free_gib=round(free / 2**30, 2),
                driver_cuda_version=_cuda_version(rt.driverGetVersion()),
                cuda_runtime_version=_cuda_version(rt.runtimeGetVersion()), cupy=getattr(cp, "__version__", None))
    try:
        info["nvrtc_version"] = ".".join(map(str, cp.cuda.nvrtc.getVersion()))
    except Exception:  # noqa: BLE001 - optional detail
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            res = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader", f"--id={dev.id}"],
                                 capture_output=True, text=True, timeout=20)
            info["driver_version"] = res.stdout.strip() or None
        except Exception:  # noqa: BLE001 - optional detail
            pass
    return info


# ------------------------------------------------------------------------------------------------ run

def targets_for(backends=None):
    """``(targets, cupy module or None, why the GPU backends are not checked)`` for the backends asked for
    (None: every CUDA backend that loads, else the cpu backend).  Raises :class:`UsageError`."""
    st = _backends.available_backends()
    gpu_why = {n: st[n].reason for n in GPU_BACKENDS if not st[n].available}
    if backends is None:
        names = [n for n in GPU_BACKENDS if st[n].available] or ["cpu"]
    else:
        names = list(dict.fromkeys(backends))
        bad = [n for n in names if n not in CHECKABLE]
        if bad or not names:
            raise UsageError(f"--backend takes {', '.join(CHECKABLE)} (comma-separated), got {','.join(names)!r}")
        for n in names:
            if not st[n].available:
                raise UsageError(f"backend {n!r} cannot run here: {st[n].reason}")
    cp = None
    if any(_backends.status(n).device == "cuda" for n in names):
        import cupy as cp
    targets = [Target(n, cp if _backends.status(n).device == "cuda" else np, _backends.status(n).device == "cuda")
               for n in names]
    return targets, cp, gpu_why


class _Watchdog:
    """Writes the report as it stands and exits 1 when no case finishes for ``stall_s`` seconds (a kernel
    that never returns can't be interrupted from Python; the user still gets a report to send)."""

    def __init__(self, stall_s, on_stall):
        self.stall_s, self.on_stall, self.last, self.what = stall_s, on_stall, time.monotonic(), "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        if stall_s:
            self._thread.start()

    def beat(self, what):
        self.last, self.what = time.monotonic(), what

    def _watch(self):
        while not self._stop.wait(min(5.0, self.stall_s / 4)):
            if time.monotonic() - self.last > self.stall_s:
                self.on_stall(f"no progress for {self.stall_s:.0f} s while running: {self.what}")
                return

    def stop(self):
        self._stop.set()


def _summary(results, targets, roof):
    summ = {}
    for t in targets:
        rs = [r for r in results if r["backend"] == t.backend]
        worst = [r["worst_of_tolerance"] for r in rs if r["worst_of_tolerance"] is not None]
        summ[t.backend] = dict(cases=len(rs), passed=sum(r["status"] == "pass" for r in rs),
                               mismatches=sum(r["status"] == "mismatch" for r in rs),
                               errors=sum(r["status"] == "error" for r in rs),
                               worst_of_tolerance=max(worst, default=0.0))
    failed = sum(s["mismatches"] + s["errors"] for s in summ.values())
    failed += sum(not r["checked"] for r in roof)
    return summ, failed


def _write(path, report):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, default=str)
    os.replace(tmp, path)


def run(backends=None, seed=0, count=None, quick=False, out=DEFAULT_OUT, roofline_on=True, progress=True,
        echo=print, targets=None, cupy=None, dtypes=DTYPES, stall_s=STALL_S, _exit=os._exit):
    """Run the check; returns the report (its ``exit_code``: 0 all match, 1 any mismatch or error).

    ``targets`` and ``cupy`` replace the detection (:func:`targets_for`), e.g. NumPy standing in for CuPy."""
    t_start = time.perf_counter()
    gpu_why = {}
    if targets is None:
        targets, cupy, gpu_why = targets_for(backends)
    gpu = any(t.gpu for t in targets)
    names = ", ".join(t.backend for t in targets)
    why = "; ".join(f"{n}: {r}" for n, r in gpu_why.items())
    report = dict(tool="parscan check", command=" ".join(sys.argv), date=time.strftime("%Y-%m-%d %H:%M:%S %z"),
                  seed=seed, quick=quick, dtypes=list(dtypes), environment=environment(), gpu=None,
                  backends_checked=[t.backend for t in targets], cases=[], results=[], mismatches=[], roofline=[],
                  summary={}, passed=None, exit_code=None)
    if gpu:
        try:
            report["gpu"] = g = gpu_info(cupy)
            echo(f"parscan check: {g['name']} (compute capability {g['compute_capability']}, {g['memory_gib']} "
                 f"GiB), driver CUDA {g['driver_cuda_version']}, runtime {g['cuda_runtime_version']}; "
                 f"checking {names}" + (f" (not {why})" if why else ""))
        except Exception as exc:  # noqa: BLE001 - the cases still run; the report says what failed here
            report["gpu"] = dict(error=f"{type(exc).__name__}: {exc}")
            echo(f"parscan check: could not read the device's properties ({report['gpu']['error']}); "
                 f"checking {names}")
    else:
        why = why or "not asked for"
        if backends is None:
            echo(f"parscan check: no CUDA device: the GPU backends cannot run here; checking the cpu backend only; "
                 f"GPU backends: {why}")
        else:
            echo(f"parscan check: host backends {names}; GPU backends: {why}")
    cases = make_cases(seed, count, "gpu" if gpu else "cpu", quick, dtypes)
    report["cases"] = [dataclasses.asdict(c) for c in cases]
    gpu_targets = [t.backend for t in targets if t.gpu]
    do_roof = gpu and roofline_on and gpu_targets
    bar = Progress(len(cases) * len(targets) + (1 + 4 * len(gpu_targets) if do_roof else 0), progress)

    def finish(note=None):
        summ, failed = _summary(report["results"], targets, report["roofline"])
        ok = not failed and note is None
        report.update(summary=summ, passed=ok, exit_code=0 if ok else 1,
                      seconds=round(time.perf_counter() - t_start, 2))
        if note:
            report["aborted"] = note
        _write(out, report)
        return report

    def stalled(note):
        bar.close()
        print(f"parscan check: {note}; writing {out} and exiting", file=sys.stderr)
        finish(note)
        _exit(1)

    dog = _Watchdog(stall_s, stalled)
    try:
        for t in targets:
            for c in cases:
                dog.beat(f"{t.backend} {c.label()}")
                r = run_case(c, t)
                report["results"].append(r)
                if r["status"] != "pass":
                    report["mismatches"] += [dict(case=c.id, backend=t.backend, op=c.op, dtype=c.dtype,
                                                  label=c.label(), status=r["status"], problem=p,
                                                  max_scaled_error=r["max_scaled_error"], tolerance=r["tolerance"])
                                             for p in r["problems"]]
                bar.step(f"{t.backend} #{c.id} {c.op} {c.dtype}")
        if do_roof:
            dog.beat("roofline")
            try:
                report["roofline"] = roofline(cupy, gpu_targets, ROOFLINE_LOG2[bool(quick)], 5 if quick else 10, bar)
            except Exception as exc:  # noqa: BLE001 - reported; a failure unless the device ran out of memory
                report["roofline_error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
                if "OutOfMemory" not in type(exc).__name__:
                    report["mismatches"].append(dict(case="roofline", status="error",
                                                     problem=report["roofline_error"]))
            for r in report["roofline"]:
                if not r["checked"]:
                    report["mismatches"].append(dict(case="roofline", backend=r["backend"], status="mismatch",
                                                     problem=f"{r['direction']} {r['layout']}: error "
                                                             f"{r['checked_of_tolerance']:.3g}x its tolerance"))
    except KeyboardInterrupt:
        dog.stop()
        bar.close()
        finish("interrupted")
        echo(f"parscan check: interrupted; partial report in {out}")
        raise
    dog.stop()
    bar.close()
    roof_failed = any(m["case"] == "roofline" and m["status"] == "error" for m in report["mismatches"])
    finish("roofline failed" if roof_failed else None)
    _print_summary(report, echo)
    echo(f"wrote {out}")
    return report


def _print_summary(report, echo):
    for name, s in report["summary"].items():
        echo(f"  {name:6s} {s['cases']} cases: {s['passed']} passed, {s['mismatches']} mismatched, {s['errors']} "
             f"errors; worst error {s['worst_of_tolerance']:.2g} of its tolerance")
    if report["roofline"]:
        echo("  roofline (float32, % of this device's copy bandwidth "
             f"{report['roofline'][0]['copy_gbps']:.0f} GB/s):")
        for r in report["roofline"]:
            echo(f"    {r['backend']:5s} {r['direction']:8s} {r['layout']:18s} {'x'.join(map(str, r['shape'])):>14s} "
                 f"{r['ms']:8.3f} ms {r['gbps']:8.1f} GB/s {100 * r['of_copy']:5.1f}%")
    if report.get("roofline_error"):
        echo(f"  roofline not measured: {report['roofline_error']}")
    shown = report["mismatches"][:20]
    for m in shown:
        echo(f"  FAIL {m.get('backend', '')} {m.get('label', m['case'])}: {m['problem']}")
    if len(report["mismatches"]) > len(shown):
        echo(f"  ... and {len(report['mismatches']) - len(shown)} more in the report")
    if report["passed"]:
        echo(f"parscan check: all {sum(s['cases'] for s in report['summary'].values())} checks passed "
             f"in {report['seconds']:.1f} s")
    else:
        echo("parscan check: FAILED; please attach the report to an issue on the project's tracker")


def main(backends=None, seed=0, count=None, quick=False, out=DEFAULT_OUT, roofline_on=True, progress=True,
         dtypes=None) -> int:
    """The ``parscan check`` command (``backends`` and ``dtypes`` comma-separated): the exit status."""
    if count is not None and count < 1:
        print("parscan check: --cases must be >= 1", file=sys.stderr)
        return 2
    dts = DTYPES if dtypes is None else tuple(d.strip() for d in dtypes.split(",") if d.strip())
    if not dts or any(d not in DTYPES for d in dts):
        print(f"parscan check: --dtype takes {', '.join(DTYPES)} (comma-separated), got {dtypes!r}", file=sys.stderr)
        return 2
    names = None if backends is None else [b.strip() for b in backends.split(",") if b.strip()]
    try:
        report = run(names, seed, count, quick, out, roofline_on, progress, dtypes=dts)
    except UsageError as exc:
        print(f"parscan check: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return report["exit_code"]
