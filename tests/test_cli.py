"""The ``parscan`` command: the demo runs, checks itself and reports; every user mistake and missing GPU
is one line on stderr and exit status 2, never a traceback; every option has help; long commands say
what they are doing."""

import argparse
import subprocess
import sys
import time
import types

import pytest

from parscan import _backends, cli


def test_demo_runs_checks_and_reports(capsys):
    assert cli.main(["demo", "--channels", "3", "--length", "9000", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    for word in ("3 channels x 9000 steps", "backend    cpu", "Gelem/s", "GB/s", "over the sequential loop",
                 "max error", "warm-up"):
        assert word in out


def test_demo_is_the_default_command(capsys):
    assert cli.main(["--channels", "2", "--length", "100", "--repeats", "1", "--dtype", "complex64"]) == 0
    assert "complex64" in capsys.readouterr().out


@pytest.mark.parametrize("dtype", cli.DTYPES)
def test_every_listed_dtype_works(capsys, dtype):
    assert cli.main(["demo", "--dtype", dtype, "--channels", "2", "--length", "3000", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{dtype}\n" in out and "max error" in out
    assert ("in float32" in out) == (dtype == "float16")  # the loop it is compared with says its dtype


BAD = [
    ("demo --backend foo", "parscan demo: argument --backend: invalid choice: 'foo'"),
    ("demo --repeats 0", "argument --repeats: must be >= 1, got 0"),
    ("demo --channels -1", "argument --channels: must be >= 1, got -1"),
    ("demo --length 0", "argument --length: must be >= 1, got 0"),
    ("demo --channels two", "argument --channels: expected an integer, got 'two'"),
    ("demo --dtype bfloat16", "argument --dtype: invalid choice"),
    ("frobnicate", "parscan: argument command: invalid choice: 'frobnicate'"),
    ("train --every 0", "parscan train: argument --every: must be >= 1"),
    ("train --lr 0", "argument --lr: must be > 0"),
    ("train --clip -1", "argument --clip: must be >= 0.0"),
    ("train --batch 0", "argument --batch: must be >= 1"),
    ("train --log /nonexistent-parscan-dir/log.json", "parscan train: --log /nonexistent-parscan-dir/log.json: "
                                                      "cannot write there"),
    ("bench --repeats 0", "parscan bench: argument --repeats: must be >= 1"),
    ("bench --dtype bfloat16", "parscan bench: unknown dtype(s) ['bfloat16']"),
    ("bench --suite nope", "parscan bench: unknown suite(s) ['nope']"),
    ("kernels --arch 80", "parscan kernels: --arch takes names like sm_80,sm_90, got '80'"),
    ("kernels --backend triton", "parscan kernels: --backend takes cupy and/or numba"),
    ("check --cases 0", "parscan check: --cases must be >= 1"),
    ("check --backend foo", "parscan check: --backend takes"),
    ("demo --channels 1099511627776 --length 1048576", "parscan demo: array is too big"),
]


@pytest.mark.parametrize("argv,reason", BAD, ids=[a for a, _ in BAD])
def test_a_mistake_is_one_line_and_exit_2(capsys, argv, reason):
    assert cli.main(argv.split()) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("parscan") and reason in err, err
    assert "Traceback" not in out + err


def test_out_of_memory_is_one_line_and_exit_2(capsys, monkeypatch):
    from parscan import demo

    def run(**kw):
        raise MemoryError("Unable to allocate 8.00 TiB")

    monkeypatch.setattr(demo, "run", run)
    assert cli.main(["demo"]) == 2
    assert capsys.readouterr().err == ("parscan demo: out of memory (MemoryError: Unable to allocate 8.00 TiB); "
                                       "try smaller sizes\n")


def _no_gpu(monkeypatch):
    """Every CUDA backend unavailable, as on a machine without a GPU (whatever this one has)."""
    real = _backends.status

    def status(name):
        st = real(name)
        return _backends.BackendStatus(name, "cuda", False, _backends.NO_DRIVER) if st.device == "cuda" else st

    monkeypatch.setattr(_backends, "status", status)


@pytest.mark.parametrize("argv,what", [("demo --backend cupy", "backend 'cupy' is not available here"),
                                       ("demo --backend numba", "backend 'numba' is not available here"),
                                       ("train --device gpu", "--device gpu (the cupy backend) is not available here"),
                                       ("check --backend cupy", "backend 'cupy' cannot run here")])
def test_a_missing_gpu_is_one_line_and_exit_2(capsys, monkeypatch, argv, what):
    _no_gpu(monkeypatch)
    assert cli.main(argv.split()) == 2
    err = capsys.readouterr().err
    assert err == f"parscan {argv.split()[0]}: {what}: {_backends.NO_DRIVER}\n"


def test_backends_say_no_gpu_or_driver_when_there_is_none(capsys, monkeypatch):
    def no_device():
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version")

    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device)))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(_backends, "_driver_loads", lambda: False)
    assert _backends._cuda_reason() == _backends.NO_DRIVER == ("no CUDA GPU or driver found (the NVIDIA driver's "
                                                               "library, libcuda, is not installed)")
    monkeypatch.setattr(_backends, "_driver_loads", lambda: True)  # a driver, older than the runtime
    assert _backends._cuda_reason().startswith("the NVIDIA driver is older than CuPy's CUDA runtime")
    cupy.cuda.runtime.getDeviceCount = lambda: 0
    assert _backends._cuda_reason() == "no CUDA GPU found (the NVIDIA driver is installed but reports no device)"
    monkeypatch.undo()
    assert cli.main(["backends"]) == 0
    out = capsys.readouterr().out
    if not _backends._driver_loads():  # this machine has no driver: the listing says so, in those words
        assert out.count(_backends.NO_DRIVER) == 2 and "insufficient" not in out


def test_every_option_has_help():
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subs.choices) == {"demo", "backends", "kernels", "bench", "check", "train"}
    for name, sub in subs.choices.items():
        for action in sub._actions:
            assert action.help, f"parscan {name} {action.option_strings} has no help text"
    assert all(c.help for c in subs._choices_actions)


def test_kernels_says_what_it_compiles_as_it_goes(capsys, monkeypatch):
    from parscan.kernels import report

    seen = []

    def fake(backend):
        def rows(arch):
            seen.append(capsys.readouterr().err)  # what was on stderr when this compile started
            if (arch, backend) == ("sm_90", "numba"):
                time.sleep(0.35)  # a long compile: the heartbeat speaks
            return [report.Row(backend, f"k{i}", arch, 32, 0, 0, 0, 0) for i in range(2)]
        return rows

    monkeypatch.setattr(report, "cuda_rows", fake("cupy"))
    monkeypatch.setattr(report, "numba_rows", fake("numba"))
    monkeypatch.setattr(cli, "HEARTBEAT_S", 0.1)
    assert cli.main(["kernels", "--arch", "sm_80,sm_90"]) == 0
    assert len(seen) == 4
    for text, (arch, b) in zip(seen, [(a, b) for a in ("sm_80", "sm_90") for b in ("cupy", "numba")]):
        assert f"parscan kernels: compiling {cli._kernel_count(b)} {b} kernels for {arch} ...\n" in text
    out = capsys.readouterr()
    assert "8 kernels compiled for sm_80, sm_90" in out.out and "2 numba kernels for sm_90 compiled in" in out.err
    assert "parscan kernels: still compiling the numba kernels for sm_90 (0 s)" in out.err
    assert "still compiling the cupy" not in seen[3] + out.err  # only while a step runs


def test_kernels_without_the_compilers_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings.nvjitlink", None)  # its import now fails
    assert cli.main(["kernels", "--backend", "numba"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("parscan kernels: compiling the numba kernels needs cuda.bindings.nvjitlink") and \
        err.count("\n") == 1


def test_module_entry_point_lists_backends_and_exits_2_on_a_mistake():
    res = subprocess.run([sys.executable, "-m", "parscan", "backends"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "cpu (host): available" in res.stdout and "cupy (cuda)" in res.stdout
    res = subprocess.run([sys.executable, "-m", "parscan", "demo", "--length", "0"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and res.stdout == "" and res.stderr.count("\n") == 1, res.stderr


def test_train_says_what_it_does_from_the_first_step(tmp_path, capsys):
    rc = cli.main(["train", "--length", "8", "--hidden", "4", "--layers", "1", "--batch", "2", "--max-steps", "2",
                   "--every", "100", "--log", str(tmp_path / "log.json")])
    assert rc in (0, 1)
    out = capsys.readouterr().out
    assert out.startswith("sign task: T = 8, 1 x 4 GILR-LSTM, batch 2") and "step 1/2" in out
