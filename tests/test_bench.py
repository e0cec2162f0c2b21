"""The benchmark harness runs its CPU suites end to end (timings are recorded, never asserted), and the
roofline suite's code with NumPy standing in for CuPy and the cpu backend for a GPU backend."""

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest

from parscan import bench, cli
from parscan.bench import roofline


def test_cpu_and_latency_suites_write_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench.cpu, "_cpu_shapes", lambda quick: [(64, 2**12, "time-contiguous"),
                                                                 (64, 2**8, "channel-contiguous")])
    assert cli.main(["bench", "--quick", "--suite", "cpu,latency", "--out", str(tmp_path), "--repeats", "2"]) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = data["rows"]
    fwd = [r for r in rows if r["suite"] == "cpu" and r.get("direction") == "forward" and r["name"] == "cpu"]
    assert len(fwd) == 2 and all(r["ratio"] > 0 and r["ms"] > 0 for r in fwd)
    # the resets rows (issue #18: (T,) every 1,024 steps, timed in the same rounds as the plain scan)
    resets = [r for r in rows if r["suite"] == "cpu" and r["name"] == "cpu resets"]
    assert {(r["layout"], r["direction"]) for r in resets} == {(lay, d) for lay in ("time-contiguous",
                                                                                    "channel-contiguous")
                                                               for d in ("forward", "backward")}
    for r in resets:
        assert r["ratio_vs_plain"] > 0 and r["ms"] > 0 and r["plain_ms"] > 0 and r["resets"] == "(T,) every 1024"
        assert r["ratio_basis"] == bench.cpu.RESETS_BASIS and len(r["ratio_vs_plain_range"]) == 2
    assert {r["name"] for r in rows if r["suite"] == "latency"} >= {"cpu", "reference"}
    assert any(r["name"] == "scipy lfilter" for r in rows)
    assert (tmp_path / "bench.md").read_text().startswith("# parscan bench")
    assert (tmp_path / "bench-cpu.png").exists()
    out = capsys.readouterr().out
    assert "## cpu" in out and "## latency" in out


def test_gpu_suites_are_skipped_with_the_reason_here(tmp_path):
    if bench._backends.available_backends()["cupy"].available:
        pytest.skip("a GPU is present")
    meta, rows, skipped = bench.run(["paper", "deer-gpu"], quick=True, out=str(tmp_path), progress=False)
    assert rows == [] and "needs a CUDA device" in skipped["paper"] and "needs a CUDA device" in skipped["deer-gpu"]


def test_bad_suite_and_dtype():
    assert cli.main(["bench", "--suite", "bogus"]) == 2
    assert cli.main(["bench", "--dtype", "int8"]) == 2


def test_deer_suite_runs_and_matches_the_loop(tmp_path, monkeypatch):
    meta, rows, skipped = bench.run(["deer"], quick=True, out=str(tmp_path), progress=False)
    assert {r["name"] for r in rows} == {"deer", "quasi"}
    assert all(r["converged"] and r["max_error"] < 1e-8 and r["speedup"] > 0 for r in rows)


class _Event:
    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


class _NumpyAsCupy:
    """NumPy dressed as CuPy: the parts of ``cupy`` the roofline suite uses."""

    def __init__(self):
        self.cuda = SimpleNamespace(runtime=SimpleNamespace(getDeviceProperties=lambda i: {"l2CacheSize": 1 << 16}),
                                    Device=lambda *i: SimpleNamespace(id=0, synchronize=lambda: None), Event=_Event,
                                    get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3)

    def __getattr__(self, name):
        return getattr(np, name)

    asnumpy = staticmethod(np.asarray)


def test_roofline_suite_code_runs_on_a_stand_in(monkeypatch):
    """The roofline suite (GPU only) on NumPy arrays with the cpu backend, at small shapes: its plain
    rows and its resets rows (checked against the reference, then timed against the plain scan in the
    same rounds) come out whole, so the code does not rot between device sessions."""
    monkeypatch.setattr(roofline, "_roofline_shapes", lambda quick: [(16, 2**13, "time-contiguous"),
                                                                     (16, 2**13, "channel-contiguous"),
                                                                     (4, 2**13, "time-contiguous")])
    monkeypatch.setattr(roofline, "RESET_CHANNELS", 16)
    ctx = dict(cupy=_NumpyAsCupy(), quick=True, dtypes=("float32",), gpu_backends=["cpu"], repeats=2, copy=1e9,
               progress=bench.Progress(1, False))
    rows = roofline.suite_roofline(ctx)
    plain = [r for r in rows if r["name"] == "cpu"]
    resets = [r for r in rows if r["name"] == "cpu resets"]
    assert len(plain) == 6 and all(r["gbps"] > 0 and r["of_copy"] == pytest.approx(r["gbps"]) for r in plain)
    assert {(r["layout"], r["direction"]) for r in resets} == {(lay, d) for lay in ("time-contiguous",
                                                                                    "channel-contiguous")
                                                               for d in ("forward", "backward")}
    assert all(r["channels"] == 16 for r in resets)  # the RESET_CHANNELS shapes only
    for r in resets:
        assert r["ratio_vs_plain"] > 0 and r["plain_ms"] > 0 and r["ratio_basis"] == roofline.RESETS_BASIS
        assert r["resets"] == f"(T,) every {roofline.RESET_EVERY}" and r["gbps"] > 0


def test_roofline_resets_check_can_fail(monkeypatch):
    """The resets rows' correctness check catches a backend that ignores the resets."""
    real = roofline.linear_scan
    monkeypatch.setattr(roofline, "linear_scan", lambda *a, resets=None, **k: real(*a, **k))
    cp = _NumpyAsCupy()
    rng = np.random.default_rng(0)
    a, x = rng.uniform(0.5, 0.99, (4, 8192)).astype(np.float32), rng.standard_normal((4, 8192)).astype(np.float32)
    r = np.zeros(8192, bool)
    r[::1024] = True
    with pytest.raises(AssertionError, match="cpu with resets disagrees with the reference"):
        roofline._check_resets(cp, "cpu", a, x, r, -1, 1e-4)
