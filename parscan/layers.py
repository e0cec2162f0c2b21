"""Linear surrogate RNN layers on the scans, with hand-written forward and backward passes.

Every layer takes x of shape (T, B, m) (time-major), keeps its parameters in ``.params`` (a dict of
arrays of the layer's array module ``xp``: NumPy or CuPy), and offers::

    h, state_T, cache = layer.forward(x, state=None, resets=None)
    grad_x, grads, grad_state = layer.backward(grad_h, cache, grad_state=None)

``grads`` has the params' keys; ``state`` / ``grad_state`` are per-layer tuples (zeros / None when
absent).  x and grad_h must be real floating-point arrays (integers and bools raise ``TypeError``, as
in :func:`parscan.linear_scan`); results have the NumPy result type of x and the layer's dtype
(float32 for float16 or float32 x in a float32 layer).  Running a sequence in two chunks, passing the
state on, equals running it whole.  All recurrences are :func:`parscan.linear_scan` calls along time; the matrix products run over all T*B
rows at once (the paper's "effective batch size" T*B).

``resets``: a bool array of shape (T,) or (T, B), True where a new sequence starts
(:func:`parscan.resets_from_offsets` for sequences packed end to end).  There every recurrence of the
layer restarts from the zero state, and whatever else mixes time (the GILR-LSTM's s_{t-1} U, the
QRNN's window over earlier inputs) sees nothing before the reset: packed sequences give exactly the
outputs and gradients of the same sequences run one by one.  The backward takes them from the cache.

Layers (n = hidden size, sigma = logistic sigmoid):

- :class:`GILR`: g = sigma(x W_g + b_g), j = tanh(x W_j + b_j), h_t = g_t h_{t-1} + (1 - g_t) j_t.
- :class:`GILRLSTM` (Martin & Cundy 2018): the GILR state s feeds an LSTM-like cell whose recurrence
  is linear in c: [f, i, o, z]_t = x_t W + s_{t-1} U + b, c_t = f_t c_{t-1} + i_t z_t, h_t = o_t c_t.
- :class:`SRU` (Lei et al. 2017): [u, f, r] = x W + [0, b_f, b_r], c_t = f_t c_{t-1} + (1 - f_t) u_t,
  h_t = r_t tanh(c_t) + (1 - r_t) x'_t, x' = x (m == n) or x W_s (m != n).
- :class:`QRNN` (Bradbury et al. 2017) with fo-pooling: [z, f, o] from a causal convolution of width k
  over time, c_t = f_t c_{t-1} + (1 - f_t) z_t, h_t = o_t c_t.
"""

from __future__ import annotations

import numpy as np

from .scan import linear_scan, linear_scan_backward


def _module(xp):
    if xp is None or xp is np or xp == "numpy":
        return np
    if isinstance(xp, str):
        import importlib

        return importlib.import_module(xp)
    return xp


def sigmoid(xp, v):
    return 0.5 * (xp.tanh(0.5 * v) + 1.0)  # stable for any v


def _check_x(x, m, dtype, name="x"):
    """x (or grad_h) checked as :func:`parscan.linear_scan` checks its inputs: shape (T, B, m) and a real
    floating dtype (integers and bools would be promoted to float64 by the products with the params)."""
    if getattr(x, "ndim", None) != 3 or x.shape[2] != m:
        raise ValueError(f"{name} must have shape (T, B, {m}) (time-major), got {getattr(x, 'shape', None)}")
    if np.dtype(x.dtype).kind != "f":
        raise TypeError(f"{name} has dtype {x.dtype}; the layer computes in {dtype}: pass a floating-point "
                        f"array, e.g. {name}.astype(numpy.{dtype})")


def _state(xp, state, k, B, n, dtype, name):
    """A k-tuple of (B, n) states (zeros for None), checked."""
    if state is None:
        return tuple(xp.zeros((B, n), dtype) for _ in range(k))
    if not isinstance(state, (tuple, list)) or len(state) != k:
        raise ValueError(f"{name} must be None or a tuple of {k} arrays of shape ({B}, {n})")
    out = []
    for s in state:
        s = xp.asarray(s, dtype)
        if s.shape != (B, n):
            raise ValueError(f"{name} entries must have shape ({B}, {n}), got {s.shape}")
        out.append(s)
    return tuple(out)


def _prev(xp, s0, s):
    """States entering each step: (s0, s[0], ..., s[T-2])."""
    return xp.concatenate([s0[None], s[:-1]], axis=0)


def _resets(xp, resets, T, B):
    """``resets`` of shape (T,) or (T, B) as a bool view of shape (T, 1, 1) or (T, B, 1) that broadcasts
    over the hidden dim, or None."""
    if resets is None:
        return None
    r = xp.asarray(resets)
    if r.dtype != np.bool_:
        raise TypeError(f"resets has dtype {r.dtype}; it must be a boolean array (True where a sequence starts): "
                        f"pass resets.astype(bool), or build it with parscan.resets_from_offsets")
    if r.shape == (T,):
        return r.reshape(T, 1, 1)
    if r.ndim == 2 and r.shape[0] == T and r.shape[1] in (1, B):
        return r.reshape(T, r.shape[1], 1)
    raise ValueError(f"resets must have shape (T,) = ({T},) or (T, B) = ({T}, {B}) (time-major, as x), got "
                     f"{r.shape}")


def _zero_at(xp, r, v):
    """``v`` with the steps where ``r`` is true zeroed (v itself when there are no resets)."""
    return v if r is None else xp.where(r, v.dtype.type(0), v)


def _rows(v):
    return v.reshape(-1, v.shape[-1])


class _Layer:
    """Parameters, initialisation and the shared bookkeeping of the layers."""

    def __init__(self, input_size, hidden_size, dtype="float32", xp=None, seed=None):
        if int(input_size) < 1 or int(hidden_size) < 1:
            raise ValueError("input_size and hidden_size must be positive integers")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.xp = _module(xp)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self.rng = np.random.default_rng(seed)
        self.params = {}

    def _uniform(self, shape, fan_in):
        bound = 1.0 / np.sqrt(fan_in)
        return self.xp.asarray(self.rng.uniform(-bound, bound, shape).astype(self.dtype))

    def _zeros(self, shape):
        return self.xp.zeros(shape, self.dtype)


class GILR(_Layer):
    """Gated impulse linear recurrence: h_t = g_t h_{t-1} + (1 - g_t) j_t (see module docstring).

    State: ``(h,)``.  Params: ``W_g (m, n)``, ``b_g (n,)``, ``W_j (m, n)``, ``b_j (n,)``.
    """

    def __init__(self, input_size, hidden_size, *, dtype="float32", xp=None, seed=None, gate_bias=0.0):
        super().__init__(input_size, hidden_size, dtype, xp, seed)
        m, n = self.input_size, self.hidden_size
        self.params = {"W_g": self._uniform((m, n), m), "b_g": self._zeros(n) + gate_bias,
                       "W_j": self._uniform((m, n), m), "b_j": self._zeros(n)}

    def forward(self, x, state=None, resets=None):
        xp, p = self.xp, self.params
        _check_x(x, self.input_size, self.dtype)
        T, B, _ = x.shape
        (h0,) = _state(xp, state, 1, B, self.hidden_size, self.dtype, "state")
        r = _resets(xp, resets, T, B)
        X = _rows(x)
        g = sigmoid(xp, X @ p["W_g"] + p["b_g"]).reshape(T, B, -1)
        j = xp.tanh(X @ p["W_j"] + p["b_j"]).reshape(T, B, -1)
        h = linear_scan(g, (1 - g) * j, h0, axis=0, resets=r)
        return h, (h[-1] if T else h0,), (x, h0, g, j, h, r)

    def backward(self, grad_h, cache, grad_state=None):
        _check_x(grad_h, self.hidden_size, self.dtype, "grad_h")
        xp, p = self.xp, self.params
        x, h0, g, j, h, r = cache
        T, B, _ = x.shape
        grad_h = _with_final(xp, grad_h, grad_state, 0)
        dg_a, dxs, dh0 = linear_scan_backward(g, h, grad_h, h0, axis=0, resets=r)
        dg = dg_a - j * dxs
        dj = (1 - g) * dxs
        dgp = _rows(dg * g * (1 - g))
        djp = _rows(dj * (1 - j * j))
        X = _rows(x)
        grads = {"W_g": X.T @ dgp, "b_g": dgp.sum(0), "W_j": X.T @ djp, "b_j": djp.sum(0)}
        dx = (dgp @ p["W_g"].T + djp @ p["W_j"].T).reshape(T, B, -1)
        return dx, grads, (dh0,)


def _with_final(xp, grad_h, grad_state, k):
    """grad_h with the gradient of the final state (entry k of grad_state) added at the last step."""
    if grad_state is None or grad_state[k] is None or grad_h.shape[0] == 0:
        return grad_h
    out = grad_h.copy()
    out[-1] += grad_state[k]
    return out


class GILRLSTM(_Layer):
    """The GILR-LSTM of Martin & Cundy (2018); equations in the module docstring.

    State: ``(s, c)``.  Params: ``W_g (m, n)``, ``b_g (n,)``, ``W_j (m, n)``, ``b_j (n,)``,
    ``W (m, 4n)``, ``U (n, 4n)``, ``b (4n,)`` with gate blocks in the order f, i, o, z.
    ``forget_bias`` initialises b's f block (1.0 helps long dependencies).
    """

    def __init__(self, input_size, hidden_size, *, dtype="float32", xp=None, seed=None, forget_bias=1.0):
        super().__init__(input_size, hidden_size, dtype, xp, seed)
        m, n = self.input_size, self.hidden_size
        b = np.zeros(4 * n, self.dtype)
        b[:n] = forget_bias
        self.params = {"W_g": self._uniform((m, n), m), "b_g": self._zeros(n),
                       "W_j": self._uniform((m, n), m), "b_j": self._zeros(n),
                       "W": self._uniform((m, 4 * n), m), "U": self._uniform((n, 4 * n), n),
                       "b": self.xp.asarray(b)}

    def forward(self, x, state=None, resets=None):
        xp, p, n = self.xp, self.params, self.hidden_size
        _check_x(x, self.input_size, self.dtype)
        T, B, _ = x.shape
        s0, c0 = _state(xp, state, 2, B, n, self.dtype, "state")
        r = _resets(xp, resets, T, B)
        X = _rows(x)
        g = sigmoid(xp, X @ p["W_g"] + p["b_g"]).reshape(T, B, n)
        j = xp.tanh(X @ p["W_j"] + p["b_j"]).reshape(T, B, n)
        s = linear_scan(g, (1 - g) * j, s0, axis=0, resets=r)
        sp = _zero_at(xp, r, _prev(xp, s0, s)) if T else s  # a sequence's first step sees s = 0
        pre = (X @ p["W"] + _rows(sp) @ p["U"] + p["b"]).reshape(T, B, 4 * n)
        f = sigmoid(xp, pre[..., :n])
        i = sigmoid(xp, pre[..., n:2 * n])
        o = sigmoid(xp, pre[..., 2 * n:3 * n])
        z = xp.tanh(pre[..., 3 * n:])
        c = linear_scan(f, i * z, c0, axis=0, resets=r)
        h = o * c
        final = (s[-1], c[-1]) if T else (s0, c0)
        return h, final, (x, s0, c0, g, j, s, sp, f, i, o, z, c, r)

    def backward(self, grad_h, cache, grad_state=None):
        _check_x(grad_h, self.hidden_size, self.dtype, "grad_h")
        xp, p, n = self.xp, self.params, self.hidden_size
        x, s0, c0, g, j, s, sp, f, i, o, z, c, r = cache
        T, B, _ = x.shape
        do = grad_h * c
        dc = _with_final(xp, grad_h * o, grad_state, 1)
        df, dcx, dc0 = linear_scan_backward(f, c, dc, c0, axis=0, resets=r)
        dpre = xp.concatenate([df * f * (1 - f), dcx * z * i * (1 - i), do * o * (1 - o),
                               dcx * i * (1 - z * z)], axis=-1)
        D = _rows(dpre)
        X = _rows(x)
        grads = {"W": X.T @ D, "U": _rows(sp).T @ D, "b": D.sum(0)}
        dx = D @ p["W"].T
        dsp = (D @ p["U"].T).reshape(T, B, n)  # gradient w.r.t. s_{t-1} at each step t
        dsp = _zero_at(xp, r, dsp)  # a sequence's first step does not read s_{t-1}
        ds = xp.concatenate([dsp[1:], xp.zeros_like(dsp[:1])], axis=0) if T else dsp
        ds = _with_final(xp, ds, grad_state, 0)
        dg_a, dxs, ds0 = linear_scan_backward(g, s, ds, s0, axis=0, resets=r)
        if T:
            ds0 = ds0 + dsp[0]
        dg = dg_a - j * dxs
        dj = (1 - g) * dxs
        dgp = _rows(dg * g * (1 - g))
        djp = _rows(dj * (1 - j * j))
        grads.update({"W_g": X.T @ dgp, "b_g": dgp.sum(0), "W_j": X.T @ djp, "b_j": djp.sum(0)})
        dx = (dx + dgp @ p["W_g"].T + djp @ p["W_j"].T).reshape(T, B, -1)
        return dx, grads, (ds0, dc0)


class SRU(_Layer):
    """Simple recurrent unit (Lei et al. 2017); equations in the module docstring.

    State: ``(c,)``.  Params: ``W (m, 3n)`` (blocks u, f, r), ``b (2n,)`` (f, r), and ``W_s (m, n)``
    when m != n (the highway's projection of x).
    """

    def __init__(self, input_size, hidden_size, *, dtype="float32", xp=None, seed=None, forget_bias=1.0):
        super().__init__(input_size, hidden_size, dtype, xp, seed)
        m, n = self.input_size, self.hidden_size
        b = np.zeros(2 * n, self.dtype)
        b[:n] = forget_bias
        self.params = {"W": self._uniform((m, 3 * n), m), "b": self.xp.asarray(b)}
        if m != n:
            self.params["W_s"] = self._uniform((m, n), m)

    def forward(self, x, state=None, resets=None):
        xp, p, n = self.xp, self.params, self.hidden_size
        _check_x(x, self.input_size, self.dtype)
        T, B, _ = x.shape
        (c0,) = _state(xp, state, 1, B, n, self.dtype, "state")
        rs = _resets(xp, resets, T, B)
        X = _rows(x)
        pre = (X @ p["W"]).reshape(T, B, 3 * n)
        u = pre[..., :n]
        f = sigmoid(xp, pre[..., n:2 * n] + p["b"][:n])
        r = sigmoid(xp, pre[..., 2 * n:] + p["b"][n:])
        c = linear_scan(f, (1 - f) * u, c0, axis=0, resets=rs)
        skip = x if "W_s" not in p else (X @ p["W_s"]).reshape(T, B, n)
        tc = xp.tanh(c)
        h = r * tc + (1 - r) * skip
        return h, ((c[-1] if T else c0),), (x, c0, u, f, r, c, tc, skip, rs)

    def backward(self, grad_h, cache, grad_state=None):
        _check_x(grad_h, self.hidden_size, self.dtype, "grad_h")
        xp, p, n = self.xp, self.params, self.hidden_size
        x, c0, u, f, r, c, tc, skip, rs = cache
        T, B, _ = x.shape
        dr = grad_h * (tc - skip)
        dskip = grad_h * (1 - r)
        dc = _with_final(xp, grad_h * r * (1 - tc * tc), grad_state, 0)
        df_a, dcx, dc0 = linear_scan_backward(f, c, dc, c0, axis=0, resets=rs)
        df = df_a - u * dcx
        du = (1 - f) * dcx
        D = _rows(xp.concatenate([du, df * f * (1 - f), dr * r * (1 - r)], axis=-1))
        X = _rows(x)
        grads = {"W": X.T @ D, "b": D[:, n:].sum(0)}
        dx = D @ p["W"].T
        if "W_s" in p:
            grads["W_s"] = X.T @ _rows(dskip)
            dx = dx + _rows(dskip) @ p["W_s"].T
        else:
            dx = dx + _rows(dskip)
        return dx.reshape(T, B, -1), grads, (dc0,)


class QRNN(_Layer):
    """Quasi-recurrent network with fo-pooling (Bradbury et al. 2017), causal filter width ``k``.

    State: ``(c, x_hist)`` where x_hist holds the last k-1 inputs (k-1, B, m) (zeros at the start).
    Params: ``W (k, m, 3n)`` (tap k-1 is the current step; blocks z, f, o), ``b (3n,)``.
    """

    def __init__(self, input_size, hidden_size, *, k=2, dtype="float32", xp=None, seed=None, forget_bias=1.0):
        super().__init__(input_size, hidden_size, dtype, xp, seed)
        if int(k) < 1:
            raise ValueError(f"filter width k must be >= 1, got {k}")
        self.k = int(k)
        m, n = self.input_size, self.hidden_size
        b = np.zeros(3 * n, self.dtype)
        b[n:2 * n] = forget_bias
        self.params = {"W": self._uniform((self.k, m, 3 * n), self.k * m), "b": self.xp.asarray(b)}

    def _state(self, state, B):
        xp, n, m, k = self.xp, self.hidden_size, self.input_size, self.k
        if state is None:
            return xp.zeros((B, n), self.dtype), xp.zeros((k - 1, B, m), self.dtype)
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(f"state must be None or (c of shape ({B}, {n}), x_hist of shape ({k - 1}, {B}, {m}))")
        c0, hist = (xp.asarray(v, self.dtype) for v in state)
        if c0.shape != (B, n) or hist.shape != (k - 1, B, m):
            raise ValueError(f"state shapes must be ({B}, {n}) and ({k - 1}, {B}, {m}), got {c0.shape}, {hist.shape}")
        return c0, hist

    def _windows(self, r, T):
        """With resets: ``(masks, final)``, where ``masks[tap]`` ((T, B or 1, 1), or None when every
        row sees it) is 1 where step t may read the input ``k - 1 - tap`` steps back (no reset after
        it, up to t) and ``final`` ((k - 1, B or 1, 1)) the same for the inputs kept in the final
        x_hist, as seen from step T; ``(None, None)`` without resets."""
        xp, k = self.xp, self.k
        if r is None or k == 1 or T == 0:
            return None, None
        keep = (~r).astype(self.dtype)
        # steps since the last reset (0 at one; k and more: none seen), by the scan itself
        age = linear_scan(keep, keep, float(k), axis=0)
        masks = [(age >= k - 1 - tap).astype(self.dtype) if tap < k - 1 else None for tap in range(k)]
        final = xp.stack([(age[-1] >= k - 2 - i).astype(self.dtype) for i in range(k - 1)])
        return masks, final

    def forward(self, x, state=None, resets=None):
        xp, p, n, k = self.xp, self.params, self.hidden_size, self.k
        _check_x(x, self.input_size, self.dtype)
        T, B, m = x.shape
        c0, hist = self._state(state, B)
        r = _resets(xp, resets, T, B)
        masks, fmask = self._windows(r, T)
        xpad = xp.concatenate([hist, x], axis=0)  # (T + k - 1, B, m)
        pre = xp.broadcast_to(p["b"], (T, B, 3 * n)).copy()
        for tap in range(k):
            part = (_rows(xpad[tap:tap + T]) @ p["W"][tap]).reshape(T, B, 3 * n)
            pre += part if masks is None or masks[tap] is None else part * masks[tap]
        z = xp.tanh(pre[..., :n])
        f = sigmoid(xp, pre[..., n:2 * n])
        o = sigmoid(xp, pre[..., 2 * n:])
        c = linear_scan(f, (1 - f) * z, c0, axis=0, resets=r)
        h = o * c
        tail = xpad[xpad.shape[0] - (k - 1):]
        final = ((c[-1] if T else c0), tail if fmask is None else tail * fmask)
        return h, final, (xpad, c0, z, f, o, c, r, masks, fmask)

    def backward(self, grad_h, cache, grad_state=None):
        _check_x(grad_h, self.hidden_size, self.dtype, "grad_h")
        xp, p, n, k = self.xp, self.params, self.hidden_size, self.k
        xpad, c0, z, f, o, c, r, masks, fmask = cache
        T, B = z.shape[:2]
        do = grad_h * c
        dc = _with_final(xp, grad_h * o, grad_state, 0)
        df_a, dcx, dc0 = linear_scan_backward(f, c, dc, c0, axis=0, resets=r)
        df = df_a - z * dcx
        dz = (1 - f) * dcx
        D = _rows(xp.concatenate([dz * (1 - z * z), df * f * (1 - f), do * o * (1 - o)], axis=-1))
        dxpad = xp.zeros(xpad.shape, xpad.dtype)
        if grad_state is not None and grad_state[1] is not None and k > 1:
            dxpad[xpad.shape[0] - (k - 1):] += grad_state[1] if fmask is None else grad_state[1] * fmask
        dW = xp.zeros_like(p["W"])
        for tap in range(k):
            Dt = D if masks is None or masks[tap] is None else _rows(D.reshape(T, B, -1) * masks[tap])
            dW[tap] = _rows(xpad[tap:tap + T]).T @ Dt
            dxpad[tap:tap + T] += (Dt @ p["W"][tap].T).reshape(T, B, -1)
        grads = {"W": dW, "b": D.sum(0)}
        return dxpad[k - 1:], grads, (dc0, dxpad[:k - 1])
