"""Arrays from other libraries come in zero-copy and go back as that library's arrays."""

import sys
import types

import numpy as np
import pytest

import parscan
from parscan import reference
from parscan._arrays import as_operand, give_back
from conftest import Foreign, assert_close, rand


@pytest.fixture
def foreign_module(monkeypatch):
    mod = types.ModuleType("foreignlib")
    mod.from_dlpack = lambda obj: Foreign(np.from_dlpack(obj))
    monkeypatch.setitem(sys.modules, "foreignlib", mod)
    monkeypatch.setattr(Foreign, "__module__", "foreignlib")
    return mod


def test_dlpack_producer_in_and_out_zero_copy(foreign_module):
    rng = np.random.default_rng(0)
    x, a = rand(rng, (3, 40), "float32"), rand(rng, (3, 40), "float32", "a")
    fx, fa = Foreign(x), Foreign(a)
    op = as_operand(fx, "x")
    assert op.library == "foreignlib" and np.shares_memory(op.array, x)  # zero-copy in
    h = parscan.linear_scan(fa, fx)
    assert isinstance(h, Foreign)
    assert_close(h.arr, reference.linear_scan(a, x), "float32")
    ga, gx, gh0 = parscan.linear_scan_backward(fa, h, Foreign(np.ones_like(x)))
    assert isinstance(ga, Foreign) and isinstance(gx, Foreign) and gh0 is None


def test_give_back_is_zero_copy(foreign_module):
    res = np.arange(4.0)
    back = give_back(res, as_operand(Foreign(np.ones(4)), "x"))
    assert np.shares_memory(back.arr, res)


def test_lists_and_numpy_scalars():
    h = parscan.linear_scan(np.float64(0.5), [1.0, 1.0, 1.0], np.float64(2.0))
    np.testing.assert_allclose(h, [2.0, 2.0, 2.0])
    assert isinstance(h, np.ndarray)


def test_torch_cpu_tensors_round_trip():
    torch = pytest.importorskip("torch", reason="torch is optional (parscan[torch])")
    x = torch.randn(4, 50, dtype=torch.float64)
    a = torch.rand(4, 50, dtype=torch.float64) * 0.5 + 0.4
    h = parscan.linear_scan(a, x)
    assert isinstance(h, torch.Tensor) and h.dtype == torch.float64
    assert_close(h.numpy(), reference.linear_scan(a.numpy(), x.numpy()), "float64")
    out = torch.empty_like(x)
    assert parscan.linear_scan(a, x, out=out) is out
    assert_close(out.numpy(), h.numpy(), "float64")
    with pytest.raises(ValueError, match="a is a numpy array but x is a torch array"):
        parscan.linear_scan(a.numpy(), x)
