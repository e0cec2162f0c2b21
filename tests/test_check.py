"""``parscan check``: the CPU run from the command line, that it can fail, and its GPU path (device arrays,
device info, roofline) with NumPy standing in for CuPy and the cpu backend for a GPU backend."""

import json
import math
import time
from types import SimpleNamespace

import numpy as np
import pytest

import parscan
from parscan import check, cli

HAS_GPU = parscan.available_backends()["cupy"].available
# a small, varied run: float64 only (one cpu-kernel specialization to compile), seed 0 draws every op,
# every out= mode and every layout
SMALL = ["--quick", "--cases", "12", "--dtype", "float64", "--seed", "0", "--no-progress"]


def _report(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.skipif(HAS_GPU, reason="this machine has a CUDA device: the check takes the GPU path")
def test_cli_without_a_gpu_says_so_checks_the_cpu_backend_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert cli.main(["check", *SMALL, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "no CUDA device" in text and "checking the cpu backend only" in text and "GPU backends: cupy:" in text
    assert "all 12 checks passed" in text and f"wrote {out}" in text
    rep = _report(out)
    assert rep["passed"] and rep["exit_code"] == 0 and rep["gpu"] is None and rep["roofline"] == []
    assert rep["backends_checked"] == ["cpu"] and rep["summary"]["cpu"]["passed"] == 12
    assert not rep["environment"]["backends"]["cupy"]["available"] and rep["environment"]["backends"]["cupy"]["reason"]
    for key in ("parscan", "python", "numpy", "numba", "platform", "cpus"):
        assert rep["environment"][key]
    # the cases were really compared: every output has an error, and the cases span the ops and layouts
    assert len(rep["results"]) == len(rep["cases"]) == 12
    assert all(r["status"] == "pass" and r["max_scaled_error"] for r in rep["results"])
    assert {c["op"] for c in rep["cases"]} == {"forward", "backward", "matrix-forward", "matrix-backward"}
    assert {"strided", "negative"} <= {c["layout"] for c in rep["cases"]}
    assert max(math.prod(c["shape"]) for c in rep["cases"]) > 10_000


def test_bad_usage_exits_2(tmp_path, capsys):
    out = str(tmp_path / "r.json")
    assert cli.main(["check", "--backend", "bogus", "--out", out]) == 2
    assert cli.main(["check", "--cases", "0", "--out", out]) == 2
    assert cli.main(["check", "--dtype", "int8", "--out", out]) == 2
    if not HAS_GPU:
        assert cli.main(["check", "--backend", "cupy", "--out", out]) == 2
        assert "cannot run here" in capsys.readouterr().err


def test_a_corrupted_result_is_caught_and_exits_1(tmp_path, monkeypatch, capsys):
    from parscan import _plans, cpu

    real = cpu.forward_launcher

    def corrupt(problem):  # the cpu backend's forward (first and replayed calls alike), then one element off
        run = real(problem)

        def bad(a, x, h0, out, resets=None):
            run(a, x, h0, out, resets)
            out[problem.out.off] += 1
        return bad

    monkeypatch.setattr(cpu, "forward_launcher", corrupt)
    monkeypatch.setattr(_plans, "FORWARD", _plans.LRU())  # plans made before hold the real launcher
    out = tmp_path / "report.json"
    assert cli.main(["check", *SMALL, "--backend", "cpu", "--out", str(out)]) == 1
    assert "FAILED" in capsys.readouterr().out
    rep = _report(out)
    assert not rep["passed"] and rep["exit_code"] == 1
    bad = {m["case"] for m in rep["mismatches"]}
    forward = {c["id"] for c in rep["cases"] if c["op"] == "forward" and math.prod(c["shape"])}
    assert forward and forward <= bad  # every non-empty elementwise forward case is caught
    assert all(c["op"] != "backward" for c in rep["cases"] if c["id"] in bad)
    m = next(m for m in rep["mismatches"] if m["op"] == "forward")
    assert m["problem"].startswith("h: scaled error") and m["backend"] == "cpu" and m["tolerance"] > 0
    assert rep["summary"]["cpu"]["mismatches"] == len(bad)


def test_modified_inputs_are_caught(monkeypatch):
    real_b = check.linear_scan_backward

    def scribble_on_grad_h(a, h, grad_h, *args, **kw):
        res = real_b(a, h, grad_h, *args, **kw)
        grad_h[0, 0] += 1
        return res

    c = check.Case(0, "backward", "float64", (3, 50), 1, "time-contiguous", "full", "none", False, "none",
                   "fast", "small", 0)
    monkeypatch.setattr(check, "linear_scan_backward", scribble_on_grad_h)
    r = check.run_case(c, check.Target("cpu", np, False))
    assert r["status"] == "mismatch" and r["problems"] == ["input grad_h was modified"]


def _span(v):
    """Byte addresses of the lowest element of ``v`` and one past its highest."""
    lo = v.__array_interface__["data"][0]
    ext = [(n - 1) * s for n, s in zip(v.shape, v.strides)]
    return lo + sum(e for e in ext if e < 0), lo + sum(e for e in ext if e > 0) + v.itemsize


def _write_outside(out, where):
    """Write 7 into the memory next to ``out``: the element just ``below`` its lowest address, just
    ``above`` its highest, or in the ``gap`` after its lowest one; only where the array that owns out's
    memory has that element (no write out of an allocation).  Whether it wrote."""
    root = out
    while isinstance(root.base, np.ndarray):
        root = root.base
    flat = root.reshape(-1)  # the owners check.py makes are contiguous
    assert np.shares_memory(flat, root)
    (lo, hi), r0 = _span(out), _span(root)[0]
    i = {"below": (lo - r0) // out.itemsize - 1, "above": (hi - r0) // out.itemsize,
         "gap": (lo - r0) // out.itemsize + 1}[where]
    if not 0 <= i < flat.size:
        return False
    flat[i] = 7
    return True


@pytest.mark.parametrize("out", ["new", "x"])
@pytest.mark.parametrize("where,layout", [(w, lay) for lay in check.LAYOUTS for w in ("below", "above")]
                         + [("gap", "strided")])
def test_a_write_outside_out_is_caught_in_every_layout(monkeypatch, where, layout, out):
    """A scan that writes one element next to its result (below or above its memory, or into a strided
    layout's gap) fails the case, whatever the layout of out= (a new array or x itself)."""
    real, wrote = check.linear_scan, []

    def spill(*args, out=None, **kw):
        h = real(*args, out=out, **kw)
        wrote.append(_write_outside(h, where))
        return h

    monkeypatch.setattr(check, "linear_scan", spill)
    shape = (50, 3) if layout == "channel-contiguous" else (3, 50)
    axis = 0 if layout == "channel-contiguous" else 1
    c = check.Case(1, "forward", "float64", shape, axis, layout, "full", "none", False, out, "fast", "small", 0)
    r = check.run_case(c, check.Target("cpu", np, False))
    assert wrote == [True], "no memory next to out= to write into: the check cannot see such a write"
    assert r["status"] == "mismatch" and len(r["problems"]) == 1 and r["problems"][0].startswith("out: written outside")
    monkeypatch.setattr(check, "linear_scan", real)
    assert check.run_case(c, check.Target("cpu", np, False))["status"] == "pass"  # and without the plant, not


def test_cases_cover_every_combination_and_follow_the_seed():
    cases = check.make_cases(seed=3)
    combos = {(c.op, c.dtype, c.layout) for c in cases if not c.op.startswith("matrix")}
    assert combos == {(o, d, l) for o in check.OPS for d in check.DTYPES for l in check.LAYOUTS}
    assert {c.shape[-1] for c in cases if c.op.startswith("matrix")} >= set(check.MATRIX_NS)
    assert check.make_cases(seed=3) == cases and check.make_cases(seed=4) != cases
    more = check.make_cases(seed=3, count=len(cases) + 20)
    assert len(more) == len(cases) + 20
    gpu = check.make_cases(seed=3, profile="gpu")
    assert max(math.prod(c.shape) for c in gpu) > 10 * max(math.prod(c.shape) for c in cases)
    for c in cases:  # shapes match the layout: time last when time-contiguous, channels last otherwise
        if c.layout == "time-contiguous":
            assert c.axis == len(c.shape) - 1
        elif c.layout == "channel-contiguous":
            assert c.axis == len(c.shape) - 2


class _Event:
    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


class FakeCupy:
    """NumPy dressed as CuPy: the parts of ``cupy`` and ``cupy.cuda`` that the check's GPU path uses."""

    __version__ = "0.0-numpy"
    ndarray = np.ndarray

    def __init__(self):
        props = dict(name=b"NumPy Stand-in", major=9, minor=0, multiProcessorCount=2, l2CacheSize=1 << 20)
        runtime = SimpleNamespace(getDeviceProperties=lambda i: props, memGetInfo=lambda: (8 << 30, 16 << 30),
                                  getDeviceCount=lambda: 1, driverGetVersion=lambda: 13000,
                                  runtimeGetVersion=lambda: 13010)
        self.cuda = SimpleNamespace(runtime=runtime, Event=_Event, nvrtc=SimpleNamespace(getVersion=lambda: (13, 1)),
                                    get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3,
                                    Device=lambda *i: SimpleNamespace(id=0, synchronize=lambda: None))
        self.freed = 0

    def __getattr__(self, name):
        return getattr(np, name)

    asnumpy = staticmethod(np.asarray)

    def get_default_memory_pool(self):
        return SimpleNamespace(free_all_blocks=lambda: setattr(self, "freed", self.freed + 1))


def test_gpu_path_runs_with_numpy_standing_in_for_cupy(tmp_path, monkeypatch):
    fake = FakeCupy()
    monkeypatch.setitem(check.SIZES, "gpu", check.SIZES["cpu"])  # the GPU code path at host sizes
    monkeypatch.setattr(check, "ROOFLINE_LOG2", {False: 14, True: 14})
    monkeypatch.setattr(check, "copy_bandwidth", lambda cp, repeats: 1e9)
    lines, out = [], tmp_path / "gpu.json"
    rep = check.run(seed=0, count=12, quick=True, out=str(out), progress=False, echo=lines.append,
                    targets=[check.Target("cpu", fake, True)], cupy=fake, dtypes=("float64",))
    assert rep["exit_code"] == 0, rep["mismatches"]
    assert lines[0].startswith("parscan check: NumPy Stand-in (compute capability 9.0")
    g = _report(out)["gpu"]
    assert g["name"] == "NumPy Stand-in" and g["driver_cuda_version"] == "13.0" and g["cuda_runtime_version"] == "13.1"
    assert g["nvrtc_version"] == "13.1" and g["memory_gib"] == 16 and g["cupy"] == "0.0-numpy"
    assert all(r["status"] == "pass" and r["max_scaled_error"] for r in rep["results"]) and len(rep["results"]) == 12
    rows = rep["roofline"]
    assert {(r["direction"], r["layout"]) for r in rows} == {(d, l) for d in ("forward", "backward")
                                                             for l in ("time-contiguous", "channel-contiguous")}
    for r in rows:
        assert r["checked"] and r["shape"] in ([64, 256], [256, 64]) and r["gbps"] > 0
        assert r["of_copy"] == pytest.approx(r["gbps"] / 1.0)  # copy bandwidth 1 GB/s here
    assert fake.freed >= 1 and any("roofline" in s for s in lines)


def test_gpu_path_reports_a_roofline_mismatch(tmp_path, monkeypatch):
    fake = FakeCupy()
    monkeypatch.setitem(check.SIZES, "gpu", check.SIZES["cpu"])
    monkeypatch.setattr(check, "ROOFLINE_LOG2", {False: 14, True: 14})
    monkeypatch.setattr(check, "copy_bandwidth", lambda cp, repeats: 1e9)
    real = check.linear_scan

    def off_on_long_rows(a, x, *args, **kw):  # right on the small cases, wrong on the roofline's rows
        h = real(a, x, *args, **kw)
        if x.size == 1 << 14:
            h[(slice(None),) * h.ndim] *= 1.01
        return h

    monkeypatch.setattr(check, "linear_scan", off_on_long_rows)
    rep = check.run(seed=0, count=2, quick=True, out=str(tmp_path / "r.json"), progress=False, echo=lambda s: None,
                    targets=[check.Target("cpu", fake, True)], cupy=fake, dtypes=("float64",))
    assert rep["exit_code"] == 1
    assert any(m["case"] == "roofline" and "forward" in m["problem"] for m in rep["mismatches"])


def test_a_stalled_run_writes_the_report_and_exits(tmp_path, monkeypatch):
    real = check.run_case
    exits = []
    out = tmp_path / "r.json"

    def slow(case, target):  # a case that hangs (as a kernel that never returns would)
        time.sleep(0.4)
        return real(case, target)

    monkeypatch.setattr(check, "run_case", slow)
    check.run(backends=["cpu"], seed=0, count=3, quick=True, out=str(out), progress=False, echo=lambda s: None,
              dtypes=("float64",), stall_s=0.1, _exit=lambda code: exits.append((code, _report(out))))
    assert exits and exits[0][0] == 1
    rep = exits[0][1]
    assert rep["exit_code"] == 1 and rep["aborted"].startswith("no progress for") and "cpu #" in rep["aborted"]
