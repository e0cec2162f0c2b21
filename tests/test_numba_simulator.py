"""Runs tests/sim (the Numba CUDA kernels in the CUDA simulator) in a process of its own.

The simulator runs every CUDA thread in Python, so the whole suite takes minutes: the default run (CI)
takes the float32 and complex128 cases of it (every kernel, layout, decay kind, h0, reverse, resets,
the matrix scan, the bench rows); ``pytest -m slow`` runs all of it, every dtype.
"""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
# the dtypes the default run leaves to the slow one (test ids name their dtype)
FAST = "not float16 and not complex64 and not float64"


def _run(*select):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *select,
                           os.path.join(HERE, "sim")], env=env, cwd=os.path.dirname(HERE),
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " skipped" not in proc.stdout, proc.stdout[-2000:]
    return proc.stdout


def test_numba_kernels_in_the_cuda_simulator():
    out = _run("-k", FAST)
    assert " deselected" in out  # the other dtypes are the slow run's


@pytest.mark.slow
def test_the_whole_simulator_suite():
    _run()
