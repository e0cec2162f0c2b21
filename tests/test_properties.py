"""Hypothesis: random shapes, per-operand layouts, broadcasts, dtypes, axes, directions and resets against
the reference, forward and backward, at sizes that reach every path of the cpu backend.

The sizes come from the cpu backend's own cut-offs (with margins, so that a change of how it chooses its
time chunks or blocks keeps them on the same side): problems of at most ``SMALL`` elements run serially;
above it, many time-inner channels run as whole-channel tasks, and few channels over many ``MIN_CHUNK``s
of steps are cut into time chunks (three phases: fold, chain the carries, rescan), time-inner or
channel-inner, narrow (up to ``NARROW`` channels: channel by channel) or as rows; rows wider than
``WHOLE_ROW`` channels are split into blocks.  Which of those a problem takes depends on x's layout
(the backward: on grad_h's), drawn per operand.
"""

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import parscan
from parscan import check, reference
from parscan.cpu import MIN_CHUNK, NARROW, SMALL, WHOLE_ROW
from conftest import DTYPES, HOST_BACKENDS, rand

# (channels lo, hi), (steps lo, hi) of each size regime; "tiny" draws any shape of up to 4 dims
REGIMES = {
    "tiny": None,                                                         # serial, edge cases (0, 1)
    "channels": ((16, 128), None),                                        # 2..4 SMALL: whole channels
    "long": ((1, 3), (3 * MIN_CHUNK, 8 * MIN_CHUNK)),                     # time chunks, narrow blocks
    "long-rows": ((NARROW + 1, 3 * NARROW), (3 * MIN_CHUNK, 4 * MIN_CHUNK)),  # time chunks, rows
    "wide": ((WHOLE_ROW + 1, WHOLE_ROW + 3 * NARROW), (SMALL // WHOLE_ROW + 2, 3 * SMALL // WHOLE_ROW)),
}
VIEWS = ["C", "F", "time-major", "flip", "flip-time", "step"]
A_KINDS = ["full", "time", "channel", "partial", "array0", "python", "real"]
H0_KINDS = ["none", "full", "broadcast", "python"]
RESETS = ["none", "none", "time", "full"]
OPERANDS = ("x", "a", "h0", "h", "grad_h", "resets")


def _shape(draw, regime):
    if regime == "tiny":
        ndim = draw(st.integers(1, 4))
        shape = [draw(st.integers(0, 5)) for _ in range(ndim)]
        axis = draw(st.integers(-ndim, ndim - 1))
        shape[axis] = draw(st.integers(0, 60))
        return tuple(shape), axis
    (clo, chi), steps = REGIMES[regime]
    C = draw(st.integers(clo, chi))
    tlo, thi = steps or (2 * SMALL // C + 1, 4 * SMALL // C)
    T = draw(st.integers(tlo, thi))
    dims = [C]
    if regime != "wide" and C > 1 and draw(st.booleans()):  # two channel dims
        d = draw(st.sampled_from([d for d in range(2, C + 1) if C % d == 0]))
        dims = [d, C // d]
    pos = draw(st.integers(0, len(dims)))
    shape = tuple(dims[:pos] + [T] + dims[pos:])
    return shape, pos if draw(st.booleans()) else pos - len(shape)


@st.composite
def problems(draw, regimes=tuple(REGIMES)):
    """A random problem (a dict) in one of ``regimes`` (the simulator's suite draws "tiny" ones only)."""
    regime = draw(st.sampled_from(list(regimes)))
    shape, axis = _shape(draw, regime)
    return dict(shape=shape, axis=axis, dtype=draw(st.sampled_from(DTYPES)), a=draw(st.sampled_from(A_KINDS)),
                h0=draw(st.sampled_from(H0_KINDS)), resets=draw(st.sampled_from(RESETS)),
                views={k: draw(st.sampled_from(VIEWS)) for k in OPERANDS}, reverse=draw(st.booleans()),
                backend=draw(st.sampled_from(HOST_BACKENDS)), seed=draw(st.integers(0, 2**31)))


def _case(shape, axis, dtype, a="full", h0="none", resets="none", reverse=False, views=(), seed=0):
    """A pinned problem on the cpu backend (``views``: operand -> layout, C order where not given)."""
    views = dict(views)
    return dict(shape=shape, axis=axis, dtype=dtype, a=a, h0=h0, resets=resets, reverse=reverse, backend="cpu",
                seed=seed, views={k: views.get(k, "C") for k in OPERANDS})


def _view(arr, how, axis):
    """The same values in another memory layout; ``axis`` (negative) is time's, where arr has it."""
    if not isinstance(arr, np.ndarray) or arr.ndim == 0:
        return arr
    axis = axis % arr.ndim if -arr.ndim <= axis < 0 else 0
    if how == "F":  # every axis reversed in memory
        return np.asfortranarray(arr)
    if how == "time-major":  # time the slowest axis in memory
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(arr, axis, 0)), 0, axis)
    if how == "flip":  # negative strides in every dim
        every = (slice(None, None, -1),) * arr.ndim
        return np.ascontiguousarray(arr[every])[every]
    if how == "flip-time":  # a negative stride along time only
        sl = tuple(slice(None, None, -1) if d == axis else slice(None) for d in range(arr.ndim))
        return np.ascontiguousarray(arr[sl])[sl]
    if how == "step":  # every other element of a larger buffer, from an offset
        big = np.zeros(tuple(2 * n + 1 for n in arr.shape), arr.dtype)
        v = big[tuple(slice(1, None, 2) for _ in arr.shape)]
        v[...] = arr
        return v
    return np.ascontiguousarray(arr)


def _operands(p, rng):
    shape, axis, dt, nd = p["shape"], p["axis"] % len(p["shape"]), p["dtype"], len(p["shape"])
    T = shape[axis]
    only_time = tuple(T if d == axis else 1 for d in range(nd))
    x = rand(rng, shape, dt)
    a_shape = {"full": shape, "real": shape, "time": only_time[min(axis, rng.integers(nd)):],
               "channel": tuple(1 if d == axis else n for d, n in enumerate(shape)),
               "partial": tuple(1 if rng.random() < 0.5 else n for n in shape[rng.integers(nd + 1):]),
               "array0": ()}.get(p["a"])
    if a_shape is None:  # a Python scalar (exact in float16: every precision sees the same value)
        a = check._scalar(rng, dt, "a")
    else:
        a = rand(rng, a_shape, check._real(dt) if p["a"] == "real" else dt, "a")
    chan = tuple(n for d, n in enumerate(shape) if d != axis)
    h0 = {"none": None, "python": 0.25, "full": rand(rng, chan, dt),
          "broadcast": rand(rng, tuple(1 if rng.random() < 0.5 else n for n in chan)[rng.integers(len(chan) + 1):],
                            dt)}[p["h0"]]
    resets = None
    if p["resets"] != "none":  # sparse, dense or at the first steps
        r_shape = shape if p["resets"] == "full" else only_time
        resets = rng.random(r_shape) < rng.choice([2.0 / max(T, 1), 0.01, 0.3])
    v, ax = p["views"], axis - nd
    return (_view(x, v["x"], ax), _view(a, v["a"], ax), _view(h0, v["h0"], -1), _view(resets, v["resets"], ax),
            rand(rng, shape, dt))


def _close(name, got, want, dtype, reduced=1, bound=0.0, factor=1.0):
    """``check._compare``: the error relative to max(1, max |want|) (for a sum of ``reduced`` terms of at
    most ``bound`` each: to at least sqrt(reduced) * bound) within ``dtype``'s tolerance times ``factor``."""
    problem = check._compare(name, np.asarray(got), want, np.dtype(dtype).name, reduced, bound, factor)[2]
    assert problem is None, problem


@settings(max_examples=70, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(problems())
@example(_case((2, 5 * MIN_CHUNK + 3), -1, "float32", h0="full"))                       # time chunks, time-inner
@example(_case((5 * MIN_CHUNK + 1, 3), 0, "float64", a="time", h0="python", reverse=True))  # chunks, narrow
@example(_case((4 * MIN_CHUNK - 5, 3, 5), 0, "complex64", a="channel", h0="broadcast",
               views=dict(grad_h="F")))                                                   # chunks, rows
@example(_case((3, 4 * MIN_CHUNK + 7), 1, "complex128", a="real",
               views=dict(x="F", grad_h="flip", h="step")))                               # chunks, time-major x
@example(_case((SMALL // WHOLE_ROW + 3, WHOLE_ROW + 5), 0, "float32", a="python"))       # split rows, narrow tail
@example(_case((WHOLE_ROW + NARROW + 7, SMALL // WHOLE_ROW + 4), -1, "float64", h0="full", reverse=True,
               views=dict(x="time-major", grad_h="time-major")))                          # split rows, rows tail
@example(_case((64, 3 * SMALL // 64), -1, "float16", a="python", h0="full"))             # whole channels
@example(_case((3 * MIN_CHUNK + 5, 12), 0, "float64", resets="full", h0="full"))         # per-channel resets
@example(_case((1, 6 * MIN_CHUNK), -1, "float32", a="time", resets="time", reverse=True,
               views=dict(x="flip", grad_h="flip-time")))                                 # resets, time chunks
@example(_case((2, 3, 4 * MIN_CHUNK), 2, "float64", a="partial", h0="full",
               views=dict(x="step", a="flip", h0="F", grad_h="step", resets="F")))       # sliced, negative
def test_random_problems_forward_and_backward(p):
    rng = np.random.default_rng(p["seed"])
    x, a, h0, resets, gh = _operands(p, rng)
    kw = dict(axis=p["axis"], reverse=p["reverse"], resets=resets)
    T = p["shape"][p["axis"]]
    factor = check._memory_factor(a, T)
    h = parscan.linear_scan(a, x, h0, backend=p["backend"], **kw)
    want = reference.linear_scan(a, x, h0, **kw)
    assert h.dtype == np.result_type(a, x, *(() if h0 is None else (h0,)))
    dt = h.dtype
    _close("h", h, want, dt, factor=factor)
    h = _view(h, p["views"]["h"], p["axis"] - len(p["shape"]))
    gh = _view(gh.astype(dt), p["views"]["grad_h"], p["axis"] - len(p["shape"]))
    ga, gx, gh0 = parscan.linear_scan_backward(a, h, gh, h0, backend=p["backend"], **kw)
    wa, wx, wh0 = reference.linear_scan_backward(a, h, gh, h0, **kw)
    _close("grad_x", gx, wx, dt, factor=factor)
    bound = check._max_abs(wx) * max(check._max_abs(h), check._max_abs(h0), 1.0)
    assert np.shape(ga) == np.shape(a)
    _close("grad_a", ga, wa, dt, h.size // max(1, np.size(a)), bound, factor)
    if h0 is None:
        assert gh0 is None
    else:
        assert np.shape(gh0) == np.shape(h0)
        _close("grad_h0", gh0, wh0, dt, T and h.size // T // max(1, np.size(h0)),
               check._max_abs(wx) * max(1.0, check._max_abs(a)), factor)
