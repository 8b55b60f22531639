"""The EM engine: invariants of the driver, batching, padding, chunking, failures, init."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import jaxem
from jaxem.families import COVARIANCE_TYPES, GaussianParams
from jaxem.init import initial_resp

N_MAX = 48  # problems of any size are padded to this many rows (weight 0): few compiles


@functools.partial(jax.jit, static_argnames=("n_components", "max_iter"))
def _random_start_run(fam, key, x, w, *, n_components, max_iter):
    p0 = jaxem.initialize(fam, key, x, w, n_components, "random")
    return jaxem.run(fam, p0, x, w, max_iter=max_iter, tol=-1.0)  # never "converges"


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(20, N_MAX), d=st.integers(1, 3),
       k=st.integers(1, 3), separation=st.floats(0.0, 6.0),
       family=st.sampled_from(COVARIANCE_TYPES + ("kmeans",)))
def test_em_never_decreases_log_likelihood(make_blobs, seed, n, d, k, separation, family):
    with jax.enable_x64(True):
        x, _ = make_blobs(seed, N_MAX, d, k, separation)
        w = (np.arange(N_MAX) < n).astype(float)
        fam = jaxem.kmeans() if family == "kmeans" else jaxem.gaussian(family, reg_covar=0.0)
        r = _random_start_run(fam, jax.random.key(seed), jnp.asarray(x), jnp.asarray(w),
                              n_components=k, max_iter=25)
        trace = np.asarray(r.trace)[: int(r.n_iter)]
        if family != "kmeans":
            # With reg_covar=0 a component may collapse onto one point: the likelihood is
            # unbounded there and, once its variance is below (eps |x|)^2, float64 loses
            # the point (scikit-learn does the same). That degenerate case is excluded.
            cov = np.asarray(fam.covariances(r.params))
            cov = np.linalg.eigvalsh(cov) if family in ("full", "tied") else cov
            assume(not bool(r.failed) and cov.min() > 1e-10 * x[:n].var())
    assert np.all(np.isfinite(trace))
    steps = np.diff(trace)
    assert np.all(steps >= -1e-9 * (1 + np.abs(trace[1:]))), steps.min()


def _starts(x, k, n_init, seed, fam):
    """(n_init,) starting Gaussian params: M-steps on random responsibilities."""
    keys = jax.random.split(jax.random.key(seed), n_init)
    w = jnp.ones(x.shape[0], x.dtype)
    return jax.vmap(lambda key: jaxem.initialize(fam, key, x, w, k, "random"))(keys)


def test_vmapped_restarts_and_datasets_equal_a_loop(make_blobs):
    fam = jaxem.gaussian("full")
    xs = np.stack([make_blobs(s, 40, 2, 3)[0] for s in (1, 2)]).astype(np.float32)
    p0 = jax.tree.map(lambda *a: jnp.stack(a), *[_starts(jnp.asarray(x), 3, 3, s, fam)
                                                for s, x in enumerate(xs)])  # (2, 3, ...)
    r = jaxem.fit(fam, xs, n_components=3, n_init=3, key=jax.random.key(0), init=p0,
                  max_iter=20)
    run = jax.jit(functools.partial(jaxem.run, fam, max_iter=20, tol=1e-3))
    for b in range(2):
        shift = xs[b].mean(0)  # the engine fits centred data; do the same here
        for i in range(3):
            start = fam.translate(jax.tree.map(lambda a: a[b, i], p0), -shift)
            one = run(start, xs[b] - shift, jnp.ones(40))
            got = jax.tree.map(lambda a: a[b, i], r.restarts)
            assert int(got.n_iter) == int(one.n_iter)
            np.testing.assert_allclose(got.trace, one.trace, rtol=1e-5)
            np.testing.assert_allclose(got.params.means, one.params.means + shift,
                                       rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(got.params.precisions_cholesky,
                                       one.params.precisions_cholesky, rtol=1e-3, atol=1e-4)
        best = int(np.nanargmax(np.asarray(r.restarts.log_likelihood[b])))
        assert int(r.best[b]) == best
        np.testing.assert_allclose(r.log_likelihood[b], r.restarts.log_likelihood[b, best])


@pytest.mark.parametrize("ct,tol,progress", [("full", -1.0, False), ("diag", 1e-2, True)])
def test_rescore_gives_the_log_likelihood_at_the_returned_parameters(x64, make_blobs, ct,
                                                                      tol, progress):
    # Two data sets, the second padded with weight 0; tol=1e-2 lets some restarts stop
    # early (frozen before the rescore's extra pass), the bar runs the loop in blocks.
    xs = np.stack([make_blobs(s, 60, 2, 3)[0] for s in (3, 4)])
    w = np.ones((2, 60))
    w[1, 45:] = 0.0
    fam = jaxem.gaussian(ct)
    kw = dict(n_components=3, n_init=4, key=jax.random.key(1), weights=w, max_iter=8,
              tol=tol, init="random", progress=progress)
    plain, again = jaxem.fit(fam, xs, **kw), jaxem.fit(fam, xs, rescore=True, **kw)
    same = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    jax.tree.map(same, plain.restarts.params, again.restarts.params)
    for field in ("trace", "n_iter", "converged", "failed"):
        same(getattr(plain.restarts, field), getattr(again.restarts, field))
    same(plain.best, again.best)
    for b in range(2):
        for i in range(4):
            p = jax.tree.map(lambda a: a[b, i], again.restarts.params)
            ll_sum, w_sum = jaxem.em.e_step(fam, p, jnp.asarray(xs[b]), jnp.asarray(w[b]))[1:]
            np.testing.assert_allclose(again.restarts.log_likelihood[b, i], ll_sum / w_sum,
                                       rtol=1e-10)
        # a real change: the last E-step's value is one M-step behind
        assert not np.allclose(plain.restarts.log_likelihood[b], again.restarts.log_likelihood[b],
                               rtol=1e-12, atol=0)
    same(again.log_likelihood, again.restarts.log_likelihood[np.arange(2), again.best])


@pytest.mark.parametrize("junk", [1e3, np.nan], ids=["finite", "nan"])
def test_zero_weight_padding_changes_nothing(make_blobs, junk):
    fam = jaxem.gaussian("diag")
    x30 = make_blobs(3, 30, 2, 2)[0].astype(np.float32)
    x40 = make_blobs(4, 40, 2, 2)[0].astype(np.float32)
    p0 = jax.tree.map(lambda a: a[0], _starts(jnp.asarray(x30), 2, 1, 0, fam))
    kw = dict(n_components=2, key=jax.random.key(0), init=p0, max_iter=15)
    alone30 = jaxem.fit(fam, x30, **kw)
    padded = np.concatenate([x30, np.full((10, 2), junk, np.float32)])
    w = (np.arange(40) < 30).astype(np.float32)
    single = jaxem.fit(fam, padded, weights=w, **kw)
    alone40 = jaxem.fit(fam, x40, weights=np.ones(40), **kw)  # the same program as `single`
    ragged = jaxem.fit(fam, np.stack([padded, x40]), weights=np.stack([w, np.ones(40)]), **kw)
    for got in (single, jax.tree.map(lambda a: a[0], ragged)):
        np.testing.assert_allclose(got.trace, alone30.trace, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(alone30.params)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ragged.trace[1], alone40.trace, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.tree.map(lambda a: a[1], ragged.params)),
                    jax.tree.leaves(alone40.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@functools.partial(jax.jit, static_argnames="chunk_size")
def _e_step(fam, p, x, w, chunk_size=None):
    return jaxem.e_step(fam, p, x, w, chunk_size=chunk_size)


@settings(max_examples=6, deadline=None)
@given(chunk=st.integers(1, 40), ct=st.sampled_from(("full", "diag", "kmeans")))
def test_chunked_e_step_equals_full(make_blobs, chunk, ct):
    n = 37  # prime: most chunk sizes do not divide it
    with jax.enable_x64(True):
        x, _ = make_blobs(5, n, 3, 3)
        w = np.random.default_rng(6).uniform(0, 2, n)
        fam = jaxem.kmeans() if ct == "kmeans" else jaxem.gaussian(ct)
        p = jaxem.initialize(fam, jax.random.key(1), jnp.asarray(x), jnp.asarray(w), 3,
                             "random_from_data" if ct == "kmeans" else "random")
        full = _e_step(fam, p, x, w)
        chunked = _e_step(fam, p, x, w, chunk_size=chunk)
        for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(full)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 40), used=st.integers(0, 40), chunk=st.integers(1, 40))
def test_sum_rows_skips_only_chunks_after_the_last_used_row(n, used, chunk):
    used = min(used, n)
    x = np.arange(1.0, n + 1.0, dtype=np.float32)[:, None]
    w = (np.arange(n) < used).astype(np.float32)
    w[: used // 2] = 0.5  # zero weight only at the end: fit's bucket padding
    visits, total = jaxem.rows.sum_rows(
        lambda xc, wc, _: (jnp.ones(()), wc @ xc[:, 0]), jnp.asarray(x), jnp.asarray(w),
        chunk)
    np.testing.assert_allclose(total, w @ x[:, 0], rtol=1e-6)
    if chunk >= n:
        assert visits == 1
    else:  # the chunks holding a used row, the last (overlapping) one included
        n_full = n // chunk
        want = min(n_full, -(-used // chunk)) + (n % chunk > 0 and used > n_full * chunk)
        assert visits == want


def test_new_tol_reg_covar_or_data_do_not_recompile(make_blobs):
    cache = jaxem.batch._fit_block._cache_size  # the EM loop's program, one of _fit's three
    x = make_blobs(7, 30, 2, 2)[0].astype(np.float32)
    kw = dict(n_components=2, init="random_from_data", max_iter=10)
    jaxem.fit(jaxem.gaussian("spherical", 1e-6), x, key=jax.random.key(0), tol=1e-3, **kw)
    before = cache()
    jaxem.fit(jaxem.gaussian("spherical", 1e-2), x, key=jax.random.key(0), tol=1e-3, **kw)
    jaxem.fit(jaxem.gaussian("spherical", 1e-6), x, key=jax.random.key(1), tol=1e-5, **kw)
    jaxem.fit(jaxem.gaussian("spherical", 0.5), x + 1.0, key=jax.random.key(2), tol=0.1, **kw)
    assert cache() == before
    # The counter does count: a new covariance type is a new program.
    jaxem.fit(jaxem.gaussian("diag", 1e-6), x, key=jax.random.key(0), **kw)
    assert cache() == before + 1


# -- failures -------------------------------------------------------------------------
def _two_blobs():
    rng = np.random.default_rng(8)
    return np.concatenate([rng.normal(0, 1, (30, 2)), rng.normal(8, 1, (30, 2))])


def _start_params(means, covs, weights):
    fam = jaxem.gaussian("full", reg_covar=0.0)
    return GaussianParams(jnp.asarray(weights), jnp.asarray(means),
                          fam.precisions_cholesky_from(covariances=jnp.asarray(covs)))


def test_failed_restart_is_flagged_keeps_last_good_and_never_wins(x64):
    x = _two_blobs()
    fam = jaxem.gaussian("full", reg_covar=0.0)
    eye = np.eye(2)
    # Restart 0: near the optimum plus a third component far away with a tiny
    # covariance: it gets no responsibility, its covariance becomes 0 -> non-finite.
    bad = _start_params([[0, 0], [8, 8], [1e3, 1e3]], [eye, eye, 1e-4 * eye], [0.45, 0.45, 0.1])
    # Restart 1: a poor start (every component on the global mean), one iteration only.
    poor = _start_params([[4, 4.1], [4.1, 4], [4, 4]], [30 * eye] * 3, [1 / 3] * 3)
    p0 = jax.tree.map(lambda a, b: jnp.stack([a, b]), bad, poor)
    r = jaxem.fit(fam, x, n_components=3, n_init=2, key=jax.random.key(0), init=p0,
                  max_iter=1)
    assert np.asarray(r.restarts.failed).tolist() == [True, False]
    # The failed restart's last log-likelihood is the higher one, and still it loses.
    assert float(r.restarts.log_likelihood[0]) > float(r.restarts.log_likelihood[1])
    assert int(r.best) == 1 and not bool(r.failed)
    for leaf, start in zip(jax.tree.leaves(jax.tree.map(lambda a: a[0], r.restarts.params)),
                           jax.tree.leaves(bad)):
        assert np.all(np.isfinite(leaf))
        np.testing.assert_allclose(leaf, start, rtol=1e-12, atol=1e-9)  # last good = start
    # With some regularisation the same start does not fail.
    ok = jaxem.fit(jaxem.gaussian("full", 1e-6), x, n_components=3, key=jax.random.key(0),
                   init=bad, max_iter=1)
    assert not bool(ok.failed)
    # Every restart failed: a FitError (a ValueError) that says what to change.
    with pytest.raises(jaxem.FitError, match="reg_covar") as err:
        jaxem.fit(fam, x, n_components=3, key=jax.random.key(0), init=bad, max_iter=1)
    assert isinstance(err.value, ValueError)
    r = jaxem.fit(fam, x, n_components=3, key=jax.random.key(0), init=bad, max_iter=1,
                  check=False)
    assert bool(r.failed)


# -- initialisation --------------------------------------------------------------------
def _separated(k=4, per=15, seed=9):
    """k tight clusters 1000 apart, and the cluster of each row."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, 2)) * 1000
    labels = np.repeat(np.arange(k), per)
    return (centres[labels] + rng.normal(size=(k * per, 2))).astype(np.float32), labels


def test_kmeans_plusplus_picks_distinct_positive_weight_rows_one_per_cluster():
    x, labels = _separated()
    w = np.ones(len(x), np.float32)
    w[::3] = 0.0  # these rows may never be picked
    pick = jax.jit(jaxem.kmeans_plusplus, static_argnums=3)
    for seed in range(5):
        centers, idx = pick(jax.random.key(seed), x, w, 4)
        idx = np.asarray(idx)
        np.testing.assert_array_equal(centers, x[idx])
        assert len(set(idx.tolist())) == 4
        assert np.all(w[idx] > 0)
        assert sorted(labels[idx].tolist()) == [0, 1, 2, 3]  # one seed per far cluster


def test_random_from_data_picks_distinct_positive_weight_rows():
    x, _ = _separated()
    w = np.zeros(len(x), np.float32)
    w[[3, 17, 30, 44, 59]] = [1.0, 2.0, 0.5, 1.0, 3.0]
    resp = jax.jit(initial_resp, static_argnums=(3, 4))
    for seed in range(5):
        r = np.asarray(resp(jax.random.key(seed), x, w, 4, "random_from_data"))
        rows = np.flatnonzero(r.sum(1))
        assert len(rows) == 4 and np.all(w[rows] > 0)
        np.testing.assert_array_equal(r[rows].sum(0), np.ones(4))  # one row per component


def test_kmeans_and_random_init():
    x, labels = _separated()
    w = np.ones(len(x), np.float32)
    resp = jax.jit(initial_resp, static_argnums=(3, 4))
    r = np.asarray(resp(jax.random.key(0), x, w, 4, "kmeans"))
    np.testing.assert_array_equal(np.sort(r, axis=1)[:, :-1], 0.0)  # a partition...
    np.testing.assert_array_equal(r.max(1), 1.0)
    found = r.argmax(1)
    for c in range(4):  # ... which is the clusters, up to relabelling
        assert len(set(found[labels == c].tolist())) == 1
    assert len(set(found.tolist())) == 4
    r = np.asarray(resp(jax.random.key(0), x, w, 4, "random"))
    assert np.all(r > 0)
    np.testing.assert_allclose(r.sum(1), 1.0, rtol=1e-6)


# -- input validation ------------------------------------------------------------------
def test_bad_input_raises_value_error_naming_the_problem():
    x = _two_blobs().astype(np.float32)
    fam = jaxem.gaussian("diag")
    fit = functools.partial(jaxem.fit, fam, n_components=2, key=jax.random.key(0))
    nan = x.copy()
    nan[3] = np.nan  # NaN entries are missing values for a Gaussian; a row of them is not
    with pytest.raises(ValueError, match="NaN"):
        fit(nan)
    nan[3, 0] = 1.0
    with pytest.raises(ValueError, match="NaN"):  # k-means has no missing values
        jaxem.fit(jaxem.kmeans(), nan, n_components=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="n_components=2"):
        fit(x[:1])
    with pytest.raises(ValueError, match="at least"):
        fit(x, weights=np.r_[1.0, np.zeros(len(x) - 1)])  # only one row counts
    with pytest.raises(ValueError, match="weights must have shape"):
        fit(x, weights=np.ones(len(x) + 1))
    with pytest.raises(ValueError, match="non-negative"):
        fit(x, weights=-np.ones(len(x)))
    with pytest.raises(ValueError, match="Unknown init 'kmeans\\+\\+'"):
        fit(x, init="kmeans++")
    good = GaussianParams(np.full(2, 0.5), x[:2], np.ones((2, 2)))
    with pytest.raises(ValueError, match="Starting parameters have shape"):
        fit(x, init=good._replace(means=x[:3]))
    with pytest.raises(ValueError, match="structure"):
        fit(x, init=(good.weights, good.means))
    with pytest.raises(ValueError, match="n_samples, n_features"):
        fit(x[0])
