"""parscan: parallel linear recurrences ``h[t] = a[t] * h[t-1] + x[t]`` on GPUs and CPUs.

Public names:

- :func:`linear_scan` and :func:`linear_scan_backward`: the scan and its adjoint;
- :func:`available_backends`: which backends work here, and why not the rest;
- :mod:`parscan.reference`: the ground truth (a float64 sequential loop).
"""

from ._backends import BackendStatus, BackendUnavailable, available_backends
from .scan import linear_scan, linear_scan_backward

__version__ = "0.1.0"
__all__ = ["linear_scan", "linear_scan_backward", "available_backends", "BackendStatus",
           "BackendUnavailable", "__version__"]
