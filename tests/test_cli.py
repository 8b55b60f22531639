"""The command line: a working demo, --help, and exit code 2 with one line on bad input."""
import subprocess
import sys

import pytest

from jaxem import cli


def test_demo_prints_fit_and_writes_figure(tmp_path, capsys):
    out = tmp_path / "fit.png"
    assert cli.main(["demo", "--n-init", "8", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "8 restarts" in text and "component 1" in text and "compile time excluded" in text
    assert "EM versus gradient ascent" in text and "lbfgs" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv", [["demo", "--n-init", "0"], ["demo", "--covariance-type", "x"],
                                  ["nonsense"]])
def test_bad_input_exits_2_with_one_line(argv):
    proc = subprocess.run([sys.executable, "-m", "jaxem.cli", *argv], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "error" in proc.stderr


def test_help():
    proc = subprocess.run([sys.executable, "-m", "jaxem", "demo", "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "--n-init" in proc.stdout
