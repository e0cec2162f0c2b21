"""Runs tests/sim (the Numba CUDA kernels in the CUDA simulator) in a process of its own."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_numba_kernels_in_the_cuda_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                           os.path.join(HERE, "sim")], env=env, cwd=os.path.dirname(HERE),
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " skipped" not in proc.stdout, proc.stdout[-2000:]
