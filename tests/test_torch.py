"""parscan.torch: the differentiable op (gradcheck against torch's autograd, complex included),
torch.compile without graph breaks, half precisions, and the GILR-LSTM module."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is optional (parscan[torch])")
pt = pytest.importorskip("parscan.torch")


def _loop(a, x, h0, axis, reverse):
    """The recurrence written with torch ops: torch's own autograd differentiates it."""
    x = x.movedim(axis, 0)
    a = torch.broadcast_to(a, x.movedim(0, axis).shape).movedim(axis, 0) if a.dim() else a.expand(x.shape)
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    h = torch.zeros_like(x[0]) if h0 is None else h0 + torch.zeros_like(x[0])
    out = [None] * x.shape[0]
    for t in steps:
        h = a[t] * h + x[t]
        out[t] = h
    return torch.stack(out).movedim(0, axis)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("a_shape", [(3, 6), (3, 1), ()])
def test_gradcheck_and_match_the_loop(dtype, reverse, a_shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, dtype=dtype, generator=g, requires_grad=True)
    a = (0.5 * torch.rand(a_shape, generator=g, dtype=torch.float64) + 0.3).to(dtype).requires_grad_()
    h0 = torch.randn(3, dtype=dtype, generator=g, requires_grad=True)
    f = lambda a, x, h0: pt.linear_scan(a, x, h0, reverse=reverse)  # noqa: E731
    assert torch.autograd.gradcheck(f, (a, x, h0))
    h = f(a, x, h0)
    want = _loop(a, x, h0, -1, reverse)
    torch.testing.assert_close(h, want)
    w = torch.randn(h.shape, dtype=dtype, generator=g)
    got = torch.autograd.grad((h * w.conj()).real.sum(), (a, x, h0))
    exp = torch.autograd.grad((want * w.conj()).real.sum(), (a, x, h0))
    for u, v in zip(got, exp):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_eager_paths_match_the_registered_op(dtype):
    """Eagerly, linear_scan calls the op's functions directly (no gradient) or through an autograd
    Function (a gradient wanted); both give the registered op's values and gradients, for conjugate
    and negative views too (resolved, never read as their bits)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 9, dtype=dtype, generator=g)
    a = (0.5 * torch.rand(3, 1, generator=g) + 0.3).to(dtype)
    h0 = torch.randn(3, dtype=dtype, generator=g)
    if dtype.is_complex:
        x = x.conj()  # a conjugate view
    with torch.no_grad():
        fast = pt.linear_scan(a, x, h0, reverse=True)
    op = torch.ops.parscan.linear_scan(a, x, h0, -1, True)
    torch.testing.assert_close(fast, op, rtol=0, atol=0)
    torch.testing.assert_close(fast, _loop(a, x.resolve_conj(), h0, -1, True))
    grads = []
    for path in ("eager", "op"):
        ins = [v.detach().clone().requires_grad_() for v in (a, x, h0)]
        h = pt.linear_scan(*ins, reverse=True) if path == "eager" else \
            torch.ops.parscan.linear_scan(*ins, -1, True)
        (h.abs() ** 2).sum().backward()
        grads.append([v.grad for v in ins])
    for u, v in zip(*grads):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_time_major_axis_and_no_h0():
    x = torch.randn(7, 2, 3, dtype=torch.float64, requires_grad=True)
    a = torch.full((1, 2, 3), 0.8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, x: pt.linear_scan(a, x, axis=0), (a, x))


def test_torch_compile_has_no_graph_breaks():
    x = torch.randn(4, 64)
    a = torch.rand(4, 64) * 0.5 + 0.4

    def f(a, x):
        return pt.linear_scan(a, x * 2.0).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(a, x), f(a, x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precisions(dtype):
    x = torch.randn(2, 300).to(dtype).requires_grad_()
    a = (torch.rand(2, 300) * 0.5 + 0.4).to(dtype).requires_grad_()
    h = pt.linear_scan(a, x)
    assert h.dtype == dtype
    want = _loop(a.double(), x.double(), None, -1, False)
    torch.testing.assert_close(h.double(), want, rtol=2e-2, atol=2e-2)
    h.float().sum().backward()
    assert x.grad.dtype == dtype and a.grad.dtype == dtype


def test_gilrlstm_module_trains_and_matches_the_numpy_layer():
    from parscan import layers

    m = pt.GILRLSTM(3, 4, dtype=torch.float64, seed=0)
    ref = layers.GILRLSTM(3, 4, dtype="float64", seed=0)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    h, (s, c) = m(x)
    h_ref, _, cache = ref.forward(x.detach().numpy())
    np.testing.assert_allclose(h.detach().numpy(), h_ref, rtol=1e-12)
    (h.sum() + s.sum()).backward()
    dx, grads, _ = ref.backward(np.ones_like(h_ref), cache, (np.ones((2, 4)), np.zeros((2, 4))))
    np.testing.assert_allclose(x.grad.numpy(), dx, rtol=1e-10)
    for n, p in m.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), grads[n], rtol=1e-10, err_msg=n)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = m.W.detach().clone()
    opt.step()
    assert not torch.equal(before, m.W.detach())


def test_errors():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        pt.linear_scan(0.5, np.ones(3))
    with pytest.raises(TypeError, match="dtype must be torch.float32 or torch.float64"):
        pt.GILRLSTM(2, 2, dtype=torch.float16)


def test_matrix_scan_takes_and_returns_torch_tensors():
    import parscan

    g = torch.Generator().manual_seed(0)
    A = 0.3 * torch.randn(2, 50, 3, 3, generator=g, dtype=torch.float64)
    x, h0 = torch.randn(2, 50, 3, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)
    h = parscan.matrix_linear_scan(A, x, h0)
    assert isinstance(h, torch.Tensor) and h.dtype == torch.float64
    want = torch.empty_like(x)
    s = h0
    for t in range(50):
        s = A[:, t] @ s[..., None]
        s = s[..., 0] + x[:, t]
        want[:, t] = s
    torch.testing.assert_close(h, want, rtol=1e-12, atol=1e-12)
    gA, gx, gh0 = parscan.matrix_linear_scan_backward(A, h, torch.ones_like(h), h0)
    assert all(isinstance(v, torch.Tensor) for v in (gA, gx, gh0)) and gA.shape == A.shape


def _loop_resets(a, x, h0, reverse, resets):
    """The recurrence in torch ops with a zeroed where ``resets`` (time last): torch's autograd
    differentiates it."""
    a = torch.where(torch.broadcast_to(resets, x.shape), torch.zeros((), dtype=x.dtype), a.expand(x.shape))
    return _loop(a, x, h0, -1, reverse)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("reverse", [False, True])
def test_resets_gradcheck_and_match_the_loop_and_reference(dtype, reverse):
    """resets (issue #18): a bool tensor, not differentiable; values and gradients against torch's
    autograd of the loop and against parscan.reference."""
    from parscan import reference

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 12, dtype=dtype, generator=g, requires_grad=True)
    a = (0.5 * torch.rand(2, 12, generator=g, dtype=torch.float64) + 0.3).to(dtype).requires_grad_()
    h0 = torch.randn(2, dtype=dtype, generator=g, requires_grad=True)
    resets = torch.zeros(12, dtype=torch.bool)
    resets[[0 if reverse else 11, 4, 5, 9]] = True  # the last step drops nothing forward; h0 flows in
    f = lambda a, x, h0: pt.linear_scan(a, x, h0, reverse=reverse, resets=resets)  # noqa: E731
    assert torch.autograd.gradcheck(f, (a, x, h0))
    h = f(a, x, h0)
    want = _loop_resets(a, x, h0, reverse, resets)
    torch.testing.assert_close(h, want)
    np.testing.assert_allclose(h.detach().numpy(), reference.linear_scan(
        a.detach().numpy(), x.detach().numpy(), h0.detach().numpy(), reverse=reverse, resets=resets.numpy()),
        rtol=1e-12, atol=1e-12)
    w = torch.randn(h.shape, dtype=dtype, generator=g)
    got = torch.autograd.grad((h * w.conj()).real.sum(), (a, x, h0))
    exp = torch.autograd.grad((want * w.conj()).real.sum(), (a, x, h0))
    for u, v in zip(got, exp):
        torch.testing.assert_close(u, v)
    assert torch.all(got[0][:, resets] == 0)
    # the registered op (what torch.compile traces) takes them too, with the same values and gradients
    ins = [v.detach().clone().requires_grad_() for v in (a, x, h0)]
    h_op = torch.ops.parscan.linear_scan(*ins, -1, reverse, resets)
    torch.testing.assert_close(h_op, h, rtol=0, atol=0)
    for u, v in zip(torch.autograd.grad((h_op * w.conj()).real.sum(), ins), got):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_resets_under_torch_compile_and_per_row():
    g = torch.Generator().manual_seed(4)
    x, a = torch.randn(3, 2, 40, generator=g), torch.rand(3, 2, 40, generator=g) * 0.5 + 0.4
    resets = torch.rand(3, 1, 40, generator=g) < 0.1  # per batch row, broadcast over channels

    def f(a, x, r):
        return pt.linear_scan(a, x * 2.0, resets=r).sum(-1)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(a, x, resets), f(a, x, resets))
    torch.testing.assert_close(f(a, x, resets), _loop_resets(a, 2.0 * x, None, False, resets).sum(-1))


def test_gilrlstm_module_with_resets_matches_the_numpy_layer():
    from parscan import layers

    m = pt.GILRLSTM(3, 4, dtype=torch.float64, seed=0)
    ref = layers.GILRLSTM(3, 4, dtype="float64", seed=0)
    x = torch.randn(9, 2, 3, dtype=torch.float64, requires_grad=True)
    resets = torch.zeros(9, 2, dtype=torch.bool)
    resets[[0, 4], 0] = True
    resets[[2, 3, 8], 1] = True
    h, (s, c) = m(x, resets=resets)
    h_ref, _, cache = ref.forward(x.detach().numpy(), resets=resets.numpy())
    np.testing.assert_allclose(h.detach().numpy(), h_ref, rtol=1e-12)
    assert not np.allclose(m(x)[0].detach().numpy(), h_ref)  # the resets matter
    (h.sum() + c.sum()).backward()
    dx, grads, _ = ref.backward(np.ones_like(h_ref), cache, (np.zeros((2, 4)), np.ones((2, 4))))
    np.testing.assert_allclose(x.grad.numpy(), dx, rtol=1e-10)
    for n, p in m.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), grads[n], rtol=1e-10, err_msg=n)


def test_resets_errors():
    x = torch.randn(2, 5)
    with pytest.raises(TypeError, match="resets must be a bool torch.Tensor"):
        pt.linear_scan(0.5, x, resets=torch.zeros(5, dtype=torch.int64))
    with pytest.raises(TypeError, match="resets must be a bool torch.Tensor"):
        pt.linear_scan(0.5, x, resets=np.zeros(5, bool))
    with pytest.raises(ValueError, match="resets must broadcast"):
        pt.linear_scan(0.5, x, resets=torch.zeros(4, dtype=torch.bool))
