"""Launch configuration for the GPU scans, shared by the CuPy and Numba kernels (plain Python, unit
tested on the CPU).

A thread block of ``threads = chans * lanes`` threads covers a *tile*: ``chans`` neighbouring channels
of C2 times ``lanes * items`` consecutive steps.  Each thread owns one channel and ``items``
consecutive steps of it: it folds them to a pair (A, H) = (prod a, local scan end), the block scans
the ``lanes`` pairs of each channel (Hillis-Steele in shared memory), and tiles that split a channel's
time are chained by decoupled look-back (Merrill & Garland) over a small status array, one entry per
(channel, time tile).  Then every thread rescans its steps from its incoming state, held in
registers, and writes: each element is read once and written once.

Thread order follows the data: when time is the fast axis of x (``(B, C, T)``) neighbouring threads
take neighbouring step ranges of one channel (``chan_fast = False``); when channels are (``(T, B, C)``)
neighbouring threads take neighbouring channels at the same steps, so every warp load is coalesced.

Tiles get a *virtual* id from an atomic counter in launch order, time tiles fastest, so a tile's
predecessors in time have always started: the look-back never waits on a tile that cannot run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .._arrays import cuda_simulator

THREADS = 256        # threads per block
ITEMS = 8            # steps per thread
CHAN_FAST_CHANS = 16  # channels side by side in a tile when channels are the fast axis
MAX_TILES = 2**31 - 1

#: Smaller launches for Numba's CUDA simulator, so that short sequences span many tiles there (the
#: tests set ``32,4``): ``threads,items`` (threads a power of two up to THREADS).  Read by the numba
#: backend only while the simulator is on; real launches never read it.
SIM_LAUNCH = "PARSCAN_SIM_LAUNCH"


def sim_sizes(var: str, names: tuple[str, ...]) -> tuple[int, ...] | None:
    """The positive integers ``names`` that environment variable ``var`` sets (comma-separated) while
    Numba's CUDA simulator is on; None when it is unset or the simulator is off."""
    spec = os.environ.get(var, "").strip()
    if not spec or not cuda_simulator():
        return None
    try:
        sizes = tuple(int(v) for v in spec.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != len(names) or min(sizes) < 1:
        raise ValueError(f"{var}={spec!r}: expected {len(names)} positive integers, {','.join(names)}")
    return sizes


@dataclass(frozen=True)
class Launch:
    """How one (C0, C1, C2, T) problem is cut into tiles and blocks."""

    threads: int      # threads per block
    chans: int        # channels per tile (of C2)
    lanes: int        # threads per channel in a tile (a power of two)
    items: int        # steps per thread
    chan_fast: bool   # neighbouring threads take neighbouring channels
    chan_groups: int  # C0 * C1 * ceil(C2 / chans)
    time_tiles: int   # ceil(T / (lanes * items))

    @property
    def tile_steps(self) -> int:
        return self.lanes * self.items

    @property
    def blocks(self) -> int:
        return self.chan_groups * self.time_tiles

    @property
    def status_entries(self) -> int:
        """(channel, time tile) entries of look-back status: 0 when no channel spans two tiles."""
        return 0 if self.time_tiles == 1 else self.chan_groups * self.chans * self.time_tiles


def items_for(acc_dtype) -> int:
    """Steps per thread for an accumulator dtype: 8, or 4 for 16-byte ones (complex128), whose eight
    (a, x) pairs per thread would crowd the registers."""
    import numpy as np

    return 4 if np.dtype(acc_dtype).itemsize > 8 else 8


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def plan_launch(shape, x_strides, threads: int = THREADS, items: int = ITEMS) -> Launch:
    """The launch for a problem of canonical ``shape`` (C0, C1, C2, T) whose x has ``x_strides``.

    Channel-fast layouts put up to :data:`CHAN_FAST_CHANS` channels side by side (a warp reads 16
    neighbours at each of two steps: whole 32-byte sectors from 2-byte elements up) and spend the rest
    of the block on time lanes, so a tile spans 128 steps and the look-back's status words cost
    little per element; time-fast layouts give each channel as many lanes
    as its length needs (up to the whole block) and pack several short channels into one block.
    """
    C0, C1, C2, T = (int(v) for v in shape)
    if threads < 1 or threads & (threads - 1):
        raise ValueError(f"threads must be a power of two, got {threads}")
    chan_fast = C2 > 1 and abs(x_strides[2]) < abs(x_strides[3])
    need = _pow2_at_least(-(-max(T, 1) // items))  # lanes that cover T
    if chan_fast:
        chans = min(CHAN_FAST_CHANS, threads, _pow2_at_least(C2))
        lanes = min(threads // chans, need)
        chans = min(threads // lanes, _pow2_at_least(C2))  # short T: more channels side by side
    else:
        lanes = min(threads, need)
        chans = min(threads // lanes, _pow2_at_least(C2))
    chan_groups = C0 * C1 * -(-C2 // chans)
    time_tiles = max(1, -(-T // (lanes * items)))
    launch = Launch(chans * lanes, chans, lanes, items, chan_fast, chan_groups, time_tiles)
    if launch.blocks > MAX_TILES:
        raise ValueError(f"problem {shape} needs {launch.blocks} tiles, more than one launch can take")
    return launch
