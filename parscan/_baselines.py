"""What the scans are compared against: the plain sequential loops, compiled (one core, or one GPU
kernel that steps through time)."""

import math
from functools import lru_cache

import numpy as np
from numba import cuda, njit


@njit(cache=True)
def serial_scan(a, x, out):
    """``out[c, t] = a[c, t] * out[c, t-1] + x[c, t]`` channel by channel, on one core (2-D, time last)."""
    for c in range(x.shape[0]):
        h = x.dtype.type(0)
        for t in range(x.shape[1]):
            h = a[c, t] * h + x[c, t]
            out[c, t] = h


@lru_cache(maxsize=None)
def _gru_kernel(dtype_name: str):
    """One block a batch row, one thread a hidden unit, shared memory for the state: the GRU stepped
    sequentially in one launch (torch.nn.GRUCell's equations and gate order r, z, n)."""
    from .kernels.numba_scan import _numba_type

    dt = _numba_type(np.dtype(dtype_name))

    @cuda.jit
    def gru(x, wih, whh, bih, bhh, y0, y, T, m, n):
        b = cuda.blockIdx.x
        i = cuda.threadIdx.x
        hs = cuda.shared.array(MAX_GRU_HIDDEN, dt)
        if i < n:
            hs[i] = y0[b, i]
        cuda.syncthreads()
        for t in range(T):
            new = dt(0)
            if i < n:
                gr = bih[i] + bhh[i]
                gz = bih[n + i] + bhh[n + i]
                gn = bih[2 * n + i]
                hn = bhh[2 * n + i]
                for k in range(m):
                    xv = x[t, b, k]
                    gr += wih[i, k] * xv
                    gz += wih[n + i, k] * xv
                    gn += wih[2 * n + i, k] * xv
                for k in range(n):
                    hv = hs[k]
                    gr += whh[i, k] * hv
                    gz += whh[n + i, k] * hv
                    hn += whh[2 * n + i, k] * hv
                r = dt(1) / (dt(1) + math.exp(-gr))
                z = dt(1) / (dt(1) + math.exp(-gz))
                c = math.tanh(gn + r * hn)
                new = (dt(1) - z) * c + z * hs[i]
            cuda.syncthreads()
            if i < n:
                hs[i] = new
                y[t, b, i] = new
            cuda.syncthreads()

    return gru


MAX_GRU_HIDDEN = 1024


def gru_sequential_gpu(params, x, y0):
    """y (T, B, n) of a GRU from y0 (B, n), stepped sequentially on the GPU by one kernel: the
    fastest plain sequential evaluation, the baseline DEER is measured against.  ``x`` (T, B, m) and
    the params (torch.nn.GRUCell's names) are CuPy arrays (NumPy ones in the CUDA simulator) of one
    float dtype."""
    from .kernels.numba_scan import _Launcher, _xp

    T, B, m = x.shape
    n = y0.shape[1]
    if n > MAX_GRU_HIDDEN:
        raise ValueError(f"hidden size {n} > {MAX_GRU_HIDDEN}")
    xp = _xp(x)
    y = xp.empty((T, B, n), x.dtype)
    if T and B:
        with _Launcher(x, xp) as run:
            run(_gru_kernel(x.dtype.name), B, -(-n // 32) * 32, x, params["weight_ih"], params["weight_hh"],
                params["bias_ih"], params["bias_hh"], y0, y, T, m, n)
    return y
