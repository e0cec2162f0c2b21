"""JAX: eager jax.Array values in and out (zero-copy through DLPack), never written into; clear errors
for out= and for tracing under jax.jit (which parscan.jax serves: tests/test_jax_jit.py)."""

import numpy as np
import pytest

import parscan
from parscan import reference

jax = pytest.importorskip("jax", reason="JAX is optional")
jnp = pytest.importorskip("jax.numpy")


def test_eager_arrays_round_trip():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 40)).astype(np.float32)
    a = rng.uniform(0.5, 0.9, (3, 1)).astype(np.float32)
    xj, aj = jnp.asarray(x), jnp.asarray(a)
    h = parscan.linear_scan(aj, xj)
    assert isinstance(h, jax.Array) and h.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(h), reference.linear_scan(a, x), rtol=1e-5, atol=1e-6)
    ga, gx, gh0 = parscan.linear_scan_backward(aj, h, jnp.ones_like(h))
    assert isinstance(ga, jax.Array) and ga.shape == (3, 1) and gh0 is None
    np.testing.assert_array_equal(np.asarray(xj), x)  # inputs untouched


def test_out_and_jit_are_refused_with_the_reason():
    x = jnp.ones((2, 5), jnp.float32)
    with pytest.raises(ValueError, match="out cannot be a JAX array: JAX arrays are immutable"):
        parscan.linear_scan(0.5, x, out=jnp.zeros((2, 5), jnp.float32))
    with pytest.raises(TypeError, match="x is a JAX tracer: parscan runs eagerly.*use parscan.jax.linear_scan"):
        jax.jit(lambda v: parscan.linear_scan(0.5, v))(x)
