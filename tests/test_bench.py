"""The benchmark harness runs its CPU suites end to end (timings are recorded, never asserted)."""

import json

import pytest

from parscan import bench, cli


def test_cpu_and_latency_suites_write_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench.cpu, "_cpu_shapes", lambda quick: [(4, 2**12, "time-contiguous"),
                                                                 (64, 2**8, "channel-contiguous")])
    assert cli.main(["bench", "--quick", "--suite", "cpu,latency", "--out", str(tmp_path), "--repeats", "2"]) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = data["rows"]
    fwd = [r for r in rows if r["suite"] == "cpu" and r.get("direction") == "forward" and r["name"] == "cpu"]
    assert len(fwd) == 2 and all(r["ratio"] > 0 and r["ms"] > 0 for r in fwd)
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
