"""The memory-traffic targets of scan.cu, checked on the CPU harness's records (tests/cuda_cpu/traffic.py).

For the forward and backward scan in both layouts: every operand load and store site uses >= 90% of
the 32-byte sectors it fetches (coalesced), and the bytes moved per element, look-back status words
included, are within 5% of the minimum (each operand element read or written once).  With resets
of shape (T,) the operands' figures are the same and the flags cost one byte a step per block (plus,
in the backward, one sector per tile for the step before it).  The committed table
(benchmarks/results/traffic.md) is the same model on larger shapes.
"""

import pytest

import cuda_cpu
from cuda_cpu import traffic

CASES = [  # smaller than traffic.CASES, the same layouts
    ("forward", False, "time-contiguous", "float32", (2, 8, 4096), -1, "full"),
    ("backward", True, "time-contiguous", "float32", (2, 8, 4096), -1, "full"),
    ("forward", False, "channel-contiguous", "float32", (4096, 16), 0, "full"),
    ("backward", True, "channel-contiguous", "float32", (4096, 16), 0, "full"),
    ("backward, a per channel", True, "time-contiguous", "float32", (16, 4096), -1, "channel"),
    ("forward", False, "channel-contiguous", "float16", (4096, 16), 0, "full"),
    ("backward", True, "time-contiguous", "complex128", (2, 4, 4096), -1, "full"),
    ("forward, resets (T,)", False, "time-contiguous", "float32", (2, 8, 4096), -1, "full", "time"),
    ("backward, resets (T,)", True, "channel-contiguous", "float32", (4096, 16), 0, "full", "time"),
]
RESET_CASES = [k for k, c in enumerate(CASES) if len(c) > 7]


@pytest.fixture(scope="module")
def rows():
    return traffic.run(CASES)


@pytest.mark.parametrize("k", range(len(CASES)))
def test_coalesced_and_near_the_minimum(rows, k):
    r = rows[k]
    assert abs(r.requested / r.minimum - 1) < 0.02, r  # no operand element read or written twice
    assert r.load_efficiency >= 0.9 and r.store_efficiency >= 0.9, [s for s in r.sites if s[3] < 0.9]
    assert (r.total - r.resets_sector) / r.minimum <= 1.05, r  # the flags: see below


@pytest.mark.parametrize("k", RESET_CASES)
def test_reset_flags_are_read_once_per_block_and_step(rows, k):
    """Flags broadcast over channels are read once per step by each block, in whole sectors: 1 B/el with
    one channel a block (time-contiguous, long T), 1/16 B/el with 16 (channel-contiguous).  The
    backward also reads the step before its tile: one more sector a block (the model counts it in the
    same site, the kernel line that gathers the flags: >= 90% used, checked above)."""
    from parscan.kernels import launch

    r = rows[k]
    T = r.shape[CASES[k][5]]
    lc = launch.plan_launch((1, 1, r.elements // T, T), (0, 0, T, 1) if r.layout == "time-contiguous"
                            else (0, 0, 1, r.elements // T))
    per_step = 1 / lc.chans  # one byte a step per block
    edge = 32 / (lc.threads * lc.items) if r.direction == "backward" else 0.0
    assert r.resets_sector == pytest.approx(per_step + edge, rel=0.02), (r.resets_sector, per_step, edge)
    flags = [s for s in r.sites if s[1] == "resets"]
    assert flags and all(s[2] == "load" and s[3] >= 0.9 for s in flags), flags


def test_the_model_sees_an_uncoalesced_kernel(rows, monkeypatch):
    """The model can fail: the same kernel with the time-fast transpose turned off (each thread reads its
    own 8 consecutive steps) measures 1/8 of each sector used."""
    from parscan.kernels import cupy_scan

    src = cupy_scan.source()
    on = "const bool coalesce = !chan_fast;"
    assert on in src
    monkeypatch.setattr(cupy_scan, "source", lambda: src.replace(on, "const bool coalesce = false;"))
    cupy_scan._module.cache_clear()
    try:
        r = traffic.run(CASES[:1])[0]
    finally:
        cupy_scan._module.cache_clear()
    assert r.load_efficiency == pytest.approx(0.125, abs=0.01) and r.total / r.minimum > 7
