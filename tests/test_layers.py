"""Layers: hand-written gradients against finite differences (float64), chunked runs against whole
runs, and input checks."""

import numpy as np
import pytest

from parscan import layers

LAYERS = {
    "GILR": lambda m, n: layers.GILR(m, n, dtype="float64", seed=0, gate_bias=0.3),
    "GILRLSTM": lambda m, n: layers.GILRLSTM(m, n, dtype="float64", seed=0),
    "SRU": lambda m, n: layers.SRU(m, n, dtype="float64", seed=0),
    "SRU-square": lambda m, n: layers.SRU(n, n, dtype="float64", seed=0),
    "QRNN": lambda m, n: layers.QRNN(m, n, k=3, dtype="float64", seed=0),
    "QRNN-k1": lambda m, n: layers.QRNN(m, n, k=1, dtype="float64", seed=0),
}


def _state_like(rng, final):
    return tuple(rng.standard_normal(np.shape(s)) for s in final)


def _loss(layer, x, state, w, ws):
    h, final, _ = layer.forward(x, state)
    return float(np.sum(w * h) + sum(np.sum(a * b) for a, b in zip(ws, final)))


def _fd(f, v, eps=1e-6):
    g = np.zeros_like(v)
    for idx in np.ndindex(v.shape):
        old = v[idx]
        v[idx] = old + eps
        fp = f()
        v[idx] = old - eps
        fm = f()
        v[idx] = old
        g[idx] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("name", LAYERS)
def test_gradients_match_finite_differences(name):
    rng = np.random.default_rng(1)
    layer = LAYERS[name](3, 4)
    m = layer.input_size
    x = rng.standard_normal((5, 2, m))
    _, final, _ = layer.forward(x)
    state = _state_like(rng, final)
    h, final, cache = layer.forward(x, state)
    w, ws = rng.standard_normal(h.shape), _state_like(rng, final)
    dx, grads, dstate = layer.backward(w, cache, ws)
    f = lambda: _loss(layer, x, state, w, ws)  # noqa: E731
    assert set(grads) == set(layer.params)
    for k, v in layer.params.items():
        np.testing.assert_allclose(grads[k], _fd(f, v), rtol=1e-5, atol=1e-7, err_msg=k)
    np.testing.assert_allclose(dx, _fd(f, x), rtol=1e-5, atol=1e-7)
    for s, ds in zip(state, dstate):
        np.testing.assert_allclose(ds, _fd(f, s), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", LAYERS)
def test_two_chunks_equal_the_whole(name):
    rng = np.random.default_rng(2)
    layer = LAYERS[name](3, 4)
    x = rng.standard_normal((11, 2, layer.input_size))
    h, final, _ = layer.forward(x)
    h1, st, _ = layer.forward(x[:4])
    h2, final2, _ = layer.forward(x[4:], st)
    np.testing.assert_allclose(np.concatenate([h1, h2]), h, rtol=1e-12, atol=1e-12)
    for a, b in zip(final, final2):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_gilrlstm_contract_shapes_and_forget_bias():
    layer = layers.GILRLSTM(5, 7, seed=0)
    shapes = {k: v.shape for k, v in layer.params.items()}
    assert shapes == {"W_g": (5, 7), "b_g": (7,), "W_j": (5, 7), "b_j": (7,), "W": (5, 28), "U": (7, 28),
                      "b": (28,)}
    assert layer.params["W"].dtype == np.float32
    np.testing.assert_array_equal(layer.params["b"][:7], 1.0)
    np.testing.assert_array_equal(layer.params["b"][7:], 0.0)
    h, (s, c), cache = layer.forward(np.zeros((3, 2, 5), np.float32))
    assert h.shape == (3, 2, 7) and s.shape == c.shape == (2, 7) and h.dtype == np.float32


def test_bad_inputs_are_named():
    layer = layers.GILRLSTM(5, 7)
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, 5\)"):
        layer.forward(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="state must be None or a tuple of 2 arrays"):
        layer.forward(np.zeros((3, 2, 5), np.float32), state=np.zeros((2, 7)))
    with pytest.raises(ValueError, match=r"state entries must have shape \(2, 7\)"):
        layer.forward(np.zeros((3, 2, 5), np.float32), state=(np.zeros((2, 7)), np.zeros((3, 7))))
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        layers.GILR(2, 2, dtype="float16")
    with pytest.raises(ValueError, match="filter width k must be >= 1"):
        layers.QRNN(2, 2, k=0)


@pytest.mark.parametrize("cls", [layers.GILR, layers.GILRLSTM, layers.SRU, layers.QRNN])
def test_dtypes_are_checked_as_linear_scan_checks_them(cls):
    layer = cls(3, 4, seed=0)  # float32
    for bad in (np.ones((5, 2, 3), np.int64), np.ones((5, 2, 3), bool)):
        with pytest.raises(TypeError, match=rf"x has dtype {bad.dtype}; the layer computes in float32: .*astype"):
            layer.forward(bad)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    h, final, cache = layer.forward(x)
    h16, _, _ = layer.forward(x.astype(np.float16))
    assert h.dtype == h16.dtype == np.float32 and all(s.dtype == np.float32 for s in final)
    with pytest.raises(TypeError, match="grad_h has dtype int64"):
        layer.backward(np.ones(h.shape, np.int64), cache)
    dx, grads, _ = layer.backward(np.ones_like(h), cache)
    assert dx.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())
