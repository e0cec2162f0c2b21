"""The ``parscan`` command: the demo runs, checks itself and reports; subcommands parse."""

import subprocess
import sys

from parscan import cli


def test_demo_runs_checks_and_reports(capsys):
    assert cli.main(["demo", "--channels", "3", "--length", "9000", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    for word in ("3 channels x 9000 steps", "backend    cpu", "Gelem/s", "GB/s", "over the sequential loop",
                 "max error"):
        assert word in out


def test_demo_is_the_default_command(capsys):
    assert cli.main(["--channels", "2", "--length", "100", "--repeats", "1", "--dtype", "complex64"]) == 0
    assert "complex64" in capsys.readouterr().out


def test_module_entry_point_lists_backends():
    res = subprocess.run([sys.executable, "-m", "parscan", "backends"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "cpu (host): available" in res.stdout and "cupy (cuda)" in res.stdout
