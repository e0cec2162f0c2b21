"""Hypothesis against the Numba CUDA kernels in the simulator: random shapes, strides, broadcasts,
dtypes, axes and directions (the same strategy as tests/test_properties.py, fewer examples)."""

import os

from hypothesis import HealthCheck, given, settings

from test_numba_kernels import simulated_numba_backend  # noqa: F401  (autouse: route to the Numba kernels)
import test_properties as tp  # a module import: pytest must not collect its host test here

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_numba_simulator.py"


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(tp.problems())
def test_random_problems_on_the_numba_kernels(p):
    tp.test_random_problems_forward_and_backward.hypothesis.inner_test(p)
