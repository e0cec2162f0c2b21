"""The chunked parallel-in-time matrix scan ``h_t = A_t h_{t-1} + x_t`` on a GPU, shared by the CuPy
and Numba backends (each supplies one kernel, ``matrix_pass`` in ``scan.cu`` / ``numba_matrix.py``).

The time axis is cut into C chunks of L steps.  Three passes, all parallel over (batch row, chunk):

1. *aggregate*: every chunk but the last folds its steps into the affine map it applies,
   ``h_end = P_c h_start + s_c`` with ``P_c = A_last ... A_first`` and ``s_c`` the chunk's scan from
   zero: the n + 1 columns of ``[P_c | s_c]`` step as ``v <- A_t v (+ x_t)``, one thread an entry;
2. *carry*: the C - 1 maps are themselves a matrix scan, ``H_c = P_c H_{c-1} + s_c`` from h0: the
   same three passes, recursively, until a scan is short enough for one chunk;
3. *final*: every chunk rescans its steps from ``H_{c-1}`` (h0 for the first), writing h.

Work is ``2 T n^3`` multiply-adds for the aggregates (the price of parallelism over time; the
sequential scan is ``T n^2``) plus ``T n^2`` for the final pass, and the recursion adds ``1/L`` of
that.  Chunks are sized so that pass 1 runs about :data:`TARGET_THREADS` threads, but never shorter
than :data:`MIN_STEPS` steps.

The backward is the same scan in reversed time with the coefficient ``A_{t+1}^H`` (a transposed
view of A, conjugated, shifted by one step): ``g_t = grad_h_t + A_{t+1}^H g_{t+1}``.

Resets (a byte per batch row and step, read by the kernel at the coefficient's step t + shift): a
flagged step has no coefficient, ``v = f_t``: the state is dropped (never multiplied by 0, so a
non-finite state does not survive it), ``P_c`` is 0 after the chunk's last reset and ``s_c`` the scan
from there.  The aggregate pass also writes one byte per (row, chunk), "the chunk dropped its incoming
state", and those are the resets of the carry scan: ``H_c = s_c`` there, whatever ``H_{c-1}`` is.
"""

from __future__ import annotations

from .launch import sim_sizes

THREADS = 256                # threads per block; a block holds THREADS // n columns of n entries
TARGET_THREADS = 1 << 19     # threads pass 1 should run (about two full waves on an H100)
MIN_STEPS = 16               # no chunk shorter than this (the recursion then costs <= 1/16 more)
MAX_N = THREADS              # one column must fit in a block

#: Smaller blocks and chunks for Numba's CUDA simulator, so that short sequences split into many
#: chunks and recurse there (the tests set ``32,256,2``): ``threads,target_threads,min_steps``.
#: Read only while the simulator is on (see :data:`parscan.kernels.launch.SIM_LAUNCH`).
SIM_CHUNKS = "PARSCAN_SIM_CHUNKS"


def sizes() -> tuple[int, int, int]:
    """``(THREADS, TARGET_THREADS, MIN_STEPS)``, or what :data:`SIM_CHUNKS` sets in the simulator."""
    return sim_sizes(SIM_CHUNKS, ("threads", "target_threads", "min_steps")) or (THREADS, TARGET_THREADS, MIN_STEPS)


def plan_chunks(B: int, T: int, n: int, target: int | None = None, min_steps: int | None = None):
    """``(C, L)``: the number of chunks and the steps per chunk (C = 1: one sequential pass)."""
    _, default_target, default_min = sizes()
    target = default_target if target is None else target
    min_steps = default_min if min_steps is None else min_steps
    if T <= 0:
        return 1, 0
    want = -(-target // max(1, B * n * (n + 1)))  # chunks for `target` threads in pass 1
    L = max(min_steps, -(-T // want))
    if L >= T:
        return 1, T
    return -(-T // L), L


def blocks_for(columns: int, n: int, threads: int) -> int:
    """Blocks covering ``columns`` columns of ``n`` entries, ``threads // n`` a block."""
    per = threads // n
    blocks = -(-columns // per)
    if blocks > 2**31 - 1:
        raise ValueError(f"the matrix scan needs {blocks} blocks, more than one launch can take; split the batch")
    return blocks


def batch_fast(x) -> bool:
    """Whether neighbouring threads should take neighbouring batch rows (x's batch stride is the
    smaller: time-major data such as DEER's) rather than neighbouring chunks."""
    return x.shape[0] > 1 and abs(x.strides[0]) < abs(x.strides[1])


def scan(run_pass, xp, A, x, h0, out, *, reverse=False, shift=0, conj=False, resets=None):
    """Write into ``out`` (B, T, n) the scan of ``A`` (B, T, n, n) and ``x`` (B, T, n) from ``h0``
    (B, n, or None for zeros).  Any strides (broadcast ones included: a batch- or time-constant A
    is a zero-stride view); the coefficient at step t is ``A[:, t + shift]`` (none outside the
    sequence, nor where ``resets[..., t + shift]``), conjugated when ``conj``.  ``resets``: None, or a
    bool view of shape (Bo, Bi, T) with Bo * Bi = B (batch row b at ``[b // Bi, b % Bi]``; zero
    strides where broadcast, never materialised).

    ``run_pass(aggregate, A, conj, shift, x, h0, resets, rc, carry, out, L, nch, reverse)`` launches
    one pass (see ``matrix_pass`` in scan.cu); ``rc`` receives the aggregate pass's chunk flags."""
    B, T, n = x.shape
    if B == 0 or T == 0:
        return out
    C, L = plan_chunks(B, T, n)
    carry = None
    if C > 1:
        agg = xp.empty((B, C - 1, n, n + 1), out.dtype)  # [P_c | s_c] of every chunk but the last
        rc = None if resets is None else xp.empty((B, C - 1), bool)  # chunk c dropped its incoming state
        run_pass(True, A, conj, shift, x, h0, resets, rc, None, agg, L, C - 1, reverse)
        carry = xp.empty((B, C - 1, n), out.dtype)      # H_c, the state at the end of chunk c
        scan(run_pass, xp, agg[..., :n], agg[..., n], h0, carry, resets=None if rc is None else rc[:, None, :])
    run_pass(False, A, conj, shift, x, h0, resets, None, carry, out, L, C, reverse)
    return out
