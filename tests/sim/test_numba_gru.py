"""The GPU sequential GRU (the DEER benchmark's baseline) in the CUDA simulator, against the NumPy loop."""

import os

import numpy as np
import pytest

from parscan import _baselines, deer

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_numba_simulator.py"


@pytest.mark.parametrize("m,n,dtype", [(1, 1, "float64"), (3, 5, "float64"), (2, 33, "float32")])
def test_sequential_gru_kernel_matches_the_loop(m, n, dtype):
    cell = deer.GRUCell(m, n)
    p = cell.init_params(seed=n, dtype=dtype)
    rng = np.random.default_rng(m)
    x, y0 = rng.standard_normal((6, 2, m)).astype(dtype), rng.standard_normal((2, n)).astype(dtype)
    y = _baselines.gru_sequential_gpu(p, x, y0)
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(y, deer.sequential(cell, p, x, y0), rtol=tol, atol=tol)
