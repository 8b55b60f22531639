"""Gaussian mixtures on rows with missing entries, against float64 references written
row by row: scipy's marginal densities, and the EM update from conditional means and
covariances computed per row with NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxem
from jaxem import em
from jaxem.families.gaussian import GaussianParams

CTS = ["full", "tied", "diag", "spherical"]
K, D = 3, 4


def _problem(ct, seed=0, n=60, frac=0.3, most=None, d=D):
    """Data with NaN (every row keeps one observed entry; ``most``: at most that many
    missing) and valid parameters."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * 2 + rng.integers(0, 3, n)[:, None] * 3.0
    miss = rng.random((n, d)) < frac
    miss[np.arange(n), rng.integers(0, d, n)] = False
    if most is not None:
        miss &= np.cumsum(miss, axis=1) <= most
    x[miss] = np.nan
    means = rng.normal(size=(K, d)) * 3
    a = rng.normal(size=(K, d, d)) * 0.4 + np.eye(d)
    cov = a @ np.swapaxes(a, 1, 2) + 0.2 * np.eye(d)
    if ct == "tied":
        cov = cov[0]
    elif ct == "diag":
        cov = np.einsum("kdd->kd", cov)
    elif ct == "spherical":
        cov = np.einsum("kdd->k", cov) / d
    fam = jaxem.gaussian(ct, missing=True)
    prec = fam.precisions_cholesky_from(covariances=jnp.asarray(cov))
    weights = rng.dirichlet(np.ones(K))
    return fam, x, GaussianParams(jnp.asarray(weights), jnp.asarray(means), prec), cov


def _full_cov(ct, cov, d):
    if ct == "full":
        return cov
    if ct == "tied":
        return np.broadcast_to(cov, (K, d, d))
    if ct == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([np.eye(d) * c for c in cov])


def _reference(ct, x, weights, means, cov):
    """Per-row float64 log p(x_o, k), expected x and expected (x - mu_k)(x - mu_k)^T."""
    n, d = x.shape
    covs = _full_cov(ct, cov, d)
    lj = np.empty((n, K))
    ex = np.empty((n, K, d))
    exx = np.empty((n, K, d, d))
    for i in range(n):
        o = ~np.isnan(x[i])
        m = ~o
        for k in range(K):
            s = covs[k]
            lj[i, k] = np.log(weights[k]) + stats.multivariate_normal(
                means[k][o], s[np.ix_(o, o)]).logpdf(x[i][o])
            gain = s[np.ix_(m, o)] @ np.linalg.inv(s[np.ix_(o, o)])
            xi = x[i].copy()
            xi[m] = means[k][m] + gain @ (x[i][o] - means[k][o])
            c = np.zeros((d, d))
            c[np.ix_(m, m)] = s[np.ix_(m, m)] - gain @ s[np.ix_(o, m)]
            ex[i, k] = xi
            dlt = xi - means[k]
            exx[i, k] = np.outer(dlt, dlt) + c
    return lj, ex, exx


# Rows with at most D // 2 gaps factorise the precision of their missing features, rows
# with more the covariance of their observed ones: chunks whose blocks reach D // 2 take
# both forms, with only the first kind of row ("few"), mostly the first ("some") and
# mostly the second ("many"); with fewer gaps, the precision form alone ("wide": 8
# features, blocks of 3 slots).
GAPS = pytest.mark.parametrize(
    "gaps", [dict(most=D // 2), dict(), dict(frac=0.7), dict(d=8, most=3)],
    ids=["few", "some", "many", "wide"])


@GAPS
@pytest.mark.parametrize("ct", CTS)
def test_log_joint_is_the_marginal_of_the_observed_features(ct, gaps, x64):
    fam, x, params, cov = _problem(ct, **gaps)
    ref, _, _ = _reference(ct, x, *(np.asarray(a) for a in params[:2]), cov)
    np.testing.assert_allclose(fam.log_joint(params, jnp.asarray(x)), ref, rtol=1e-10)


@GAPS
@pytest.mark.parametrize("ct", CTS)
def test_em_step_uses_conditional_means_and_covariances(ct, gaps, x64):
    _check_em_step(ct, gaps)


@GAPS
@pytest.mark.parametrize("ct", ["full", "tied"])
def test_em_step_with_blocks_factorised_in_loops(ct, gaps, x64, monkeypatch):
    # Blocks larger than _UNROLL are factorised in loops over their columns (data with
    # many features); here every block is.
    from jaxem.families import gaussian_missing
    monkeypatch.setattr(gaussian_missing, "_UNROLL", 0)
    _check_em_step(ct, gaps)


def _check_em_step(ct, gaps):
    fam, x, params, cov = _problem(ct, seed=1, **gaps)
    w, mu = (np.asarray(a) for a in params[:2])
    lj, ex, exx = _reference(ct, x, w, mu, cov)
    resp = np.exp(lj - np.logaddexp.reduce(lj, axis=1, keepdims=True))
    nk = resp.sum(0)
    means = np.einsum("nk,nkd->kd", resp, ex) / nk[:, None]
    # Second moments about the new means: E[(x - m)(x - m)^T] = exx + (mu - m)(mu - m)^T
    # + cross terms, summed with resp.
    shift = mu - means
    scatter = (np.einsum("nk,nkde->kde", resp, exx)
               + np.einsum("nk,nkd,ke->kde", resp, ex - mu[None], shift)
               + np.einsum("kd,nk,nke->kde", shift, resp, ex - mu[None])
               + nk[:, None, None] * np.einsum("kd,ke->kde", shift, shift))
    new, ll = em.em_step(fam, params, jnp.asarray(x))
    np.testing.assert_allclose(ll, np.logaddexp.reduce(lj, axis=1).mean(), rtol=1e-10)
    np.testing.assert_allclose(new.weights, nk / nk.sum(), rtol=1e-9)
    np.testing.assert_allclose(new.means, means, rtol=1e-8, atol=1e-10)
    reg, d = fam.reg_covar, x.shape[1]
    if ct == "full":
        expect = scatter / nk[:, None, None] + reg * np.eye(d)
    elif ct == "tied":
        expect = scatter.sum(0) / nk.sum() + reg * np.eye(d)
    elif ct == "diag":
        expect = np.einsum("kdd->kd", scatter) / nk[:, None] + reg
    else:
        expect = np.einsum("kdd->k", scatter) / nk / d + reg
    np.testing.assert_allclose(fam.covariances(new), expect, rtol=1e-8)


@pytest.mark.parametrize("ct", CTS)
def test_complete_rows_equal_the_ordinary_family(ct, x64):
    fam, x, params, _ = _problem(ct, frac=0.0)
    plain = jaxem.gaussian(ct)
    xj = jnp.asarray(x)
    np.testing.assert_allclose(fam.log_joint(params, xj), plain.log_joint(params, xj),
                               rtol=1e-10)
    a, _ = em.em_step(fam, params, xj)
    b, _ = em.em_step(plain, params, xj)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("ct", CTS)
def test_em_with_missing_entries_is_monotone(ct, x64):
    fam, x, params, _ = _problem(ct, seed=2, n=200, frac=0.25)
    out = em.run(fam, params, jnp.asarray(x), max_iter=30, tol=-1.0)
    trace = np.asarray(out.trace)
    assert not bool(out.failed) and np.all(np.isfinite(trace))
    assert np.all(np.diff(trace) >= -1e-10)


@pytest.mark.parametrize("ct", CTS)
def test_impute_fills_only_missing_entries_with_conditional_means(ct, x64):
    from jaxem.families import gaussian_missing
    fam, x, params, cov = _problem(ct, seed=3)
    lj, ex, _ = _reference(ct, x, *(np.asarray(a) for a in params[:2]), cov)
    resp = np.exp(lj - np.logaddexp.reduce(lj, axis=1, keepdims=True))
    got = np.asarray(gaussian_missing.impute(fam, params, jnp.asarray(x), jnp.asarray(resp)))
    observed = ~np.isnan(x)
    np.testing.assert_array_equal(got[observed], x[observed])
    np.testing.assert_allclose(got, np.einsum("nk,nkd->nd", resp, ex), rtol=1e-9)


@pytest.mark.parametrize("ct", CTS)
def test_fused_e_step_equals_log_joint_then_stats(ct, x64):
    # The engine's one-pass E-step (each row's conditionals computed once) against the
    # two family calls it replaces, with weights and partial labels.
    fam, x, params, _ = _problem(ct, seed=13, n=40)
    assert fam.fused_rows
    x = jnp.asarray(x)
    w = jnp.asarray(np.random.default_rng(1).uniform(0.5, 2.0, x.shape[0]))
    labels = jnp.asarray(np.where(np.arange(x.shape[0]) % 3 == 0, 1, -1))
    for lab in (None, labels):
        stats, ll_sum, w_sum = em.e_step(fam, params, x, w, chunk_size=16, labels=lab)
        lj = fam.log_joint(params, x)
        resp, ll = fam.posterior(lj)
        if lab is not None:
            onehot = jax.nn.one_hot(lab, lj.shape[1])
            resp = jnp.where(lab[:, None] >= 0, onehot, resp)
            ll = jnp.where(lab >= 0, jnp.sum(onehot * lj, axis=1), ll)
        want = fam.stats(x, resp * w[:, None], params)
        for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(ll_sum, w @ ll, rtol=1e-12)


def test_float32_missing_path_is_finite_and_close_to_float64():
    fam, x, params, _ = _problem("full", seed=4)
    p32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    got = fam.log_joint(p32, jnp.asarray(x, jnp.float32))
    with jax.enable_x64(True):
        ref = fam.log_joint(jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), p32),
                            jnp.asarray(x, jnp.float64))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_fit_with_nan_is_exact_em_from_the_same_start(ct, x64):
    # jaxem.fit switches a Gaussian family to missing-value EM when x has NaN; from the
    # same starting parameters it is the plain em.run of the missing-aware family.
    fam, x, params, _ = _problem(ct, seed=5, n=150, frac=0.2)
    plain = jaxem.gaussian(ct)
    res = jaxem.fit(plain, x, n_components=K, key=jax.random.key(0), init=params,
                    max_iter=10, tol=-1.0)
    ref = em.run(fam, params, jnp.asarray(x), max_iter=10, tol=-1.0)
    np.testing.assert_allclose(res.trace, ref.trace, rtol=1e-9)
    np.testing.assert_allclose(res.params.means, ref.params.means, rtol=1e-8, atol=1e-10)


def test_fit_with_nan_from_its_own_initialisation_and_bad_rows():
    fam, x, _, _ = _problem("full", seed=6, n=200, frac=0.2)
    res = jaxem.fit(jaxem.gaussian("full"), x.astype(np.float32), n_components=K,
                    key=jax.random.key(0), n_init=2)
    assert np.isfinite(float(res.log_likelihood)) and not bool(res.failed)
    x[3] = np.nan
    with pytest.raises(ValueError, match="every value missing"):
        jaxem.fit(jaxem.gaussian("full"), x, n_components=K, key=jax.random.key(0))
    with pytest.raises(ValueError, match="NaN"):
        jaxem.fit(jaxem.kmeans(), x, n_components=K, key=jax.random.key(0))


def test_a_feature_never_observed_is_refused_not_fitted_to_nan():
    fam, x, _, _ = _problem("full", seed=7, n=40, frac=0.2)
    x = x.astype(np.float32)
    key = jax.random.key(0)
    gone = x.copy()
    gone[:, 2] = np.nan
    gone[:, 0] = np.where(np.isnan(gone[:, 0]), 0.5, gone[:, 0])  # no row is emptied
    with pytest.raises(ValueError, match="feature with every value missing.*feature 2"):
        jaxem.fit(jaxem.gaussian("full"), gone, n_components=K, key=key)
    with pytest.raises(ValueError, match="feature 2"):
        jaxem.GaussianMixture(K).fit(gone)
    # Observed only in rows of weight 0: nothing to fit it from either.
    hidden = gone.copy()
    hidden[0, 2] = 1.0
    weights = np.ones(len(x), np.float32)
    weights[0] = 0.0
    with pytest.raises(ValueError, match="feature 2"):
        jaxem.fit(jaxem.gaussian("diag"), hidden, n_components=K, key=key, weights=weights)
    with pytest.raises(ValueError, match="in data set 1, e.g. feature 2"):
        jaxem.fit(jaxem.gaussian("full"), np.stack([x, gone]), n_components=K, key=key)
    # Observed in two rows: fitted, and finite.
    hidden[1, 2] = -1.0
    res = jaxem.fit(jaxem.gaussian("full"), hidden, n_components=2, key=key)
    assert np.isfinite(float(res.log_likelihood)) and not bool(res.failed)


def test_estimator_fits_scores_and_imputes_nan(x64):
    rng = np.random.default_rng(8)
    cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    x = rng.multivariate_normal([0, 0], cov, 400)
    x_missing = x.copy()
    x_missing[rng.random(400) < 0.3, 1] = np.nan
    gm = jaxem.GaussianMixture(1, random_state=0).fit(x_missing)
    # One component: the fit is the ML bivariate normal from incomplete data.
    assert np.all(np.isfinite(gm.means_)) and gm.converged_
    ll = gm.score_samples(x_missing)
    observed = ~np.isnan(x_missing[:, 1])
    ref = np.where(observed,
                   stats.multivariate_normal(gm.means_[0], gm.covariances_[0]).logpdf(
                       np.where(np.isnan(x_missing), 0, x_missing)),
                   stats.norm(gm.means_[0, 0], np.sqrt(gm.covariances_[0, 0, 0])).logpdf(
                       x_missing[:, 0]))
    np.testing.assert_allclose(ll, ref, rtol=1e-8)
    filled = gm.impute(x_missing)
    np.testing.assert_array_equal(filled[observed], x_missing[observed])
    c = gm.covariances_[0]
    expect = gm.means_[0, 1] + c[1, 0] / c[0, 0] * (x_missing[~observed, 0] - gm.means_[0, 0])
    np.testing.assert_allclose(filled[~observed, 1], expect, rtol=1e-8)
    with pytest.raises(ValueError, match="every value missing"):
        gm.score_samples([[np.nan, np.nan]])


# -- multiple imputation: draws from the posterior predictive of the missing entries ------
@pytest.mark.parametrize("ct", CTS)
def test_imputation_draws_have_the_posterior_predictive_moments(ct, x64):
    """Per missing entry, the draws' mean is ``sum_k r_k E[x | x_o, k]`` (what
    ``impute`` returns) and their variance the mixture's
    ``sum_k r_k (Var[x | x_o, k] + E[x | x_o, k]^2) - mean^2``."""
    from jaxem.families import gaussian_missing
    fam, x, params, cov = _problem(ct, seed=9, n=30)
    means = np.asarray(params.means)
    lj, ex, exx = _reference(ct, x, np.asarray(params.weights), means, cov)
    resp = np.exp(lj - np.logaddexp.reduce(lj, axis=1, keepdims=True))
    m = 6000
    draws = np.asarray(gaussian_missing.impute_draws(
        fam, params, jnp.asarray(x), jnp.asarray(resp), jax.random.key(0), m))
    assert draws.shape == (m,) + x.shape
    observed = ~np.isnan(x)
    assert np.all(draws[:, observed] == x[observed])  # every draw, exactly
    cond_var = np.einsum("nkdd->nkd", exx) - (ex - means[None]) ** 2
    mean = np.einsum("nk,nkd->nd", resp, ex)
    var = np.einsum("nk,nkd->nd", resp, cond_var + ex**2) - mean**2
    miss = ~observed
    se = np.sqrt(var[miss] / m)
    assert np.all(np.abs(draws.mean(0)[miss] - mean[miss]) < 5 * se)
    np.testing.assert_allclose(draws.var(0)[miss], var[miss], rtol=0.15)


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_imputation_in_chunks_equals_all_rows_at_once(ct, x64):
    # Chunks (rows sorted by their gaps, buckets per chunk) must not change the
    # conditional expectations, and each row's draws are keyed on the row, not the chunk.
    from jaxem.families import gaussian_missing
    fam, x, params, cov = _problem(ct, seed=12, n=37)
    lj, _, _ = _reference(ct, x, np.asarray(params.weights), np.asarray(params.means), cov)
    resp = jnp.asarray(np.exp(lj - np.logaddexp.reduce(lj, axis=1, keepdims=True)))
    x = jnp.asarray(x)
    whole = gaussian_missing.impute(fam, params, x, resp)
    draws = gaussian_missing.impute_draws(fam, params, x, resp, jax.random.key(3), 4)
    for chunk in (5, 16):
        np.testing.assert_allclose(gaussian_missing.impute(fam, params, x, resp, chunk),
                                   whole, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(
            gaussian_missing.impute_draws(fam, params, x, resp, jax.random.key(3), 4, chunk),
            draws, rtol=1e-7, atol=1e-7)


def test_estimator_multiple_imputation(x64):
    rng = np.random.default_rng(10)
    a = rng.normal(size=(3, 3))
    x = rng.multivariate_normal([1.0, -2.0, 0.5], a @ a.T + 0.5 * np.eye(3), 500)
    x[rng.random(x.shape) < 0.3] = np.nan
    x[np.all(np.isnan(x), axis=1), 0] = 0.0
    rows = x[:25]
    observed = ~np.isnan(rows)
    # Two components: the draws' mean approaches the conditional expectation.
    gm = jaxem.GaussianMixture(2, random_state=0).fit(x)
    m = 4000
    draws = gm.impute(rows, n_imputations=m, random_state=1)
    assert draws.shape == (m, 25, 3)
    assert np.all(draws[:, observed] == rows[observed]) and np.all(np.isfinite(draws))
    expected = gm.impute(rows)  # n_imputations=None: the conditional expectation
    spread = draws.std(0)[~observed]
    assert np.all(np.abs(draws.mean(0)[~observed] - expected[~observed])
                  < 5 * spread / np.sqrt(m))
    np.testing.assert_array_equal(gm.impute(rows, 3, random_state=1),
                                  gm.impute(rows, 3, random_state=1))
    # One component: each missing entry's variance is the Gaussian conditional one,
    # S_mm - S_mo S_oo^-1 S_om.
    gm1 = jaxem.GaussianMixture(1, random_state=0).fit(x)
    draws = gm1.impute(rows, n_imputations=m, random_state=2)
    s, mu = gm1.covariances_[0], gm1.means_[0]
    for i, row in enumerate(rows):
        mi, oi = np.isnan(row), ~np.isnan(row)
        if not mi.any():
            continue
        cond = s[np.ix_(mi, mi)] - s[np.ix_(mi, oi)] @ np.linalg.solve(s[np.ix_(oi, oi)],
                                                                       s[np.ix_(oi, mi)])
        mean = mu[mi] + s[np.ix_(mi, oi)] @ np.linalg.solve(s[np.ix_(oi, oi)],
                                                            row[oi] - mu[oi])
        np.testing.assert_allclose(draws[:, i, mi].var(0), np.diag(cond), rtol=0.12)
        assert np.all(np.abs(draws[:, i, mi].mean(0) - mean) < 5 * np.sqrt(np.diag(cond) / m))
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="n_imputations must be None"):
            gm.impute(rows, n_imputations=bad)


def test_a_nan_in_a_large_device_array_switches_missing_values_on():
    """XLA's CPU ``min`` may drop NaN: the detection must not rely on it."""
    x = np.ones((5000, 3), np.float32) + np.random.default_rng(0).standard_normal((5000, 3),
                                                                                 np.float32)
    x[5, 1] = np.nan
    res = jaxem.fit(jaxem.gaussian("diag"), jnp.asarray(x), n_components=2,
                    key=jax.random.key(0), max_iter=2)
    assert np.isfinite(res.log_likelihood)


_BIG = """
import numpy as np, jaxem
rng = np.random.default_rng(0)
x = rng.normal(size=(3000, 16)).astype(np.float32)
x[rng.random(x.shape) < 0.2] = np.nan
gm = jaxem.GaussianMixture(4, max_iter=2, random_state=0).fit(x)
print(np.isfinite(gm.lower_bound_))
"""


def test_full_covariance_missing_values_at_d16_finish():
    """A batch of (n, K) 16 x 16 factorisations inside EM's loop deadlocked XLA's CPU
    LAPACK kernels on a 2-thread pool; jaxem factorises with jnp (run apart, with a
    timeout, so a regression fails instead of hanging the suite)."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", _BIG], capture_output=True,
                         text=True, timeout=400)
    assert out.stdout.strip().endswith("True"), out.stderr[-2000:]
