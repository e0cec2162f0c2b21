"""A seeded randomized equivalence run: 10,000 problems, forward and backward, against the reference.

Shapes (0 to 4 dims, sizes 0..6, time up to 70), memory layouts (C, F, strided, reversed, permuted),
every dtype with mixed-precision decays, a as a Python/NumPy scalar, a full array or broadcast along any
dims, h0 none/scalar/full/broadcast, any axis, both directions, out= (new arrays of any layout, and x
itself for an in-place scan), repeated signatures (so cached plans are hit) and changed ones between
calls; in a share of the cases (all of them in ``test_randomized_nonfinite``, on every backend) one to
three entries of x, a and h0 are inf, -inf or NaN.  Every result is compared with parscan.reference:
NaN and infinities exactly where it has them, finite values at the tolerances of conftest.TOL, its
dtype with NumPy's promotion, and the inputs must come back unmodified.  The cases are cheap (about 0.4 ms
each) so that any fast path added to the call path cannot drift from the contract.
"""

import numpy as np
import pytest

import parscan
from parscan import reference
from conftest import DTYPES, TOL, layout, rand
from test_nonfinite import BACKENDS, POISON, assert_same_specials

N_CASES = 10_000
BATCHES = 10
LAYOUTS = ("C", "F", "strided", "negative", "perm")
NONFINITE_SHARE = 0.05  # of the cases with inf / NaN in their inputs


def _layout(rng, arr, how):
    """conftest.layout's layouts, and "perm": memory order a random permutation of the dims."""
    arr = np.asarray(arr)
    if arr.ndim == 0:
        return arr
    if how == "perm":
        p = rng.permutation(arr.ndim)
        return np.ascontiguousarray(arr.transpose(p)).transpose(np.argsort(p))
    return layout(arr, how)


def _scalar(rng, dtype):
    v = rng.uniform(0.5, 0.95)
    kind = rng.integers(3)
    if kind == 0:
        return float(v)                      # a weak Python scalar
    if kind == 1 and np.dtype(dtype).kind == "c":
        return complex(v * np.exp(0.3j))
    return np.dtype(dtype).type(v)           # a NumPy scalar of the data's dtype


def _case(rng):
    ndim = int(rng.integers(1, 5))
    shape = [int(rng.choice([0, 1, 2, 3, 5, 6], p=[0.03, 0.25, 0.27, 0.2, 0.15, 0.1])) for _ in range(ndim)]
    axis = int(rng.integers(-ndim, ndim))
    shape[axis] = int(rng.choice([0, 1, 2, 7, 16, 33, 70], p=[0.02, 0.08, 0.2, 0.3, 0.2, 0.1, 0.1]))
    shape = tuple(shape)
    dtype = DTYPES[int(rng.integers(len(DTYPES)))]
    x = _layout(rng, rand(rng, shape, dtype), LAYOUTS[int(rng.integers(len(LAYOUTS)))])
    a_kind = rng.choice(["scalar", "full", "broadcast"], p=[0.25, 0.35, 0.4])
    a_dtype = dtype
    if rng.random() < 0.15:  # mixed precision: a real decay with complex data, or another float width
        a_dtype = {"complex64": "float32", "complex128": "float64", "float32": "float64",
                   "float64": "float32", "float16": "float32"}[dtype]
    if a_kind == "scalar":
        a = _scalar(rng, a_dtype)
    else:
        keep = ndim if a_kind == "full" else int(rng.integers(0, ndim + 1))
        a_shape = tuple(n if a_kind == "full" or rng.random() < 0.5 else 1 for n in shape[ndim - keep:])
        a = _layout(rng, rand(rng, a_shape, a_dtype, "a"), LAYOUTS[int(rng.integers(len(LAYOUTS)))])
    chan = tuple(n for d, n in enumerate(shape) if d != axis % ndim)
    h0_kind = rng.choice(["none", "scalar", "full", "broadcast"], p=[0.4, 0.15, 0.3, 0.15])
    h0 = {"none": None, "scalar": 0.25,
          "full": _layout(rng, rand(rng, chan, dtype), LAYOUTS[int(rng.integers(len(LAYOUTS)))]),
          "broadcast": rand(rng, tuple(1 if rng.random() < 0.5 else n for n in chan), dtype)}[h0_kind]
    return x, a, h0, axis, bool(rng.integers(2)), rng.choice(["none", "new", "x"], p=[0.6, 0.25, 0.15])


def _sprinkle(rng, v):
    """One to three entries of the array v set to inf, -inf or NaN, in place (its layout kept); scalars,
    None and empty arrays as they are."""
    if not isinstance(v, np.ndarray) or v.size == 0:
        return
    for _ in range(int(rng.integers(1, 4))):
        v[np.unravel_index(int(rng.integers(v.size)), v.shape)] = list(POISON.values())[int(rng.integers(3))]


def _twin(rng, v, kind="x"):
    """An array of v's shape, strides and dtype with new values in new memory (same signature, so the
    cached plan of v's call serves it); scalars and None as they are."""
    if not isinstance(v, np.ndarray) or v.ndim == 0:
        return v
    item = v.itemsize
    lo = sum((n - 1) * s for n, s in zip(v.shape, v.strides) if s < 0) // item
    span = sum((n - 1) * abs(s) for n, s in zip(v.shape, v.strides)) // item + 1 if v.size else 1
    t = np.lib.stride_tricks.as_strided(np.empty(span, v.dtype)[-lo:], v.shape, v.strides, writeable=True)
    t[...] = rand(rng, v.shape, v.dtype, kind)
    assert t.shape == v.shape and t.strides == v.strides
    return t


def _terms(a, hs, gh, h0, axis, kw):
    """Per element of grad_a and grad_h0, the sum of |terms| behind it when a or h0 is broadcast (the
    same gradients unsummed bound the sums' rounding); None where nothing is summed."""
    chan_shape = tuple(np.delete(hs.shape, axis % hs.ndim))
    if np.shape(a) == hs.shape and (h0 is None or np.shape(h0) == chan_shape):
        return None, None, None
    full_h0 = None if h0 is None else np.broadcast_to(h0, chan_shape)
    full = reference.linear_scan_backward(np.broadcast_to(a, hs.shape), hs, gh, full_h0, **kw)
    return (reference._sum_to(np.abs(full[0]), np.shape(a)).reshape(np.shape(a)), None,
            None if h0 is None else reference._sum_to(np.abs(full[2]), np.shape(h0)).reshape(np.shape(h0)))


def _check(got, want, dtype, what, terms=None):
    """``terms``: the sum of |terms| behind each element (a gradient summed over broadcast dims is
    rounded relative to its terms, not to the sum)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert got.dtype.kind == want.dtype.kind or want.dtype.kind == "f", (what, got.dtype, want.dtype)
    assert_same_specials(got, want, what)
    fin = np.isfinite(want)
    if fin.any():
        finite_terms = None if terms is None else np.asarray(terms)[np.isfinite(terms)]
        scale = max(1.0, float(np.max(np.abs(want[fin]))),
                    float(np.max(finite_terms)) if finite_terms is not None and finite_terms.size else 0.0)
        err = float(np.max(np.abs(got[fin].astype(want.dtype) - want[fin])))
        tol = max(TOL[np.dtype(dtype).name], TOL.get(got.dtype.name, 0.0))  # e.g. a float16 grad_h0
        assert err <= tol * scale, (what, err, scale)


def _run_case(rng, backend, nonfinite_share):
    x, a, h0, axis, reverse, out_kind = _case(rng)
    if rng.random() < nonfinite_share:
        for v in (x, a, h0):
            _sprinkle(rng, v)
    rtype = np.result_type(*(v for v in (a, x, h0) if v is not None))
    before = [np.array(v, copy=True) for v in (x, a, h0) if isinstance(v, np.ndarray)]
    kw = dict(axis=axis, reverse=reverse)
    with np.errstate(all="ignore"):
        _compare(rng, backend, x, a, h0, kw, out_kind, rtype, before)


def _compare(rng, backend, x, a, h0, kw, out_kind, rtype, before):
    axis = kw["axis"]
    want = reference.linear_scan(a, x, h0, **kw)
    if out_kind == "new":
        out = _layout(rng, np.full(x.shape, np.nan, rtype), LAYOUTS[int(rng.integers(len(LAYOUTS)))])
        h = parscan.linear_scan(a, x, h0, out=out, backend=backend, **kw)
        assert h is out
    elif out_kind == "x" and x.dtype == rtype and x.size and x.flags.writeable:
        xin = np.array(x, copy=True)
        xv = _layout(rng, xin, "C")
        h = parscan.linear_scan(a, xv, h0, out=xv, backend=backend, **kw)
        assert h is xv
        before[0] = x  # x itself is not the one scanned in place
    else:
        h = parscan.linear_scan(a, x, h0, backend=backend, **kw)
    assert h.dtype == rtype, (h.dtype, rtype)
    _check(h, want, rtype, "h")
    if out_kind == "none":  # the same signature again, new data: the plan cache serves it
        x2, a2, h02 = _twin(rng, x), _twin(rng, a, "a"), _twin(rng, h0)
        _check(parscan.linear_scan(a2, x2, h02, backend=backend, **kw), reference.linear_scan(a2, x2, h02, **kw),
               rtype, "h (again)")
    gh = rand(rng, x.shape, rtype)
    hs = want.astype(rtype)
    got = parscan.linear_scan_backward(a, hs, gh, h0, backend=backend, **kw)
    exp = reference.linear_scan_backward(a, hs, gh, h0, **kw)
    # the same gradients unsummed (a and h0 at full shape): their magnitudes bound the sums' rounding
    terms = _terms(a, hs, gh, h0, axis, kw)
    for g, w, t, name in zip(got, exp, terms, ("grad_a", "grad_x", "grad_h0")):
        if w is None:
            assert g is None
            continue
        assert np.shape(g) == np.shape(w), name
        _check(g, w, rtype, name, t)
    if out_kind == "none":  # the backward's signature again, new data
        a2, hs2, gh2, h02 = _twin(rng, a, "a"), _twin(rng, hs), _twin(rng, gh), _twin(rng, h0)
        got = parscan.linear_scan_backward(a2, hs2, gh2, h02, backend=backend, **kw)
        exp = reference.linear_scan_backward(a2, hs2, gh2, h02, **kw)
        for g, w, t, name in zip(got, exp, _terms(a2, hs2, gh2, h02, axis, kw), ("grad_a", "grad_x", "grad_h0")):
            if w is not None:
                _check(g, w, rtype, name + " (again)", t)
    after = [v for v in (x, a, h0) if isinstance(v, np.ndarray)]
    for p, q in zip(before, after):
        assert np.array_equal(p, q, equal_nan=True), "an input was modified"


@pytest.mark.parametrize("batch", range(BATCHES))
def test_randomized_equivalence_with_the_reference(batch):
    rng = np.random.default_rng(20261125 + batch)
    for k in range(N_CASES // BATCHES):
        state = rng.bit_generator.state
        try:
            _run_case(rng, "cpu", NONFINITE_SHARE)
        except AssertionError as exc:
            raise AssertionError(f"case {k} of batch {batch} (rng state {state}): {exc}") from None


@pytest.mark.parametrize("backend", BACKENDS)
def test_randomized_nonfinite(backend):
    """1,000 cases of the same generator, every one with inf / NaN in its inputs."""
    rng = np.random.default_rng(20261207)
    for k in range(1000):
        state = rng.bit_generator.state
        try:
            _run_case(rng, backend, 1.0)
        except AssertionError as exc:
            raise AssertionError(f"case {k} ({backend}, rng state {state}): {exc}") from None
