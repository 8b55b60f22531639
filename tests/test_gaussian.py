"""The Gaussian family: scikit-learn and scipy as oracles, numerics, validation, sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps
from sklearn.mixture import GaussianMixture

import jaxem
from jaxem.families import COVARIANCE_TYPES, GaussianParams

K = 3


def _start(x, ct, seed=1):
    """Explicit starting parameters in scikit-learn's form: weights, means, precisions."""
    rng = np.random.default_rng(seed)
    n, d = x.shape
    weights = rng.dirichlet(np.full(K, 5.0))
    means = x[rng.choice(n, K, replace=False)] + rng.normal(size=(K, d)) * 0.1
    cov = np.cov(x.T) * rng.uniform(0.5, 1.5, size=(K, 1, 1))  # (K, D, D)
    precisions = {
        "full": np.linalg.inv(cov),
        "tied": np.linalg.inv(cov[0]),
        "diag": 1.0 / np.diagonal(cov, axis1=1, axis2=2),
        "spherical": 1.0 / np.trace(cov, axis1=1, axis2=2) * d,
    }[ct]
    return weights, means, precisions


def _oracle_data():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (60, 3)), rng.normal(3, 0.5, (50, 3))])
    return x @ rng.normal(size=(3, 3)) + 2.0, rng


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_trajectory_equals_sklearn(x64, ct, weighted):
    """k EM steps from the same start: trace, weights, means, covariances as sklearn's.

    Integer sample weights (0 included) must equal repeating the rows.
    """
    x, rng = _oracle_data()
    w = rng.integers(0, 4, size=len(x)) if weighted else np.ones(len(x), int)
    weights0, means0, prec0 = _start(x, ct)
    k = 7
    sk = GaussianMixture(K, covariance_type=ct, weights_init=weights0, means_init=means0,
                         precisions_init=prec0, max_iter=k, tol=0.0)
    with pytest.warns(Warning, match="converge"):  # sklearn: did not converge in k steps
        sk.fit(np.repeat(x, w, axis=0))

    fam = jaxem.gaussian(ct)
    p0 = GaussianParams(weights0, means0, fam.precisions_cholesky_from(precisions=prec0))
    r = jaxem.fit(fam, x, n_components=K, key=jax.random.key(0), init=p0,
                  weights=w if weighted else None, max_iter=k, tol=0.0)

    assert int(r.n_iter) == sk.n_iter_ == k
    assert r.params.means.dtype == r.trace.dtype == jnp.float64  # x64 mode keeps float64
    close = dict(rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(r.trace, sk.lower_bounds_, **close)
    np.testing.assert_allclose(r.log_likelihood, sk.lower_bound_, **close)
    np.testing.assert_allclose(r.params.weights, sk.weights_, **close)
    np.testing.assert_allclose(r.params.means, sk.means_, **close)
    np.testing.assert_allclose(fam.covariances(r.params), sk.covariances_, rtol=1e-6,
                               atol=1e-9 * np.max(np.abs(sk.covariances_)))
    np.testing.assert_allclose(fam.precisions(r.params), sk.precisions_, rtol=1e-6,
                               atol=1e-9 * np.max(np.abs(sk.precisions_)))


def _random_params(rng, ct, d):
    weights = rng.dirichlet(np.ones(K))
    means = rng.normal(size=(K, d)) * 2
    a = rng.normal(size=(K, d, d))
    full = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(d)  # (K, D, D) positive definite
    cov = {"full": full, "tied": full[0], "diag": rng.uniform(0.3, 3.0, (K, d)),
           "spherical": rng.uniform(0.3, 3.0, K)}[ct]
    return weights, means, cov


def _dense_cov(ct, cov, d):
    """Covariance of each component as a (K, D, D) array."""
    if ct == "full":
        return cov
    if ct == "tied":
        return np.broadcast_to(cov, (K, d, d))
    if ct == "diag":
        return np.stack([np.diag(c) for c in cov])
    return cov[:, None, None] * np.eye(d)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_log_joint_equals_scipy(x64, ct):
    rng = np.random.default_rng(3)
    d = 3
    weights, means, cov = _random_params(rng, ct, d)
    fam = jaxem.gaussian(ct)
    params = GaussianParams(weights, means, fam.precisions_cholesky_from(covariances=cov))
    x = rng.normal(size=(20, d)) * 3
    dense = _dense_cov(ct, cov, d)
    expected = np.stack([np.log(weights[k]) + sps.multivariate_normal(means[k], dense[k]).logpdf(x)
                         for k in range(K)], axis=1)
    got = fam.log_joint(params, jnp.asarray(x))
    assert got.shape == (20, K)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # The per-row log-likelihood is the log of the mixture density.
    mix = np.log(sum(np.exp(expected[:, k]) for k in range(K)))
    np.testing.assert_allclose(jaxem.log_likelihood(fam, params, jnp.asarray(x)), mix, rtol=1e-10)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_covariance_precision_round_trip(x64, ct):
    rng = np.random.default_rng(4)
    d = 4
    _, means, cov = _random_params(rng, ct, d)
    fam = jaxem.gaussian(ct)
    weights = np.full(K, 1.0 / K)
    from_cov = GaussianParams(weights, means, fam.precisions_cholesky_from(covariances=cov))
    np.testing.assert_allclose(fam.covariances(from_cov), cov, rtol=1e-10)
    prec = np.linalg.inv(cov) if ct in ("full", "tied") else 1.0 / cov
    np.testing.assert_allclose(fam.precisions(from_cov), prec, rtol=1e-10)
    from_prec = GaussianParams(weights, means, fam.precisions_cholesky_from(precisions=prec))
    np.testing.assert_allclose(fam.covariances(from_prec), cov, rtol=1e-10)
    if ct in ("full", "tied"):  # scikit-learn's convention: an upper-triangular factor
        p = np.asarray(from_cov.precisions_cholesky)
        np.testing.assert_array_equal(np.tril(p, -1), 0.0)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_sample_moments_match_parameters(ct):
    rng = np.random.default_rng(5)
    d, n = 2, 30_000
    weights, means, cov = _random_params(rng, ct, d)
    fam = jaxem.gaussian(ct)
    params = GaussianParams(jnp.asarray(weights, jnp.float32), jnp.asarray(means, jnp.float32),
                            fam.precisions_cholesky_from(covariances=jnp.asarray(cov, jnp.float32)))
    x, z = fam.sample(jax.random.key(0), params, n)
    assert x.shape == (n, d) and z.shape == (n,) and x.dtype == jnp.float32
    x, z = np.asarray(x, np.float64), np.asarray(z)
    freq = np.bincount(z, minlength=K) / n
    np.testing.assert_allclose(freq, weights, atol=5 * np.sqrt(0.25 / n))
    dense = _dense_cov(ct, cov, d)
    for k in range(K):
        xk = x[z == k]
        nk = len(xk)
        sd = np.sqrt(np.diag(dense[k]))
        np.testing.assert_allclose(xk.mean(0), means[k], atol=5 * np.max(sd) / np.sqrt(nk))
        scale = np.outer(sd, sd)
        np.testing.assert_allclose(np.cov(xk.T), dense[k], atol=6 * np.max(scale) * np.sqrt(2 / nk))


def test_unknown_covariance_type():
    with pytest.raises(ValueError, match="covariance_type.*'fool'"):
        jaxem.gaussian("fool")


def test_n_free_parameters_as_sklearn():
    x, _ = _oracle_data()
    for ct in COVARIANCE_TYPES:
        sk = GaussianMixture(K, covariance_type=ct, max_iter=2, random_state=0)
        with pytest.warns(Warning):
            sk.fit(x)
        assert jaxem.gaussian(ct).n_free_parameters(K, x.shape[1]) == sk._n_parameters()


# -- float32 robustness -----------------------------------------------------------------
def _degenerate_sets():
    """Three hard data sets of one shape (60, 3): duplicates, a constant feature, far away."""
    rng = np.random.default_rng(7)
    a = rng.normal(size=(60, 3))
    a[:, 0] *= 3.0
    a[40:] += 6.0
    dup = a.copy()
    dup[40:] = dup[40]  # 20 copies of one point: a component collapses onto it
    dup[20:40] = np.repeat(dup[20:30], 2, axis=0)  # and pairs of duplicated points
    const = a.copy()
    const[:, 1] = 2.5  # a constant feature
    far = 1e6 + a  # large offset: float32 resolution there is 1/16
    return np.stack([dup, const, far]).astype(np.float32)


@pytest.mark.parametrize("ct", ["full", "diag", "spherical"])  # tied pools: no collapse
def test_degenerate_data_float32_close_to_float64(ct):
    x32 = _degenerate_sets()
    fam = jaxem.gaussian(ct)
    # The same start for both precisions: the M-step on the blobs' labels (one
    # component sits exactly on the 20 duplicated points), rounded to float32 for both
    # (at 1e6 float32 means are only good to 1/16, which alone changes the path).
    resp = np.repeat(np.eye(K), 20, axis=0)
    with jax.enable_x64(True):
        start = jax.vmap(lambda x: fam.m_step(fam.stats(x, jnp.asarray(resp))))(
            jnp.asarray(x32, jnp.float64))
    start = jax.tree.map(lambda a: np.asarray(a, np.float32)[:, None], start)
    with jax.enable_x64(True):
        ref = jaxem.fit(fam, jnp.asarray(x32, jnp.float64), n_components=K,
                        key=jax.random.key(0), max_iter=12, tol=0.0,
                        init=jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), start))
        ref = jax.tree.map(np.asarray, ref)
    got = jaxem.fit(fam, x32, n_components=K, key=jax.random.key(0), init=start,
                    max_iter=12, tol=0.0)
    # float32 by default; float64 in x64 mode with float64 data.
    assert {a.dtype for a in jax.tree.leaves((got.params, got.trace))} == {np.dtype("float32")}
    assert {a.dtype for a in jax.tree.leaves((ref.params, ref.trace))} == {np.dtype("float64")}
    assert not np.any(np.asarray(got.failed))
    cov = np.asarray(fam.covariances(got.params))
    assert np.all(np.isfinite(cov))
    if ct in ("full", "tied"):
        assert np.all(np.linalg.eigvalsh(cov) > 0)
    else:
        assert np.all(cov > 0)
    scale = np.std(x32 - x32.mean(axis=1, keepdims=True), axis=1).max(axis=1)  # (3,)
    np.testing.assert_allclose(got.params.weights, ref.params.weights, atol=1e-3)
    for b in range(3):
        np.testing.assert_allclose(got.params.means[b], ref.params.means[b], rtol=0,
                                   atol=2e-3 * scale[b] + 1e-7 * 1e6 * (b == 2))
        np.testing.assert_allclose(cov[b], np.asarray(fam.covariances(
            jax.tree.map(lambda a: a[b], ref.params))), rtol=0, atol=2e-3 * scale[b] ** 2)
    np.testing.assert_allclose(got.trace[:2], ref.trace[:2], rtol=1e-4, atol=1e-4)
    # Far from the origin (1e6), full/tied float32 traces drift from float64 by ~1e-3:
    # an open issue. The first E-step is exact in isolation but ~1.5e-4 off inside
    # fit's jit once padding rows are zeroed before centring (an XLA fusion effect).
    np.testing.assert_allclose(got.trace[2], ref.trace[2], rtol=1e-2)
