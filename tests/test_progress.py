"""The daily workflow: a progress bar on long fits, row buckets and the persistent
compilation cache, so that a second fit compiles nothing.

A fit with ``progress=True`` runs the same compiled programs as one without, in blocks
of iterations; the results must be identical bit for bit. The ``every_iteration``
fixture makes every block one iteration long: the most block boundaries, with restarts
stopping (and freezing) between them.
"""
import contextlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxem
from jaxem import batch, cli, progress
from jaxem.families.hmm import hmm, pad_sequences
from jaxem.progress import shown


def _same(a, b):
    """Every leaf of two results equal, bit for bit (NaN padding included)."""
    for (path, u), v in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == v.dtype and u.shape == v.shape, jax.tree_util.keystr(path)
        assert np.array_equal(u, v, equal_nan=True), jax.tree_util.keystr(path)


@pytest.fixture
def every_iteration(monkeypatch):
    """Blocks of one iteration each (the time aim of a block is 0 s)."""
    monkeypatch.setattr(progress, "BLOCK_SECONDS", 0.0)


@pytest.fixture
def bars(monkeypatch):
    """Every bar the fits make, kept for inspection."""
    made, make = [], progress.make_bar

    def spy(total, desc="EM"):
        made.append(make(total, desc))
        return made[-1]

    monkeypatch.setattr(progress, "make_bar", spy)
    return made


def _case(name, dtype, make_blobs):
    """A family, data whose rows are not a bucket size (so they are padded), and fit
    arguments for which the restarts stop at different iterations."""
    x, _ = make_blobs(3, 170, 2, 3, separation=3.0)
    x = (x + 5.0).astype(dtype)  # off the origin: the fit centres the data
    kw = dict(n_components=3, n_init=4, key=jax.random.key(2), max_iter=40, tol=1e-4)
    if name == "gaussian":
        return jaxem.gaussian("full"), x[:90], {**kw, "init": "random"}
    if name == "kmeans":
        return jaxem.kmeans(), x[:90], {**kw, "init": "random_from_data"}
    xp, w = pad_sequences(x[:134], [10] * 8 + [6] * 9)  # 17 sequences: padded to 18
    return (hmm("gaussian", covariance_type="diag", seq_len=10), xp.astype(dtype),
            {**kw, "weights": w, "n_components": 2, "init": "random"})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["gaussian", "kmeans", "hmm"])
def test_results_identical_with_and_without_progress(name, dtype, make_blobs,
                                                     every_iteration, bars):
    with jax.enable_x64(dtype == np.float64):
        family, x, kw = _case(name, dtype, make_blobs)
        plain = jaxem.fit(family, x, progress=False, **kw)
        assert not bars
        with_bar = jaxem.fit(family, x, progress=True, **kw)
    _same(plain, with_bar)
    n_iter = np.asarray(plain.restarts.n_iter)
    assert len(set(n_iter.tolist())) > 1  # restarts froze at different block boundaries
    (bar,) = bars
    assert bar.total == kw["max_iter"] and bar.n == n_iter.max()  # the iterations run
    assert "finished 4/4" in str(bar.postfix)


def test_identical_for_data_sets_labels_and_timed_blocks(make_blobs, bars):
    x = np.stack([make_blobs(s, 70, 2, 2)[0] for s in (4, 5)]).astype(np.float32)
    labels = np.full((2, 70), -1)
    labels[:, :5] = 1
    w = np.ones((2, 70))
    w[1, 60:] = 0  # a ragged second data set
    kw = dict(n_components=2, n_init=3, key=jax.random.key(0), max_iter=30, weights=w,
              labels=labels)
    plain = jaxem.fit(jaxem.gaussian("diag"), x, **kw)  # progress=None: off by default
    assert not bars
    with shown():  # what the CLI and GaussianMixture(verbose=1) do
        with_bar = jaxem.fit(jaxem.gaussian("diag"), x, **kw)
    _same(plain, with_bar)
    assert bars[0].n == np.max(plain.restarts.n_iter)
    assert "finished 6/6" in str(bars[0].postfix) and "mean of 2 sets" in str(bars[0].postfix)


def test_resume_in_blocks_equals_run():
    family = jaxem.gaussian("diag")
    x = jax.numpy.asarray(jaxem.datasets.load_faithful())
    p0 = jaxem.initialize(family, jax.random.key(0), x, jax.numpy.ones(len(x)), 3)
    once = jaxem.em.run(family, p0, x, max_iter=25, tol=1e-6)
    state = jaxem.em.start(p0, 25)
    for n_steps in (1, 3, 0, 7, 100):
        state = jaxem.em.resume(family, state, x, n_steps=n_steps, tol=1e-6)
    _same(once, state)


def test_verbose_gaussian_mixture_shows_a_bar(bars, capsys):
    x = jaxem.datasets.load_faithful()
    gm = jaxem.GaussianMixture(2, n_init=2, random_state=0, verbose=1).fit(x)
    assert len(bars) == 1 and bars[0].n == np.max(gm.restarts_.n_iter)
    assert "Initialization converged" in capsys.readouterr().out  # scikit-learn's lines too


def test_missing_tqdm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    assert not progress.available()
    with pytest.raises(ImportError, match=r"pip install 'jaxem\[progress\]'"):
        jaxem.fit(jaxem.kmeans(), np.eye(3), n_components=2, key=jax.random.key(0),
                  progress=True)


@pytest.mark.parametrize("flag", [[], ["--no-progress"]])
def test_cli_fit_with_and_without_progress(flag, tmp_path, make_blobs, capsys):
    data = tmp_path / "x.csv"
    np.savetxt(data, make_blobs(1, 150, 2, 2)[0], delimiter=",")
    assert cli.main(["fit", str(data), "-k", "2", "--restarts", "2", "--out",
                     str(tmp_path / "m.npz"), *flag]) == 0
    err = capsys.readouterr().err
    assert ("finished 2/2" in err) == (not flag)


# -- row buckets --------------------------------------------------------------------------
def test_bucket_rows():
    sizes = [batch.bucket_rows(n) for n in range(1, 5000)]
    assert all(s >= n for n, s in enumerate(sizes, 1)) and sizes == sorted(sizes)
    assert all(s <= 1.125 * n for n, s in enumerate(sizes, 1))
    assert len(set(s for s in sizes if 1024 < s <= 2048)) == 8  # 1/8-octave steps
    assert batch.bucket_rows(101, unit=20) == 120  # whole sequences of an HMM
    assert sizes[: batch.BUCKET_FROM] == list(range(1, batch.BUCKET_FROM + 1))  # small: exact


@contextlib.contextmanager
def _compiles():
    """The names of the programs XLA compiles inside the block."""
    names = []

    def listen(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(kw.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def test_a_second_fit_in_the_same_bucket_compiles_nothing(make_blobs, monkeypatch):
    monkeypatch.setattr(batch, "BUCKET_FROM", 0)  # buckets for small data too: fast to test
    x = make_blobs(6, 300, 2, 3)[0].astype(np.float32)
    kw = dict(n_components=3, n_init=2, max_iter=10)
    assert batch.bucket_rows(290) == batch.bucket_rows(300) == batch.bucket_rows(297)
    jaxem.fit(jaxem.gaussian("diag"), x[:290], key=jax.random.key(0), **kw)
    with _compiles() as names:
        jaxem.fit(jaxem.gaussian("diag"), x[:300], key=jax.random.key(1), **kw)
        jaxem.fit(jaxem.gaussian("diag"), x[3:], weights=np.ones(297, np.float32),
                  key=jax.random.key(1), tol=1e-2, **kw)
    assert names == []
    with _compiles() as names:  # the listener does hear compilations
        jaxem.fit(jaxem.gaussian("diag"), x[:200], key=jax.random.key(0), **kw)
    assert "jit(_fit_block)" in names


@pytest.mark.parametrize("name", ["gaussian", "kmeans", "hmm"])
def test_padding_to_the_bucket_changes_no_result(name, make_blobs, monkeypatch):
    monkeypatch.setattr(batch, "BUCKET_FROM", 0)
    with jax.enable_x64(True):
        family, x, kw = _case(name, np.float64, make_blobs)
        assert batch.bucket_rows(len(x), getattr(family, "seq_len", 1)) > len(x)
        padded = jaxem.fit(family, x, **kw)
        monkeypatch.setattr(batch, "_pad_rows", lambda family, *rows: (*rows, None))
        exact = jaxem.fit(family, x, **kw)
    for field in ("n_iter", "converged", "best"):
        np.testing.assert_array_equal(getattr(padded, field), getattr(exact, field))
    np.testing.assert_array_equal(padded.restarts.n_iter, exact.restarts.n_iter)
    for a, b in zip(jax.tree.leaves(padded), jax.tree.leaves(exact)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_rows_padded_on_their_way_to_the_device(make_blobs, monkeypatch):
    """NumPy rows larger than a transfer block are padded block by block on the device
    (no host copy): the same array as np.pad, the same fit, and no new compilation for
    another size in the same bucket."""
    x = np.random.default_rng(0).normal(size=(2, 300, 3)).astype(np.float32)
    monkeypatch.setattr(batch, "PUT_ROWS", 64)  # 300 rows: 4 blocks and one overlapping
    for n_rows in (300, 352):
        np.testing.assert_array_equal(batch.to_device(x, n_rows),
                                      np.pad(x, [(0, 0), (0, n_rows - 300), (0, 0)]))
    monkeypatch.setattr(batch, "BUCKET_FROM", 0)
    xs, _ = make_blobs(3, 300, 2, 3)
    xs = xs.astype(np.float32)
    kw = dict(n_components=3, key=jax.random.key(0), n_init=2)
    blocks = jaxem.fit(jaxem.gaussian("full"), xs, **kw)
    with _compiles() as names:
        jaxem.fit(jaxem.gaussian("full"), xs[:297], **kw)
    assert not names, names
    monkeypatch.setattr(batch, "PUT_ROWS", 2**16)  # one host copy, padded by np.pad
    whole = jaxem.fit(jaxem.gaussian("full"), xs, **kw)
    for a, b in zip(jax.tree.leaves(blocks), jax.tree.leaves(whole)):
        np.testing.assert_array_equal(a, b)


# -- the persistent compilation cache ------------------------------------------------------
_FIT_AND_REPORT = """
import json, logging, re, sys
seen = {"hit": [], "miss": []}

class Listen(logging.Handler):
    def emit(self, record):
        m = re.search(r"(cache hit|CACHE MISS) for '([^']*)'", record.getMessage())
        if m:
            seen["hit" if m.group(1) == "cache hit" else "miss"].append(m.group(2))

log = logging.getLogger("jax._src.compiler")
log.setLevel(logging.DEBUG)
log.addHandler(Listen())
import jax, jaxem, numpy as np
x = np.random.default_rng(0).normal(size=(int(sys.argv[1]), 2)).astype(np.float32)
jaxem.fit(jaxem.gaussian("diag"), x, n_components=2, key=jax.random.key(0), max_iter=5)
print(json.dumps({"dir": jax.config.jax_compilation_cache_dir, **seen}))
"""


_CACHE_VARIABLES = ("JAXEM_NO_CACHE", "JAXEM_CACHE_DIR", "XDG_CACHE_HOME",
                    "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")


def _python(code, *args, **env):
    """Run ``code`` in a fresh Python with the cache settings ``env`` (and no others);
    return the JSON its last line prints."""
    run_env = {k: v for k, v in os.environ.items() if k not in _CACHE_VARIABLES}
    run_env.update(env)
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=run_env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_fresh_process_reads_the_fit_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    # Every program cached, however fast it compiled: the test does not depend on how
    # busy the machine is (jaxem's own threshold is _cache.MIN_COMPILE_SECONDS).
    env = dict(JAXEM_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    assert batch.bucket_rows(1500) == batch.bucket_rows(1530) > 1530
    first = _python(_FIT_AND_REPORT, 1500, **env)
    assert first["dir"] == str(cache) and "jit__fit_block" in first["miss"]
    second = _python(_FIT_AND_REPORT, 1530, **env)  # another size in the same bucket
    fit_programs = {"jit__fit_start", "jit__fit_block", "jit__fit_finish"}
    assert fit_programs <= set(second["hit"])
    assert not fit_programs & set(second["miss"]), second["miss"]


def test_where_the_cache_goes(tmp_path):
    code = ("import json, jax, jaxem; print(json.dumps({'dir': "
            "jax.config.jax_compilation_cache_dir, 'min': "
            "jax.config.jax_persistent_cache_min_compile_time_secs}))")
    home = _python(code, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert home == {"dir": str(tmp_path / "xdg" / "jaxem"), "min": 0.0}
    assert (tmp_path / "xdg" / "jaxem").is_dir()
    assert _python(code, JAXEM_NO_CACHE="1", XDG_CACHE_HOME=str(tmp_path))["dir"] is None
    own = str(tmp_path / "mine")  # the user's own choice stands
    assert _python(code, JAX_COMPILATION_CACHE_DIR=own,
                   JAXEM_CACHE_DIR=str(tmp_path / "x")) == {"dir": own, "min": 1.0}
