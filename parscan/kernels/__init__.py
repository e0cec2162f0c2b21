"""GPU kernels: CUDA C++ sources (``*.cu`` / ``*.cuh``, package data) and Numba ``cuda.jit`` kernels.

The backends that live here (``cupy_scan``, ``numba_scan``) are registered in ``parscan._backends``
and are reported as unavailable until they land (issues #3 and #4).
"""
