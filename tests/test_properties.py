"""Hypothesis: random shapes, strides, broadcasts, dtypes, axes and directions against the reference."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import parscan
from parscan import reference
from conftest import DTYPES, HOST_BACKENDS, assert_close, rand


@st.composite
def problems(draw):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim)))
    axis = draw(st.integers(-ndim, ndim - 1))
    shape = list(shape)
    shape[axis] = draw(st.integers(0, 60))
    shape = tuple(shape)
    dtype = draw(st.sampled_from(DTYPES))
    # a: drop some leading dims and set some others to 1 (broadcast)
    keep = draw(st.integers(0, ndim))
    a_shape = tuple(1 if draw(st.booleans()) else n for n in shape[ndim - keep:])
    chan = tuple(n for d, n in enumerate(shape) if d != axis % ndim)
    h0_mode = draw(st.sampled_from(["none", "full", "broadcast", "scalar"]))
    views = draw(st.lists(st.sampled_from(["C", "F", "step", "flip"]), min_size=3, max_size=3))
    return dict(shape=shape, axis=axis, dtype=dtype, a_shape=a_shape, chan=chan, h0_mode=h0_mode,
                views=views, reverse=draw(st.booleans()), backend=draw(st.sampled_from(HOST_BACKENDS)),
                seed=draw(st.integers(0, 2**31)))


def _view(arr, how):
    arr = np.asarray(arr)
    if arr.ndim == 0:
        return arr
    if how == "F":
        return np.asfortranarray(arr)
    if how == "step":
        big = np.zeros(tuple(2 * n + 1 for n in arr.shape), arr.dtype)
        v = big[tuple(slice(1, None, 2) for _ in arr.shape)]
        v[...] = arr
        return v
    if how == "flip":
        return np.ascontiguousarray(arr[::-1])[::-1]
    return arr


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_random_problems_forward_and_backward(p):
    rng = np.random.default_rng(p["seed"])
    dt = p["dtype"]
    x = _view(rand(rng, p["shape"], dt), p["views"][0])
    a = _view(rand(rng, p["a_shape"], dt, "a"), p["views"][1])
    h0 = {"none": None, "full": rand(rng, p["chan"], dt),
          "broadcast": rand(rng, (1,) * min(1, len(p["chan"])), dt), "scalar": 0.25}[p["h0_mode"]]
    kw = dict(axis=p["axis"], reverse=p["reverse"])
    h = parscan.linear_scan(a, x, h0, backend=p["backend"], **kw)
    want = reference.linear_scan(a, x, h0, **kw)
    assert h.dtype == np.result_type(a, x, *(() if h0 is None else (h0,)))
    assert_close(h, want, h.dtype)
    gh = _view(rand(rng, p["shape"], dt), p["views"][2])
    got = parscan.linear_scan_backward(a, h, gh, h0, backend=p["backend"], **kw)
    ref = reference.linear_scan_backward(a, h, gh, h0, **kw)
    for g, r in zip(got, ref):
        if r is None:
            assert g is None
        else:
            assert np.shape(g) == np.shape(r)
            assert_close(g, r, h.dtype)
