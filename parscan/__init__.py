"""parscan: parallel linear recurrences ``h[t] = a[t] * h[t-1] + x[t]`` on GPUs and CPUs.

Public names:

- :func:`linear_scan` and :func:`linear_scan_backward`: the scan and its adjoint (``resets=`` restarts
  the state inside an array: :func:`resets_from_offsets` and :func:`segment_ends` for packed sequences);
- :func:`available_backends`: which backends work here, and why not the rest;
- :mod:`parscan.reference`: the ground truth (a float64 sequential loop);
- :class:`GILRLSTM`, :class:`GILR`, :class:`SRU`, :class:`QRNN` (:mod:`parscan.layers`): recurrent
  layers on the scans with hand-written gradients; :mod:`parscan.tasks`: the paper's sign task;
- :func:`matrix_linear_scan` (dense n x n coefficients) and :mod:`parscan.deer` (nonlinear RNNs by
  Newton iterations on the scan).
"""

from ._backends import BackendStatus, BackendUnavailable, available_backends
from .layers import GILR, GILRLSTM, QRNN, SRU
from .matrix import matrix_linear_scan, matrix_linear_scan_backward
from .scan import linear_scan, linear_scan_backward
from .segments import resets_from_offsets, segment_ends

__version__ = "0.1.0"
__all__ = ["linear_scan", "linear_scan_backward", "resets_from_offsets", "segment_ends", "matrix_linear_scan", "matrix_linear_scan_backward", "available_backends", "BackendStatus",
           "BackendUnavailable", "GILRLSTM", "GILR", "SRU", "QRNN", "__version__"]
