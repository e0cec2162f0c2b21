"""Shared helpers: random problems, layouts, per-dtype tolerances, and the backends to test."""

import os
import tempfile

# Kernels under test run with Numba's bounds checking on, compiled into a cache of their own (so
# that the checked builds never mix with a user's fast ones).
os.environ.setdefault("NUMBA_BOUNDSCHECK", "1")
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "parscan-test-numba-cache"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import parscan  # noqa: E402

# tests/sim runs the Numba CUDA kernels in the CUDA simulator: only in a process of its own, started
# with NUMBA_ENABLE_CUDASIM=1 by tests/test_numba_simulator.py (the variable must precede numba's import)
collect_ignore = [] if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ["sim"]

DTYPES = ["float16", "float32", "float64", "complex64", "complex128"]
# tolerance relative to the largest |reference| value (float16 is stored with 11 bits)
TOL = {"float16": 4e-3, "float32": 2e-5, "float64": 1e-12, "complex64": 2e-5, "complex128": 1e-12}

HOST_BACKENDS = [n for n, s in parscan.available_backends().items() if s.available and s.device == "host"]


def pytest_collection_modifyitems(config, items):
    try:
        import cupy

        has_gpu = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(params=HOST_BACKENDS)
def backend(request):
    return request.param


def rand(rng, shape, dtype, kind="x"):
    """Random data: inputs ~ N(0, 1); decays with |a| in [0.5, 0.95] (stable, never trivial)."""
    dt = np.dtype(dtype)
    if kind == "a":
        v = rng.uniform(0.5, 0.95, shape)
        if dt.kind == "c":
            v = v * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
    else:
        v = rng.standard_normal(shape)
        if dt.kind == "c":
            v = v + 1j * rng.standard_normal(shape)
    return np.asarray(v).astype(dt)


def layout(arr, how, axis=-1):
    """The same values in another memory layout."""
    if how == "C":
        return np.ascontiguousarray(arr)
    if how == "F":
        return np.asfortranarray(arr)
    if how == "strided":  # every other element of a larger buffer
        big = np.zeros(tuple(2 * n for n in arr.shape), arr.dtype)
        view = big[tuple(slice(None, None, 2) for _ in arr.shape)]
        view[...] = arr
        return view
    if how == "negative":  # reversed memory order in every dimension
        flipped = np.ascontiguousarray(arr[tuple(slice(None, None, -1) for _ in arr.shape)])
        return flipped[tuple(slice(None, None, -1) for _ in arr.shape)]
    if how == "time-major":  # time the slowest axis in memory
        moved = np.ascontiguousarray(np.moveaxis(arr, axis, 0))
        return np.moveaxis(moved, 0, axis)
    raise ValueError(how)


LAYOUTS = ["C", "F", "strided", "negative", "time-major"]


def assert_close(got, want, dtype):
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    tol = TOL[np.dtype(dtype).name]
    err = float(np.max(np.abs(got.astype(want.dtype) - want))) if want.size else 0.0
    assert err <= tol * scale, f"max error {err:.3g} > {tol * scale:.3g} ({dtype})"


class Foreign:
    """A minimal array library that speaks DLPack on the host (stands in for torch, JAX, ...)."""

    def __init__(self, arr):
        self.arr = arr

    def __dlpack__(self, **kwargs):
        return self.arr.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.arr.__dlpack_device__()
