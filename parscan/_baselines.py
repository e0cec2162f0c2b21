"""What the scans are compared against: the plain sequential loop, compiled, on one thread."""

from numba import njit


@njit(cache=True)
def serial_scan(a, x, out):
    """``out[c, t] = a[c, t] * out[c, t-1] + x[c, t]`` channel by channel, on one core (2-D, time last)."""
    for c in range(x.shape[0]):
        h = x.dtype.type(0)
        for t in range(x.shape[1]):
            h = a[c, t] * h + x[c, t]
            out[c, t] = h
