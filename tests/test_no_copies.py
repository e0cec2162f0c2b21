"""No hidden copies (issue #23): a call allocates nothing operand-sized beyond its result.

Over a seeded random set of layouts (transposed, negative strides, sliced steps, time-major, 3-6 dims
with many channel groups, so that the planner runs the outer ones as parts), broadcasts (scalar,
time-only and channel-only decays, broadcast h0, resets) and mixed dtypes (float16 x with a float32
a, float32 x with a float64 a), forward and backward, each call's extra memory, beyond the bytes of
its results, must stay under ``SCRATCH`` times its largest operand (operands are MBs; the scratch
that remains is per-channel or smaller: a decay constant in time gets its per-channel grad_a, h0 its
compute-dtype view, the GPU kernels their look-back flags; or one block of channels' grad_a, at most
1/8 of h, where a decay shared by channels varies in time: see ``GRAD_A_CASES`` below).

- ``cpu`` (and ``reference``, reported, not bounded: it computes in float64 temporaries of the data's
  size, as a ground truth may): ``tracemalloc``'s peak over the call, which sees NumPy's allocations
  (not Numba's own, inside the kernels: the cpu kernels allocate per-task scratch there);
- ``cupy`` on the CPU harness (the CUDA C kernels run by the backend's own launch code) and ``numba``
  (its launch code, the launch itself a no-op: the harness has no Numba CUDA kernels):
  ``fake_cupy.counting()``, every array the stand-in cupy allocates.

Each call is measured twice: planned (the plan cache empty) and replayed from its plan.
"""

import sys
import tracemalloc

import numpy as np
import pytest

import parscan
from parscan import _backends, _plans, _problem, reference
from parscan._arrays import as_flags, as_operand
from conftest import assert_close
import cuda_cpu
from cuda_cpu import fake_cupy

SCRATCH = 0.25  # extra bytes allowed, as a fraction of the call's largest operand
BLOCK_MIN = 1024  # the grad_a blocks' floor here (see small_grad_a_blocks)
DEFAULT_BLOCK_MIN = _problem.GRAD_A_BLOCK_MIN
HOST_ELEMENTS = (100_000, 300_000)  # x's elements: 0.4-1.2 MB in float32
CUDA_ELEMENTS = (12_000, 40_000)  # the CPU harness runs the CUDA C kernels a thread at a time: smaller
N_CASES = 30
MIXES = [("float32", "float32"), ("float16", "float32"), ("float32", "float64")]  # (x, a)


@pytest.fixture(autouse=True)
def small_grad_a_blocks(monkeypatch):
    """A backward whose grad_a is reduced (a decay broadcast over channels and varying in time) runs
    in blocks of channels, each at most 1/8 of h's bytes but at least ``GRAD_A_BLOCK_MIN`` (64k)
    elements, so that the kernels run on blocks worth a launch; the operands here are smaller than
    that floor makes meaningful (the CPU harness's a few 10k elements), so it is lowered to
    ``BLOCK_MIN`` and the 1/8 rule decides (the default floor: ``test_grad_a_blocks_at_the_default_floor``)."""
    monkeypatch.setattr(_problem, "GRAD_A_BLOCK_MIN", BLOCK_MIN)


def _case(i):
    """Case ``i``: a dict of what to build (see :func:`_build`), drawn from a generator seeded by i."""
    rng = np.random.default_rng(1000 + i)
    ndim = int(rng.choice([3, 4, 5, 6], p=[0.1, 0.2, 0.3, 0.4]))
    T = int(rng.choice([600, 1100, 2100]))
    chans = [int(n) for n in rng.integers(2, 8, ndim - 1)]
    axis = int(rng.integers(ndim)) if rng.random() < 0.3 else ndim - 1
    return dict(
        i=i, axis=axis,
        shape=_sized(chans, T, axis, HOST_ELEMENTS), cuda_shape=_sized(chans, T // 2, axis, CUDA_ELEMENTS),
        perm=tuple(int(p) for p in (rng.permutation(ndim) if rng.random() < 0.5 else range(ndim))),
        flips=tuple(int(d) for d in np.flatnonzero(rng.random(ndim) < 0.5)),
        step=int(rng.integers(ndim)) if rng.random() < 0.3 else None,
        time_major=bool(rng.random() < 0.2),
        a=str(rng.choice(["full", "scalar", "time", "channel"])),
        h0=str(rng.choice(["none", "full", "bcast"])),
        dtypes=MIXES[int(rng.choice(3, p=[.5, .25, .25]))],
        reverse=bool(rng.random() < 0.4),
        resets=bool(rng.random() < 0.2),
        out=bool(rng.random() < 0.3),
        op=str(rng.choice(["forward", "backward"])),
    )


def _sized(chans, T, axis, elements):
    """The shape of channel sizes near ``chans`` and T steps, with time at ``axis``, of a size in
    ``elements`` (a range)."""
    chans = list(chans)
    while np.prod(chans) * T > elements[1]:
        chans[int(np.argmax(chans))] -= 1
    while np.prod(chans) * T < elements[0]:
        chans[int(np.argmin(chans))] += 1
    return tuple(chans[:axis] + [T] + chans[axis:])


CASES = [_case(i) for i in range(N_CASES)]


def _view(base, c):
    """``base`` (contiguous, in memory order) as the case's layout (logical order)."""
    v = base[tuple(slice(None, None, 2) if d == c["step"] else slice(None) for d in range(base.ndim))]
    v = v.transpose(np.argsort(c["memory"]))  # memory order -> logical order
    return v[tuple(slice(None, None, -1) if d in c["flips"] else slice(None) for d in range(v.ndim))]


def _layout(c, xp, host):
    """``host`` (of the case's shape) copied into a new buffer of ``xp``, returned as the case's view."""
    if "memory" not in c:
        order = list(c["perm"])
        if c["time_major"]:
            order.remove(c["axis"])
            order.insert(0, c["axis"])
        c["memory"] = tuple(order)
    mem_shape = [host.shape[d] for d in c["memory"]]
    if c["step"] is not None:
        mem_shape = [2 * n if d == c["step"] else n for d, n in enumerate(mem_shape)]
    base = np.zeros(mem_shape, host.dtype)
    buf = xp.asarray(base) if xp is not np else base
    v = _view(buf, c)
    v[...] = xp.asarray(host) if xp is not np else host
    return v


def _build(c, xp):
    """The call's arguments (host copies for the reference too): a dict."""
    rng = np.random.default_rng(c["i"])
    shape, axis = c["shape" if xp is np else "cuda_shape"], c["axis"]
    xdt, adt = (np.dtype(t) for t in c["dtypes"])
    x = rng.standard_normal(shape).astype(xdt)
    T = shape[axis]
    if c["a"] == "full":
        a = rng.uniform(0.5, 0.95, shape).astype(adt)
    elif c["a"] == "time":
        a = rng.uniform(0.5, 0.95, T).astype(adt).reshape((T,) + (1,) * (len(shape) - 1 - axis))
    elif c["a"] == "channel":
        a = rng.uniform(0.5, 0.95, shape[:axis] + (1,) + shape[axis + 1:]).astype(adt)
    else:
        a = adt.type(rng.uniform(0.5, 0.95))  # a NumPy scalar: not weak, its dtype counts
    chan = shape[:axis] + shape[axis + 1:]
    h0 = {"none": None, "full": rng.standard_normal(chan).astype(xdt),
          "bcast": rng.standard_normal(chan[-1:]).astype(xdt)}[c["h0"]]
    resets = (rng.random((T,) + (1,) * (len(shape) - 1 - axis)) < 0.05) if c["resets"] else None
    dt = np.result_type(x, a)
    host = dict(a=a, x=x, h0=h0, resets=resets)
    dev = dict(host)
    dev["x"] = _layout(c, xp, x)
    if isinstance(a, np.ndarray) and c["a"] == "full":
        dev["a"] = _layout(c, xp, a)
    elif isinstance(a, np.ndarray) and xp is not np:
        dev["a"] = xp.asarray(a)
    if xp is not np:
        dev["h0"] = None if h0 is None else xp.asarray(h0)
        dev["resets"] = None if resets is None else xp.asarray(resets)
    if c["op"] == "backward":
        h = reference.linear_scan(a, x, h0, axis=axis, reverse=c["reverse"], resets=resets).astype(xdt)
        gh = rng.standard_normal(shape).astype(xdt)
        host.update(h=h, grad_h=gh)
        dev.update(h=_layout(c, xp, h), grad_h=_layout(c, xp, gh))
    dev["out"] = _layout(c, xp, np.zeros(shape, dt)) if c["out"] and c["op"] == "forward" else None
    return host, dev, dt


def _call(c, dev, backend):
    kw = dict(axis=c["axis"], reverse=c["reverse"], resets=dev["resets"], backend=backend)
    if c["op"] == "forward":
        return (parscan.linear_scan(dev["a"], dev["x"], dev["h0"], out=dev["out"], **kw),)
    return parscan.linear_scan_backward(dev["a"], dev["h"], dev["grad_h"], dev["h0"], **kw)


def _nbytes(v):
    return 0 if v is None or not hasattr(v, "nbytes") else int(v.nbytes)


def _bounds(c, dev, results):
    """(bytes of the results the call allocated, the largest operand's bytes)."""
    given = dev["out"] is not None
    result = 0 if given else sum(_nbytes(r) for r in results)
    largest = max(_nbytes(dev[k]) for k in ("a", "x", "h0", "h", "grad_h", "out") if k in dev)
    return result, largest


def _check(c, host, results, dt):
    if c["op"] == "forward":
        want = (reference.linear_scan(host["a"], host["x"], host["h0"], axis=c["axis"], reverse=c["reverse"],
                                      resets=host["resets"]),)
    else:
        want = reference.linear_scan_backward(host["a"], host["h"], host["grad_h"], host["h0"], axis=c["axis"],
                                              reverse=c["reverse"], resets=host["resets"])
    for g, w in zip(results, want):
        if w is not None:  # at the lower precision of the result type and this result's (grad_h0: h0's)
            g = np.asarray(g)
            assert_close(g, np.asarray(w), max(np.dtype(dt), g.dtype, key=lambda d: np.finfo(d).eps))


def _params(backends):
    """The cases on each backend; on the cpu backend the mixed-dtype ones are slow (each compiles its own
    Numba kernels cold, ~25-55 s on the 2-core CI machine; Numba specialises on each operand's dtype, so
    they read no cast), and the default run keeps the mixed dtypes on the CUDA backends' launch paths."""
    return [pytest.param(c, b, id=f"{b}-{c['i']}-{c['op']}-{c['a']}-{'-'.join(c['dtypes'])}",
                         marks=[pytest.mark.slow] if b == "cpu" and len(set(c["dtypes"])) > 1 else [])
            for b in backends for c in CASES]


def _twice(c, dev, backend, measure, warm=True):
    """The call measured planned (plan cache empty) and replayed: the larger extra, and the results.
    ``warm``: a call before, for what is made once per process (the cpu backend's Numba kernels)."""
    if warm:
        _call(c, dev, backend)
    extra = 0
    for clear in (True, False):
        if clear:
            _plans.clear()
        used, results = measure(lambda: _call(c, dev, backend))
        result, largest = _bounds(c, dev, results)
        extra = max(extra, used - result)
    return extra, largest, results


def _traced(fn):
    tracemalloc.start()
    try:
        results = fn()
        return tracemalloc.get_traced_memory()[1], results
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("c,backend", _params(["cpu"]))
def test_host_calls_allocate_only_their_results(c, backend):
    host, dev, dt = _build(c, np)
    extra, largest, results = _twice(c, dev, backend, _traced)
    _check(c, host, results, dt)
    assert extra < SCRATCH * largest, f"{extra / largest:.2f}x the largest operand allocated beyond the results"


def test_the_reference_allocates_temporaries_and_is_reported():
    """The reference may allocate (float64 temporaries of the data's size): say how much, bound nothing."""
    c = next(c for c in CASES if c["op"] == "forward" and c["a"] == "full")
    host, dev, dt = _build(c, np)
    extra, largest, _ = _twice(c, dev, "reference", _traced)
    print(f"reference: {extra / largest:.1f}x the largest operand beyond its result")
    assert extra > 0


@pytest.fixture(scope="module")
def cp():
    with cuda_cpu.installed() as module:
        yield module


@pytest.fixture
def no_numba_launches(monkeypatch):
    """The numba backend's launch code with the launches no-ops (the harness has no Numba CUDA)."""
    pytest.importorskip("numba.cuda")
    from parscan.kernels import numba_scan

    monkeypatch.setattr(numba_scan, "_launch", lambda *args: None)
    monkeypatch.setattr(_backends, "_numba_cuda_reason", lambda: "")
    _backends.status.cache_clear()
    yield
    _backends.status.cache_clear()


def _counted(fn):
    with fake_cupy.counting() as n:
        results = fn()
    return n.bytes, results


@pytest.mark.parametrize("c,backend", _params(["cupy", "numba"]))
def test_cuda_calls_allocate_only_their_results(cp, request, c, backend):
    if backend == "numba":
        request.getfixturevalue("no_numba_launches")
    host, dev, dt = _build(c, cp)
    extra, largest, results = _twice(c, dev, backend, _counted, warm=False)
    if backend == "cupy":
        _check(c, host, results, dt)
    assert extra < SCRATCH * largest, f"{extra / largest:.2f}x the largest operand allocated beyond the results"


def test_the_cases_cover_what_they_claim():
    """Many groups (parts), every broadcast, both mixed dtypes, both directions and ops, out= and resets."""
    from parscan._arrays import as_operand
    from parscan._problem import plan_forward

    many = 0
    for c in CASES:
        _, dev, _ = _build(c, np)
        p = plan_forward(np, as_operand(dev["a"], "a", allow_scalar=True), as_operand(dev["x"], "x"), None, None,
                         c["axis"], c["reverse"])[0]
        many += bool(p.outer)
    assert many >= 5
    assert {c["a"] for c in CASES} == {"full", "scalar", "time", "channel"}
    assert {c["h0"] for c in CASES} == {"none", "full", "bcast"}
    assert {c["dtypes"] for c in CASES} >= {("float16", "float32"), ("float32", "float64")}
    assert {c["op"] for c in CASES} == {"forward", "backward"} and {c["reverse"] for c in CASES} == {False, True}
    assert any(c["out"] and c["op"] == "forward" for c in CASES) and any(c["resets"] for c in CASES)
    assert any(c["step"] is not None for c in CASES) and any(c["flips"] for c in CASES)
    assert any(c["time_major"] for c in CASES) and any(c["axis"] != len(c["shape"]) - 1 for c in CASES)


# ---- grad_a by blocks of channels (a decay broadcast over channels and varying in time, or of another
# dtype than the result): every feature the blocks must carry, a channel count that leaves a smaller
# last block, planned and replayed, against the reference --------------------------------------------

def _grad_a_case(i, name, shape, axis, a, dtypes, h0=False, reverse=False, resets=False, perm=None, flips=(),
                 step=None):
    """A backward case for :func:`_grad_a_build`: ``a`` "time" (T,), "batch" (x's shape with 1 in the
    second dim) or "full"; ``shape`` the host shape (the harness's has T / 12).  The host's are larger
    than the CPU harness's: tracemalloc also sees the Python objects each block's run makes (a few
    kB, nothing operand-sized), which at a few hundred kB of x would be most of the bound."""
    nd = len(shape)
    cuda_shape = tuple(n // 12 if d == axis % nd else n for d, n in enumerate(shape))
    return dict(i=i, name=name, axis=axis % nd, shape=shape, cuda_shape=cuda_shape, perm=perm or tuple(range(nd)),
                flips=flips, step=step, time_major=False, a=a, h0="full" if h0 else "none", dtypes=dtypes,
                reverse=reverse, resets=resets, out=False, op="backward")


GRAD_A_CASES = [
    _grad_a_case(0, "time-h0-reverse-resets", (37, 5, 1440), -1, "time", ("float32", "float32"), True, True, True),
    _grad_a_case(1, "time-major-complex-real-a", (1440, 37, 5), 0, "time", ("complex128", "float64"), True),
    _grad_a_case(2, "complex-a-flipped", (37, 4, 1200), -1, "time", ("complex128", "complex128"), reverse=True,
                 flips=(0, 2)),
    _grad_a_case(3, "half", (37, 5, 1440), -1, "time", ("float16", "float16"), True, resets=True),
    _grad_a_case(4, "batch-decay-transposed", (6, 37, 1200), -1, "batch", ("float32", "float32"), True,
                 perm=(1, 0, 2)),
    _grad_a_case(5, "parts-6d", (3, 2, 3, 2, 3, 1200), -1, "time", ("float32", "float32"), True, True,
                 flips=(1, 3), step=2),
    _grad_a_case(6, "mixed-full", (37, 5, 1200), -1, "full", ("complex128", "float64"), True, True),  # a real a
]


def _grad_a_build(c, xp):
    """The case's arguments, as :func:`_build` makes them (complex data with nonzero imaginary parts)."""
    rng = np.random.default_rng(c["i"])
    shape, axis = c["shape" if xp is np else "cuda_shape"], c["axis"]
    xdt, adt = (np.dtype(t) for t in c["dtypes"])
    T = shape[axis]

    def rand(shp, dt, decay=False):
        v = rng.uniform(0.5, 0.95, shp) if decay else rng.standard_normal(shp)
        if dt.kind == "c":
            v = v * np.exp(1j * rng.uniform(-0.3, 0.3, shp)) if decay else v + 1j * rng.standard_normal(shp)
        return v.astype(dt)
    a = rand({"time": (T,) + (1,) * (len(shape) - 1 - axis), "batch": shape[:1] + (1,) + shape[2:],
              "full": shape}[c["a"]], adt, True)
    x = rand(shape, xdt)
    h0 = rand(shape[:axis] + shape[axis + 1:], xdt) if c["h0"] == "full" else None
    resets = (rng.random((T,) + (1,) * (len(shape) - 1 - axis)) < 0.05) if c["resets"] else None
    h = reference.linear_scan(a, x, h0, axis=axis, reverse=c["reverse"], resets=resets).astype(xdt)
    gh = rand(shape, xdt)
    host = dict(a=a, x=x, h0=h0, resets=resets, h=h, grad_h=gh)
    dev = dict(host, x=None, out=None, h=_layout(c, xp, h), grad_h=_layout(c, xp, gh))
    if c["a"] == "full":
        dev["a"] = _layout(c, xp, a)
    elif xp is not np:
        dev["a"] = xp.asarray(a)
    if xp is not np:
        dev.update({k: None if host[k] is None else xp.asarray(host[k]) for k in ("h0", "resets")})
    return host, dev, np.result_type(x, a)


@pytest.mark.parametrize("c", GRAD_A_CASES, ids=[c["name"] for c in GRAD_A_CASES])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_grad_a_by_blocks_on_the_host(c, backend):
    host, dev, dt = _grad_a_build(c, np)
    problem = _problem.plan_backward(np, *(None if dev[k] is None else as_operand(dev[k], k, allow_scalar=True)
                                           for k in ("a", "h", "grad_h", "h0")), c["axis"], c["reverse"],
                                     None if dev["resets"] is None else as_flags(dev["resets"], "resets"))[0]
    assert problem.grad_a_sum is not None and len(_problem.blocks(problem)) == 2  # blocks, and a smaller last
    extra, largest, results = _twice(c, dev, backend, _traced)
    _check(c, host, results, dt)
    if backend == "cpu":
        assert extra < SCRATCH * largest, f"{extra / largest:.2f}x the largest operand allocated beyond the results"


@pytest.mark.parametrize("c", GRAD_A_CASES, ids=[c["name"] for c in GRAD_A_CASES])
def test_grad_a_by_blocks_on_the_harness(cp, c):
    host, dev, dt = _grad_a_build(c, cp)
    extra, largest, results = _twice(c, dev, "cupy", _counted, warm=False)
    _check(c, host, results, dt)
    assert extra < SCRATCH * largest, f"{extra / largest:.2f}x the largest operand allocated beyond the results"


def test_grad_a_blocks_at_the_default_floor(monkeypatch):
    """At the default floor (64k elements a block) and an x large enough for the 1/8 rule to decide
    (4 MB of float32, 257 channels: 8 blocks of 29 and one of 25), the scratch is at most 1/8 of x's
    bytes, plus its T-sized sums."""
    monkeypatch.setattr(_problem, "GRAD_A_BLOCK_MIN", DEFAULT_BLOCK_MIN)
    c = _grad_a_case(7, "default-floor", (257, 4096), -1, "time", ("float32", "float32"), True, True)
    host, dev, dt = _grad_a_build(c, np)
    extra, largest, results = _twice(c, dev, "cpu", _traced)
    _check(c, host, results, dt)
    T = c["shape"][-1]
    assert extra < largest / _problem.GRAD_A_SCRATCH + 4 * T * 4, f"{extra / largest:.3f}x the largest operand"
