"""Simulator device arrays for the tests in tests/sim, and the small launches they run with.

tests/test_numba_simulator.py runs tests/sim in a process with NUMBA_ENABLE_CUDASIM=1, where
``numba.cuda.to_device`` makes the simulator's device arrays and parscan runs them on the ``numba``
backend: the real ``cuda.jit`` kernels, executed by the simulator.  Small launches (32 threads, 4 steps
a thread; matrix blocks of 32 threads, chunks for about 256 threads, at least 2 steps) make short
sequences span many tiles and chunks, so the block scan, the look-back chain, the identity padding and
the chunk recursion all run on shapes the simulator can afford.
"""

import os

import numpy as np

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through tests/test_numba_simulator.py"
os.environ["PARSCAN_SIM_LAUNCH"] = "32,4"      # threads, items (parscan.kernels.launch)
os.environ["PARSCAN_SIM_CHUNKS"] = "32,256,2"  # threads, target threads, min steps (matrix_launch)

from numba import cuda  # noqa: E402

DeviceArray = type(cuda.device_array(1))


def to_device(arr, how="C", axis=-1):
    """``arr``'s values in simulator device memory, laid out as ``conftest.layout(arr, how, axis)``
    lays them out on the host (views of a device buffer: ``to_device`` copies contiguous arrays only)."""
    arr = np.asarray(arr)
    if arr.ndim == 0 or how == "C":
        return cuda.to_device(np.array(arr, order="C"))  # (not ascontiguousarray: it makes 0-d arrays 1-d)
    if how == "F":
        return cuda.to_device(np.asfortranarray(arr))
    if how == "strided":  # every other element of a larger buffer
        every = tuple(slice(None, None, 2) for _ in arr.shape)
        big = np.zeros(tuple(2 * n for n in arr.shape), arr.dtype)
        big[every] = arr
        return cuda.to_device(big)[every]
    if how == "negative":  # reversed memory order in every dimension
        flip = tuple(slice(None, None, -1) for _ in arr.shape)
        return cuda.to_device(np.ascontiguousarray(arr[flip]))[flip]
    if how == "time-major":  # time the slowest axis in memory
        axis %= arr.ndim
        perm = list(range(1, arr.ndim))
        perm.insert(axis, 0)
        return cuda.to_device(np.ascontiguousarray(np.moveaxis(arr, axis, 0))).transpose(perm)
    raise ValueError(how)


def host(v):
    """A result back on the host (None stays None); it must be a simulator device array."""
    if v is None:
        return None
    assert isinstance(v, DeviceArray), f"expected a simulator device array, got {type(v).__name__}"
    return v.copy_to_host()
