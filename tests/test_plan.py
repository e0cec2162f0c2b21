"""The plan (canonical layout), the cpu task plan and the float16 conversions, unit by unit."""

import numpy as np
import pytest

from parscan import _half, cpu
from parscan._arrays import as_operand
from parscan._problem import _distinct_elements, parts, plan_backward, plan_forward, split_parts


def plan(a, x, h0=None, out=None, axis=-1, reverse=False):
    op = lambda v, n: None if v is None else as_operand(v, n, allow_scalar=True)  # noqa: E731
    problem, _, _, _ = plan_forward(np, op(a, "a"), op(x, "x"), op(h0, "h0"), op(out, "out"), axis, reverse)
    return problem


def test_contiguous_bct_merges_to_one_channel_dim():
    x = np.zeros((4, 8, 100), np.float32)
    p = plan(np.zeros_like(x), x)
    assert p.shape == (1, 1, 32, 100)
    assert p.x.strides == (0, 0, 100, 1) and p.out.strides == (0, 0, 100, 1)


def test_time_major_tbc_is_channel_contiguous():
    x = np.zeros((100, 4, 8), np.float32)
    p = plan(0.5, x, axis=0)
    assert p.shape == (1, 1, 32, 100)
    assert p.x.strides == (0, 0, 1, 32)
    assert p.a.strides == (0, 0, 0, 0) and p.a.buf.size == 1  # a scalar stays one element


def test_per_channel_decay_is_not_materialised():
    x = np.zeros((4, 8, 100), np.float32)
    a = np.full((8, 1), 0.9, np.float32)
    p = plan(a, x)
    assert p.shape == (1, 4, 8, 100)
    assert p.a.strides == (0, 0, 1, 0) and p.a.buf.size == 8
    assert p.x.strides == (0, 800, 100, 1)


def test_reverse_is_a_negative_time_stride():
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    p = plan(0.5, x, reverse=True)
    assert p.x.strides[3] == -1 and p.x.off == 3
    assert p.x.buf[p.x.off + p.x.strides[2] * 1] == x[1, 3]


def test_fortran_order_orders_channels_by_stride():
    x = np.asfortranarray(np.zeros((5, 6, 7)))
    p = plan(0.5, x)
    assert p.shape == (1, 1, 30, 7) and p.x.strides == (0, 0, 1, 30)


def test_unmergeable_six_dims_run_as_parts_on_views():
    """More than three channel groups: the outer ones are parts, each operand a view of its own memory
    (no copy), and the parts cover every element once."""
    x = np.zeros((2, 3, 2, 3, 2, 7))[::1, ::-1]
    a = np.full((2, 1, 2, 1, 2, 1), 0.5)
    p = plan(a, x)
    assert p.shape[3] == 7 and np.prod(p.shape) * np.prod(p.outer) == x.size and p.outer
    assert np.shares_memory(p.x.buf, x) and np.shares_memory(p.a.buf, a)  # views, not copies
    first, shifts = split_parts(p)
    assert len(shifts) == np.prod(p.outer) and first.outer == () and first.shape == p.shape
    seen = []
    for part in parts(p):
        assert part.x.off == first.x.off and part.x.strides == first.x.strides
        v = np.lib.stride_tricks.as_strided(part.x.buf[part.x.off:], part.shape,
                                            [s * 8 for s in part.x.strides])
        seen.extend(int(i) for i in np.ravel((v.__array_interface__["data"][0] - x.base.ctypes.data) // 8
                                             + _offsets(part.shape, part.x.strides)))
    assert sorted(seen) == sorted(int(i) for i in np.ravel((x.__array_interface__["data"][0] - x.base.ctypes.data)
                                                           // 8 + _offsets(x.shape, [s // 8 for s in x.strides])))


def _offsets(shape, strides):
    """The element offsets of a strided view's elements from its first."""
    return sum(np.arange(n).reshape((-1,) + (1,) * (len(shape) - d - 1)) * s
               for d, (n, s) in enumerate(zip(shape, strides)))


def test_output_allocated_in_canonical_order():
    x = np.zeros((100, 4, 8), np.float32)
    _, result, _, _ = plan_forward(np, as_operand(0.5, "a", allow_scalar=True), as_operand(x, "x"), None,
                                None, 0, False)
    assert result.strides == x.strides


def test_backward_plan_reduces_broadcast_gradients():
    h = np.zeros((4, 8, 100))
    op = lambda v, n: as_operand(v, n, allow_scalar=True)  # noqa: E731
    p, finish, _ = plan_backward(np, op(np.ones((8, 1)), "a"), op(h, "h"), op(h, "grad_h"), op(np.ones(8), "h0"),
                              -1, False)
    assert p.grad_a.strides[3] == 0  # time-constant decay: summed in the kernel
    ga, gx, gh0 = finish()
    assert ga.shape == (8, 1) and gx.shape == h.shape and gh0.shape == (8,)


def test_distinct_elements():
    assert _distinct_elements(np.zeros((3, 4))) and _distinct_elements(np.zeros((3, 4))[::-1, ::2])
    assert not _distinct_elements(np.broadcast_to(np.zeros(4), (3, 4)))
    assert not _distinct_elements(np.lib.stride_tricks.as_strided(np.zeros(8), (3, 4), (8, 8)))


@pytest.mark.parametrize("shape,strides,want", [
    ((1, 1, 1, 2**24), (0, 0, 0, 1), (1, 5)),          # one long channel: chunk 0 + cpu.TASKS folds a phase
    ((1, 1, 1, 1000), (0, 0, 0, 1), (1, 1)),           # too short to chunk
    ((1, 1, 1, 3 * 4096), (0, 0, 0, 1), (1, 3)),       # as many chunks as MIN_CHUNK allows
    ((1, 1, 3, 2**20), (0, 0, 2**20, 1), (1, 3)),      # 3 channels: 6 tasks a phase
    ((1, 1, 4, 2**20), (0, 0, 2**20, 1), (1, 1)),      # enough channels (cpu.TASKS)
    ((1, 1, 64, 2**18), (0, 0, 1, 64), (64, 5)),       # channel-contiguous short rows stay whole
    ((1, 1, 1024, 2**14), (0, 0, 1, 1024), (1024, 4)),
    ((1, 1, 8192, 2**11), (0, 0, 1, 8192), (2048, 1)),  # long rows: equal blocks of at most WHOLE_ROW
    ((1, 1, 4100, 2**14), (0, 0, 1, 4100), (1367, 3)),  # (no narrow leftover block)
    ((1, 1, 2**16, 256), (0, 0, 1, 2**16), (2048, 1)),
])
def test_task_plan(shape, strides, want):
    """The plan depends on the problem alone (never on the thread count: the same bits on any)."""
    assert cpu.task_plan(shape, strides) == want


def test_task_plan_covers_every_channel_and_step():
    for C2 in (1, 2, 3, 17, 64, 5000):
        for T in (1, 4095, 4096 * 5 + 3):
            for st in ((0, 0, T, 1), (0, 0, 1, C2)):
                bs, nch = cpu.task_plan((1, 2, C2, T), st)
                assert bs >= 1 and 1 <= nch <= max(1, T // cpu.MIN_CHUNK)
                assert bs == 1 or bs <= C2


def test_half_conversions_are_exact_on_every_bit_pattern():
    bits = np.arange(2**16, dtype=np.uint16)
    want = bits.view(np.float16).astype(np.float32)
    got = np.array([_half.half_to_float(b) for b in bits], np.float32)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[finite], want[finite])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])


def test_float_to_half_rounds_to_nearest_even():
    rng = np.random.default_rng(0)
    vals = np.concatenate([
        rng.standard_normal(20000).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 20000),
        np.array([0.0, -0.0, 65504, 65519.99, 65520, 1e6, -1e6, np.inf, -np.inf, 2**-24, 2**-25,
                  3 * 2**-26, 6.1e-5, 2**-14, 1 + 2**-11, 1 + 3 * 2**-11], np.float32),
    ])
    with np.errstate(over="ignore"):
        want = vals.astype(np.float16).view(np.uint16)
    got = np.array([_half.float_to_half(v) for v in vals], np.uint16)
    np.testing.assert_array_equal(got, want)
    assert _half.float_to_half(np.float32(np.nan)) & 0x7C00 == 0x7C00


def test_a_blocked_grad_a_covers_every_channel_once_through_one_scratch():
    """A decay shared by the channels and varying in time: the backward runs blocks of channels (the
    last smaller), every element of h in exactly one block's part, grad_a always the one scratch."""
    from parscan import _problem

    h = np.zeros((37, 5, 1200), np.float32)
    a = np.full(1200, 0.5, np.float32)
    op = lambda v, n: as_operand(v, n, allow_scalar=True)  # noqa: E731
    p = plan_backward(np, op(a, "a"), op(h, "h"), op(h, "grad_h"), None, -1, False)[0]
    assert p.grad_a_sum is not None and p.grad_a_sum.add and p.grad_a_sum.total.strides[:3] == (0, 0, 0)
    assert p.grad_a.buf.size < h.size / 3  # the 64k-element floor: 185 channels of 1200 steps in 4 blocks
    seen = np.zeros(h.size, int)
    subs = _problem.blocks(p)
    assert [(s.shape, s.outer) for s in subs] == [((1, 1, 47, 1200), (1, 1, 3)), ((1, 1, 44, 1200), (1, 1, 1))]
    for sub in subs:
        first, shifts = split_parts(sub)
        assert first.grad_a.buf is p.grad_a.buf and all(k[5] == 0 for k in shifts)  # the one scratch
        for k in shifts:
            off = first.grad_h.off + k[2] + _offsets(first.shape, first.grad_h.strides)
            np.add.at(seen, np.ravel(off), 1)
    assert (seen == 1).all()
