"""The memory-traffic targets of scan.cu, checked on the CPU harness's records (tests/cuda_cpu/traffic.py).

For the forward and backward scan in both layouts: every operand load and store site uses >= 90% of
the 32-byte sectors it fetches (coalesced), and the bytes moved per element, look-back status words
included, are within 5% of the minimum (each operand element read or written once).  The committed
table (benchmarks/results/traffic.md) is the same model on larger shapes.
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
]


@pytest.fixture(scope="module")
def rows():
    return traffic.run(CASES)


@pytest.mark.parametrize("k", range(len(CASES)))
def test_coalesced_and_near_the_minimum(rows, k):
    r = rows[k]
    assert abs(r.requested / r.minimum - 1) < 0.02, r  # no operand element read or written twice
    assert r.load_efficiency >= 0.9 and r.store_efficiency >= 0.9, [s for s in r.sites if s[3] < 0.9]
    assert r.total / r.minimum <= 1.05, r


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
