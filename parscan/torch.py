"""PyTorch embedding: differentiable scans and the GILR-LSTM layer as torch ops (optional: ``parscan[torch]``).

- :func:`linear_scan`: ``h = parscan.linear_scan(a, x, h0, axis, reverse)`` on CPU or CUDA tensors,
  differentiable in a, x and h0 (complex included, PyTorch's convention), registered with
  ``torch.library.custom_op`` (with a fake implementation) so it traces under ``torch.compile``
  without graph breaks.  Eagerly the op's two functions are called directly (through an autograd
  Function when a gradient is wanted), which spares the dispatcher's round trip.  Tensors reach the
  kernels zero-copy as NumPy (CPU: the cpu backend) or CuPy arrays (CUDA: the cupy backend, on torch's
  current stream via CuPy's external stream), so repeated calls hit the plan cache.  bfloat16, which
  NumPy and CuPy lack, is computed in float32 and rounded back (a copy each way).  ``resets=`` (a
  bool tensor broadcastable to x, not differentiable) restarts the state (issue #18).
- :class:`GILRLSTM`: :class:`parscan.layers.GILRLSTM` as an ``nn.Module`` whose hand-written backward
  is an autograd Function; its parameters are torch Parameters that the layer reads zero-copy.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np
import torch

from . import layers as _layers
from .scan import linear_scan as _scan
from .scan import linear_scan_backward as _scan_backward


def _stream(t: torch.Tensor):
    """CuPy's current stream = torch's current stream, for CUDA tensors."""
    if not t.is_cuda:
        return contextlib.nullcontext()
    import cupy

    return cupy.cuda.ExternalStream(torch.cuda.current_stream(t.device).cuda_stream, t.device.index)


def _wide(t):
    return t.float() if t is not None and t.dtype == torch.bfloat16 else t


def _arr(t):
    """A tensor as the array parscan computes on, zero-copy (NumPy on the CPU, CuPy on CUDA): plain
    arrays hit the plan cache, where tensors would be planned on every call."""
    if t is None:
        return None
    t = _wide(t.detach())
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return _cupy(t) if t.is_cuda else t.numpy()


def _dtype(a, x, h0):
    d = torch.result_type(a, x)
    return d if h0 is None else torch.promote_types(d, h0.dtype)


def _forward(a, x, h0, axis, reverse, resets=None):
    want = _dtype(a, x, h0)
    with _stream(x):
        h = _to_torch(_scan(_arr(a), _arr(x), _arr(h0), axis=axis, reverse=reverse, resets=_arr(resets)))
    return h.to(want) if h.dtype != want else h


def _backward_impl(a, h, grad_h, h0, axis, reverse, resets=None):
    with _stream(h):
        ga, gx, gh0 = (None if v is None else _to_torch(v) for v in
                       _scan_backward(_arr(a), _arr(h), _arr(grad_h), _arr(h0), axis=axis, reverse=reverse,
                                      resets=_arr(resets)))
    gh0 = torch.zeros((), dtype=gx.dtype, device=gx.device) if gh0 is None else gh0.to(h0.dtype)
    return ga.to(a.dtype), gx.to(h.dtype), gh0


@torch.library.custom_op("parscan::linear_scan", mutates_args=())
def _linear_scan_op(a: torch.Tensor, x: torch.Tensor, h0: Optional[torch.Tensor], axis: int,
                    reverse: bool, resets: Optional[torch.Tensor] = None) -> torch.Tensor:
    return _forward(a, x, h0, axis, reverse, resets)


@_linear_scan_op.register_fake
def _(a, x, h0, axis, reverse, resets=None):
    return torch.empty(x.shape, dtype=_dtype(a, x, h0), device=x.device)


@torch.library.custom_op("parscan::linear_scan_backward", mutates_args=())
def _linear_scan_backward_op(a: torch.Tensor, h: torch.Tensor, grad_h: torch.Tensor, h0: Optional[torch.Tensor],
                             axis: int, reverse: bool, resets: Optional[torch.Tensor] = None
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward_impl(a, h, grad_h, h0, axis, reverse, resets)


@_linear_scan_backward_op.register_fake
def _(a, h, grad_h, h0, axis, reverse, resets=None):
    gh0 = torch.empty((), dtype=h.dtype, device=h.device) if h0 is None else torch.empty_like(h0)
    return torch.empty_like(a), torch.empty_like(h), gh0


def _setup(ctx, inputs, output):
    a, x, h0, axis, reverse, resets = inputs
    ctx.save_for_backward(a, output, h0, resets)
    ctx.axis, ctx.reverse, ctx.x_dtype = axis, reverse, x.dtype


def _backward(ctx, grad_h):
    a, h, h0, resets = ctx.saved_tensors
    ga, gx, gh0 = _linear_scan_backward_op(a, h, grad_h.contiguous(), h0, ctx.axis, ctx.reverse, resets)
    return ga, gx.to(ctx.x_dtype), (gh0 if h0 is not None else None), None, None, None


_linear_scan_op.register_autograd(_backward, setup_context=_setup)


class _EagerScan(torch.autograd.Function):
    """The eager path of :func:`linear_scan` when a gradient is wanted: the same two functions as the
    custom op's, without the dispatcher's round trip (its cost: `parscan bench --suite latency`)."""

    @staticmethod
    def forward(ctx, a, x, h0, axis, reverse, resets):
        h = _forward(a, x, h0, axis, reverse, resets)
        ctx.save_for_backward(a, h, h0, resets)
        ctx.axis, ctx.reverse, ctx.x_dtype = axis, reverse, x.dtype
        return h

    @staticmethod
    def backward(ctx, grad_h):
        a, h, h0, resets = ctx.saved_tensors
        ga, gx, gh0 = _backward_impl(a, h, grad_h.contiguous(), h0, ctx.axis, ctx.reverse, resets)
        return ga, gx.to(ctx.x_dtype), (gh0 if h0 is not None else None), None, None, None


def _check_resets(resets, x):
    if resets is not None and (not isinstance(resets, torch.Tensor) or resets.dtype != torch.bool):
        got = f"a tensor of dtype {resets.dtype}" if isinstance(resets, torch.Tensor) else type(resets).__name__
        raise TypeError(f"resets must be a bool torch.Tensor broadcastable to x (e.g. of shape (T,)) on x's device, "
                        f"got {got}; pass resets.bool(), or torch.as_tensor(parscan.resets_from_offsets(...))")


def linear_scan(a, x, h0=None, axis=-1, reverse=False, resets=None):
    """Differentiable ``h[t] = a[t] * h[t-1] + x[t]`` along ``axis`` on torch tensors.

    ``a`` may be a tensor broadcastable to x or a Python number; ``h0`` a tensor broadcastable to x's
    shape without ``axis``, or None.  ``resets``: a bool tensor broadcastable to x (not differentiable):
    where true the carried state is dropped, ``h[t] = x[t]``, and no gradient crosses it.  Same
    semantics as :func:`parscan.linear_scan`.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}; use parscan.linear_scan for other arrays")
    _check_resets(resets, x)
    if not isinstance(a, torch.Tensor):
        a = torch.tensor(a, dtype=x.dtype if not isinstance(a, complex) or x.is_complex() else torch.complex64,
                         device=x.device)
    if h0 is not None and not isinstance(h0, torch.Tensor):
        h0 = torch.tensor(h0, dtype=x.dtype, device=x.device)
    axis, reverse = int(axis), bool(reverse)
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return _linear_scan_op(a, x, h0, axis, reverse, resets)  # traced: the registered op, with its fake
    if torch.is_grad_enabled() and (a.requires_grad or x.requires_grad or (h0 is not None and h0.requires_grad)):
        return _EagerScan.apply(a, x, h0, axis, reverse, resets)
    return _forward(a, x, h0, axis, reverse, resets)  # eager, no gradient: the plain call and two zero-copy views


# -------------------------------------------------------------------------------------- GILR-LSTM

class _GILRLSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layer, names, x, s0, c0, resets, *params):
        arrays = {n: p.detach().numpy() if not p.is_cuda else _cupy(p.detach()) for n, p in zip(names, params)}
        layer.params = arrays  # zero-copy views of the torch Parameters
        xa = x.detach().numpy() if not x.is_cuda else _cupy(x.detach())
        state = None if s0 is None else (_host_or_cupy(s0), _host_or_cupy(c0))
        with _stream(x):
            h, (sT, cT), cache = layer.forward(xa, state, None if resets is None else _host_or_cupy(resets))
        ctx.layer, ctx.names, ctx.cache = layer, names, cache
        ctx.has_state = s0 is not None
        return _to_torch(h), _to_torch(sT), _to_torch(cT)

    @staticmethod
    def backward(ctx, grad_h, grad_sT, grad_cT):
        gs = (_host_or_cupy(grad_sT.contiguous()), _host_or_cupy(grad_cT.contiguous()))
        with _stream(grad_h):
            dx, grads, (ds0, dc0) = ctx.layer.backward(_host_or_cupy(grad_h.contiguous()), ctx.cache, gs)
        out = [None, None, _to_torch(dx)]
        out += [_to_torch(ds0), _to_torch(dc0)] if ctx.has_state else [None, None]
        out += [None]  # resets
        out += [_to_torch(grads[n]) for n in ctx.names]
        return tuple(out)


def _cupy(t):
    import cupy

    return cupy.from_dlpack(t)


def _host_or_cupy(t):
    return t.detach().numpy() if not t.is_cuda else _cupy(t.detach())


def _to_torch(v):
    if isinstance(v, np.generic):
        v = np.asarray(v)
    return torch.from_numpy(v) if hasattr(v, "__array_interface__") else torch.from_dlpack(v)


class GILRLSTM(torch.nn.Module):
    """:class:`parscan.layers.GILRLSTM` as a torch module (hand-written gradients, torch optimisers).

    ``forward(x, state=None, resets=None) -> (h, (s_T, c_T))`` with x of shape (T, B, input_size);
    ``resets``: a bool tensor of shape (T,) or (T, B), True where a packed sequence starts (see
    :class:`parscan.layers.GILRLSTM`).
    """

    def __init__(self, input_size, hidden_size, *, dtype=torch.float32, seed=None, forget_bias=1.0):
        super().__init__()
        np_dtype = {torch.float32: "float32", torch.float64: "float64"}.get(dtype)
        if np_dtype is None:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self._layer = _layers.GILRLSTM(input_size, hidden_size, dtype=np_dtype, seed=seed, forget_bias=forget_bias)
        self._names = list(self._layer.params)
        for n in self._names:
            self.register_parameter(n, torch.nn.Parameter(torch.from_numpy(self._layer.params[n].copy())))

    def forward(self, x, state=None, resets=None):
        _check_resets(resets, x)
        s0, c0 = (None, None) if state is None else state
        params = [getattr(self, n) for n in self._names]
        if params[0].is_cuda:
            import cupy

            self._layer.xp = cupy
        h, sT, cT = _GILRLSTMFunction.apply(self._layer, self._names, x, s0, c0, resets, *params)
        return h, (sT, cT)
