"""What the scans are compared against: the plain sequential loops, compiled (one core, or one GPU
kernel that steps through time)."""

import math
from functools import lru_cache

import numpy as np
import numba
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
    """One block a batch row, one thread a hidden unit, shared memory for the state: the GRU's
    recurrence stepped sequentially in one launch (torch.nn.GRUCell's equations, gate order r, z, n).
    ``gi`` = x W_ih^T + b_ih comes precomputed (one matrix product, parallel over time); ``whh_t`` is
    W_hh^T, so neighbouring threads read neighbouring weights."""
    from .kernels.numba_scan import _numba_type

    dt = _numba_type(np.dtype(dtype_name))

    # up to 1024 threads a block need <= 64 registers a thread (the simulator takes no such option)
    @cuda.jit(**({} if numba.config.ENABLE_CUDASIM else {"max_registers": 64}))
    def gru(gi, whh_t, bhh, y0, y, T, n):
        b = cuda.blockIdx.x
        i = cuda.threadIdx.x
        hs = cuda.shared.array(MAX_GRU_HIDDEN, dt)
        if i < n:
            hs[i] = y0[b, i]
        cuda.syncthreads()
        for t in range(T):
            new = dt(0)
            if i < n:
                gr = gi[t, b, i] + bhh[i]
                gz = gi[t, b, n + i] + bhh[n + i]
                hn = bhh[2 * n + i]
                for k in range(n):
                    hv = hs[k]
                    gr += whh_t[k, i] * hv
                    gz += whh_t[k, n + i] * hv
                    hn += whh_t[k, 2 * n + i] * hv
                r = dt(1) / (dt(1) + math.exp(-gr))
                z = dt(1) / (dt(1) + math.exp(-gz))
                c = math.tanh(gi[t, b, 2 * n + i] + r * hn)
                new = (dt(1) - z) * c + z * hs[i]
            cuda.syncthreads()
            if i < n:
                hs[i] = new
                y[t, b, i] = new
            cuda.syncthreads()

    return gru


MAX_GRU_HIDDEN = 1024


def gru_sequential_gpu(params, x, y0):
    """y (T, B, n) of a GRU from y0 (B, n) on the GPU: the input projection as one matrix product,
    then the recurrence stepped sequentially by one kernel.  The fastest plain sequential evaluation,
    the baseline DEER is measured against.  ``x`` (T, B, m) and the params (torch.nn.GRUCell's names)
    are CuPy arrays (NumPy ones in the CUDA simulator) of one float dtype."""
    from .kernels.numba_scan import _Launcher, _xp

    T, B, m = x.shape
    n = y0.shape[1]
    if n > MAX_GRU_HIDDEN:
        raise ValueError(f"hidden size {n} > {MAX_GRU_HIDDEN}")
    xp = _xp(x)
    y = xp.empty((T, B, n), x.dtype)
    if T and B:
        gi = (x.reshape(T * B, m) @ params["weight_ih"].T + params["bias_ih"]).reshape(T, B, 3 * n)
        whh_t = xp.ascontiguousarray(params["weight_hh"].T)
        with _Launcher(x, xp) as run:
            run(_gru_kernel(x.dtype.name), B, -(-n // 32) * 32, gi, whh_t, params["bias_hh"], y0, y, T, n)
    return y
