"""The GEMM (fast) E-step of diag/spherical/tied Gaussians against float64 and the exact form.

The fast forms expand squares about the rows' mean; a tight component far from it makes
them cancel, and the family must then fall back to direct differences. Oracles here are
float64 computations from the same float32 inputs.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jaxem
from jaxem import em
from jaxem.families.gaussian import GaussianParams

D = 4


def _data_and_params(ct, far, sigma_tight):
    """A broad blob at 0 and a tight one ``far`` away (float32), with the true params."""
    rng = np.random.default_rng(3)
    broad = rng.normal(size=(300, D))
    tight = far + sigma_tight * rng.normal(size=(100, D))
    x = np.concatenate([broad, tight]).astype(np.float32)
    means = np.stack([np.zeros(D), np.full(D, far)])
    var = np.array([1.0, sigma_tight**2])
    fam = jaxem.gaussian(ct)
    if ct == "diag":
        prec = 1 / np.sqrt(np.repeat(var[:, None], D, axis=1))
    elif ct == "spherical":
        prec = 1 / np.sqrt(var)
    else:  # tied: one covariance, the tight one
        prec = np.eye(D) / sigma_tight
    params = GaussianParams(np.array([0.75, 0.25], np.float32), means.astype(np.float32),
                            prec.astype(np.float32))
    return fam, x, params


def _loglik64(ct, params, x):
    """Per-row log-likelihood in float64 from the (float32) inputs, directly."""
    w, mu, p = (np.asarray(a, np.float64) for a in params)
    x = np.asarray(x, np.float64)
    diff = x[:, None, :] - mu[None]
    if ct == "diag":
        maha, log_det = np.sum((diff * p) ** 2, -1), np.sum(np.log(p), 1)
    elif ct == "spherical":
        maha, log_det = np.sum(diff**2, -1) * p**2, D * np.log(p)
    else:
        maha, log_det = np.sum((diff @ p) ** 2, -1), np.sum(np.log(np.diag(p)))
    lj = np.log(w) + log_det - 0.5 * (D * np.log(2 * np.pi) + maha)
    top = lj.max(1, keepdims=True)
    return (top + np.log(np.exp(lj - top).sum(1, keepdims=True)))[:, 0]


@pytest.mark.parametrize("ct", ["diag", "spherical", "tied"])
@pytest.mark.parametrize("far,sigma", [(3.0, 1.0), (50.0, 1e-3)])
def test_log_likelihood_float32_close_to_float64(ct, far, sigma):
    # (3, 1): the fast GEMM form applies; (50, 1e-3): 5e4 standard deviations from the
    # rows' mean, where the expanded form would lose all digits, so the exact one runs.
    fam, x, params = _data_and_params(ct, far, sigma)
    got = np.asarray(jax.jit(lambda p, x: em.log_likelihood(fam, p, x))(params, x))
    ref = _loglik64(ct, params, x)
    # float32 rounding of log-densities of size |ref| plus the fast form's documented
    # bound (_RTOL = 1e-4 relative to D + maha, halved in the log-density).
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4 * D)


def _sum_xx64(ct, x, resp, means):
    """``sum_n r_nk (x_n - mu_k)^2`` reduced to ``ct``'s shape, in float64 directly."""
    x, resp, means = (np.asarray(a, np.float64) for a in (x, resp, means))
    diff = x[:, None, :] - means[None]
    if ct == "tied":
        return np.einsum("nk,nkd,nke->de", resp, diff, diff)
    sum_xx = np.einsum("nk,nkd->kd", resp, diff**2)
    return sum_xx.sum(1) if ct == "spherical" else sum_xx


def _two_blob_resp(x):
    return jax.nn.one_hot((jnp.arange(x.shape[0]) >= 300).astype(jnp.int32), 2)


@pytest.mark.parametrize("ct", ["diag", "spherical", "tied"])
def test_fast_form_used_and_equal_to_exact(ct):
    fam, x, params = _data_and_params(ct, 3.0, 1.0)
    _, _, c, z = fam._centred(params, x)
    assert not bool(fam._maha_risky(params, c))
    np.testing.assert_allclose(fam._log_joint_gemm(params, c, z),
                               fam._log_joint_from(params, fam._maha_exact(params, x)),
                               rtol=1e-5, atol=1e-4)
    resp = _two_blob_resp(x)
    _, risky = fam._stats_fast(z, c, resp.T, params, jnp.sum(resp, axis=0))
    assert not np.any(risky)
    stats = fam.stats(x, resp, params)
    want = _sum_xx64(ct, x, resp, params.means)
    np.testing.assert_allclose(stats.sum_xx, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    np.testing.assert_allclose(stats.sum_x, np.asarray(resp).T @ np.asarray(x, np.float64),
                               rtol=1e-5, atol=1e-3)
    _, far_params = _data_and_params(ct, 50.0, 1e-3)[::2]
    assert bool(fam._maha_risky(far_params, c))


@pytest.mark.parametrize("ct", ["diag", "spherical"])
def test_only_the_inaccurate_component_is_recomputed(ct):
    # A tight component 50 away from the rows' mean is flagged and recomputed; the broad
    # one near that mean keeps its GEMM value (bit for bit), and both equal float64.
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(size=(1000, D)),
                        50.0 + 1e-3 * rng.normal(size=(10, D))]).astype(np.float32)
    fam = jaxem.gaussian(ct)
    prec = np.array([[1.0] * D, [1e3] * D]) if ct == "diag" else np.array([1.0, 1e3])
    params = GaussianParams(jnp.array([0.99, 0.01]), jnp.array([[0.0] * D, [50.0] * D]),
                            jnp.asarray(prec, jnp.float32))
    resp = jax.nn.one_hot((jnp.arange(x.shape[0]) >= 1000).astype(jnp.int32), 2)

    @jax.jit
    def fast_and_refined(x, resp, params):  # one program: the same GEMM in both
        _, _, c, z = fam._centred(params, x)
        return (*fam._stats_fast(z, c, resp.T, params, jnp.sum(resp, axis=0)),
                fam.stats(x, resp, params))

    fast, risky, stats = fast_and_refined(x, resp, params)
    np.testing.assert_array_equal(risky, [False, True])
    want = _sum_xx64(ct, x, resp, params.means)
    np.testing.assert_allclose(stats.sum_xx, want, rtol=1e-5)
    np.testing.assert_array_equal(stats.sum_xx[0], fast.sum_xx[0])
    assert abs(float(np.sum(fast.sum_xx[1])) / want[1].sum() - 1) > 1e-2  # GEMM form: off


@settings(max_examples=25, deadline=None)
@given(far=st.floats(0.0, 1e3), log_sigma=st.floats(-4.0, 0.0), seed=st.integers(0, 2**16),
       ct=st.sampled_from(["diag", "spherical"]))
def test_stats_within_documented_tolerance_of_float64(far, log_sigma, seed, ct):
    # Whatever the separation, each component's sum_xx is within _RTOL (here 1.5e-4 for
    # the float64 side's own rounding) of float64 plus reg_covar * counts.
    rng = np.random.default_rng(seed)
    k, d, n = 3, 3, 200
    means = (rng.normal(size=(k, d)) * far).astype(np.float32)
    sigma = (10.0 ** log_sigma) * rng.uniform(0.5, 2.0, (k, d))
    z = rng.integers(0, k, n)
    x = (means[z] + sigma[z] * rng.normal(size=(n, d))).astype(np.float32)
    fam = jaxem.gaussian(ct)
    prec = 1 / sigma if ct == "diag" else 1 / sigma.mean(1)
    params = GaussianParams(jnp.full(k, 1 / k), jnp.asarray(means), jnp.asarray(prec, jnp.float32))
    resp = fam.posterior(fam.log_joint(params, x))[0]  # near one-hot when far apart
    got = np.asarray(jax.jit(fam.stats)(x, resp, params).sum_xx, np.float64)
    want = _sum_xx64(ct, x, resp, means)
    counts = np.asarray(resp, np.float64).sum(0)
    floor = fam.reg_covar * counts * (d if ct == "spherical" else 1)
    if ct == "diag":
        floor = floor[:, None]
    assert np.all(np.abs(got - want) <= 1.5e-4 * (want + floor))


def test_vmapped_restarts_each_recompute_only_their_own_components():
    fam, x, near = _data_and_params("diag", 3.0, 1.0)
    _, _, far = _data_and_params("diag", 50.0, 1e-3)
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), near, far)
    resp = _two_blob_resp(x)
    got = jax.jit(jax.vmap(fam.stats, (None, None, 0)))(x, resp, both)
    for i, p in enumerate((near, far)):
        want = jax.jit(fam.stats)(x, resp, p)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a[i], b, rtol=1e-6)


@pytest.mark.parametrize("ct", ["diag", "spherical"])
def test_em_step_tight_far_component_float32_close_to_float64(ct):
    # One EM step: the tight component's new variance from float32 stats about the rows'
    # mean would be pure rounding noise (variance 1e-6 at distance 50); the fallback keeps
    # it to float32 accuracy of the differences.
    fam, x, params = _data_and_params(ct, 50.0, 1e-3)
    new32, ll32 = jax.jit(lambda p, x: em.em_step(fam, p, x))(params, x)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        new64, ll64 = em.em_step(fam, p64, jnp.asarray(x, jnp.float64))
        cov64 = np.asarray(fam.covariances(new64))
    np.testing.assert_allclose(ll32, ll64, rtol=1e-5)
    # The new mean itself is float32: good to ~eps * |sum_x| / counts, here ~1e-2 of the
    # tight standard deviation, which moves its variance by ~1e-3 relative; the expanded
    # form without the fallback would be off by ~eps (50 / 1e-3)^2, i.e. by ~100x it.
    np.testing.assert_allclose(np.asarray(fam.covariances(new32)), cov64, rtol=1e-2)
    np.testing.assert_allclose(new32.means, new64.means, rtol=0, atol=1e-5 * 50)


def test_vmapped_restarts_equal_single_when_one_needs_the_exact_form():
    # Restart 0 is safe for the fast form, restart 1 is not: under vmap both take the
    # exact form (one branch for the batch); each equals its own unbatched E-step.
    fam, x, near = _data_and_params("diag", 3.0, 1.0)
    _, _, far = _data_and_params("diag", 50.0, 1e-3)
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), near, far)
    lj = jax.jit(jax.vmap(fam.log_joint, (0, None)))(both, x)
    for i, p in enumerate((near, far)):
        np.testing.assert_allclose(lj[i], fam.log_joint(p, x), rtol=1e-5, atol=1e-3)



@pytest.mark.parametrize("ct", ["diag", "spherical", "tied"])
def test_nested_vmap_keeps_one_branch(ct):
    # The engine vmaps restarts inside data sets. Each vmap level must collapse the
    # fast/exact predicate, or the cond becomes a select that computes the (n, K, D)
    # exact form for every chunk (it doubled the time of a D=K=16 diag E-step).
    fam, x, params = _data_and_params(ct, 3.0, 1.0)
    batched = jax.tree.map(lambda a: jnp.asarray(a)[None, None], params)

    def step(p, x):
        return em.e_step(fam, p, x, chunk_size=100)

    fn = jax.vmap(lambda p, x: jax.vmap(lambda q: step(q, x))(p))
    text = jax.jit(fn).lower(batched, jnp.asarray(x)[None]).as_text()
    assert "stablehlo.case" in text  # a branch, not a select over both sides
    got = jax.jit(fn)(batched, jnp.asarray(x)[None])
    want = step(params, jnp.asarray(x))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a)[0, 0], b, rtol=2e-5, atol=1e-3)
