"""DEER: Newton (full and quasi) on the scan equals the sequential loop; the implicit VJP equals
backpropagation through the loop and finite differences; failures are reported."""

import numpy as np
import pytest

from parscan import deer


def _problem(cell_cls, T=60, B=3, m=2, n=4, seed=0, scale=1.0):
    cell = cell_cls(m, n)
    p = cell.init_params(seed)
    rng = np.random.default_rng(seed)
    return cell, p, scale * rng.standard_normal((T, B, m)), 0.5 * rng.standard_normal((B, n))


@pytest.mark.parametrize("cell_cls", [deer.GRUCell, deer.TanhCell])
@pytest.mark.parametrize("method", ["deer", "quasi"])
def test_equals_the_sequential_loop(cell_cls, method):
    cell, p, x, y0 = _problem(cell_cls)
    y, info = deer.solve(cell, p, x, y0, method=method)
    want = deer.sequential(cell, p, x, y0)
    assert info.converged and not info.nan and info.iterations >= 1
    np.testing.assert_allclose(y, want, rtol=1e-9, atol=1e-9)
    assert info.residual < 1e-9
    if method == "deer":
        assert info.iterations < 20  # Newton: a handful of iterations, not T


@pytest.mark.parametrize("cell_cls", [deer.GRUCell, deer.TanhCell])
def test_jacobians_match_finite_differences(cell_cls):
    cell, p, x, y0 = _problem(cell_cls, T=1, B=2)
    J = cell.jacobian(p, y0, x[0])
    fd = np.zeros_like(J)
    for j in range(y0.shape[1]):
        e = np.zeros_like(y0)
        e[:, j] = 1e-6
        fd[:, :, j] = (cell.step(p, y0 + e, x[0]) - cell.step(p, y0 - e, x[0])) / 2e-6
    np.testing.assert_allclose(J, fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(cell.jacobian_diag(p, y0, x[0]), np.diagonal(J, axis1=-2, axis2=-1), rtol=1e-12)


@pytest.mark.parametrize("cell_cls", [deer.GRUCell, deer.TanhCell])
def test_implicit_vjp_equals_backprop_and_finite_differences(cell_cls):
    cell, p, x, y0 = _problem(cell_cls, T=12, B=2)
    y, info = deer.solve(cell, p, x, y0)
    gy = np.random.default_rng(1).standard_normal(y.shape)
    dx, dp, dy0 = deer.solve_backward(cell, p, x, y0, y, gy)
    sx, sp, sy0 = deer.sequential_backward(cell, p, x, y0, y, gy)
    np.testing.assert_allclose(dx, sx, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(dy0, sy0, rtol=1e-9, atol=1e-11)
    for k in p:
        np.testing.assert_allclose(dp[k], sp[k], rtol=1e-9, atol=1e-11, err_msg=k)

    def loss():
        return float(np.sum(gy * deer.sequential(cell, p, x, y0)))

    for k in ("weight_hh", "bias_ih"):
        v = p[k]
        fd = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            old = v[idx]
            v[idx] = old + 1e-6
            lp = loss()
            v[idx] = old - 1e-6
            lm = loss()
            v[idx] = old
            fd[idx] = (lp - lm) / 2e-6
        np.testing.assert_allclose(dp[k], fd, rtol=1e-6, atol=1e-8, err_msg=k)


def test_torch_gru_weights_drop_in():
    torch = pytest.importorskip("torch")
    tc = torch.nn.GRUCell(3, 5).double()
    p = {k: v.detach().numpy() for k, v in tc.state_dict().items()}
    cell = deer.GRUCell(3, 5)
    x, h = np.random.default_rng(0).standard_normal((4, 3)), np.random.default_rng(1).standard_normal((4, 5))
    want = tc(torch.from_numpy(x), torch.from_numpy(h)).detach().numpy()
    np.testing.assert_allclose(cell.step(p, h, x), want, rtol=1e-12)


def test_non_convergence_and_nan_are_reported():
    cell, p, x, y0 = _problem(deer.GRUCell, T=200)
    with pytest.warns(RuntimeWarning, match="not converged after 1 iterations"):
        _, info = deer.solve(cell, p, x, y0, max_iter=1)
    assert not info.converged and info.residual > 0
    x[50, 0, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN or Inf"):
        _, info = deer.solve(cell, p, x, y0)
    assert info.nan and not info.converged


def test_bad_inputs():
    cell, p, x, y0 = _problem(deer.GRUCell)
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, 2\)"):
        deer.solve(cell, p, x[..., :1], y0)
    with pytest.raises(ValueError, match=r"y0 must have shape \(3, 4\)"):
        deer.solve(cell, p, x, y0[:, :2])
    with pytest.raises(ValueError, match="method must be"):
        deer.solve(cell, p, x, y0, method="newton")
