"""Small forward and backward calls on every GPU backend, dtype and layout path: the workload that
``benchmarks/gpu_session.sh`` runs under compute-sanitizer (memcheck, racecheck, synccheck)."""

import sys

import cupy as cp

import parscan

backends = sys.argv[1:] or ["cupy", "numba"]
for backend in backends:
    for dtype in ("float16", "float32", "float64", "complex64", "complex128"):
        for shape, axis in (((3, 5000), -1), ((5000, 3), 0), ((64, 300), -1), ((300, 64), 0), ((1, 1), -1)):
            x = cp.ones(shape, dtype)
            a = cp.full(shape, 0.5, dtype)
            h = parscan.linear_scan(a, x, cp.ones(shape[1 if axis == 0 else 0], dtype), axis=axis, backend=backend)
            parscan.linear_scan_backward(a, h, x, cp.ones(shape[1 if axis == 0 else 0], dtype), axis=axis,
                                         backend=backend)
            parscan.linear_scan_backward(cp.asarray(0.5, dtype), h, x, axis=axis, backend=backend)
    for dtype in ("float32", "float64", "complex64", "complex128"):  # the matrix scan: every pass, recursion
        for (B, T, n) in ((2, 3000, 3), (1, 200, 64), (3, 50, 7)):
            A = cp.full((B, T, n, n), 0.5 / n, dtype)
            x = cp.ones((B, T, n), dtype)
            h0 = cp.ones((B, n), dtype)
            h = parscan.matrix_linear_scan(A, x, h0, backend=backend)
            parscan.matrix_linear_scan_backward(A, h, x, h0, reverse=False, backend=backend)
            parscan.matrix_linear_scan_backward(A[:1, :1], h, x, backend=backend)
cp.cuda.Device().synchronize()
print("sanitize workload done:", ", ".join(backends))
