"""GPU kernels compiled on the CPU: every instantiation and signature, for sm_80 and sm_90, with no
spills; plus the launch planning both GPU backends share."""

import numpy as np
import pytest

from parscan import cli
from parscan.kernels import cupy_scan, launch

pytest.importorskip("cupy")  # NVRTC comes with CuPy's wheel (the test extra installs both)


@pytest.fixture(scope="module")
def rows():
    from parscan.kernels import report

    return report.report(("sm_80", "sm_90"))


def test_every_kernel_compiles_for_both_architectures(rows):
    names = {n for n, _ in cupy_scan.instantiations()}
    for arch in ("sm_80", "sm_90"):
        assert {r.kernel for r in rows if r.backend == "cupy" and r.arch == arch} == names
        numba = {r.kernel for r in rows if r.backend == "numba" and r.arch == arch}
        assert len(numba) == 14  # five dtypes, forward and backward; the matrix pass for four
        assert {f"matrix_pass[{d}]" for d in ("float32", "float64", "complex64", "complex128")} <= numba


def test_no_kernel_spills_or_uses_a_stack(rows):
    bad = [r for r in rows if r.spill_stores or r.spill_loads or r.stack]
    assert not bad, bad
    # 256 threads a block: at most 255 registers; the scans keep their tile state in shared memory
    assert all(0 < r.registers <= 255 for r in rows)
    assert all(r.smem > 0 for r in rows if "scan" in r.kernel or "matrix" in r.kernel)


def test_mixed_dtype_instantiations_compile_for_both_architectures():
    """The kernels a mixed-precision call compiles on first use (a float16 x with a float32 a, float32
    data with a float64 a and h0, a complex64 grad_h and h with a float64 a) compile, without spills."""
    from parscan.kernels import report

    keys = [("scan", "float32", "float16", "float32", "float32", "float32", "float32", False),
            ("scan", "float64", "float32", "float32", "float64", "float64", "float64", True),
            ("scan", "float64", "complex64", "complex64", "complex128", "complex128", "complex128", True)]
    names = [cupy_scan.kernel_name(k) for k in keys]
    assert not set(names) & {n for n, _ in cupy_scan.instantiations()}  # not in the common module
    for arch in ("sm_80", "sm_90"):
        rows = report.cuda_rows(arch, names)
        assert [r.kernel for r in rows] == names
        assert all(0 < r.registers <= 255 and not (r.spill_stores or r.spill_loads or r.stack) for r in rows), rows


def test_kernels_command_prints_the_table(capsys):
    assert cli.main(["kernels", "--arch", "sm_90", "--backend", "cupy"]) == 0
    out = capsys.readouterr().out
    assert "scan_kernel<float, float, float, float, float, float, float, 8, false>" in out
    assert "sm_90" in out and "regs" in out
    assert cli.main(["kernels", "--arch", "sm90"]) == 2
    assert cli.main(["kernels", "--backend", "torch"]) == 2


def test_kernels_command_fails_on_a_compile_error(monkeypatch, capsys):
    monkeypatch.setattr(cupy_scan, "source", lambda: "this is not CUDA")
    assert cli.main(["kernels", "--arch", "sm_80", "--backend", "cupy"]) == 1
    assert "compile failed" in capsys.readouterr().err


@pytest.mark.parametrize("shape,strides,want", [
    # (C0, C1, C2, T), x strides -> (chans, lanes, chan_fast, time tiles)
    ((1, 1, 1, 2**27), (0, 0, 0, 1), (1, 256, False, 2**16)),      # one long channel: many time tiles
    ((1, 1, 2**16, 2**10), (0, 0, 2**10, 1), (2, 128, False, 1)),  # many short channels: no look-back
    ((1, 1, 2**16, 2**10), (0, 0, 1, 2**16), (16, 16, True, 8)),   # channel-contiguous: 16 side by side
    ((1, 1, 4, 2**22), (0, 0, 1, 4), (4, 64, True, 2**13)),
    ((8, 1, 1536, 128), (1536 * 128, 0, 128, 1), (16, 16, False, 1)),  # accelerated-scan's shapes
    ((1, 1, 3, 5), (0, 0, 5, 1), (4, 1, False, 1)),
])
def test_plan_launch(shape, strides, want):
    lc = launch.plan_launch(shape, strides)
    assert (lc.chans, lc.lanes, lc.chan_fast, lc.time_tiles) == want
    assert lc.threads == lc.chans * lc.lanes <= launch.THREADS


def test_plan_launch_covers_every_channel_and_step():
    rng = np.random.default_rng(0)
    for _ in range(300):
        shape = tuple(int(v) for v in rng.integers(1, 6, 3)) + (int(rng.integers(0, 5000)),)
        chan_fast = bool(rng.integers(0, 2))
        strides = (0, 0, 1, shape[2]) if chan_fast else (0, 0, shape[3], 1)
        lc = launch.plan_launch(shape, strides, threads=int(2 ** rng.integers(0, 9)), items=int(rng.integers(1, 9)))
        assert lc.chan_groups * lc.chans >= shape[0] * shape[1] * shape[2]
        assert lc.time_tiles * lc.tile_steps >= shape[3]
        assert lc.lanes & (lc.lanes - 1) == 0 and lc.threads <= 256
        assert lc.status_entries == (0 if lc.time_tiles == 1 else lc.chan_groups * lc.chans * lc.time_tiles)


def test_steps_per_thread_by_accumulator():
    assert launch.items_for(np.float32) == 8 and launch.items_for(np.complex64) == 8
    assert launch.items_for(np.complex128) == 4


@pytest.mark.parametrize("B,T,n,want", [
    (16, 2**20, 32, (32, 2**15)),    # 16 x 33 x 32 threads a chunk: 32 chunks for 2^19 threads in pass 1
    (16, 2**20, 2, (5462, 192)),     # small n: many short chunks
    (1, 2**20, 64, (127, 8257)),
    (1, 100, 64, (7, 16)),           # never shorter than MIN_STEPS
    (2, 16, 8, (1, 16)),             # one chunk: one sequential pass
    (4, 0, 3, (1, 0)),
])
def test_plan_chunks(B, T, n, want):
    from parscan.kernels import matrix_launch

    assert matrix_launch.plan_chunks(B, T, n) == want


def test_plan_chunks_covers_every_step_with_the_fewest_chunks():
    from parscan.kernels import matrix_launch

    rng = np.random.default_rng(1)
    for _ in range(500):
        B, T, n = int(rng.integers(1, 40)), int(rng.integers(1, 10**6)), int(rng.integers(1, 65))
        C, L = matrix_launch.plan_chunks(B, T, n)
        assert C * L >= T > (C - 1) * L
        assert C == 1 or L >= matrix_launch.MIN_STEPS
        assert matrix_launch.blocks_for(B * C * (n + 1), n, 256) * (256 // n) >= B * C * (n + 1)


def test_the_simulator_launch_settings_leave_real_launches_alone(monkeypatch):
    """PARSCAN_SIM_LAUNCH / PARSCAN_SIM_CHUNKS apply in Numba's CUDA simulator only (tests/sim)."""
    from parscan.kernels import matrix_launch

    monkeypatch.setenv(launch.SIM_LAUNCH, "32,4")
    monkeypatch.setenv(matrix_launch.SIM_CHUNKS, "32,256,2")
    assert launch.sim_sizes(launch.SIM_LAUNCH, ("threads", "items")) is None  # the simulator is off here
    assert matrix_launch.sizes() == (256, 1 << 19, 16)
    assert matrix_launch.plan_chunks(16, 2**20, 32) == (32, 2**15)


def test_the_sequential_gru_baseline_compiles():
    from numba import cuda, types as T

    from parscan import _baselines

    f32 = T.float32
    a2, a3 = T.Array(f32, 2, "C"), T.Array(f32, 3, "C")
    sig = (a3, a2, T.Array(f32, 1, "C"), a2, a3, T.int64, T.int64)
    ptx, _ = cuda.compile_ptx(_baselines._gru_kernel("float32").py_func, sig, cc=(9, 0))
    assert ".entry" in ptx and "bar.sync" in ptx
