"""The ``numba`` backend: the single-pass tiled scans of :mod:`parscan.kernels.launch` as Numba
``cuda.jit`` kernels.

One kernel source serves the forward and the backward, every dtype and both thread orders; a
factory specialises it per (accumulator dtype, direction) at compile time.  The algorithm, per tile
(see ``launch``):

1. each thread loads its ``items`` steps into registers, identity-padded past the end, and folds them
   to ``(A, H)``; the forward loads ``(a[t], x[t])``, the backward runs time backwards on
   ``(conj(a[t+1]), grad_h[t])`` (``g[t] = grad_h[t] + conj(a[t+1]) g[t+1]`` is a forward scan in
   reversed time);
2. a Hillis-Steele scan over the ``lanes`` pairs of each channel in shared memory, in a fixed order;
3. when a channel spans several tiles, the tile's last lane publishes the aggregate, looks back for
   the nearest predecessor with an inclusive prefix, applies the aggregates in between *in time
   order* (so every inclusive prefix is the same expression ``A_u * inc_{u-1} + H_u`` whoever
   evaluates it: results are bitwise repeatable), and publishes its own inclusive prefix;
4. every thread rescans its steps from its incoming state and writes ``h`` (forward) or
   ``grad_x``, ``grad_a`` and ``grad_h0`` (backward).  Where ``a`` is constant in time the backward
   writes per-tile partial sums of ``grad_a``, summed over tiles by a second small kernel.

``resets`` (a bool per step, optional) are read by the kernel: where set, the carried state is dropped
(``a[t]`` reads as 0) in the forward and in every formula of the backward (``grad_a[t] = 0`` there); the
flags of a tile are read once per block into shared memory (one row for the block when broadcast over
channels).  Dropped, not multiplied by 0 (``0 * inf`` is NaN): a reset step selects ``x[t]``, and every
transfer pair carries a flag "holds a reset" (then ``h_out = H`` whatever ``h_in`` is); a tile holding a
reset publishes its inclusive prefix at once, so the look-back never walks over one.

Non-finite inputs give the reference's IEEE result, with the limits scan.cu states: pairs compose
without ``inf * 0`` (``prod`` keeps a product of nonzero finite decays nonzero and finite, ``scale``
selects a zero offset, the first step's missing state is dropped as at a reset).

Status flags are read and set with atomics, values are published before a ``threadfence`` and read
with atomics (L1 is not coherent between blocks): adding -0.0, the exact identity of IEEE addition,
so a read never changes a published value, not even the sign of a zero.  There are no warp shuffles: the CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) runs exactly this code.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import cuda, types

from .._problem import run_backward, run_forward
from .launch import SIM_LAUNCH, THREADS, items_for, plan_launch, sim_sizes

_EMPTY, _AGG, _INC = 0, 1, 2

RESETS = True  # implements ``resets`` (see parscan.scan): the kernel reads the flags itself


def _numba_type(dtype):
    return {np.dtype(np.float32): types.float32, np.dtype(np.float64): types.float64,
            np.dtype(np.complex64): types.complex64, np.dtype(np.complex128): types.complex128}[np.dtype(dtype)]


@lru_cache(maxsize=None)
def _kernels(acc_name: str, backward: bool, items: int):
    """(scan kernel, sum kernel, real dtype, components) for accumulator dtype ``acc_name``, the
    direction and ``items`` steps per thread (a compile-time constant: the per-thread loops unroll
    and the step values stay in registers)."""
    acc_dtype = np.dtype(acc_name)
    acc = _numba_type(acc_dtype)
    cplx = acc_dtype.kind == "c"
    real = _numba_type(np.float32 if acc_dtype in (np.float32, np.complex64) else np.float64)
    ncomp = 2 if cplx else 1
    ITEMS = items
    SLOTS = THREADS * items + THREADS * items // 32  # the coalescing transpose
    FLAGS = THREADS * items  # the tile's reset flags
    one_ = acc_dtype.type(1)
    zero_ = acc_dtype.type(0)

    if cplx:
        @cuda.jit(device=True, inline=True)
        def conj(v):
            return v.conjugate()

        @cuda.jit(device=True, inline=True)
        def put(arr, i, v):
            arr[2 * i] = v.real
            arr[2 * i + 1] = v.imag

        @cuda.jit(device=True, inline=True)
        def get(arr, i):
            return acc(complex(cuda.atomic.add(arr, 2 * i, real(-0.0)), cuda.atomic.add(arr, 2 * i + 1, real(-0.0))))
    else:
        @cuda.jit(device=True, inline=True)
        def conj(v):
            return v

        @cuda.jit(device=True, inline=True)
        def put(arr, i, v):
            arr[i] = v

        @cuda.jit(device=True, inline=True)
        def get(arr, i):
            return cuda.atomic.add(arr, i, real(-0.0))

    if cplx:
        @cuda.jit(device=True, inline=True)
        def prod(p, q):
            """A pair's decay product: complex products as they are (see scan.cu's Acc::prod)."""
            return p * q
    else:
        tiny, huge = acc_dtype.type(np.finfo(acc_dtype).smallest_subnormal), acc_dtype.type(np.finfo(acc_dtype).max)

        @cuda.jit(device=True, inline=True)
        def prod(p, q):
            """A pair's decay product (see scan.cu's Acc::prod): nonzero finite factors give a nonzero
            finite product (an underflow the least subnormal, an overflow the greatest finite value)."""
            r = p * q
            if r == 0 and p != 0 and q != 0:
                return -tiny if (p < 0) != (q < 0) else tiny
            if (r > huge or r < -huge) and p - p == 0 and q - q == 0:
                return huge if r > 0 else -huge
            return r

    @cuda.jit(device=True, inline=True)
    def scale(a, h):
        """a * h, the offset a composed pair passes on, selected as 0 where h is 0 (see scan.cu)."""
        if h == zero_ and a == a:
            return zero_
        return a * h

    @cuda.jit(device=True, inline=True)
    def at(off, s, i, j, k, t):
        return off + i * s[0] + j * s[1] + k * s[2] + t * s[3]

    @cuda.jit(device=True)
    def look_back(flags, st_a, st_h, st_i, c, nch, tt, A, H, F):
        """Incoming state of time tile ``tt`` of channel ``c``; status entries are tile-major (entry
        (c, u) at ``u * nch + c``).  Publishes the tile's aggregate (A, H) for successors to walk over,
        unless the predecessor is already inclusive, and its inclusive prefix after.  A tile holding a
        reset (``F``) publishes its inclusive prefix, H, at once (the tiles before do not change it)."""
        s = tt - 1
        if F:
            put(st_i, tt * nch + c, H)
            cuda.threadfence()
            cuda.atomic.exch(flags, tt * nch + c, _INC)
        elif cuda.atomic.add(flags, s * nch + c, 0) != _INC:
            put(st_a, tt * nch + c, A)
            put(st_h, tt * nch + c, H)
            cuda.threadfence()
            cuda.atomic.exch(flags, tt * nch + c, _AGG)
        while True:
            f = cuda.atomic.add(flags, s * nch + c, 0)
            if f == _INC:
                break
            if f == _AGG:
                s -= 1
        cuda.threadfence()
        h = get(st_i, s * nch + c)
        for u in range(s + 1, tt):
            h = get(st_a, u * nch + c) * h + get(st_h, u * nch + c)
        if not F:
            put(st_i, tt * nch + c, A * h + H)
            cuda.threadfence()
            cuda.atomic.exch(flags, tt * nch + c, _INC)
        return h

    @cuda.jit(device=True, inline=True)
    def slot(cl, lanes, q):
        """Shared-memory slot of step q of channel cl's tile, one pad element in 32 (its bank pattern, by
        element size and lanes a channel: see scan.cu's tile_load; not conflict-free for 8- and 16-byte
        elements, nor for 4-byte ones with fewer than 32 lanes a channel)."""
        g = cl * lanes * ITEMS + q
        return g + g // 32

    @cuda.jit(device=True, inline=True)
    def coef(a, ao, as_, i, j, k, T, w, live, a_const, a0):
        """a at step w of the scan's time (the backward's reversed time reads a[T - 1 - w]); one outside."""
        if not (live and w >= 0 and w < T):
            return one_
        if a_const:
            return a0
        return acc(a[at(ao, as_, i, j, k, T - 1 - w if backward else w)])

    @cuda.jit(device=True, inline=True)
    def reset_bits(r, ro, rs, sF, i, j, k_first, C2, T, chans, lanes, chan_fast, tid, cl, lane, live, base):
        """This thread's reset flags as a bit mask: bit m + 1 is step t0 + m, bit 0 step t0 - 1 (the
        backward's a[t + 1]).  The tile's flags are read once per block in coalesced order into
        shared memory (one row for the block when broadcast over channels, ``rs[2] == 0``); steps
        outside [0, T) and dead channels read 0.  Every thread of the block calls it (a barrier)."""
        tile = lanes * ITEMS
        rows = 1 if rs[2] == 0 else chans
        s = tid
        while s < rows * tile:  # neighbouring threads, neighbouring bytes
            if chan_fast:
                c = s % rows
                q = s // rows
            else:
                c = s // tile
                q = s % tile
            kc = k_first + c
            w = base + q
            f = 0
            if kc < C2 and w < T:
                if r[at(ro, rs, i, j, kc, T - 1 - w if backward else w)]:
                    f = 1
            sF[c * tile + q] = f
            s += chans * lanes
        cuda.syncthreads()
        if not live:
            return 0
        row = (0 if rows == 1 else cl) * tile + lane * ITEMS
        bits = 0
        for m in range(ITEMS):
            bits |= int(sF[row + m]) << (m + 1)
        if backward:  # step t0 - 1: the row's previous byte, or (a tile's first lane) read here
            w = base + lane * ITEMS - 1
            f = 0
            if lane > 0:
                f = int(sF[row - 1])
            elif w >= 0:
                if r[at(ro, rs, i, j, k_first + cl, T - 1 - w)]:
                    f = 1
            bits |= f
        return bits

    @cuda.jit(device=True, inline=True)
    def prev_h(hh, hho, hhs, h0, h0o, h0s, has_h0, i, j, k, T, w, live):
        """The backward's h[t - 1] for reversed step w - 1 (t = T - w): h[T - 1 - w], h0 at w = T."""
        if not (live and w <= T):
            return zero_
        if w < T:
            return acc(hh[at(hho, hhs, i, j, k, T - 1 - w)])
        if has_h0:
            return acc(h0[at(h0o, h0s, i, j, k, 0)])
        return zero_

    @cuda.jit
    def scan(a, ao, as_, x, xo, xs, hh, hho, hhs, h0, h0o, h0s, has_h0, r, ro, rs, has_r, o, oo, os_, ga, gao,
             gas, gh0, g0o, g0s, parts, shape, chans, lanes, chan_fast, time_tiles, counter, flags,
             st_a, st_h, st_i):
        """Forward: (a, x, h0) -> o = h.  Backward: (a, x = grad_h, hh = h, h0) -> o = grad_x,
        ga = grad_a (or per-tile sums into ``parts`` when a is constant in time), gh0.  r: the resets
        (bools), read only when has_r."""
        sA = cuda.shared.array(THREADS, acc)
        sH = cuda.shared.array(THREADS, acc)
        sC = cuda.shared.array(THREADS, acc)
        sR = cuda.shared.array(THREADS, acc)
        sT = cuda.shared.array(SLOTS, acc)
        sF = cuda.shared.array(FLAGS, types.uint8)
        sP = cuda.shared.array(THREADS, types.uint8)  # each lane pair's "holds a reset" (drops)
        sV = cuda.shared.array(1, types.int64)
        la = cuda.local.array(ITEMS, acc)
        lx = cuda.local.array(ITEMS, acc)
        lh = cuda.local.array(ITEMS, acc)
        C0, C1, C2, T = shape
        nch = C0 * C1 * C2
        tid = cuda.threadIdx.x
        if tid == 0:  # one tile in time: no look-back, no order, the scratch untouched (see scan.cu)
            sV[0] = cuda.blockIdx.x if time_tiles == 1 else cuda.atomic.add(counter, 0, 1)
        cuda.syncthreads()
        v = sV[0]
        cgrp = v // time_tiles
        tt = v - cgrp * time_tiles
        if chan_fast:  # tid = lane * chans + cl
            cl = tid % chans
            lane = tid // chans
            step = chans
        else:          # tid = cl * lanes + lane
            cl = tid // lanes
            lane = tid % lanes
            step = 1
        nkb = (C2 + chans - 1) // chans
        i = cgrp // (C1 * nkb)
        j = (cgrp // nkb) % C1
        k = (cgrp % nkb) * chans + cl
        live = k < C2
        kk = k if live else 0
        base = tt * lanes * ITEMS    # the tile's first step
        t0 = base + lane * ITEMS     # this thread's first step
        coalesce = not chan_fast     # time-fast order: load and store through shared memory
        tile = lanes * ITEMS
        one = acc(1)
        zero = acc(0)
        # 0. the resets' flags of this thread's steps (see reset_bits): bit m + 1 step t0 + m, bit 0 step t0 - 1
        rb = 0
        if has_r:
            rb = reset_bits(r, ro, rs, sF, i, j, (cgrp % nkb) * chans, C2, T, chans, lanes, chan_fast, tid, cl,
                            lane, live, base)
        # the steps whose carried state is dropped: the forward's r[t] (bit m + 1), the backward's r[t + 1] (bit m)
        dm = (rb & ((1 << ITEMS) - 1)) if backward else rb >> 1
        # the first step has no carried state (the backward's g[T], a forward without h0): dropped, its
        # value a[0] * 0 + x[0] (see scan.cu); pairs carry "holds a reset" with resets or in the first tile
        first = tt == 0 and (backward or not has_h0)
        drops = has_r or first
        a_const = as_[3] == 0        # a constant in time: read once
        a0 = one
        if live and a_const:
            a0 = acc(a[at(ao, as_, i, j, kk, 0)])
        # 1. load (identity past the end and in dead channels) and fold.  The coalesced order reads step
        # base + m * lanes + lane (neighbouring lanes, neighbouring steps) and hands it to its owner
        # through shared memory.  The backward runs reversed time, step u is t = T - 1 - u, on
        # (conj(a[t + 1]), grad_h[t]): a[t + 1] is a at reversed step u - 1, read aligned with grad_h
        # and taken one step back.
        back = 1 if backward else 0
        for r in range(2):  # r = 0: a, r = 1: x
            for m in range(ITEMS):
                q = m * lanes + lane if coalesce else lane * ITEMS + m - (back if r == 0 else 0)
                w = base + q
                if r == 0:
                    val = coef(a, ao, as_, i, j, kk, T, w, live, a_const, a0)
                else:
                    val = zero
                    if live and w < T:
                        val = acc(x[at(xo, xs, i, j, kk, T - 1 - w if backward else w)])
                if coalesce:
                    sT[slot(cl, lanes, q)] = val
                elif r == 0:
                    la[m] = val
                else:
                    lx[m] = val
            if coalesce:
                cuda.syncthreads()
                for m in range(ITEMS):
                    q = lane * ITEMS + m - (back if r == 0 else 0)
                    if q < 0:
                        val = coef(a, ao, as_, i, j, kk, T, base + q, live, a_const, a0)
                    else:
                        val = sT[slot(cl, lanes, q)]
                    if r == 0:
                        la[m] = val
                    else:
                        lx[m] = val
                cuda.syncthreads()
        if first and lane == 0 and live:
            if not backward and not (dm & 1):
                lx[0] = la[0] * zero + lx[0]
            dm |= 1
        # the fold to (A, H) and F, "holds a reset": at a dropped step the pair restarts at (0, x);
        # composed by prod and scale: no inf * 0 from the identity or an underflow
        A = one
        H = zero
        F = False
        for m in range(ITEMS):
            if backward:  # conj, and the identities of steps outside the sequence
                u = t0 + m
                if not (live and u < T):
                    la[m] = one
                elif u == 0:
                    la[m] = zero
                else:
                    la[m] = conj(la[m])
            if (dm >> m) & 1:
                A = zero
                H = lx[m]
                F = True
            else:
                A = prod(A, la[m])
                H = scale(la[m], H) + lx[m]
        # 2. inclusive scan of the lanes' pairs of each channel, in a fixed order (a pair holding a
        # reset keeps its own (A, H))
        sA[tid] = A
        sH[tid] = H
        if drops:
            sP[tid] = 1 if F else 0
        cuda.syncthreads()
        d = 1
        while d < lanes:
            pa = one
            ph = zero
            pf = False
            if lane >= d:
                pa = sA[tid - d * step]
                ph = sH[tid - d * step]
                if drops:
                    pf = sP[tid - d * step] != 0
            cuda.syncthreads()
            if lane >= d:
                if not F:
                    H = scale(A, ph) + H
                    A = prod(A, pa)
                    F = pf
                sA[tid] = A
                sH[tid] = H
                if drops:
                    sP[tid] = 1 if F else 0
            cuda.syncthreads()
            d *= 2
        # 3. the channel's incoming state; across tiles by look-back
        if lane == lanes - 1:
            hin = zero
            if not backward and has_h0 and live:
                hin = acc(h0[at(h0o, h0s, i, j, kk, 0)])
            if time_tiles > 1 and live:
                c = (i * C1 + j) * C2 + k
                if tt == 0:
                    put(st_i, c, H if F else A * hin + H)
                    cuda.threadfence()
                    cuda.atomic.exch(flags, c, _INC)
                else:
                    hin = look_back(flags, st_a, st_h, st_i, c, nch, tt, A, H, F)
            sC[cl] = hin
        cuda.syncthreads()
        h = sC[cl]
        if lane > 0:
            if drops and sP[tid - step] != 0:
                h = sH[tid - step]
            else:
                h = sA[tid - step] * h + sH[tid - step]
        # 4. rescan from registers and write: h (forward) or grad_x = g and grad_a = g conj(h[t - 1])
        # (backward; h[-1] = h0; h[t - 1] is h at reversed step u + 1, read aligned and taken one step
        # on).  Every thread, dead channels included, reaches every barrier.
        summed = gas[3] == 0
        total = zero
        if backward:
            for m in range(ITEMS):
                q = m * lanes + lane if coalesce else lane * ITEMS + m + 1
                val = prev_h(hh, hho, hhs, h0, h0o, h0s, has_h0, i, j, kk, T, base + q, live)
                if coalesce:
                    sT[slot(cl, lanes, q)] = val
                else:
                    lh[m] = val
            if coalesce:
                cuda.syncthreads()
                for m in range(ITEMS):
                    q = lane * ITEMS + m + 1
                    if q >= tile:
                        lh[m] = prev_h(hh, hho, hhs, h0, h0o, h0s, has_h0, i, j, kk, T, base + q, live)
                    else:
                        lh[m] = sT[slot(cl, lanes, q)]
                cuda.syncthreads()
        for m in range(ITEMS):
            u = t0 + m
            if live and u < T:
                if (dm >> m) & 1:
                    h = lx[m]
                else:
                    h = la[m] * h + lx[m]
                lx[m] = h
                if backward:
                    reset = (rb >> (m + 1)) & 1  # at t = T - 1 - u: a[t] reads as 0, grad_a[t] = 0
                    gv = zero
                    if not reset:
                        gv = h * conj(lh[m])
                    if summed:
                        total += gv
                    else:
                        lh[m] = gv
                    if u == T - 1 and has_h0:
                        gv0 = zero
                        if not reset:
                            gv0 = conj(a0 if a_const else acc(a[at(ao, as_, i, j, k, 0)])) * h
                        gh0[at(g0o, g0s, i, j, k, 0)] = gv0
        for r in range(2 if backward else 1):  # r = 0: h / grad_x, r = 1: grad_a (unless summed)
            if r == 1 and summed:
                break
            if coalesce:
                for m in range(ITEMS):
                    sT[slot(cl, lanes, lane * ITEMS + m)] = lx[m] if r == 0 else lh[m]
                cuda.syncthreads()
            for m in range(ITEMS):
                q = m * lanes + lane if coalesce else lane * ITEMS + m
                u = base + q
                if live and u < T:
                    if coalesce:
                        val = sT[slot(cl, lanes, q)]
                    elif r == 0:
                        val = lx[m]
                    else:
                        val = lh[m]
                    t = T - 1 - u if backward else u
                    if r == 0:
                        o[at(oo, os_, i, j, kk, t)] = val
                    else:
                        ga[at(gao, gas, i, j, kk, t)] = val
            if coalesce:
                cuda.syncthreads()
        if backward and summed:  # the tile's grad_a sum per channel, over its lanes in a fixed order
            sR[tid] = total
            cuda.syncthreads()
            if live and lane == lanes - 1:
                s = zero
                for q in range(lanes):
                    s += sR[tid - (lanes - 1 - q) * step]
                if time_tiles == 1:  # the only tile: grad_a itself (``finish`` does not run)
                    ga[at(gao, gas, i, j, k, 0)] = s
                else:
                    put(parts, tt * nch + (i * C1 + j) * C2 + k, s)  # tile-major, as the status

    @cuda.jit
    def finish(parts, ga, gao, gas, shape, width):
        """Backward with a constant in time: each channel's grad_a is the sum of its ``width`` tile
        parts (tile-major: part p of channel c at p * nch + c), in a fixed order."""
        C0, C1, C2, T = shape
        nch = C0 * C1 * C2
        c = cuda.grid(1)
        if c >= nch:
            return
        s = acc(0)
        for p in range(width):
            s += get(parts, p * nch + c)
        ga[at(gao, gas, c // (C1 * C2), (c // C2) % C1, c % C2, 0)] = s

    return scan, finish, np.dtype(real.name), ncomp


def _sim_array(buf):
    """In the simulator a NumPy buffer is simulator memory: passed as its device array, zero-copy (a
    bare NumPy argument would be copied in and back, written into read-only inputs included)."""
    if type(buf) is np.ndarray:  # as _xp: a CUDA array type is never a plain ndarray
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray  # noqa: PLC0415

        return FakeCUDAArray(buf)
    return buf


def _args(s):
    return _sim_array(s.buf), s.off, tuple(int(v) for v in s.strides)


def _plan(problem, strides):
    """The launch for ``problem``; in the simulator, the sizes ``PARSCAN_SIM_LAUNCH`` sets (if any)."""
    threads, items = sim_sizes(SIM_LAUNCH, ("threads", "items")) or (THREADS, items_for(problem.acc_dtype))
    if threads > THREADS:
        raise ValueError(f"{SIM_LAUNCH}: at most {THREADS} threads a block (the kernels' shared memory)")
    return plan_launch(problem.shape, strides, threads=threads, items=items)


def _xp(buf):
    """The array module for scratch next to ``buf`` (NumPy in the simulator)."""
    if type(buf) is np.ndarray:  # the simulator takes host arrays (a CUDA array type is never a plain ndarray)
        return np
    import cupy
    return cupy


class _Launcher:
    """Launches on the data's device and, for CuPy data, on CuPy's current stream (host arrays, as
    in the simulator: a plain launch).  Use as a context: scratch is allocated on that device."""

    __slots__ = ("xp", "cupy", "_dev", "_ctx")

    def __init__(self, buf, xp, dev=None):
        """On ``buf``'s device (or device ``dev``, an id, when given)."""
        self.xp = xp
        self.cupy = cupy = xp is not np
        if cupy and dev is None:
            dev = buf.device.id
        self._dev = dev if cupy else None
        self._ctx = None

    def __enter__(self):
        """Make the data's device current (unless it is: the public calls and the plans enter it)."""
        if self.cupy and self.xp.cuda.runtime.getDevice() != self._dev:
            self._ctx = self.xp.cuda.Device(self._dev)
            self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
        return False

    @staticmethod
    def _wrap(v):
        """CuPy arrays as Numba device arrays without the per-argument stream synchronisation Numba
        does by default (the kernel runs on that very stream)."""
        if type(v).__module__.startswith("cupy"):
            return cuda.from_cuda_array_interface(v.__cuda_array_interface__, owner=v, sync=False)
        return v

    def __call__(self, kernel, blocks, threads, *args):
        _launch(self._dev, kernel, blocks, threads, *args)


def _launch(dev, kernel, blocks, threads, *args):
    """Launch on CuPy's current stream of device ``dev``, current already (the scan launchers' ``run``;
    ``dev`` None: the simulator, a plain launch)."""
    if dev is None:
        kernel[blocks, threads](*args)
        return
    import cupy

    stream = cuda.external_stream(cupy.cuda.get_current_stream().ptr)
    with cuda.gpus[dev]:
        kernel[blocks, threads, stream](*(_Launcher._wrap(v) for v in args))


def _status(launch, real, ncomp, xp):
    """Look-back scratch, new for every launch: one zeroed int32 block holds the tile counter (as int64)
    and the flags; the three value arrays need no zeroing (a flag guards every read)."""
    n = max(1, launch.status_entries)
    z = xp.zeros(2 + n, np.int32)
    vals = xp.empty(3 * n * ncomp, real)
    m = n * ncomp
    return z[:2].view(np.int64), z[2:], vals[:m], vals[m:2 * m], vals[2 * m:]


def _scratch(launch, real, ncomp, xp):
    """``() -> the look-back scratch arguments``: new for every launch when a channel spans several
    tiles; else untouched by the kernel (tiles take their ids from blockIdx), so one-element stand-ins
    made once per device serve every launch (see scan.cu)."""
    if launch.status_entries:
        return lambda: _status(launch, real, ncomp, xp)
    fixed = (_dummy(xp, np.int64), _dummy(xp, np.int32), *(_dummy(xp, real),) * 3)
    return lambda: fixed


_ZERO_GEO = (0, (0, 0, 0, 0))
_DUMMIES: dict = {}


def _dummy(xp, dtype):
    """A one-element array for an operand slot the launch leaves unused (never read or written: the
    forward's hh, ga, gh0 and parts, the backward's gh0 without h0, the resets without resets), made once per
    device and dtype."""
    key = (None if xp is np else xp.cuda.Device().id, np.dtype(dtype).str)
    arr = _DUMMIES.get(key)
    if arr is None:
        arr = _DUMMIES.setdefault(key, xp.zeros(1, dtype))
    return arr


def _geo(s):
    return s.off, tuple(int(v) for v in s.strides)


def _resets(problem):
    """The resets' geometry and has_r, as the kernel's arguments after the buffer."""
    return (_ZERO_GEO if problem.resets is None else _geo(problem.resets)), problem.resets is not None


# ``forward_launcher(problem)`` / ``backward_launcher(problem)``: every decision that depends only on the
# problem's geometry made once (launch, kernels, offsets, strides, the unused slots' stand-ins); the
# returned ``run(...)`` of the flat buffers is what the plan cache keeps.  ``forward(problem)`` is the
# one-off call.  ``run`` launches with the data's device current: the public calls and the plans'
# replays enter it (``forward`` / ``backward`` too), so it does not enter it again.

def forward_launcher(problem, launch=None):
    acc = problem.acc_dtype
    launch = launch or _plan(problem, problem.x.strides)
    scan, _, real, ncomp = _kernels(acc.name, False, launch.items)
    buf = problem.x.buf
    xp = _xp(buf)
    with _Launcher(buf, xp):
        none, none_acc, none_real, none_r = (_dummy(xp, t) for t in (problem.dtype, acc, real, np.bool_))
        scratch = _scratch(launch, real, ncomp, xp)
    ga, gx, go = _geo(problem.a), _geo(problem.x), _geo(problem.out)
    gr, has_r = _resets(problem)
    g0 = _geo(problem.h0) if problem.h0 is not None else _ZERO_GEO
    has_h0 = problem.h0 is not None
    shape = tuple(int(n) for n in problem.shape)
    sizes = (launch.chans, launch.lanes, launch.chan_fast, launch.time_tiles)
    dev = None if xp is np else buf.device.id

    def run(a, x, h0, out, resets=None):  # with the data's device current (see forward)
        _launch(dev, scan, launch.blocks, launch.threads, a, *ga, x, *gx, none, *_ZERO_GEO,
                none if h0 is None else h0, *g0, has_h0, none_r if resets is None else resets, *gr,
                has_r, out, *go, none, *_ZERO_GEO, none_acc,
                *_ZERO_GEO, none_real, shape, *sizes, *scratch())
    return _simulated(run) if xp is np else run


def backward_launcher(problem, launch=None):
    acc = problem.acc_dtype
    launch = launch or _plan(problem, problem.grad_h.strides)
    scan, finish, real, ncomp = _kernels(acc.name, True, launch.items)
    C0, C1, C2, T = problem.shape
    nchan = C0 * C1 * C2
    summed = problem.grad_a.strides[3] == 0
    width = launch.time_tiles
    nparts = nchan * width * ncomp if summed and width > 1 else 0  # one tile: the kernel writes grad_a
    buf = problem.grad_h.buf
    xp = _xp(buf)
    with _Launcher(buf, xp):
        none, none_acc, none_real, none_r = (_dummy(xp, t) for t in (problem.dtype, acc, real, np.bool_))
        scratch = _scratch(launch, real, ncomp, xp)
    ga, gg, gh, gx, gq = (_geo(s) for s in (problem.a, problem.grad_h, problem.h, problem.grad_x, problem.grad_a))
    gr, has_r = _resets(problem)
    g0 = _geo(problem.h0) if problem.h0 is not None else _ZERO_GEO
    gq0 = _geo(problem.grad_h0) if problem.grad_h0 is not None else _ZERO_GEO
    has_h0 = problem.h0 is not None
    shape = tuple(int(n) for n in problem.shape)
    sizes = (launch.chans, launch.lanes, launch.chan_fast, launch.time_tiles)
    dev = None if xp is np else buf.device.id

    def run(a, h, grad_h, h0, grad_x, grad_a, grad_h0, resets=None):  # the data's device current
        parts = xp.empty(nparts, real) if nparts else none_real
        _launch(dev, scan, launch.blocks, launch.threads, a, *ga, grad_h, *gg, h, *gh,
                none if h0 is None else h0, *g0, has_h0, none_r if resets is None else resets, *gr,
                has_r, grad_x, *gx, grad_a, *gq,
                none_acc if grad_h0 is None else grad_h0, *gq0, parts, shape, *sizes, *scratch())
        if nparts and nchan:
            _launch(dev, finish, (nchan + 127) // 128, 128, parts, grad_a, *gq, shape, width)
    return _simulated(run) if xp is np else run


def _simulated(run):
    """``run`` with every array argument a simulator device array (see ``_sim_array``)."""
    def sim_run(*buffers):
        return run(*(None if b is None else _sim_array(b) for b in buffers))
    return sim_run


def forward(problem, launch=None):
    with _Launcher(problem.x.buf, _xp(problem.x.buf)):  # the data's device current
        run_forward(forward_launcher, problem, launch)


def backward(problem, launch=None):
    with _Launcher(problem.grad_h.buf, _xp(problem.grad_h.buf)):
        run_backward(backward_launcher, problem, launch)
