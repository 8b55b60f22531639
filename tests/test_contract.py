"""The family contract: every family in one registry, every engine invariant over all of them.

A new family is tested by adding one line to ``FAMILIES``: a name, the family, its number
of components and a data generator ``(rng, n) -> x``.
"""
import dataclasses

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import example, given, settings

import jaxem
from jaxem import em
from jaxem.families.base import (Family, Mixture, MixtureFamily, SequenceFamily, capability,
                                 check_registered, log_prior)
from jaxem.families.emissions import GaussianEmission
from jaxem.families.hmm import hmm


def _blobs(rng, n, d=2):
    centres = np.array([[0.0, 0.0], [5.0, 5.0], [0.0, 6.0]])[:, :d]
    return centres[rng.integers(0, 3, n)] + rng.standard_normal((n, d))


def _binary(rng, n):
    p = np.array([[0.9, 0.8, 0.1, 0.2], [0.1, 0.3, 0.9, 0.7]])
    return (rng.random((n, 4)) < p[rng.integers(0, 2, n)]).astype(float)


def _codes(rng, n):
    return np.stack([rng.integers(0, v, n) for v in (2, 3, 4)], axis=1).astype(float)


def _counts(rng, n):
    rates = np.array([[1.0, 6.0, 2.0], [7.0, 1.0, 4.0]])
    return rng.poisson(rates[rng.integers(0, 2, n)]).astype(float)


SEQ = 6  # HMM sequence length: n must be a multiple

# name: (family, n_components, data(rng, n))
FAMILIES = {
    "gaussian-full": (jaxem.gaussian("full"), 3, _blobs),
    "gaussian-tied": (jaxem.gaussian("tied"), 3, _blobs),
    "gaussian-diag": (jaxem.gaussian("diag"), 3, _blobs),
    "gaussian-spherical": (jaxem.gaussian("spherical"), 3, _blobs),
    "kmeans": (jaxem.kmeans(), 3, _blobs),
    "bernoulli": (jaxem.bernoulli(alpha=0.5), 2, _binary),
    "categorical": (jaxem.categorical((2, 3, 4), alpha=0.5), 2, _codes),
    "poisson": (jaxem.poisson(alpha=0.5, beta=0.2), 2, _counts),
    "hmm-gaussian": (hmm("gaussian", covariance_type="diag", seq_len=SEQ), 2, _blobs),
    "hmm-gmm": (hmm("gmm", n_mix=2, covariance_type="diag", seq_len=SEQ), 2, _blobs),
    "hmm-bernoulli": (hmm(jaxem.bernoulli(alpha=0.5), seq_len=SEQ), 2, _binary),
    "trimmed-gaussian": (jaxem.trimmed(jaxem.gaussian("full"), 0.05), 3, _blobs),
}
NAMES = list(FAMILIES)
# The hyper-parameter each family's prior (or regulariser) has: traced, so it must not
# recompile.
PRIOR = {"gaussian": "reg_covar", "bernoulli": "alpha", "categorical": "alpha",
         "poisson": "alpha"}


def _data(name, seed, n=48):
    return FAMILIES[name][2](np.random.default_rng(seed), n)


def _fit(name, x, fam=None, **kw):
    default, k, _ = FAMILIES[name]
    kw = {"n_components": k, "key": jax.random.key(0), "tol": 0.0, "max_iter": 12} | kw
    return jaxem.fit(default if fam is None else fam, x, **kw)


_ML_HMM = hmm("gaussian", covariance_type="diag", seq_len=SEQ, covars_prior=0.0)


def _start(name, x):
    """The starting parameters of one restart (jaxem.fit's, for key 0)."""
    fam, k, _ = FAMILIES[name]
    return jax.tree.map(lambda a: a[0], jaxem.batch.initial_params(
        fam, x, n_components=k, key=jax.random.key(0)))


def _close(a, b, rtol=1e-9, atol=1e-11):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", NAMES)
def test_follows_the_contract(name):
    fam = FAMILIES[name][0]
    check_registered(fam)
    assert isinstance(fam, Family)
    assert isinstance(fam, SequenceFamily if capability(fam, "has_e_step") else MixtureFamily)
    if capability(fam, "centres_data"):
        assert callable(fam.translate)
    if capability(fam, "fused_rows"):
        assert callable(fam.log_joint_and_stats)


@pytest.mark.parametrize("name", [n for n in NAMES if capability(FAMILIES[n][0], "fused_rows")])
def test_a_fused_e_step_equals_log_joint_then_stats(name):
    # A fused E-step (one pass sharing its intermediates) is only a faster way to the
    # same sums: log_joint -> posterior -> stats.
    fam = FAMILIES[name][0]
    with jax.enable_x64(True):
        x = jnp.asarray(_data(name, 3))
        params = _start(name, x)
        stats, ll = fam.log_joint_and_stats(params, x, fam.posterior)
        resp, ll_want = fam.posterior(fam.log_joint(params, x))
        _close(stats, fam.stats(x, resp, params))
        _close(ll, ll_want)


def test_the_gaussian_gemm_forms_and_missing_values_fuse_their_e_step():
    assert capability(jaxem.gaussian("full", missing=True), "fused_rows")
    assert not capability(jaxem.gaussian("full"), "fused_rows")
    assert all(capability(jaxem.gaussian(ct), "fused_rows") for ct in ("tied", "diag", "spherical"))


def test_an_unregistered_family_is_refused_with_a_jaxem_error():
    class Plain(Mixture):  # follows the protocol, but is not a pytree
        def log_joint(self, params, x): ...
        def stats(self, x, resp, params=None): ...
        def m_step(self, stats, params=None): ...

    with pytest.raises(TypeError, match="not a registered pytree"):
        jaxem.fit(Plain(), np.zeros((4, 1)), n_components=1, key=jax.random.key(0))
    with pytest.raises(TypeError, match="model family"):
        jaxem.fit(object(), np.zeros((4, 1)), n_components=1, key=jax.random.key(0))


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16))
@example(seed=6566)
def test_the_objective_never_decreases(name, seed):
    # GaussianHMM's default covars_prior (hmmlearn's 1e-2) shapes its M-step but, as in
    # hmmlearn, is not in the recorded log-likelihood, so EM may lose ~1e-9 of it near
    # the fixed point (seed=6566); without it the M-step is the maximum-likelihood one.
    kw = {"fam": _ML_HMM} if name == "hmm-gaussian" else {}
    with jax.enable_x64(True):
        res = _fit(name, _data(name, seed), key=jax.random.key(seed), max_iter=15, **kw)
    trace = np.asarray(res.trace)[: int(res.n_iter)]
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:])), trace


@pytest.mark.parametrize("name", NAMES)
def test_the_trace_is_the_log_likelihood_plus_the_prior(x64, name):
    fam = FAMILIES[name][0]
    x = _data(name, 1)
    res = _fit(name, x, max_iter=1)  # the trace's one entry is taken at the start
    start = _start(name, x)
    _, ll_sum, w_sum = em.e_step(fam, start, jnp.asarray(x))
    np.testing.assert_allclose(res.log_likelihood, ll_sum / w_sum, rtol=1e-9)
    np.testing.assert_allclose(res.trace[0], (ll_sum + log_prior(fam, start)) / w_sum,
                               rtol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_equals_a_loop(x64, name):
    xs = np.stack([_data(name, s) for s in (2, 3)])
    both = _fit(name, xs, n_init=2)
    for i, x in enumerate(xs):
        # Data sets get their own sub-keys: compare from the same starting parameters.
        start = jax.tree.map(lambda a: a[i], jaxem.batch.initial_params(
            FAMILIES[name][0], xs, n_components=FAMILIES[name][1], key=jax.random.key(0),
            n_init=2))
        one = _fit(name, x, n_init=2, init=start)
        _close(jax.tree.map(lambda a: a[i], both.params), one.params)


@pytest.mark.parametrize("name", NAMES)
def test_zero_weight_padding_changes_nothing(x64, name):
    x = _data(name, 4)
    pad = _data(name, 5, n=SEQ)  # a whole padded sequence for the HMMs
    start = _start(name, x)
    ref = _fit(name, x, init=start, max_iter=5)  # five: see test_chunked_equals_full
    got = _fit(name, np.concatenate([x, pad]), init=start, max_iter=5,
               weights=np.r_[np.ones(len(x)), np.zeros(len(pad))])
    _close(got.params, ref.params)
    # tol=0 stops at an exactly repeated value, which rounding may reach an iteration
    # apart: compare the iterations both ran.
    k = min(int(got.n_iter), int(ref.n_iter))
    np.testing.assert_allclose(got.trace[:k], ref.trace[:k], rtol=1e-10)


@pytest.mark.parametrize("name", [n for n in NAMES if not n.startswith("hmm")])
def test_chunked_equals_full(x64, name):
    x = _data(name, 6, n=47)
    start = _start(name, x)
    # Five iterations: tol=0 stops at an exactly repeated value, which rounding may reach
    # at different iterations (a trimmed family's params count them).
    full = _fit(name, x, init=start, chunk_size=47, max_iter=5)
    _close(_fit(name, x, init=start, chunk_size=5, max_iter=5).params, full.params)


@pytest.mark.parametrize("name", [n for n in NAMES if n.split("-")[0] in PRIOR])
def test_changing_a_prior_does_not_recompile(x64, name):
    fam, k, _ = FAMILIES[name]
    field = PRIOR[name.split("-")[0]]
    x = jnp.asarray(_data(name, 7))
    start = _start(name, x)
    run = jax.jit(lambda f, p, x: em.run(f, p, x, max_iter=5))
    a = run(fam, start, x)
    b = run(dataclasses.replace(fam, **{field: 2 * getattr(fam, field) + 0.1}), start, x)
    assert run._cache_size() == 1
    assert not np.allclose(a.trace, b.trace)  # the new value was used


@pytest.mark.parametrize("name", [n for n in NAMES
                                  if hasattr(FAMILIES[n][0], "to_unconstrained")])
def test_unconstrained_round_trip(x64, name):
    fam, k, _ = FAMILIES[name]
    params = _fit(name, _data(name, 8)).params
    _close(fam.from_unconstrained(fam.to_unconstrained(params)), params, rtol=1e-9)


def _objective_of(fam, x):
    w_sum = x.shape[0]

    def value(u):
        p = fam.from_unconstrained(u)
        ll = jaxem.gradient.mean_log_likelihood(fam, p, x, jnp.ones(w_sum, x.dtype))
        return ll + log_prior(fam, p) / w_sum

    return value


@pytest.mark.parametrize("name", [n for n in NAMES
                                  if hasattr(FAMILIES[n][0], "to_unconstrained")])
def test_an_em_fixed_point_is_a_stationary_point_and_gradient_ascent_finds_it(x64, name):
    fam, k, _ = FAMILIES[name]
    x = jnp.asarray(_data(name, 9, n=60))
    fixed = _fit(name, x, max_iter=3000, tol=1e-14)
    assert bool(fixed.converged)
    value = _objective_of(fam, x)
    u = fam.to_unconstrained(fixed.params)
    grad = jax.grad(value)(u)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad)) < 1e-5
    # Gradient ascent from a perturbed start climbs back to EM's optimum.
    noise = jax.tree.map(lambda a: 0.05 * jax.random.normal(jax.random.key(1), a.shape, a.dtype),
                         u)
    start = fam.from_unconstrained(jax.tree.map(jnp.add, u, noise))
    res = jaxem.fit_gradient(fam, x, n_components=k, key=jax.random.key(0), init=start,
                             optimizer=optax.lbfgs(), max_iter=300)
    np.testing.assert_allclose(res.trace[int(res.n_iter) - 1], fixed.trace[int(fixed.n_iter) - 1],
                               rtol=1e-7)


def test_a_gaussian_emission_is_the_mixture_density_in_float32_far_from_the_origin():
    """The HMM emission and the mixture family share one float32-robust Gaussian."""
    x = jnp.asarray(_blobs(np.random.default_rng(0), 400) + 1000.0, jnp.float32)
    fam = jaxem.gaussian("diag")
    params = jaxem.fit(fam, x, n_components=3, key=jax.random.key(0), max_iter=20).params
    emission = GaussianEmission("diag")
    ep = emission.from_covariances(params.means, fam.covariances(params))
    mixture_ll = em.log_likelihood(fam, params, x)
    emission_ll = jax.nn.logsumexp(emission.log_likelihoods(ep, x) + jnp.log(params.weights),
                                   axis=1)
    np.testing.assert_allclose(emission_ll, mixture_ll, rtol=2e-6)
    resp = em.responsibilities(fam, params, x)
    _close(emission.stats(x, resp, ep)[1:], fam.stats(x, resp, params)[1:], rtol=1e-5,
           atol=1e-3)


def test_a_mixture_family_is_an_hmm_emission_exactly(x64):
    """hmm(jaxem.bernoulli()) against brute-force enumeration of every state path."""
    fam = hmm(jaxem.bernoulli(alpha=0.0), seq_len=4)
    x = _binary(np.random.default_rng(3), 4)
    params = fam.init(jax.random.key(0), jnp.asarray(x), None, 2)
    _, ll, _ = fam.e_step(params, jnp.asarray(x), jnp.ones(4))
    p = np.asarray(params.emission.probabilities)
    dens = np.prod(np.where(x[:, None, :] > 0, p[None], 1 - p[None]), axis=-1)  # (T, K)
    a, pi = np.asarray(params.transmat), np.asarray(params.startprob)
    total = 0.0
    for path in np.ndindex(2, 2, 2, 2):
        prob = pi[path[0]] * dens[0, path[0]]
        for t in range(1, 4):
            prob *= a[path[t - 1], path[t]] * dens[t, path[t]]
        total += prob
    np.testing.assert_allclose(ll, np.log(total), rtol=1e-12)
