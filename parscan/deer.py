"""DEER (Lim et al., ICLR 2024): a nonlinear recurrence y_t = f(y_{t-1}, x_t) evaluated in parallel
over time by Newton's method on the scan.

At each iteration, with the current guess y^(k) and y_{-1} = y0::

    J_t = df/dy (y^(k)_{t-1}, x_t)
    y^(k+1)_t = J_t y^(k+1)_{t-1} + (f(y^(k)_{t-1}, x_t) - J_t y^(k)_{t-1})      for all t at once

a linear recurrence with dense coefficients (:func:`parscan.matrix_linear_scan`).  ``method="quasi"``
(quasi-DEER, Gonzalez et al. 2024) keeps only diag(J_t), so the scan is the elementwise
:func:`parscan.linear_scan`; ``"sequential"`` is the plain loop.  Converged when
``max |y^(k+1) - y^(k)| <= atol + rtol * max |y^(k+1)|``; ``info`` says how it went, and a NaN or a
run out of iterations is reported there (and warned about), never silent.

Gradients (:func:`solve_backward`): at the converged y, the implicit-function VJP is one reverse scan
with the Jacobians there, lam_t = dL/dy_t + J_{t+1}^T lam_{t+1}, then each step's VJP with cotangent
lam_t gives dL/dx_t, dL/dparams and dL/dy0 = J_0^T lam_0.

A *cell* is any object with ``step(params, y, x)``, ``jacobian(params, y, x)`` (..., n, n),
``jacobian_diag(params, y, x)`` (..., n) and ``vjp(params, y, x, lam) -> (dy, dx, dparams)``, all
vectorised over leading dims.  Built in: :class:`GRUCell` (torch.nn.GRUCell's parameter names, shapes
and gate order, so trained torch weights drop in) and :class:`TanhCell`.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass

import numpy as np

from .matrix import matrix_linear_scan, matrix_linear_scan_backward
from .scan import linear_scan


def _xp(v):
    """CuPy for CuPy arrays, else NumPy: the cells and the solver run where the data lives."""
    cp = sys.modules.get("cupy")
    return cp if cp is not None and isinstance(v, cp.ndarray) else np


def _sig(v):
    return 0.5 * (np.tanh(0.5 * v) + 1.0)


class _Cell:
    """Sizes and torch's initialisation (uniform +-1/sqrt(n)) of ``gates`` stacked blocks."""

    gates = 1

    def __init__(self, input_size, hidden_size):
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)

    def init_params(self, seed=None, dtype="float64"):
        rng = np.random.default_rng(seed)
        m, n, k = self.input_size, self.hidden_size, 1 / np.sqrt(self.hidden_size)
        g = self.gates * n
        u = lambda *s: rng.uniform(-k, k, s).astype(dtype)  # noqa: E731
        return {"weight_ih": u(g, m), "weight_hh": u(g, n), "bias_ih": u(g), "bias_hh": u(g)}


class TanhCell(_Cell):
    """y' = tanh(x W_ih^T + b_ih + y W_hh^T + b_hh) (torch.nn.RNNCell's names and shapes)."""

    gates = 1

    def step(self, p, y, x):
        return np.tanh(x @ p["weight_ih"].T + p["bias_ih"] + y @ p["weight_hh"].T + p["bias_hh"])

    def jacobian(self, p, y, x):
        out = self.step(p, y, x)
        return (1 - out * out)[..., :, None] * p["weight_hh"]

    def jacobian_diag(self, p, y, x):
        out = self.step(p, y, x)
        return (1 - out * out) * np.diagonal(p["weight_hh"])

    def vjp(self, p, y, x, lam):
        out = self.step(p, y, x)
        d = lam * (1 - out * out)
        rows_d, rows_x, rows_y = d.reshape(-1, d.shape[-1]), x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        grads = {"weight_ih": rows_d.T @ rows_x, "weight_hh": rows_d.T @ rows_y, "bias_ih": rows_d.sum(0),
                 "bias_hh": rows_d.sum(0)}
        return d @ p["weight_hh"], d @ p["weight_ih"], grads


class GRUCell(_Cell):
    """torch.nn.GRUCell's equations, names and gate order (r, z, n)::

        r = sigma(W_ir x + b_ir + W_hr y + b_hr),  z = sigma(W_iz x + b_iz + W_hz y + b_hz)
        c = tanh(W_in x + b_in + r * (W_hn y + b_hn)),  y' = (1 - z) * c + z * y

    Params: ``weight_ih`` (3n, m), ``weight_hh`` (3n, n), ``bias_ih`` (3n,), ``bias_hh`` (3n,).
    """

    gates = 3

    def _gates(self, p, y, x):
        n = self.hidden_size
        gi = x @ p["weight_ih"].T + p["bias_ih"]
        gh = y @ p["weight_hh"].T + p["bias_hh"]
        r = _sig(gi[..., :n] + gh[..., :n])
        z = _sig(gi[..., n:2 * n] + gh[..., n:2 * n])
        c = np.tanh(gi[..., 2 * n:] + r * gh[..., 2 * n:])
        return r, z, c, gh[..., 2 * n:]

    def step(self, p, y, x):
        r, z, c, _ = self._gates(p, y, x)
        return (1 - z) * c + z * y

    def _jac_parts(self, p, y, x):
        n = self.hidden_size
        r, z, c, ghn = self._gates(p, y, x)
        W = p["weight_hh"]
        dr = r * (1 - r)  # row scales of dr/dy = diag(dr) W_hr, etc.
        dz = z * (1 - z)
        dc = 1 - c * c
        return r, z, c, ghn, dr, dz, dc, W[:n], W[n:2 * n], W[2 * n:]

    def jacobian(self, p, y, x):
        r, z, c, ghn, dr, dz, dc, Wr, Wz, Wn = self._jac_parts(p, y, x)
        dR = dr[..., :, None] * Wr
        dZ = dz[..., :, None] * Wz
        dC = dc[..., :, None] * (r[..., :, None] * Wn + ghn[..., :, None] * dR)
        J = (1 - z)[..., :, None] * dC + (y - c)[..., :, None] * dZ
        idx = _xp(J).arange(self.hidden_size)
        J[..., idx, idx] += z
        return J

    def jacobian_diag(self, p, y, x):
        r, z, c, ghn, dr, dz, dc, Wr, Wz, Wn = self._jac_parts(p, y, x)
        dRd = dr * np.diagonal(Wr)
        dC = dc * (r * np.diagonal(Wn) + ghn * dRd)
        return (1 - z) * dC + (y - c) * dz * np.diagonal(Wz) + z

    def vjp(self, p, y, x, lam):
        n = self.hidden_size
        r, z, c, ghn = self._gates(p, y, x)
        dc = lam * (1 - z)
        dz = lam * (y - c)
        dy = lam * z
        dcp = dc * (1 - c * c)
        dr = dcp * ghn
        drp = dr * r * (1 - r)
        dzp = dz * z * (1 - z)
        d_gi = np.concatenate([drp, dzp, dcp], axis=-1)
        d_gh = np.concatenate([drp, dzp, dcp * r], axis=-1)
        dy = dy + d_gh @ p["weight_hh"]
        dx = d_gi @ p["weight_ih"]
        R = lambda v: v.reshape(-1, v.shape[-1])  # noqa: E731
        grads = {"weight_ih": R(d_gi).T @ R(x), "weight_hh": R(d_gh).T @ R(y), "bias_ih": R(d_gi).sum(0),
                 "bias_hh": R(d_gh).sum(0)}
        return dy, dx, grads


@dataclass
class Info:
    method: str
    iterations: int
    converged: bool
    residual: float          # max_t |y_t - f(y_{t-1}, x_t)| at the returned y
    history: list            # max |y^(k+1) - y^(k)| per iteration
    nan: bool = False


def _prev(y0, y):
    return np.concatenate([y0[None], y[:-1]], axis=0)


def _check(cell, x, y0):
    if getattr(x, "ndim", None) != 3 or x.shape[2] != cell.input_size:
        raise ValueError(f"x must have shape (T, B, {cell.input_size}), got {getattr(x, 'shape', None)}")
    if getattr(y0, "shape", None) != (x.shape[1], cell.hidden_size):
        raise ValueError(f"y0 must have shape ({x.shape[1]}, {cell.hidden_size}), got {getattr(y0, 'shape', None)}")


def sequential(cell, params, x, y0):
    """The loop y_t = f(y_{t-1}, x_t)."""
    y = _xp(x).empty((x.shape[0],) + y0.shape, np.result_type(x.dtype, y0.dtype))
    h = y0
    for t in range(x.shape[0]):
        h = cell.step(params, h, x[t])
        y[t] = h
    return y


def solve(cell, params, x, y0, *, method="deer", tol=None, max_iter=None, y_init=None, backend=None):
    """``(y, info)``: y (T, B, n) with y_t = f(y_{t-1}, x_t), y_{-1} = y0 (see module docstring).

    ``tol`` = (rtol, atol) or one number for both (default 1e-10 in float64, 1e-5 in float32);
    ``max_iter`` defaults to T + 1 for "deer" (Newton on this problem is exact after T steps) and
    4 T + 10 for "quasi".  ``y_init``: the first guess (default y0 at every step).
    """
    xp = _xp(x)
    x, y0 = xp.asarray(x), xp.asarray(y0)
    params = {k: xp.asarray(v) for k, v in params.items()}  # weights go where the data is
    _check(cell, x, y0)
    if method not in ("deer", "quasi", "sequential"):
        raise ValueError(f"method must be 'deer', 'quasi' or 'sequential', got {method!r}")
    T = x.shape[0]
    dtype = np.result_type(x.dtype, y0.dtype)
    if method == "sequential" or T == 0:
        y = sequential(cell, params, x, y0)
        res = 0.0
        return y, Info(method, 0 if T == 0 else T, True, res, [], bool(np.isnan(y).any()))
    if tol is None:
        tol = 1e-10 if dtype == np.float64 else 1e-5
    rtol, atol = (tol, tol) if np.isscalar(tol) else tol
    max_iter = max_iter or (T + 1 if method == "deer" else 4 * T + 10)
    y = xp.broadcast_to(y0, (T,) + y0.shape).copy() if y_init is None else xp.array(y_init, dtype)
    history, converged, nan = [], False, False
    for it in range(1, max_iter + 1):
        yp = _prev(y0, y)
        f = cell.step(params, yp, x)
        if method == "deer":
            J = cell.jacobian(params, yp, x)
            b = f - np.einsum("tbij,tbj->tbi", J, yp)
            new = np.moveaxis(matrix_linear_scan(np.moveaxis(J, 0, 1), np.moveaxis(b, 0, 1), y0, backend=backend), 1, 0)
        else:
            Jd = cell.jacobian_diag(params, yp, x)
            new = linear_scan(Jd, f - Jd * yp, y0, axis=0, backend=backend)
        step = float(np.max(np.abs(new - y))) if new.size else 0.0
        history.append(step)
        y = new
        if not np.isfinite(step):
            nan = True
            break
        if step <= atol + rtol * float(np.max(np.abs(y))):
            converged = True
            break
    residual = float(np.max(np.abs(y - cell.step(params, _prev(y0, y), x)))) if y.size else 0.0
    info = Info(method, it, converged, residual, history, nan or not np.isfinite(residual))
    if info.nan:
        warnings.warn(f"parscan.deer.solve ({method}): NaN or Inf after {it} iterations", RuntimeWarning,
                      stacklevel=2)
    elif not converged:
        warnings.warn(f"parscan.deer.solve ({method}): not converged after {it} iterations "
                      f"(last step {history[-1]:.3g}, residual {residual:.3g})", RuntimeWarning, stacklevel=2)
    return y, info


def solve_backward(cell, params, x, y0, y, grad_y, backend=None):
    """``(grad_x, grad_params, grad_y0)`` at a converged ``y`` (the implicit-function VJP)."""
    yp = _prev(y0, y)
    J = cell.jacobian(params, yp, x)  # J_t = df/dy at (y_{t-1}, x_t)
    # lam_t = grad_y_t + J_{t+1}^T lam_{t+1}: the backward of the matrix scan with the same J
    # (lam does not depend on h0: leaving it out skips grad_h0 and one outer product of grad_A)
    _, lam, _ = matrix_linear_scan_backward(np.moveaxis(J, 0, 1), np.moveaxis(y, 0, 1), np.moveaxis(grad_y, 0, 1),
                                            backend=backend)
    lam = np.moveaxis(lam, 1, 0)
    dyp, dx, dparams = cell.vjp(params, yp, x, lam)
    return dx, dparams, dyp[0] if len(dyp) else np.zeros_like(y0)


def sequential_backward(cell, params, x, y0, y, grad_y):
    """Backpropagation through the loop (the check for :func:`solve_backward`)."""
    yp = _prev(y0, y)
    lam = np.zeros_like(y0)
    dx = np.zeros_like(x)
    total = None
    for t in range(x.shape[0] - 1, -1, -1):
        lam = lam + grad_y[t]
        dyp, dx[t], g = cell.vjp(params, yp[t], x[t], lam)
        total = g if total is None else {k: total[k] + g[k] for k in g}
        lam = dyp
    return dx, total, lam
