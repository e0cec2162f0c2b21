"""parscan.jax: the scans under jax.jit / grad / vmap / checkpoint through jax.experimental.buffer_callback,
against parscan.reference, jax.lax.associative_scan and lax.scan loops (issue #16).

Shapes are small and reused so that the jit compilations stay few (the whole file runs in well under a
minute on two cores once the cpu backend's kernels are compiled)."""

import contextlib
import importlib.util
import pathlib

import numpy as np
import pytest

import parscan
from parscan import reference

jax = pytest.importorskip("jax", reason="JAX is optional")
jnp = pytest.importorskip("jax.numpy")
pj = pytest.importorskip("parscan.jax")
from jax import lax  # noqa: E402

from conftest import TOL, rand  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def x64():
    """JAX's 64-bit mode for the duration (float64 / complex128 arrays)."""
    if hasattr(jax, "enable_x64"):
        with jax.enable_x64(True):
            yield
    else:  # pragma: no cover - older JAX
        old = jax.config.read("jax_enable_x64")
        jax.config.update("jax_enable_x64", True)
        try:
            yield
        finally:
            jax.config.update("jax_enable_x64", old)


_COMPILES = []  # filled while a compiles() block runs


def _on_event(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration" and _COMPILES and _COMPILES[-1] is not None:
        _COMPILES[-1].append(event)


jax.monitoring.register_event_duration_secs_listener(_on_event)


@contextlib.contextmanager
def compiles():
    """The XLA compilations run inside the block (JAX's backend-compile events), as a list."""
    seen = []
    _COMPILES.append(seen)
    try:
        yield seen
    finally:
        _COMPILES.pop()


@contextlib.contextmanager
def callbacks():
    """The parscan.jax callbacks XLA runs inside the block: the shapes of each one's output buffers."""
    seen, orig = [], pj._arrays

    @contextlib.contextmanager
    def counted(ctx, outs, ins):
        seen.append(tuple(tuple(o.shape) for o in outs))
        with orig(ctx, outs, ins) as views:
            yield views

    pj._arrays = counted
    try:
        yield seen
    finally:
        pj._arrays = orig


def close(got, want, tol):
    got, want = np.asarray(got, dtype=np.complex128), np.asarray(want, dtype=np.complex128)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    assert err <= tol * scale, f"max error {err:.3g} > {tol * scale:.3g}"


def scan_loop(a, x, h0=None, axis=-1, reverse=False):
    """The recurrence as a lax.scan loop (what jax.grad differentiates for the reference gradients)."""
    dt = jnp.result_type(a, x, *(() if h0 is None else (h0,)))
    xm = jnp.moveaxis(jnp.asarray(x, dt), axis, 0)
    am = jnp.moveaxis(jnp.broadcast_to(jnp.asarray(a, dt), jnp.shape(x)), axis, 0)
    h = jnp.zeros(xm.shape[1:], dt) if h0 is None else jnp.broadcast_to(jnp.asarray(h0, dt), xm.shape[1:])

    def step(h, ax):
        h = ax[0] * h + ax[1]
        return h, h

    _, hs = lax.scan(step, h, (am, xm), reverse=reverse)
    return jnp.moveaxis(hs, 0, axis)


def assoc(a, x, h0=None, axis=-1, reverse=False):
    """jax.lax.associative_scan of the same recurrence (h0 folded into the first step)."""
    a = jnp.broadcast_to(a, x.shape)
    if h0 is not None:
        first = x.shape[axis] - 1 if reverse else 0
        idx = [slice(None)] * x.ndim
        idx[axis] = first
        x = x.at[tuple(idx)].add(a[tuple(idx)] * h0)
    _, h = lax.associative_scan(lambda l, r: (l[0] * r[0], r[0] * l[1] + r[1]), (a, x), axis=axis, reverse=reverse)
    return h


# ------------------------------------------------------------------------------- forward

SHAPE = (2, 3, 17)
# (a's shape as a function of the axis, h0 kind): scalar, per-channel constant, full, 1-d along time
CASES = [(None, None), ("chan", "array"), ("full", "scalar"), ("time", "array")]


def _a_shape(kind, axis):
    if kind == "chan":
        return tuple(1 if d == axis % 3 else n for d, n in enumerate(SHAPE))
    if kind == "time":
        return tuple(n if d == axis % 3 else 1 for d, n in enumerate(SHAPE))[axis % 3:]
    return SHAPE


@pytest.mark.parametrize("dtype", ["float16", "float32", "complex64", "float64", "complex128"])
def test_forward_under_jit_matches_reference_every_dtype(dtype):
    rng = np.random.default_rng(1)
    ctx = x64() if dtype in ("float64", "complex128") else contextlib.nullcontext()
    with ctx:
        for (akind, hkind), axis, reverse in zip(CASES, [-1, 0, 1, -1], [False, True, False, True]):
            x = rand(rng, SHAPE, dtype)
            a = 0.75 if akind is None else rand(rng, _a_shape(akind, axis), dtype, "a")
            chan = tuple(n for d, n in enumerate(SHAPE) if d != axis % 3)
            h0 = None if hkind is None else (0.5 if hkind == "scalar" else rand(rng, chan, dtype))
            f = jax.jit(lambda a, x, h0, axis=axis, reverse=reverse: pj.linear_scan(a, x, h0, axis=axis,
                                                                                     reverse=reverse))
            h = f(a if akind is None else jnp.asarray(a), jnp.asarray(x), None if h0 is None else jnp.asarray(h0))
            assert isinstance(h, jax.Array) and h.dtype == np.dtype(dtype) and h.shape == SHAPE
            close(h, reference.linear_scan(a, x, h0, axis=axis, reverse=reverse), TOL[dtype])
            # and the same numbers as parscan on NumPy arrays
            np.testing.assert_array_equal(np.asarray(h), parscan.linear_scan(a, x, h0, axis=axis, reverse=reverse))


@pytest.mark.parametrize("axis,reverse", [(-1, False), (0, True)])
def test_forward_and_grads_equal_associative_scan(axis, reverse):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rand(rng, SHAPE, "float32"))
    a = jnp.asarray(rand(rng, SHAPE, "float32", "a"))
    h0 = jnp.asarray(rand(rng, tuple(n for d, n in enumerate(SHAPE) if d != axis % 3), "float32"))
    w = jnp.asarray(rand(rng, SHAPE, "float32"))
    got = jax.jit(lambda a, x, h0: pj.linear_scan(a, x, h0, axis=axis, reverse=reverse))(a, x, h0)
    close(got, assoc(a, x, h0, axis=axis, reverse=reverse), TOL["float32"])
    loss = lambda scan: lambda *v: jnp.sum(scan(*v, axis=axis, reverse=reverse) * w)  # noqa: E731
    got = jax.jit(jax.grad(loss(pj.linear_scan), (0, 1, 2)))(a, x, h0)
    want = jax.jit(jax.grad(loss(assoc), (0, 1, 2)))(a, x, h0)
    for g, r in zip(got, want):
        close(g, r, 1e-5)


def test_bfloat16_computes_in_float32_and_rounds_back():
    """Values and gradients against the same computation in float32 on the bfloat16-rounded inputs (bfloat16
    keeps 8 bits: a tolerance of 2^-6 of the largest value)."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rand(rng, (3, 40), "float32")).astype(jnp.bfloat16)
    a = jnp.asarray(rand(rng, (3, 1), "float32", "a")).astype(jnp.bfloat16)
    h0 = jnp.asarray(rand(rng, (3,), "float32")).astype(jnp.bfloat16)
    w = jnp.asarray(rand(rng, (3, 40), "float32"))
    h = jax.jit(pj.linear_scan)(a, x, h0)
    assert h.dtype == jnp.bfloat16
    f32 = [np.asarray(v.astype(jnp.float32)) for v in (a, x, h0)]
    close(h.astype(jnp.float32), reference.linear_scan(*f32), 2**-6)
    loss = lambda scan: lambda a, x, h0: jnp.sum(scan(a, x, h0).astype(jnp.float32) * w)  # noqa: E731
    got = jax.jit(jax.grad(loss(pj.linear_scan), (0, 1, 2)))(a, x, h0)
    want = jax.jit(jax.grad(loss(scan_loop), (0, 1, 2)))(*(jnp.asarray(v) for v in f32))
    for g, r, v in zip(got, want, (a, x, h0)):
        assert g.dtype == jnp.bfloat16 and g.shape == v.shape
        close(g.astype(jnp.float32), r, 2**-6)


def test_mixed_dtypes_and_weak_scalars_follow_the_promotion():
    x16 = jnp.ones((2, 5), jnp.float16)
    assert pj.linear_scan(0.5, x16).dtype == jnp.float16  # a Python float is weak
    assert jax.jit(pj.linear_scan)(0.5, x16).dtype == jnp.float16  # ... and stays weak as a traced argument
    assert pj.linear_scan(jnp.full((2, 1), 0.5, jnp.float32), x16).dtype == jnp.float32
    h = pj.linear_scan(0.5j, jnp.ones((2, 5), jnp.float32))
    assert h.dtype == jnp.complex64
    close(h, reference.linear_scan(0.5j, np.ones((2, 5))), TOL["complex64"])


def test_empty_and_eager():
    assert pj.linear_scan(0.5, jnp.ones((3, 0))).shape == (3, 0)
    g = jax.grad(lambda x: pj.linear_scan(0.5, x).sum())(jnp.ones((3, 0)))
    assert g.shape == (3, 0)
    np.testing.assert_allclose(np.asarray(pj.linear_scan(0.5, jnp.ones(4))), [1, 1.5, 1.75, 1.875])


# ------------------------------------------------------------------------------- gradients

def _jnp_rand(rng, shape, dtype, kind="x"):
    """rand() as a JAX array of ``dtype`` (bfloat16 drawn in float32 and rounded)."""
    if dtype == "bfloat16":
        return jnp.asarray(rand(rng, shape, "float32", kind)).astype(jnp.bfloat16)
    return jnp.asarray(rand(rng, shape, dtype, kind))


def _h0_shape(kind, axis):
    """h0's shape: "full" (x's shape without the axis), "bcast" (size-1 leading dims) or "scalar" (0-d)."""
    chan = tuple(n for d, n in enumerate(SHAPE) if d != axis % 3)
    return {"full": chan, "bcast": (1,) + chan[1:], "scalar": ()}[kind]


# float16 and bfloat16 are compared with the float32 loop on the same (rounded) inputs
GRAD_TOL = {"float16": 1e-2, "bfloat16": 2**-6, "float32": 1e-4, "complex64": 1e-4, "float64": 1e-10,
            "complex128": 1e-10}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64", "complex64", "complex128"])
def test_grad_matches_lax_scan_loop(dtype):
    """jax.grad through parscan's fused backward = jax.grad of the lax.scan loop: a, x and h0, a summed over
    its broadcast dims, h0 full, broadcast and 0-d, every axis and direction; complex in JAX's convention."""
    rng = np.random.default_rng(4)
    wide = {"float16": jnp.float32, "bfloat16": jnp.float32}.get(dtype, dtype)
    ctx = x64() if dtype in ("float64", "complex128") else contextlib.nullcontext()
    cases = [("chan", "full", -1, False), ("full", "scalar", 0, True), ("time", "bcast", 1, True)]
    with ctx:
        args = [(_jnp_rand(rng, _a_shape(akind, axis), dtype, "a"), _jnp_rand(rng, SHAPE, dtype),
                 _jnp_rand(rng, _h0_shape(hkind, axis), dtype)) for akind, hkind, axis, _ in cases]
        ws = [_jnp_rand(rng, SHAPE, wide) for _ in cases]

        def grads(scan):  # every case's gradients from one jitted function (one compilation)
            def loss(a, x, h0, w, axis, reverse):
                return jnp.real(jnp.sum(scan(a, x, h0, axis=axis, reverse=reverse).astype(wide) * w))

            return jax.jit(lambda args: [jax.grad(loss, (0, 1, 2))(*v, w, axis, rev)
                                         for v, w, (_, _, axis, rev) in zip(args, ws, cases)])

        got = grads(pj.linear_scan)(args)
        want = grads(scan_loop)([tuple(v.astype(wide) for v in vs) for vs in args])
        for gs, rs, vs in zip(got, want, args):
            for g, r, v in zip(gs, rs, vs):
                assert g.shape == v.shape and g.dtype == v.dtype, (g.shape, g.dtype, v.shape, v.dtype)
                close(g.astype(wide), r, GRAD_TOL[dtype])


def test_grad_with_mixed_dtypes_matches_lax_scan_loop():
    """Operands of different dtypes (real decays on complex data, complex decays on real data, float16 a with
    float32 x, a float64 h0 with float32 x): each gradient in its operand's dtype (a real operand's the real
    part), equal to the lax.scan loop's, which promotes the same way."""
    rng = np.random.default_rng(14)
    with x64():
        cases = list(zip([("float32", "complex64", "complex64"), ("complex64", "float32", "float32"),
                          ("float16", "float32", "float32"), ("float32", "float32", "float64")], [-1, 0, 1, -1]))
        args = [(jnp.asarray(rand(rng, _a_shape("chan", axis), ad, "a")), jnp.asarray(rand(rng, SHAPE, xd)),
                 jnp.asarray(rand(rng, _h0_shape("bcast", axis), hd))) for (ad, xd, hd), axis in cases]
        ws = [jnp.asarray(rand(rng, SHAPE, np.dtype(jnp.result_type(*v)).name)) for v in args]
        for v, ((ad, xd, hd), axis) in zip(args, cases):
            assert pj.linear_scan(*v, axis=axis).dtype == jnp.result_type(*v)

        def grads(scan):
            def loss(a, x, h0, w, axis):
                return jnp.real(jnp.sum(scan(a, x, h0, axis=axis) * w))

            return jax.jit(lambda args: [jax.grad(loss, (0, 1, 2))(*v, w, axis)
                                         for v, w, (_, axis) in zip(args, ws, cases)])

        for gs, rs, vs in zip(grads(pj.linear_scan)(args), grads(scan_loop)(args), args):
            for g, r, v in zip(gs, rs, vs):
                assert g.shape == v.shape and g.dtype == v.dtype, (g.dtype, v.dtype)
                close(g, r, 1e-2 if v.dtype == jnp.float16 else 1e-4)


def test_vjp_value_and_grad_and_scalar_decay():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rand(rng, (3, 30), "float32"))
    h, vjp = jax.vjp(lambda x: pj.linear_scan(0.9, x, axis=-1), x)
    (gx,) = vjp(jnp.ones_like(h))
    _, _ref_vjp = jax.vjp(lambda x: scan_loop(0.9, x), x)
    close(gx, _ref_vjp(jnp.ones_like(h))[0], 1e-5)
    a = jnp.float32(0.9)
    val, ga = jax.value_and_grad(lambda a: pj.linear_scan(a, x).sum())(a)
    val_r, ga_r = jax.value_and_grad(lambda a: scan_loop(a, x).sum())(a)
    close(val, val_r, 1e-5)
    close(ga, ga_r, 1e-4)
    assert ga.shape == ()


def test_check_grads_float64():
    from jax.test_util import check_grads

    rng = np.random.default_rng(6)
    with x64():
        x = jnp.asarray(rand(rng, (2, 9), "float64"))
        a = jnp.asarray(rand(rng, (2, 1), "float64", "a"))
        h0 = jnp.asarray(rand(rng, (2,), "float64"))
        check_grads(lambda a, x, h0: pj.linear_scan(a, x, h0, reverse=True), (a, x, h0), order=1, modes=["rev"],
                    atol=1e-7, rtol=1e-7)
        A = jnp.asarray(0.4 * rng.standard_normal((9, 3, 3)))
        xm = jnp.asarray(rng.standard_normal((2, 9, 3)))
        check_grads(lambda A, x: pj.matrix_linear_scan(A, x), (A, xm), order=1, modes=["rev"], atol=1e-7, rtol=1e-7)
        # complex128: JAX's convention (no conjugates) is what check_grads' numerical derivatives see
        x, a, h0 = (jnp.asarray(rand(rng, (2, 9), "complex128")), jnp.asarray(rand(rng, (2, 9), "complex128", "a")),
                    jnp.asarray(rand(rng, (2,), "complex128")))
        check_grads(lambda a, x, h0: pj.linear_scan(a, x, h0), (a, x, h0), order=1, modes=["rev"], atol=1e-7,
                    rtol=1e-7)
        A = A * jnp.exp(1j * jnp.asarray(rng.uniform(-np.pi, np.pi, A.shape)))
        h0m = jnp.asarray(rand(rng, (2, 3), "complex128"))
        check_grads(lambda A, x, h0: pj.matrix_linear_scan(A, x, h0, reverse=True), (A, xm.astype(A.dtype), h0m),
                    order=1, modes=["rev"], atol=1e-7, rtol=1e-7)


def test_checkpoint_and_jvp():
    rng = np.random.default_rng(7)
    x = jnp.asarray(rand(rng, (3, 30), "float32"))
    a = jnp.asarray(rand(rng, (3, 30), "float32", "a"))

    def f(a, x):
        return jnp.sum(jnp.sin(pj.linear_scan(a, x)))

    got = jax.jit(jax.grad(jax.checkpoint(f), (0, 1)))(a, x)
    want = jax.grad(f, (0, 1))(a, x)
    for g, r in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-6, atol=1e-6)
    # forward mode: parscan's error where JAX raises inside the call (eager jvp / jacfwd), JAX's own elsewhere
    for name, f in (("linear_scan", lambda x: pj.linear_scan(a, x)),
                    ("matrix_linear_scan", lambda x: pj.matrix_linear_scan(jnp.eye(3)[None] * 0.5, x.T))):
        with pytest.raises(TypeError, match=f"parscan.jax.{name} has no forward-mode derivative.*jax.vjp"):
            jax.jvp(f, (x,), (x,))
        with pytest.raises(TypeError, match="forward-mode"):
            jax.jacfwd(f)(x)
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jit(lambda x: jax.jvp(lambda x: pj.linear_scan(a, x), (x,), (x,)))(x)


# ------------------------------------------------------------------------------- vmap

def test_vmap_matches_a_python_loop():
    """Batched over a leading axis and over a middle one, x batched / a batched / both, h0 batched; and
    vmap of grad (per-example gradients of an unbatched a)."""
    rng = np.random.default_rng(8)
    B = 4
    xb = jnp.asarray(rand(rng, (B, 3, 20), "float32"))
    ab = jnp.asarray(rand(rng, (B, 3, 1), "float32", "a"))
    a1 = ab[0]
    h0b = jnp.asarray(rand(rng, (B, 3), "float32"))

    def f(a, x, h0):
        return pj.linear_scan(a, x, h0, reverse=True)

    for in_axes, args in [((None, 0, None), (a1, xb, h0b[0])), ((0, None, 0), (ab, xb[0], h0b)),
                          ((0, 0, 0), (ab, xb, h0b))]:
        fb = jax.jit(jax.vmap(f, in_axes=in_axes))
        with callbacks() as seen:
            got = jax.block_until_ready(fb(*args))
        assert seen == [((B, 3, 20),)]  # one callback for the whole batch (sequential would make B of them)
        loop = jnp.stack([f(*(v if ax is None else v[i] for v, ax in zip(args, in_axes))) for i in range(B)])
        np.testing.assert_array_equal(np.asarray(got), np.asarray(loop))
    # the count can tell: mapped sequentially, the same vmap runs one callback an example
    seq = lambda cb, outs, args, vmap_method="expand_dims": pj.buffer_callback(  # noqa: E731
        cb, outs, vmap_method="sequential")(*args)
    orig_call, pj._call = pj._call, seq
    try:
        with callbacks() as seen:
            jax.block_until_ready(jax.jit(jax.vmap(f, in_axes=(None, 0, None)))(a1, xb, h0b[0]))
    finally:
        pj._call = orig_call
    assert seen == [((3, 20),)] * B
    # batch axis in the middle of x (in_axes=1), time axis 0
    xm = jnp.moveaxis(xb, 0, 1)  # (3, B, 20)
    got = jax.vmap(lambda x: pj.linear_scan(0.8, x, axis=-1), in_axes=1)(xm)
    np.testing.assert_array_equal(np.asarray(got), np.stack([np.asarray(pj.linear_scan(0.8, xm[:, i]))
                                                             for i in range(B)]))
    # per-example gradients: one forward and one backward callback for the batch
    loss = lambda a, x, h0: jnp.sum(f(a, x, h0) ** 2)  # noqa: E731
    with callbacks() as seen:
        got = jax.block_until_ready(jax.jit(jax.vmap(jax.grad(loss, (0, 1, 2)), in_axes=(None, 0, 0)))(a1, xb, h0b))
    assert seen == [((B, 3, 20),), ((B, 3, 1), (B, 3, 20), (B, 3))], seen
    for k in range(3):
        loop = np.stack([np.asarray(jax.grad(loss, (0, 1, 2))(a1, xb[i], h0b[i])[k]) for i in range(B)])
        np.testing.assert_allclose(np.asarray(got[k]), loop, rtol=1e-6, atol=1e-6)
    J = jax.jacrev(lambda x: pj.linear_scan(0.5, x))(jnp.ones(4))  # vmap over cotangents
    np.testing.assert_allclose(np.asarray(J), np.tril(0.5 ** np.subtract.outer(np.arange(4), np.arange(4))))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64", "complex64", "complex128"])
def test_vmap_every_dtype(dtype):
    """vmap of the forward and of per-example gradients in every dtype: one callback each for the batch,
    equal to a Python loop over the examples."""
    rng = np.random.default_rng(15)
    B = 3
    ctx = x64() if dtype in ("float64", "complex128") else contextlib.nullcontext()
    with ctx:
        xb, ab = _jnp_rand(rng, (B, 2, 9), dtype), _jnp_rand(rng, (2, 1), dtype, "a")
        h0b = _jnp_rand(rng, (B, 2), dtype)

        wide = jnp.float32 if dtype in ("float16", "bfloat16") else dtype

        def loss(a, x, h0):
            return jnp.real(jnp.sum(pj.linear_scan(a, x, h0).astype(wide) ** 2))

        both = jax.jit(lambda *v: (jax.vmap(pj.linear_scan, in_axes=(None, 0, 0))(*v),
                                   jax.vmap(jax.grad(loss, (0, 1, 2)), in_axes=(None, 0, 0))(*v)))
        with callbacks() as seen:
            h, g = jax.block_until_ready(both(ab, xb, h0b))
        # every callback takes the whole batch: forwards (one or two: XLA may merge the value's and the
        # gradients' identical ones) and one backward
        assert set(seen) == {((B, 2, 9),), ((B, 2, 1), (B, 2, 9), (B, 2))} and len(seen) <= 3, seen
        for i in range(B):
            np.testing.assert_array_equal(np.asarray(h[i]), np.asarray(pj.linear_scan(ab, xb[i], h0b[i])))
            gi = jax.grad(loss, (0, 1, 2))(ab, xb[i], h0b[i])
            for u, v in zip(g, gi):
                assert u.dtype == v.dtype
                np.testing.assert_array_equal(np.asarray(u[i]), np.asarray(v))


# ------------------------------------------------------------------------------- jit caches

def test_jit_caches_by_shape():
    traces = []

    @jax.jit
    def f(a, x):
        traces.append(x.shape)
        return pj.linear_scan(a, x)

    x = jnp.ones((2, 11), jnp.float32)
    a = jnp.full((2, 1), 0.5, jnp.float32)
    h1 = f(a, x)
    h2 = f(a, x + 1)
    assert len(traces) == 1  # same shapes: no retrace
    np.testing.assert_allclose(np.asarray(h2) - np.asarray(h1), reference.linear_scan(np.asarray(a), np.ones((2, 11))),
                               rtol=1e-6)
    f(a, jnp.ones((2, 12), jnp.float32))
    assert len(traces) == 2  # another shape: retraced


def test_jit_of_grad_and_vmap_caches_by_shape():
    """jit(grad) and jit(vmap): a second call of the same shapes neither retraces nor compiles; another
    shape does both."""
    traces = []

    def loss(a, x):
        traces.append(x.shape)
        return jnp.sum(pj.linear_scan(a, x) ** 2)

    a = jnp.full((2, 1), 0.5, jnp.float32)
    for f, x, x2 in ((jax.jit(jax.grad(loss, (0, 1))), jnp.ones((2, 11)), jnp.ones((2, 12))),
                     (jax.jit(jax.vmap(jax.grad(loss, (0, 1)), in_axes=(None, 0))), jnp.ones((3, 2, 11)),
                      jnp.ones((4, 2, 11)))):
        traces.clear()
        x1 = jax.block_until_ready(x + 1)
        jax.block_until_ready(f(a, x))
        with compiles() as seen:
            jax.block_until_ready(f(a, x1))
        assert len(traces) == 1 and seen == []
        with compiles() as seen:
            jax.block_until_ready(f(a, x2))
        assert len(traces) == 2 and len(seen) >= 1


def test_eager_calls_compile_once():
    """Eager calls (no jit) reuse XLA's compilation of the callback: parscan.jax hands JAX one callback object
    per set of static arguments (a new one each call would compile again, about 10 ms a call)."""
    rng = np.random.default_rng(16)
    x, a = jnp.asarray(rand(rng, (2, 13), "float32")), jnp.asarray(rand(rng, (2, 1), "float32", "a"))
    A, xm = jnp.asarray(0.3 * rng.standard_normal((13, 2, 2)), jnp.float32), x.T
    layer = pj.GILRLSTM(2, 3, seed=0)
    params = layer.init()

    def calls():
        pj.linear_scan(a, x, reverse=True)
        jax.grad(lambda a, x: jnp.sum(pj.linear_scan(a, x) ** 2), (0, 1))(a, x)
        pj.matrix_linear_scan(A, xm)
        jax.grad(lambda A: jnp.sum(pj.matrix_linear_scan(A, xm)))(A)
        jax.grad(lambda p: jnp.sum(layer(p, x.T[:, :1] * jnp.ones((13, 1, 2)))[0]))(params)

    calls()
    with compiles() as seen:
        calls()
    assert seen == []
    # and the count can tell: callbacks made anew each call compile every time
    orig = pj._scan_callback
    pj._scan_callback = orig.__wrapped__
    try:
        with compiles() as seen:
            pj.linear_scan(a, x, reverse=True)
            pj.linear_scan(a, x, reverse=True)
    finally:
        pj._scan_callback = orig
    assert len(seen) == 2


# ------------------------------------------------------------------------------- errors at trace time

BAD = [
    (lambda: (0.5, np.ones((2, 3), np.int32), None, -1)),                         # integer x
    (lambda: (True, np.ones((2, 3), np.float32), None, -1)),                      # bool a
    (lambda: (np.ones(3, np.int32), np.ones((2, 3), np.float32), None, -1)),      # integer a
    (lambda: (0.5, np.ones((), np.float32), None, -1)),                           # 0-d x
    (lambda: (0.5, np.ones((2, 3), np.float32), None, 2)),                        # axis out of range
    (lambda: (0.5, np.ones((2, 3), np.float32), None, 1.0)),                      # axis not an int
    (lambda: (np.ones((2, 2), np.float32), np.ones((2, 3), np.float32), None, -1)),  # a does not broadcast
    (lambda: (0.5, np.ones((2, 3), np.float32), np.ones(3, np.float32), -1)),    # h0 of the wrong shape
    (lambda: (0.5, 1.0, None, -1)),                                               # x a scalar
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_errors_are_parscans_at_trace_time(case):
    a, x, h0, axis = BAD[case]()
    with pytest.raises((TypeError, ValueError)) as want:
        parscan.linear_scan(a, x, h0, axis=axis)
    j = (lambda v: jnp.asarray(v) if isinstance(v, np.ndarray) else v)
    with pytest.raises(want.type) as got:  # raised while tracing: jit never reaches XLA
        jax.jit(lambda: pj.linear_scan(j(a), j(x), j(h0), axis=axis))()
    assert str(got.value) == str(want.value)


def test_matrix_errors_are_parscans():
    A, x = np.ones((5, 2, 3), np.float32), np.ones((5, 2), np.float32)
    with pytest.raises(ValueError) as want:
        parscan.matrix_linear_scan(A, x)
    with pytest.raises(ValueError) as got:
        jax.jit(pj.matrix_linear_scan)(jnp.asarray(A), jnp.asarray(x))
    assert str(got.value) == str(want.value)


def test_unsupported_device_is_refused_with_the_reason():
    class Buf:
        def __dlpack_device__(self):
            return (14, 0)  # DLPack's Metal

    with pytest.raises(RuntimeError, match="CPU and on CUDA GPUs"):
        with pj._arrays(None, [Buf()], []):
            pass


def test_cuda_buffers_become_cupy_views_on_xlas_stream(monkeypatch):
    """The GPU branch, with a stand-in CuPy that records what it is asked: every buffer becomes a view of
    XLA's own device pointer (no copy), and the work runs with XLA's stream current on the buffers' device."""
    import sys
    import types

    log = []

    class Ctx:  # what the callback does while the block runs
        def __init__(self, what):
            self.what = what

        def __enter__(self):
            log.append(("enter",) + self.what)

        def __exit__(self, *exc):
            log.append(("exit",) + self.what)

    cuda = types.SimpleNamespace(
        Device=lambda d: Ctx(("device", d)),
        ExternalStream=lambda ptr, d: Ctx(("stream", ptr, d)),
        UnownedMemory=lambda ptr, size, owner, d: ("mem", ptr, size, d),
        MemoryPointer=lambda mem, off: (mem, off))

    class ndarray:
        def __init__(self, shape, dtype, memptr, strides):
            self.shape, self.dtype, self.memptr, self.strides = shape, dtype, memptr, strides

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda, ndarray=ndarray))

    class Buf:
        def __init__(self, ptr, shape):
            self.__cuda_array_interface__ = dict(data=(ptr, False), shape=shape, typestr="<f4", strides=None,
                                                 version=3)

        def __dlpack_device__(self):
            return (2, 1)  # CUDA device 1

    with pj._arrays(types.SimpleNamespace(stream=0xABC), [Buf(0x1000, (2, 3))], [Buf(0x2000, (3,))]) as (xp, o, i):
        assert log == [("enter", "device", 1), ("enter", "stream", 0xABC, 1)]
        assert o[0].shape == (2, 3) and o[0].memptr == (("mem", 0x1000, 24, 1), 0)
        assert i[0].shape == (3,) and i[0].memptr == (("mem", 0x2000, 12, 1), 0) and i[0].dtype == np.float32
    assert log[-1] == ("exit", "device", 1)


def test_import_without_buffer_callback_names_the_jax_needed(monkeypatch):
    """A jax without jax.experimental.buffer_callback (before 0.6.1): parscan.jax's import says which jax it
    needs."""
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "jax.experimental.buffer_callback", None)  # import raises ImportError
    spec = importlib.util.spec_from_file_location("parscan._jax_without_buffer_callback", pj.__file__)
    mod = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError, match=r"parscan.jax needs jax >= 0\.6\.1 \(jax.experimental.buffer_callback\)"):
        spec.loader.exec_module(mod)


def test_large_host_outputs_get_the_hugepage_hint():
    """XLA's large CPU output buffers (>= 32 MiB, which malloc maps afresh each call) are advised MADV_HUGEPAGE
    before the scan writes them, smaller ones and inputs never; the results are unchanged."""
    if pj._madvise is None:
        pytest.skip("NumPy does not ask for huge pages here (not Linux, or NUMPY_MADVISE_HUGEPAGE=0)")
    calls, orig = [], pj._madvise

    def record(addr, length, advice):
        calls.append((addr, length, advice))
        return orig(addr, length, advice)

    rng = np.random.default_rng(25)
    x = rand(rng, (2, 2**22), "float32")  # 32 MiB
    a = rand(rng, (2, 1), "float32", "a")
    pj._madvise = record
    try:
        h = jax.block_until_ready(jax.jit(pj.linear_scan)(a, x))
        assert len(calls) == 1, calls  # the forward's output, from its first whole page to its end
        addr, length, advice = calls[0]
        assert advice == 14 and addr % 4096 == 0 and x.nbytes - 4096 < length <= x.nbytes
        calls.clear()
        jax.block_until_ready(jax.jit(pj.linear_scan)(a, x[:, :2**21]))  # 16 MiB
        assert calls == []
    finally:
        pj._madvise = orig
    np.testing.assert_array_equal(np.asarray(h), parscan.linear_scan(a, x))


def _lowered_for_cuda(f, *args):
    """``f`` jitted and lowered for CUDA (no GPU needed): the StableHLO text."""
    traced = jax.jit(f).trace(*args)
    return traced.lower(lowering_platforms=("cuda",)).as_text()


def test_gpu_lowering_is_buffer_callbacks_in_row_major_layouts():
    """What XLA gets for a CUDA GPU (lowered here, without one): each scan and each backward is one
    buffer_callback custom call on the GPU (the FFI target that hands the callback XLA's stream and device
    buffers), never a pure/io callback (a host round trip) nor a host transfer, and every operand and result
    in the default row-major layout (no transposes for the callback)."""
    import re

    rng = np.random.default_rng(17)
    x, a = jnp.asarray(rand(rng, (3, 8), "float32")), jnp.asarray(rand(rng, (3, 1), "float32", "a"))
    xc = jnp.asarray(rand(rng, (8, 3), "complex64"))
    A = jnp.asarray(rand(rng, (8, 3, 3), "complex64", "a")) * 0.3
    layer = pj.GILRLSTM(3, 4, seed=0)
    params = layer.init()
    cases = [  # (function, args, number of buffer_callbacks)
        (jax.value_and_grad(lambda a, x: jnp.sum(pj.linear_scan(a, x, axis=0) ** 2), (0, 1)), (a.T, x.T), 2),
        (jax.grad(lambda a, x: jnp.sum(pj.linear_scan(a, x).astype(jnp.float32)), (0, 1)),
         (a.astype(jnp.bfloat16), x.astype(jnp.bfloat16)), 2),
        (jax.grad(lambda A, x: jnp.sum(jnp.abs(pj.matrix_linear_scan(A, x)) ** 2), (0, 1)), (A, xc), 2),
        (jax.vmap(lambda x: pj.linear_scan(0.5, x)), (x,), 1),
        (jax.grad(lambda p, x: jnp.sum(layer(p, x)[0])), (params, jnp.ones((8, 2, 3))), 2),
    ]
    for f, args, n in cases:
        text = _lowered_for_cuda(f, *args)
        targets = re.findall(r"stablehlo\.custom_call @([A-Za-z0-9_]+)", text)
        assert targets == ["xla_buffer_python_gpu_callback"] * n, targets
        for bad in ("send", "recv", "infeed", "outfeed", "python_gpu_callback(", "transpose"):
            assert f"stablehlo.{bad}" not in text and f"@xla_ffi_{bad}" not in text, bad
        for layouts in re.findall(r"(?:operand|result)_layouts = \[([^\]]*)\]", text):
            for lay in re.findall(r"dense<\[?([0-9, ]*)\]?>", layouts):
                dims = [int(d) for d in lay.split(",") if d.strip()]
                assert dims == sorted(dims, reverse=True), lay  # minor-to-major n-1 .. 0: row-major


# ------------------------------------------------------------------------------- matrix scan

def matrix_loop(A, x, h0=None, reverse=False):
    lead = jnp.broadcast_shapes(A.shape[:-3], x.shape[:-2], () if h0 is None else h0.shape[:-1])
    T, n = x.shape[-2:]
    A = jnp.broadcast_to(A, lead + (T,) + A.shape[-2:])
    x = jnp.broadcast_to(x, lead + (T, n))
    h = jnp.zeros(lead + (n,), x.dtype) if h0 is None else jnp.broadcast_to(h0, lead + (n,))

    def step(h, Ax):
        h = jnp.einsum("...ij,...j->...i", Ax[0], h) + Ax[1]
        return h, h

    _, hs = lax.scan(step, h, (jnp.moveaxis(A, -3, 0), jnp.moveaxis(x, -2, 0)), reverse=reverse)
    return jnp.moveaxis(hs, 0, -2)


def test_matrix_scan_forward_grad_vmap():
    rng = np.random.default_rng(9)
    n, T = 3, 12
    A = jnp.asarray((0.4 * rng.standard_normal((1, n, n))).astype(np.float32))  # constant in time
    x = jnp.asarray(rng.standard_normal((T, n)).astype(np.float32))             # broadcast over h0's batch
    h0 = jnp.asarray(rng.standard_normal((2, n)).astype(np.float32))
    f = jax.jit(lambda A, x, h0: pj.matrix_linear_scan(A, x, h0, reverse=True))
    h = f(A, x, h0)
    assert h.shape == (2, T, n)
    close(h, matrix_loop(A, x, h0, reverse=True), 1e-5)
    w = jnp.asarray(rng.standard_normal((2, T, n)).astype(np.float32))
    got = jax.jit(jax.grad(lambda *v: jnp.sum(pj.matrix_linear_scan(*v, reverse=True) * w), (0, 1, 2)))(A, x, h0)
    want = jax.jit(jax.grad(lambda *v: jnp.sum(matrix_loop(*v, reverse=True) * w), (0, 1, 2)))(A, x, h0)
    for g, r, v in zip(got, want, (A, x, h0)):
        assert g.shape == v.shape
        close(g, r, 1e-4)
    xb = jnp.asarray(rng.standard_normal((3, T, n)).astype(np.float32))
    got = jax.vmap(lambda x: pj.matrix_linear_scan(A, x, h0))(xb)
    np.testing.assert_allclose(np.asarray(got), np.stack([np.asarray(pj.matrix_linear_scan(A, xb[i], h0))
                                                          for i in range(3)]), rtol=1e-6, atol=1e-6)


def test_matrix_scan_complex_grad_in_jax_convention():
    rng = np.random.default_rng(10)
    A = jnp.asarray((0.4 * (rng.standard_normal((6, 2, 2)) + 1j * rng.standard_normal((6, 2, 2)))).astype(np.complex64))
    x = jnp.asarray((rng.standard_normal((6, 2)) + 1j * rng.standard_normal((6, 2))).astype(np.complex64))
    loss = lambda scan: lambda A, x: jnp.real(jnp.sum(scan(A, x) ** 2))  # noqa: E731
    got = jax.grad(loss(pj.matrix_linear_scan), (0, 1))(A, x)
    want = jax.jit(jax.grad(loss(matrix_loop), (0, 1)))(A, x)
    for g, r in zip(got, want):
        close(g, r, 1e-4)


# ------------------------------------------------------------------------------- GILR-LSTM, DEER

def gilr_lstm_jnp(p, x, s0, c0):
    """The GILR-LSTM written directly in JAX over lax.scan (the reference for parscan.jax.GILRLSTM)."""
    n = s0.shape[-1]
    sig = jax.nn.sigmoid
    g = sig(x @ p["W_g"] + p["b_g"])
    j = jnp.tanh(x @ p["W_j"] + p["b_j"])
    s = scan_loop(g, (1 - g) * j, s0, axis=0)
    sp = jnp.concatenate([s0[None], s[:-1]], axis=0)
    pre = x @ p["W"] + sp @ p["U"] + p["b"]
    f, i, o, z = sig(pre[..., :n]), sig(pre[..., n:2 * n]), sig(pre[..., 2 * n:3 * n]), jnp.tanh(pre[..., 3 * n:])
    c = scan_loop(f, i * z, c0, axis=0)
    return o * c, (s[-1], c[-1])


def test_gilr_lstm_forward_and_grads():
    rng = np.random.default_rng(11)
    layer = pj.GILRLSTM(4, 5, seed=3)
    params = layer.init()
    ref = parscan.GILRLSTM(4, 5, seed=3)
    for k, v in ref.params.items():
        np.testing.assert_array_equal(np.asarray(params[k]), v)
    x = jnp.asarray(rng.standard_normal((16, 2, 4)).astype(np.float32))
    s0 = jnp.asarray(rng.standard_normal((2, 5)).astype(np.float32))
    c0 = jnp.asarray(rng.standard_normal((2, 5)).astype(np.float32))
    h, (sT, cT) = jax.jit(layer)(params, x, (s0, c0))
    hr, (sr, cr) = gilr_lstm_jnp(params, x, s0, c0)
    for g, r in ((h, hr), (sT, sr), (cT, cr)):
        close(g, r, 1e-5)

    def loss(run, p, x, s0, c0):
        h, (sT, cT) = run(p, x, s0, c0)
        return jnp.sum(h ** 2) + jnp.sum(sT) + jnp.sum(cT * cT)

    got = jax.jit(jax.grad(lambda *v: loss(lambda p, x, s, c: layer(p, x, (s, c)), *v), (0, 1, 2, 3)))(
        params, x, s0, c0)
    want = jax.jit(jax.grad(lambda *v: loss(gilr_lstm_jnp, *v), (0, 1, 2, 3)))(params, x, s0, c0)
    for k in params:
        close(got[0][k], want[0][k], 1e-4)
    for g, r in zip(got[1:], want[1:]):
        close(g, r, 1e-4)
    with pytest.raises(ValueError, match="params must be a dict with the keys"):
        layer({"W": params["W"]}, x)
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, 4\)"):
        layer(params, x[..., :3])


def test_sign_task_with_optax_loss_falls():
    pytest.importorskip("optax")
    spec = importlib.util.spec_from_file_location("jax_sign_task", ROOT / "examples" / "jax_sign_task.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    log = mod.train(steps=60, length=64, hidden=16, batch=16, lr=5e-3, seed=0, every=0)
    losses = np.asarray(log["loss"])
    assert np.isfinite(losses).all()
    assert losses[-15:].mean() < 0.5 * losses[:15].mean(), (losses[:15].mean(), losses[-15:].mean())


def test_deer_solve_takes_jax_arrays():
    from parscan import deer

    cell = deer.GRUCell(3, 4)
    p = cell.init_params(0, "float32")
    x = np.random.default_rng(12).standard_normal((20, 2, 3)).astype(np.float32)
    y0 = np.zeros((2, 4), np.float32)
    want, _ = deer.solve(cell, p, x, y0)
    got, info = deer.solve(cell, {k: jnp.asarray(v) for k, v in p.items()}, jnp.asarray(x), jnp.asarray(y0))
    assert info.converged
    assert type(got) is np.ndarray and got.dtype == np.float32  # computed with NumPy, returned as NumPy
    np.testing.assert_array_equal(np.asarray(got), want)


# ------------------------------------------------------------------------------- GPU (device only)

@pytest.fixture
def xla_gpu():
    """JAX's first CUDA device (the test skips, saying why, where there is none or CuPy cannot reach it)."""
    try:
        gpus = jax.devices("cuda")
    except RuntimeError as exc:
        pytest.skip(f"JAX has no CUDA backend here ({exc}); install jax[cuda12] or jax[cuda13] on the device")
    cp = pytest.importorskip("cupy", reason="the GPU path runs the cupy backend")
    if not cp.cuda.is_available():
        pytest.skip("CuPy sees no CUDA device")
    return gpus[0]


# a kernel that keeps the stream busy for ``cycles`` clock ticks (about 0.1 s): work queued behind it is still
# pending when the callback returns unless something in the callback waited for the GPU
_SPIN = r"""
extern "C" __global__ void parscan_test_spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


@contextlib.contextmanager
def on_xlas_stream_without_host_round_trips():
    """Inside every parscan.jax callback XLA runs in the block: the arrays are CuPy's, CuPy's current stream is
    XLA's (``ctx.stream``), nothing copies to the host (``cupy.asnumpy``, ``ndarray.get``, synchronous
    memcpy raise) and nothing waits for the GPU (a spin kernel queued first on XLA's stream is still running
    when the callback returns: a device or stream synchronisation would have waited for it).  Yields the
    list of (array module is cupy, current stream == XLA's, stream still busy at the end) per callback."""
    import cupy as cp

    spin = cp.RawKernel(_SPIN, "parscan_test_spin")
    spin((1,), (1,), (np.int64(1),))  # compiled and loaded before anything is patched
    cp.cuda.Device().synchronize()
    seen, orig = [], pj._arrays

    def refuse(what):
        def f(*args, **kwargs):
            raise AssertionError(f"{what} inside a parscan.jax callback on the GPU: a host round trip")
        return f

    @contextlib.contextmanager
    def checked(ctx, outs, ins):
        with orig(ctx, outs, ins) as (xp, o, i):
            stream = cp.cuda.get_current_stream()
            on_stream = stream.ptr == int(ctx.stream)
            spin((1,), (1,), (np.int64(200_000_000),))  # on the current stream: XLA's, when on_stream
            yield xp, o, i
            seen.append((xp is cp, on_stream, not stream.done))

    patches = [(pj, "_arrays", checked), (cp, "asnumpy", refuse("cupy.asnumpy")),
               (cp.ndarray, "get", refuse("cupy.ndarray.get")),
               (cp.cuda.Stream, "synchronize", refuse("Stream.synchronize")),
               (cp.cuda.runtime, "deviceSynchronize", refuse("cudaDeviceSynchronize")),
               (cp.cuda.runtime, "streamSynchronize", refuse("cudaStreamSynchronize")),
               (cp.cuda.runtime, "memcpy", refuse("a synchronous cudaMemcpy"))]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, new in patches:
        setattr(obj, name, new)
    try:
        yield seen
    finally:
        for obj, name, old in saved:
            setattr(obj, name, old)


def _on_gpu(dev, f, *args):
    """``jax.jit(f)`` on the GPU: warmed up (the kernels compiled) outside the check, then run under
    :func:`on_xlas_stream_without_host_round_trips`; returns the results (on ``dev``) and the checks."""
    args = jax.device_put(args, dev)
    fj = jax.jit(f)
    jax.block_until_ready(fj(*args))
    with on_xlas_stream_without_host_round_trips() as seen:
        out = jax.block_until_ready(fj(*args))
    assert seen and all(all(c) for c in seen), f"(cupy, XLA's stream, no wait) per callback: {seen}"
    for leaf in jax.tree_util.tree_leaves(out):
        assert leaf.devices() == {dev}
    return out, len(seen)


@pytest.mark.gpu
def test_gpu_scan_jit_grad_vmap_on_xlas_stream(xla_gpu):
    rng = np.random.default_rng(13)
    x, a, w = rand(rng, (4, 3, 1000), "float32"), rand(rng, (3, 1), "float32", "a"), rand(rng, (4, 3, 1000), "float32")
    h, n = _on_gpu(xla_gpu, pj.linear_scan, a, x)
    assert n == 1
    close(h, reference.linear_scan(a, x), TOL["float32"])
    loss = lambda scan: lambda a, x: jnp.sum(scan(a, x) * w)  # noqa: E731
    got, n = _on_gpu(xla_gpu, jax.grad(loss(pj.linear_scan), (0, 1)), a, x)
    assert n == 2
    want = jax.jit(jax.grad(loss(scan_loop), (0, 1)))(a, x)
    for g, r in zip(got, want):
        close(g, r, 1e-4)
    hv, n = _on_gpu(xla_gpu, jax.vmap(pj.linear_scan, in_axes=(None, 0)), a, x)
    assert n == 1  # one callback for the batch
    close(hv, reference.linear_scan(a, x), TOL["float32"])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "complex64", "float16"])
def test_gpu_scan_dtypes_on_xlas_stream(xla_gpu, dtype):
    rng = np.random.default_rng(18)
    x, a, h0 = _jnp_rand(rng, (3, 700), dtype), _jnp_rand(rng, (3, 700), dtype, "a"), _jnp_rand(rng, (3,), dtype)
    wide = jnp.float32 if dtype in ("float16", "bfloat16") else dtype
    w = _jnp_rand(rng, (3, 700), wide)
    h, _ = _on_gpu(xla_gpu, lambda a, x, h0: pj.linear_scan(a, x, h0, reverse=True), a, x, h0)
    assert h.dtype == jnp.dtype(dtype)
    ref = reference.linear_scan(*(np.asarray(v.astype(wide)) for v in (a, x, h0)), reverse=True)
    close(h.astype(wide), ref, {"bfloat16": 2**-6, "float16": 4e-3}.get(dtype, TOL["complex64"]))
    loss = lambda scan: lambda *v: jnp.real(jnp.sum(scan(*v, reverse=True).astype(wide) * w))  # noqa: E731
    got, _ = _on_gpu(xla_gpu, jax.grad(loss(pj.linear_scan), (0, 1, 2)), a, x, h0)
    want = jax.jit(jax.grad(loss(scan_loop), (0, 1, 2)))(*(v.astype(wide) for v in (a, x, h0)))
    for g, r, v in zip(got, want, (a, x, h0)):
        assert g.dtype == v.dtype
        close(g.astype(wide), r, GRAD_TOL[dtype])


@pytest.mark.gpu
def test_gpu_matrix_scan_on_xlas_stream(xla_gpu):
    rng = np.random.default_rng(19)
    A = (0.4 * rng.standard_normal((300, 3, 3))).astype(np.float32)
    x, h0 = rng.standard_normal((2, 300, 3)).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)
    w = rng.standard_normal((2, 300, 3)).astype(np.float32)
    h, n = _on_gpu(xla_gpu, pj.matrix_linear_scan, A, x, h0)
    assert n == 1
    close(h, matrix_loop(*(jnp.asarray(v) for v in (A, x, h0))), 1e-4)
    loss = lambda scan: lambda *v: jnp.sum(scan(*v) * w)  # noqa: E731
    got, n = _on_gpu(xla_gpu, jax.grad(loss(pj.matrix_linear_scan), (0, 1, 2)), A, x, h0)
    assert n == 2
    want = jax.jit(jax.grad(loss(matrix_loop), (0, 1, 2)))(A, x, h0)
    for g, r in zip(got, want):
        close(g, r, 1e-4)


@pytest.mark.gpu
def test_gpu_gilr_lstm_on_xlas_stream(xla_gpu):
    rng = np.random.default_rng(20)
    layer = pj.GILRLSTM(4, 8, seed=1)
    params = layer.init()
    x = rng.standard_normal((200, 3, 4)).astype(np.float32)
    (h, _), n = _on_gpu(xla_gpu, layer, params, x)
    assert n == 1
    s0 = c0 = jnp.zeros((3, 8))
    close(h, gilr_lstm_jnp(params, jnp.asarray(x), s0, c0)[0], 1e-4)
    loss = lambda run: lambda p, x: jnp.sum(run(p, x) ** 2)  # noqa: E731
    got, n = _on_gpu(xla_gpu, jax.grad(loss(lambda p, x: layer(p, x)[0]), (0, 1)), params, x)
    assert n == 2
    want = jax.jit(jax.grad(loss(lambda p, x: gilr_lstm_jnp(p, x, s0, c0)[0]), (0, 1)))(params, x)
    for k in params:
        close(got[0][k], want[0][k], 1e-3)
    close(got[1], want[1], 1e-3)


# ------------------------------------------------------------------------------- resets (issue #18)

@pytest.mark.parametrize("dtype", ["float64", "complex128"])
@pytest.mark.parametrize("reverse", [False, True])
def test_resets_under_jit_and_grad_match_reference(dtype, reverse):
    """Values and gradients (JAX's convention: the conjugate of parscan's for complex data) against
    parscan.reference with resets; a reset's decay gets no gradient; resets themselves get none."""
    with x64():
        rng = np.random.default_rng(21)
        x, a, h0, w = (rand(rng, (3, 16), dtype), rand(rng, (3, 16), dtype, "a"), rand(rng, (3,), dtype),
                       rand(rng, (3, 16), dtype))
        resets = np.zeros(16, bool)
        resets[[0 if reverse else 15, 3, 4, 10]] = True
        f = jax.jit(lambda a, x, h0, r: pj.linear_scan(a, x, h0, reverse=reverse, resets=r))
        h = f(a, x, h0, resets)
        want = reference.linear_scan(a, x, h0, reverse=reverse, resets=resets)
        close(h, want, TOL[dtype])
        loss = lambda a, x, h0, r: jnp.sum(jnp.real(f(a, x, h0, r) * w))  # noqa: E731
        got = jax.jit(jax.grad(loss, (0, 1, 2)))(a, x, h0, resets)
        ref = reference.linear_scan_backward(a, want, np.conj(w) if np.iscomplexobj(w) else w, h0, reverse=reverse,
                                             resets=resets)
        for g, r in zip(got, ref):
            close(g, np.conj(r), TOL[dtype])
        assert np.all(np.asarray(got[0])[:, resets] == 0)
        # no resets given and all-False resets agree; every step a reset is h = x
        close(f(a, x, h0, np.zeros(16, bool)), pj.linear_scan(a, x, h0, reverse=reverse), TOL[dtype])
        close(f(a, x, h0, np.ones(16, bool)), x, TOL[dtype])


def test_resets_under_vmap_batched_and_unbatched():
    with x64():
        rng = np.random.default_rng(22)
        B = 4
        xb = jnp.asarray(rng.standard_normal((B, 3, 20)))
        rb = jnp.asarray(rng.random((B, 20)) < 0.2)  # per example, (T,) each: broadcast over the 3 channels
        r1 = rb[0]
        for in_axes, args in (((0, 0), (xb, rb)), ((0, None), (xb, r1)), ((None, 0), (xb[0], rb))):
            f = lambda x, r: pj.linear_scan(0.8, x, resets=r)  # noqa: E731
            got = jax.jit(jax.vmap(f, in_axes=in_axes))(*args)
            want = np.stack([reference.linear_scan(0.8, np.asarray(args[0] if in_axes[0] is None else args[0][i]),
                                                   resets=np.asarray(args[1] if in_axes[1] is None else args[1][i]))
                             for i in range(B)])
            close(got, want, 1e-12)
        # per-example gradients with batched resets
        loss = lambda x, r: jnp.sum(pj.linear_scan(0.8, x, resets=r) ** 2)  # noqa: E731
        got = jax.vmap(jax.grad(loss))(xb, rb)
        for i in range(B):
            h = reference.linear_scan(0.8, np.asarray(xb[i]), resets=np.asarray(rb[i]))
            close(got[i], reference.linear_scan_backward(0.8, h, 2 * h, resets=np.asarray(rb[i]))[1], 1e-12)


def test_matrix_scan_with_resets_forward_grad_vmap():
    with x64():
        rng = np.random.default_rng(23)
        n, T = 3, 12
        A = 0.4 * rng.standard_normal((2, T, n, n))
        x, h0, w = rng.standard_normal((2, T, n)), rng.standard_normal((2, n)), rng.standard_normal((2, T, n))
        resets = rng.random((2, T)) < 0.25
        resets[0, 0] = True
        f = jax.jit(lambda A, x, h0, r: pj.matrix_linear_scan(A, x, h0, resets=r))
        want = parscan.matrix_linear_scan(A, x, h0, resets=resets, backend="reference")
        close(f(A, x, h0, resets), want, 1e-12)
        got = jax.grad(lambda *v: jnp.sum(f(*v, resets) * w), (0, 1, 2))(A, x, h0)
        ref = parscan.matrix_linear_scan_backward(A, want, w, h0, resets=resets, backend="reference")
        for g, r in zip(got, ref):
            close(g, r, 1e-12)
        got = jax.vmap(lambda x, r: pj.matrix_linear_scan(A[0], x, resets=r))(x, resets)
        close(got, np.stack([parscan.matrix_linear_scan(A[0], x[i], resets=resets[i], backend="reference")
                             for i in range(2)]), 1e-12)


def test_resets_errors_at_trace_time():
    x = jnp.ones((2, 5))
    with pytest.raises(TypeError, match="resets has dtype float32; it must be a boolean array"):
        jax.jit(lambda x: pj.linear_scan(0.5, x, resets=jnp.zeros(5)))(x)
    with pytest.raises(ValueError, match="resets must broadcast to x's shape"):
        pj.linear_scan(0.5, x, resets=jnp.zeros(4, bool))
    with pytest.raises(ValueError, match="resets has shape \\(4,\\), which does not broadcast"):
        pj.matrix_linear_scan(jnp.zeros((5, 2, 2)), jnp.ones((5, 2)), resets=jnp.zeros(4, bool))


def test_gilr_lstm_with_resets_matches_the_numpy_layer():
    from parscan import layers

    with x64():
        rng = np.random.default_rng(24)
        layer = pj.GILRLSTM(3, 4, dtype="float64", seed=5)
        params = layer.init()
        ref = layers.GILRLSTM(3, 4, dtype="float64", seed=5)
        x, w = rng.standard_normal((10, 2, 3)), rng.standard_normal((10, 2, 4))
        s0, c0 = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
        resets = np.zeros((10, 2), bool)
        resets[[0, 6], 0] = True
        resets[[3, 4, 9], 1] = True
        h, (sT, cT) = jax.jit(layer)(params, x, (s0, c0), resets)
        hr, (sr, cr), cache = ref.forward(x, (s0, c0), resets)
        for g, r in ((h, hr), (sT, sr), (cT, cr)):
            close(g, r, 1e-12)

        def loss(p, x, s0, c0, r):
            h, (sT, cT) = layer(p, x, (s0, c0), r)
            return jnp.sum(h * w) + jnp.sum(sT) + jnp.sum(cT * cT)

        got = jax.jit(jax.grad(loss, (0, 1, 2, 3)))(params, x, s0, c0, resets)
        dx, grads, (ds0, dc0) = ref.backward(w, cache, (np.ones((2, 4)), 2 * cr))
        for k in params:
            close(got[0][k], grads[k], 1e-12)
        for g, r in zip(got[1:], (dx, ds0, dc0)):
            close(g, r, 1e-12)
        assert np.all(np.asarray(got[2])[0] == 0)  # row 0 restarts at step 0: s0 gets no gradient
        with pytest.raises(ValueError, match=r"resets must have shape \(T,\) = \(10,\) or \(T, B\)"):
            layer(params, x, None, resets[:5])


# ------------------------------------------------------------------------------- the benchmark suite

def test_bench_suite_runs(tmp_path, monkeypatch):
    """parscan bench --suite jax end to end on a tiny shape (timings recorded, never asserted): the cpu suite's
    shapes (here one), both directions, the lax.scan extrapolation, the cpu backend's own time, the target."""
    from parscan import bench

    monkeypatch.setattr(bench.cpu, "_cpu_shapes", lambda quick: [(4, 2**8, "channel-contiguous")])
    monkeypatch.setattr(bench.jax, "LAX_SCAN_MAX_T", 2**7)  # the loop is timed on the first 128 steps
    monkeypatch.setattr(bench, "_plots", lambda rows, out, meta: [])  # (no jax plot; spares matplotlib's import)
    meta, rows, skipped = bench.run(["jax"], quick=True, out=str(tmp_path), repeats=2, progress=False)
    assert [(r["shape"], r["direction"]) for r in rows] == [([2**8, 4], "forward"), ([2**8, 4], "forward+backward")]
    for r in rows:
        assert r["ms"] > 0 and r["cpu_backend_ms"] > 0 and isinstance(r["target_met"], bool)
        assert r["speedup_associative_scan"] > 0 and r["speedup_lax_scan"] > 0
        assert r["lax_scan_extrapolated_from"] == 2**7
    assert "## jax" in (tmp_path / "bench.md").read_text()


def test_layer_refuses_integer_and_bool_x_as_the_numpy_layer_does():
    layer = pj.GILRLSTM(2, 3, seed=0)
    params = layer.init()
    for dt in (jnp.int32, jnp.bool_):
        with pytest.raises(TypeError, match="x has dtype .* pass a floating-point array"):
            layer(params, jnp.ones((4, 2, 2), dt))
    h, _ = layer(params, jnp.ones((4, 2, 2), jnp.float32))
    assert h.dtype == layer.dtype
