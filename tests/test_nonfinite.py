"""Non-finite input (issue #23): every backend returns the sequential loop's IEEE result.

inf, -inf and NaN in x, a and h0 (and in grad_h for the backward) at the first step, in the middle, on
both sides of the cpu backend's chunk boundaries and at the last step; forward and backward, both
directions, float32 / float64 / complex, on shapes that reach each of the cpu backend's paths (the
single-threaded small kernels, time-inner runs cut into chunks, whole-channel runs, channel-inner rows
and narrow channel-by-channel blocks, each chunked and not).  The want is ``parscan.reference``: NaN
exactly where it has NaN, the same infinities (sign included, each part of a complex number on its
own), finite values within conftest's tolerances.  What the loop itself makes is kept, not improved:
``a = 0`` after an infinite state is ``0 * inf = NaN`` there too.

A kernel that regroups products (blocks of four steps, chunk transfer pairs) can turn what the loop
keeps infinite into NaN: ``(a1 a0) * 0 + (a1 x0 + x1)`` with ``a1 = inf``, or an underflowed chunk
decay product times an infinite incoming state.
"""

import numpy as np
import pytest

import parscan
from parscan import _plans, cpu, reference
from conftest import HOST_BACKENDS, TOL, rand

# the backends checked here; the CUDA kernels on the CPU harness join from branch cuda (one line)
BACKENDS = HOST_BACKENDS
POISON = {"inf": np.inf, "-inf": -np.inf, "nan": np.nan}


def assert_same_specials(got, want, what=""):
    """NaN where ``want`` has NaN and nowhere else, and the same infinities (sign included; the real and
    imaginary parts each on their own)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    parts = ((got.real, want.real), (got.imag, want.imag)) if want.dtype.kind == "c" else ((got, want),)
    for g, w in parts:
        for name, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
            bad = test(g) != test(w)
            if bad.any():
                at = tuple(np.argwhere(bad)[0])
                raise AssertionError(f"{what}: {bad.sum()} entries {name} in one and not the other, first at "
                                     f"{at}: got {got[at]}, want {want[at]}")


def assert_ieee_equal(got, want, dtype, what=""):
    """:func:`assert_same_specials`, and the finite values within TOL of the largest finite |want|."""
    assert_same_specials(got, want, what)
    got, want = np.asarray(got), np.asarray(want)
    fin = np.isfinite(want)
    if fin.any():
        scale = max(1.0, float(np.max(np.abs(want[fin]))))
        err = float(np.max(np.abs(got[fin].astype(want.dtype) - want[fin])))
        assert err <= TOL[np.dtype(dtype).name] * scale, (what, err, scale)


def poison(rng, v, axis, steps, share=0.5):
    """v with inf / -inf / NaN at some channels of the given time steps (a copy)."""
    v = np.array(v, copy=True)
    keys = list(POISON)
    vt = np.moveaxis(v, axis, -1)
    for n, t in enumerate(steps):
        chans = np.asarray(rng.random(vt.shape[:-1]) < share)
        chans.flat[int(rng.integers(chans.size))] = True  # at least one channel
        val = POISON[keys[(n + int(rng.integers(3))) % 3]]
        vt[..., t][chans] = val
        if v.dtype.kind == "c" and rng.random() < 0.5:  # now and then only one part
            vt[..., t][chans] = complex(1.0, val) if rng.random() < 0.5 else complex(val, 0.5)
    return v


@pytest.fixture
def chunked(monkeypatch):
    """The cpu backend's parallel kernels on small inputs (``SMALL`` 0), with time chunks from ten steps
    on (``MIN_CHUNK`` 5), so that the chunked paths run at sizes the reference loops quickly; the plan
    cache emptied on the way in and out (plans keep their kernel)."""
    monkeypatch.setattr(cpu, "SMALL", 0)
    monkeypatch.setattr(cpu, "MIN_CHUNK", 5)
    _plans.clear()
    yield
    _plans.clear()


# (x's shape, axis, a's shape or None for a full a): the cpu paths they take with ``chunked``
SHAPES = {
    "1-D, time chunks": ((203,), -1, None),
    "time-inner, 3 channels, chunks": ((3, 101), -1, None),
    "time-inner, a constant in time": ((3, 101), -1, (3, 1)),
    "whole channels": ((12, 37), -1, None),
    "narrow channel-inner, chunks": ((101, 3), 0, None),
    "channel-inner rows, chunks": ((77, 16), 0, None),
    "rows, a shared by channels": ((77, 16), 0, (77, 1)),
    "rows, many blocks": ((23, 40), 0, None),
}


def _steps(T, nch):
    """First, middle, last, and both sides of every boundary of ``nch`` chunks of T steps."""
    L = -(-T // nch)
    out = {0, T // 2, T - 1}
    for k in range(1, nch):
        out |= {k * L - 1, k * L, k * L + 1}
    return sorted(t for t in out if 0 <= t < T)


def _plan_chunks(shape, axis):
    """The chunk count the cpu backend plans for x of ``shape`` along ``axis`` (under ``chunked``)."""
    T = shape[axis]
    C = int(np.prod(shape)) // T
    strides = (0, 0, T, 1) if axis % len(shape) == len(shape) - 1 else (0, 0, 1, C)
    return cpu.task_plan((1, 1, C, T), strides if C > 1 else (0, 0, 0, 1))[1]


def _run(backend, a, x, h0, axis, reverse, dtype, gh):
    kw = dict(axis=axis, reverse=reverse)
    with np.errstate(all="ignore"):
        want = reference.linear_scan(a, x, h0, **kw)
        got = parscan.linear_scan(a, x, h0, backend=backend, **kw)
    assert_ieee_equal(got, want, dtype, "h")
    hs = want.astype(dtype)
    with np.errstate(all="ignore"):
        wants = reference.linear_scan_backward(a, hs, gh, h0, **kw)
        gots = parscan.linear_scan_backward(a, hs, gh, h0, backend=backend, **kw)
    for name, g, w in zip(("grad_a", "grad_x", "grad_h0"), gots, wants):
        if w is None:
            assert g is None, name
        else:
            assert_ieee_equal(g, w, dtype, name)
    return want


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64"])
@pytest.mark.parametrize("case", list(SHAPES))
def test_nonfinite_x_a_h0_grad(chunked, backend, dtype, case):
    """Poison in x (at the first, middle, last step and next to every chunk boundary), in a (inf, and 0
    right after an infinite state: NaN in the loop too), in h0, and in grad_h; decays whose chunk
    products underflow; both directions."""
    shape, axis, a_shape = SHAPES[case]
    T = shape[axis]
    steps = _steps(T, _plan_chunks(shape, axis))
    rng = np.random.default_rng(len(case) * 7 + len(dtype))
    chan = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
    for reverse in (False, True):
        x = rand(rng, shape, dtype)
        a = rand(rng, a_shape or shape, dtype, "a")
        gh = rand(rng, shape, dtype)
        pick = [steps[int(i)] for i in rng.choice(len(steps), 3, replace=False)]
        # x alone, then x and a and h0, then grad_h alone: each shows a different fault
        _run(backend, a, poison(rng, x, axis, pick), None, axis, reverse, dtype, gh)
        if a_shape is None:
            a2 = poison(rng, a, axis, pick[:1], share=0.3)
            zero_after = np.moveaxis(a2, axis, -1)
            zero_after[..., min(T - 1, pick[1] + 2)] = 0  # 0 * inf where the state is infinite
        else:
            a2 = a
        h0 = poison(rng, rand(rng, chan, dtype)[..., None], -1, [0], share=0.3)[..., 0]
        _run(backend, a2, poison(rng, x, axis, pick[1:]), h0, axis, reverse, dtype, gh)
        _run(backend, a, x, None, axis, reverse, dtype, poison(rng, gh, axis, pick))
        # decays so small that a chunk's product underflows (to 0, or flushed): 0 * an infinite state
        # is NaN where the loop keeps inf
        tiny = (a * 1e-8).astype(dtype)
        _run(backend, tiny, poison(rng, x, axis, pick[:1]), None, axis, reverse, dtype,
             poison(rng, gh, axis, pick[1:2]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "complex128"])
@pytest.mark.parametrize("shape,axis", [((37,), -1), ((5, 29), -1), ((29, 5), 0)])
def test_nonfinite_small_problems(backend, dtype, shape, axis):
    """The cpu backend's single-threaded small-problem kernels (no monkeypatching: under cpu.SMALL)."""
    rng = np.random.default_rng(3)
    T = shape[axis]
    x, a, gh = rand(rng, shape, dtype), rand(rng, shape, dtype, "a"), rand(rng, shape, dtype)
    for reverse in (False, True):
        for steps in ([0], [1, 6], [T - 1], [T // 2, T // 2 + 4]):
            _run(backend, a, poison(rng, x, axis, steps), None, axis, reverse, dtype, gh)
            _run(backend, poison(rng, a, axis, steps[:1]), x, None, axis, reverse, dtype,
                 poison(rng, gh, axis, steps[-1:]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_issue_examples(backend):
    """The issue's two reproductions: an inf decay in four steps ([1, nan, nan, nan] on the cpu backend,
    from a block's (a1 a0) * 0), and one inf in 100,000 float32 steps (33,332 NaNs, from the chunk
    chain's underflowed decay products times the infinite state), on the planner's own chunks."""
    h = parscan.linear_scan(np.array([0.5, np.inf, 0.5, 0.5]), np.ones(4), backend=backend)
    assert np.array_equal(h, [1, np.inf, np.inf, np.inf])
    x = np.ones(100_000, np.float32)
    x[10] = np.inf
    h = _run(backend, np.float32(0.5), x, None, -1, False, "float32", x)
    assert np.all(np.isposinf(h[10:])) and np.all(np.isfinite(h[:10]))
