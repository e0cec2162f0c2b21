"""The ``cupy`` backend: ``scan.cu`` loaded with ``cupy.RawModule``, one template instantiation per
combination of the operands' dtypes, compiled lazily on first use (CuPy caches the binary on disk).

Kernel arguments are the canonical operands of ``parscan._problem`` (a flat buffer, an element offset
and four element strides each), so every layout the planner produces runs without a copy, and every
operand is read in its own dtype, so a mixed-precision call (a float16 ``x`` with a float32 ``a``,
float32 data with a float64 ``a``) runs without one either: this backend copies no operand (``h0``,
one value a channel, comes from the planner in the compute dtype).  One
module holds the instantiations of calls whose operands share the result dtype (``a`` in it or, for
complex data, its real type: :func:`instantiations`); any other combination is compiled, the first
time it is called, in a module of its own (by its key, see :func:`kernel_name`).  Work is launched on
CuPy's current stream.  ``resets`` are read by the kernel (one byte a step, broadcast over channels
by zero strides).
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from .._problem import run_backward, run_forward
from .launch import Launch, items_for, plan_launch

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scan.cu")
OPTIONS = ("-std=c++17",)

_CTYPE = {"float16": "half_t", "float32": "float", "float64": "double",
          "complex64": "cplx<float>", "complex128": "cplx<double>"}
_REAL = {"complex64": "float32", "complex128": "float64"}
_ACC = {"float16": "float32"}


def kernel_name(key) -> str:
    """The name expression of a key: ("scan", SA, SX, SH, S0, SO, SG, backward) (the storage dtypes of
    a, x or grad_h, the forward's h, h0, the result, grad_a; see scan.cu), ("sum", SG, A) or
    ("matrix", S), dtype names."""
    if key[0] == "scan":
        *stores, backward = key[1:]
        acc = _ACC.get(stores[4], stores[4])
        types = ", ".join(_CTYPE[d] for d in (*stores, acc))
        return f"scan_kernel<{types}, {items_for(acc)}, {'true' if backward else 'false'}>"
    if key[0] == "sum":
        return f"sum_parts<{_CTYPE[key[1]]}, {_CTYPE[key[2]]}>"
    return f"matrix_pass<{_CTYPE[key[1]]}>"


def instantiations():
    """Every (kernel name expression, dtype key) the common module holds: the scans whose operands
    are in the result dtype S (``a`` in S or, for complex S, its real type), sum_parts, matrix_pass."""
    keys = []
    for s in _CTYPE:
        acc = _ACC.get(s, s)
        for sa in (s, _REAL.get(s)):
            if sa is None:
                continue
            for backward in (False, True):
                for sg in ((s, acc) if backward and acc != s else (s,)):
                    keys.append(("scan", sa, s, s, s, s, sg, backward))
        for sg in {s, acc}:
            keys.append(("sum", sg, acc))
    keys += [("matrix", s) for s in ("float32", "float64", "complex64", "complex128")]
    return [(kernel_name(k), k) for k in dict.fromkeys(keys)]


def source() -> str:
    with open(SOURCE) as f:
        return f.read()


@lru_cache(maxsize=None)
def _module(names=None):
    """The common module (``names`` None: :func:`instantiations`), or one of the given names."""
    import cupy

    names = [n for n, _ in instantiations()] if names is None else list(names)
    return cupy.RawModule(code=source(), options=OPTIONS, name_expressions=names)


@lru_cache(maxsize=None)
def _names():
    return {key: name for name, key in instantiations()}


def _function(key):
    """The kernel of a key: from the common module, or from a module of its own (compiled once)."""
    name = _names().get(key)
    if name is None:
        name = kernel_name(key)
        return _module((name,)).get_function(name)
    return _module().get_function(name)


def _geo(s):
    """An operand's element offset and four strides, as the kernel's i64 arguments."""
    return (np.int64(s.off), *(np.int64(v) for v in s.strides))


_ZERO_GEO = (np.int64(0),) * 5
_DUMMIES: dict = {}

RESETS = True  # implements ``resets`` (see parscan.scan): scan.cu reads the flags itself


def _dummy(cupy, dtype):
    """A one-element array on the current device for an operand slot the launch leaves unused (the
    kernels never read or write those: the forward's hh, ga, gh0 and parts, the backward's gh0
    without h0, the resets without resets), made once per device and dtype."""
    key = (cupy.cuda.Device().id, np.dtype(dtype).str)
    arr = _DUMMIES.get(key)
    if arr is None:
        arr = _DUMMIES.setdefault(key, cupy.zeros(1, dtype))
    return arr


def _status_sizes(launch: Launch, acc):
    """(entries, value words per array, their dtype) of a launch's look-back scratch."""
    n = max(1, launch.status_entries)
    return n, n * (2 if acc.kind == "c" else 1), np.dtype(_REAL.get(acc.name, acc.name))


def _status(cupy, sizes):
    """Look-back scratch from CuPy's pool, new for every launch (concurrent launches on other streams
    must not share it): one zeroed int32 block holds the tile counter (as uint64) and the flags; the
    three value arrays need no zeroing (a flag guards every read)."""
    n, m, real = sizes
    z = cupy.zeros(2 + n, np.int32)
    vals = cupy.empty(3 * m, real)
    return z[:2].view(np.uint64), z[2:], vals[:m], vals[m:2 * m], vals[2 * m:]


def _scratch(cupy, launch: Launch, acc):
    """``() -> the look-back scratch arguments`` of a launch: new for every launch when a channel spans
    several tiles; else the kernel touches none of it (tiles take their ids from blockIdx) and
    one-element stand-ins, made once per device, serve every launch: no allocation, no memset."""
    sizes = _status_sizes(launch, acc)
    if launch.status_entries:
        return lambda: _status(cupy, sizes)
    fixed = (_dummy(cupy, np.uint64), _dummy(cupy, np.int32), *(_dummy(cupy, sizes[2]),) * 3)
    return lambda: fixed


def _geometry(problem, launch):
    C0, C1, C2, T = (np.int64(v) for v in problem.shape)
    return (C0, C1, C2, T, np.int32(launch.chans), np.int32(launch.lanes), np.int32(launch.chan_fast),
            np.int64(launch.time_tiles))


def _plan(problem, lead, launch):
    """``(acc, launch, dtype)``; a given launch must match the instantiations."""
    acc = problem.acc_dtype
    launch = launch or plan_launch(problem.shape, lead.strides, items=items_for(acc))
    if launch.items != items_for(acc) or launch.threads > 256:
        raise ValueError(f"scan.cu is instantiated for {items_for(acc)} steps a thread and at most 256 threads, "
                         f"got a launch with {launch.items} and {launch.threads}")
    return acc, launch, problem.dtype


def _resets(problem):
    """The resets' geometry and has_r, as the kernel's arguments after the buffer."""
    r = problem.resets
    return (*(_ZERO_GEO if r is None else _geo(r)), np.int32(r is not None))


# ``forward_launcher(problem)`` / ``backward_launcher(problem)`` make every decision that depends only on
# the problem's geometry once (launch configuration, kernel, argument offsets and strides, the unused
# slots' stand-ins) and return ``run(...)`` of the flat buffers; the plan cache keeps it, so a replayed
# call allocates the look-back scratch and launches.  ``forward(problem)`` is the one-off call.  Both
# run with the data's device current: the public calls and the plans' replays enter it (scratch and
# launches then land there), so ``run`` does not enter it again.

def forward_launcher(problem, launch=None):
    import cupy

    acc, launch, d = _plan(problem, problem.x, launch)
    dev = problem.x.buf.device.id
    s0 = d if problem.h0 is None else problem.h0.buf.dtype
    with cupy.cuda.Device(dev):
        fn = _function(("scan", problem.a.buf.dtype.name, problem.x.buf.dtype.name, d.name, s0.name, d.name,
                        d.name, False))
        none, none_acc, none_real, none_r = (_dummy(cupy, t) for t in (d, acc, _REAL.get(acc.name, acc.name),
                                                                       np.bool_))
        scratch = _scratch(cupy, launch, acc)
    # the arguments between the buffers, made once (the buffers go in as they are, in their own dtypes)
    after_a, after_x = _geo(problem.a), (*_geo(problem.x), none, *_ZERO_GEO)
    after_h0 = (*(_geo(problem.h0) if problem.h0 is not None else _ZERO_GEO), np.int32(problem.h0 is not None))
    after_r = _resets(problem)
    tail = (*_geo(problem.out), none, *_ZERO_GEO, none_acc, *_ZERO_GEO, none_real, *_geometry(problem, launch))
    grid, block = (launch.blocks,), (launch.threads,)

    def run(a, x, h0, out, resets=None):  # with the data's device current (see the note above)
        fn(grid, block, (a, *after_a, x, *after_x, none if h0 is None else h0, *after_h0,
                         none_r if resets is None else resets, *after_r, out, *tail, *scratch()))
    return run


def backward_launcher(problem, launch=None):
    import cupy

    acc, launch, d = _plan(problem, problem.grad_h, launch)
    sg = problem.grad_a.buf.dtype
    C0, C1, C2, T = problem.shape
    nchan = C0 * C1 * C2
    summed = problem.grad_a.strides[3] == 0
    real = np.dtype(_REAL.get(acc.name, acc.name))
    # a constant in time: per-(channel, tile) sums, summed by sum_parts; one tile: the kernel writes grad_a
    nparts = nchan * launch.time_tiles * (2 if acc.kind == "c" else 1) if summed and launch.time_tiles > 1 else 0
    dev = problem.grad_h.buf.device.id
    with cupy.cuda.Device(dev):
        s0 = d if problem.h0 is None else problem.h0.buf.dtype
        fn = _function(("scan", problem.a.buf.dtype.name, problem.grad_h.buf.dtype.name, problem.h.buf.dtype.name,
                        s0.name, d.name, sg.name, True))
        total = _function(("sum", sg.name, acc.name)) if nparts else None
        none, none_acc, none_real, none_r = (_dummy(cupy, t) for t in (d, acc, real, np.bool_))
        scratch = _scratch(cupy, launch, acc)
    after_a, after_g, after_h = _geo(problem.a), _geo(problem.grad_h), _geo(problem.h)
    after_h0 = (*(_geo(problem.h0) if problem.h0 is not None else _ZERO_GEO), np.int32(problem.h0 is not None))
    after_r = _resets(problem)
    gq = _geo(problem.grad_a)
    after_x = _geo(problem.grad_x)
    after_q0 = _geo(problem.grad_h0) if problem.grad_h0 is not None else _ZERO_GEO
    geometry = _geometry(problem, launch)
    grid, block = (launch.blocks,), (launch.threads,)
    sum_grid, sum_args = ((nchan + 127) // 128,), (*gq, np.int64(C0), np.int64(C1), np.int64(C2),
                                                   np.int64(launch.time_tiles))

    def run(a, h, grad_h, h0, grad_x, grad_a, grad_h0, resets=None):  # the data's device current
        parts = cupy.empty(nparts, real) if nparts else none_real
        fn(grid, block, (a, *after_a, grad_h, *after_g, h, *after_h, none if h0 is None else h0, *after_h0,
                         none_r if resets is None else resets, *after_r, grad_x, *after_x, grad_a, *gq,
                         none_acc if grad_h0 is None else grad_h0, *after_q0, parts, *geometry, *scratch()))
        if total is not None:
            total(sum_grid, (128,), (parts, grad_a, *sum_args))
    return run


def forward(problem, launch=None):
    import cupy

    with cupy.cuda.Device(problem.x.buf.device.id):
        run_forward(forward_launcher, problem, launch)


def backward(problem, launch=None):
    import cupy

    with cupy.cuda.Device(problem.grad_h.buf.device.id):
        run_backward(backward_launcher, problem, launch)


def matrix_pass(aggregate, A, conj, shift, x, h0, resets, rc, carry, out, L, nch, reverse):
    """Launch one pass of the matrix scan (see :mod:`parscan.kernels.matrix_launch`) on CuPy's
    current stream of ``out``'s device.  Views go in as they are: a pointer to element 0 and element
    strides (negative and zero strides included).  ``resets``: a bool (Bo, Bi, T) view (batch row b
    at ``[b // Bi, b % Bi]``) or None; ``rc``: the aggregate pass's chunk flags, a contiguous bool
    (B, nch) array (with resets)."""
    import cupy

    from . import matrix_launch

    if matrix_launch.THREADS != 256:
        raise ValueError("scan.cu's matrix_pass is compiled for 256 threads a block (its THREADS)")
    B, T, n = x.shape
    es = lambda v: tuple(np.int64(s // v.itemsize) for s in v.strides)  # noqa: E731
    with cupy.cuda.Device(out.device.id):
        fn = _function(("matrix", out.dtype.name))
        none = cupy.zeros(1, out.dtype)
        no_r = _dummy(cupy, np.bool_)
        h0a = (h0, *es(h0)) if h0 is not None else (none, np.int64(0), np.int64(0))
        if resets is None:
            ra = (no_r, np.int64(0), np.int64(0), np.int64(1), np.int64(0), np.int32(0))
        else:
            so, si, st = es(resets)
            ra = (resets, so, si, np.int64(resets.shape[1]), st, np.int32(1))
        ost = es(out) + (np.int64(0),) * (4 - out.ndim)
        cols = B * nch * (n + 1 if aggregate else 1)
        threads = matrix_launch.THREADS
        fn((matrix_launch.blocks_for(cols, n, threads),), (threads,),
           (np.int32(aggregate), A, *es(A), np.int32(conj), np.int64(shift), x, *es(x), *h0a,
            np.int32(h0 is not None), *ra, rc if rc is not None else no_r, carry if carry is not None else none,
            out, *ost, np.int64(B), np.int64(T), np.int32(n), np.int64(L), np.int64(nch), np.int32(reverse),
            np.int32(matrix_launch.batch_fast(x))))
