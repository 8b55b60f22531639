"""The E-step on CPU threads (jaxem.batch.cpu_threads): shares of the chunks add up to
the whole pass, and a threaded fit is the one-program fit up to float rounding, with
restarts, data sets, weights, labels, progress and rescore."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jaxem
from jaxem import batch, em, rows


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _gaps(seed, n, d=4, frac=0.25):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) + rng.integers(0, 3, (n, 1)) * 3.0
    miss = rng.random((n, d)) < frac
    miss[np.arange(n), rng.integers(0, d, n)] = False  # a value in every row
    return np.where(miss, np.nan, x)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 70), chunk=st.integers(1, 30), count=st.integers(1, 5),
       zero_tail=st.integers(0, 20), skip_tail=st.booleans())
def test_shares_of_the_chunks_add_up_to_the_whole_pass(n, chunk, count, zero_tail,
                                                        skip_tail):
    x = jnp.arange(1.0, n + 1.0)
    w = jnp.where(jnp.arange(n) < n - zero_tail, 1.0, 0.0)

    def fold(total, xc, wc, idx):  # each row counted once, with its own index
        return total + jnp.sum(wc * xc * (idx + 1.0))

    whole = rows.scan_rows(fold, 0.0, x, w, chunk, skip_tail=skip_tail)
    shares = [rows.scan_rows(fold, 0.0, x, w, chunk, skip_tail=skip_tail,
                             share=(jnp.int32(i), count)) for i in range(count)]
    assert float(sum(shares)) == pytest.approx(float(whole), rel=1e-6)
    assert float(whole) == pytest.approx(float(jnp.sum(w * x * x)), rel=1e-6)


@pytest.mark.parametrize("ct", ["full", "tied"])
def test_threaded_fit_equals_the_one_program_fit(ct, x64, monkeypatch):
    x = np.stack([_gaps(1, 400), _gaps(2, 400)])  # two data sets
    w = np.ones((2, 400))
    w[1, 300:] = 0.0  # a shorter second set
    labels = np.full((2, 400), -1)
    labels[:, :20] = np.arange(20) % 3
    kw = dict(n_components=3, key=jax.random.key(0), n_init=3, max_iter=30, chunk_size=64,
              weights=w, labels=labels)
    fam = jaxem.gaussian(ct)
    fits = {}
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("JAXEM_THREADS", threads)
        assert batch.cpu_threads(fam.with_missing(), 400, 64) == int(threads)
        fits[threads] = jaxem.fit(fam, x, **kw)
    monkeypatch.setenv("JAXEM_THREADS", "2")
    fits["progress"] = jaxem.fit(fam, x, progress=True, **kw)
    rescored = jaxem.fit(fam, x, rescore=True, **kw)
    monkeypatch.setenv("JAXEM_THREADS", "1")
    rescored_one = jaxem.fit(fam, x, rescore=True, **kw)
    one = fits["1"].restarts
    for name in ("2", "3", "progress"):
        r = fits[name].restarts
        np.testing.assert_array_equal(r.n_iter, one.n_iter)
        np.testing.assert_array_equal(r.converged, one.converged)
        np.testing.assert_allclose(r.trace, one.trace, rtol=1e-10)
        for a, b in zip(jax.tree.leaves(r.params), jax.tree.leaves(one.params)):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(rescored.restarts.log_likelihood,
                               rescored_one.restarts.log_likelihood, rtol=1e-10)
    assert np.all(np.asarray(one.n_iter) < 30)  # some converged: the stop rule was used


def test_which_fits_run_on_threads(monkeypatch):
    monkeypatch.delenv("JAXEM_THREADS", raising=False)
    full, diag = jaxem.gaussian("full", missing=True), jaxem.gaussian("diag", missing=True)
    assert batch.cpu_threads(full, 10**5, 2064) >= 1
    assert batch.cpu_threads(jaxem.gaussian("full"), 10**5, 2064) == 1  # GEMMs: no gain
    assert batch.cpu_threads(diag, 10**5, 2064) == 1
    assert batch.cpu_threads(full, 10**5, None) == 1  # one chunk
    monkeypatch.setenv("JAXEM_THREADS", "8")
    assert batch.cpu_threads(full, 10**5, 2064) == 8
    assert batch.cpu_threads(full, 5 * 2064, 2064) == 2  # two chunks per thread at least
    assert batch.cpu_threads(full, 10**5, 2064, mesh=object()) == 1  # devices: not here
    for bad in ("0", "-1", "two", "1.5"):
        monkeypatch.setenv("JAXEM_THREADS", bad)
        with pytest.raises(ValueError, match="JAXEM_THREADS must be a positive integer"):
            batch.cpu_threads(full, 10**5, 2064)


def test_an_e_step_of_its_own_is_not_split_into_shares():
    class Sequences:  # an HMM's family declares its own e_step
        has_e_step = True

    with pytest.raises(ValueError, match="not in shares"):
        em.e_step(Sequences(), None, jnp.zeros((2, 3, 1)), share=(0, 2))
