"""The command line: a working demo, --help, and exit code 2 with one line on bad input."""
import subprocess
import sys

import numpy as np
import pytest

import jaxem

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


def _blob_file(tmp_path, make_blobs, kind):
    x, _ = make_blobs(1, 120, 2, 2, separation=6.0)
    path = tmp_path / f"data.{kind}"
    if kind == "csv":
        np.savetxt(path, x, delimiter=",", header="a,b", comments="")
    elif kind == "npy":
        np.save(path, x)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1]}), path)
    return x, path


@pytest.mark.parametrize("kind", ["csv", "npy", "parquet"])
def test_fit_predict_info_round_trip(kind, tmp_path, make_blobs, capsys):
    x, data = _blob_file(tmp_path, make_blobs, kind)
    model, labels = tmp_path / "m.npz", tmp_path / "labels.csv"
    assert cli.main(["fit", str(data), "-k", "2", "--covariance", "diag", "--restarts", "2",
                     "--out", str(model), "--labels", str(labels)]) == 0
    text = capsys.readouterr().out
    assert "BIC" in text and "model saved" in text
    est = jaxem.load(model)
    expected = est.predict(x.astype(np.float32))
    np.testing.assert_array_equal(np.loadtxt(labels, skiprows=1), expected)
    assert cli.main(["predict", str(model), str(data), "--proba",
                     "--out", str(tmp_path / "p.csv")]) == 0
    np.testing.assert_allclose(np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1),
                               est.predict_proba(x.astype(np.float32)), atol=1e-6)
    assert cli.main(["info", str(model)]) == 0
    assert "GaussianMixture" in capsys.readouterr().out


def test_select_k_prints_the_table_and_fits_the_chosen_k(tmp_path, make_blobs, capsys):
    x, data = _blob_file(tmp_path, make_blobs, "npy")
    model = tmp_path / "m.npz"
    assert cli.main(["fit", str(data), "--select-k", "3", "--covariance", "diag",
                     "--restarts", "2", "--out", str(model)]) == 0
    text = capsys.readouterr().out
    assert "BIC" in text and "<- chosen" in text
    chosen = [line.split()[0] for line in text.splitlines() if "<- chosen" in line]
    assert jaxem.load(model).n_components_ == int(chosen[0])


def test_csv_without_header_reads_the_same(tmp_path, make_blobs):
    x, with_header = _blob_file(tmp_path, make_blobs, "csv")
    plain = tmp_path / "plain.csv"
    np.savetxt(plain, x, delimiter=",")
    np.testing.assert_allclose(cli.read_rows(str(plain)), cli.read_rows(str(with_header)))


@pytest.mark.parametrize("files,argv,words", [
    ({}, ["fit", "missing.csv", "-k", "2"], "no such file"),
    ({"e.csv": ""}, ["fit", "e.csv", "-k", "2"], "no data rows"),
    ({"h.csv": "a,b\n"}, ["fit", "h.csv", "-k", "2"], "no data rows"),
    ({"t.csv": "a,b\n1,x\n"}, ["fit", "t.csv", "-k", "1"], "could not convert"),
    ({"n.csv": "1,2\nnan,3\n"}, ["fit", "n.csv", "-k", "1"], "NaN"),
    ({"d.csv": "1,2\n3,4\n"}, ["fit", "d.csv", "-k", "3"], "more than the 2 rows"),
    ({"d.csv": "1,2\n3,4\n"}, ["fit", "d.csv", "-k", "0"], "must be at least 1"),
    ({"d.csv": "1,2\n"}, ["info", "d.csv"], "not a jaxem file"),
    ({"d.csv": "1,2\n"}, ["predict", "nomodel.npz", "d.csv"], "no such file"),
    ({}, ["fit", "--components"], "expected one argument"),
    ({"d.csv": "1,2\n"}, ["fit", "d.csv"], "one of the arguments"),
    ({"d.csv": "1,2\n3,4\n"}, ["fit", "d.csv", "-k", "2", "--select-k", "2"], "not allowed"),
])
def test_bad_files_and_arguments_exit_2_with_one_line(files, argv, words, tmp_path):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    proc = subprocess.run([sys.executable, "-m", "jaxem", *argv], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr


def test_predict_wrong_feature_count(tmp_path, make_blobs, capsys):
    _, data = _blob_file(tmp_path, make_blobs, "npy")
    model = tmp_path / "m.npz"
    assert cli.main(["fit", str(data), "-k", "2", "--model", "kmeans", "--out", str(model)]) == 0
    np.save(tmp_path / "three.npy", np.ones((4, 3)))
    assert cli.main(["predict", str(model), str(tmp_path / "three.npy")]) == 2
    assert "has 3 features; the model was fitted on 2" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["fit", "predict", "info"])
def test_subcommand_help(command):
    proc = subprocess.run([sys.executable, "-m", "jaxem", command, "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: jaxem " + command in proc.stdout
