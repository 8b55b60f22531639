"""HMM family and estimators: hmmlearn 0.3.3 as the oracle, EM invariants, input checks."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hmmlearn import hmm as hl

import jaxem
from jaxem.estimators.hmm import CategoricalHMM, GaussianHMM, PoissonHMM
from jaxem.families.hmm import hmm, pad_sequences

LENGTHS = [9, 14, 5]  # several sequences of different lengths
K = 3


def _gaussian_data(seed, d=2):
    rng = np.random.default_rng(seed)
    n = sum(LENGTHS)
    return rng.normal(size=(n, d)) + 3.0 * rng.integers(0, K, size=(n, 1))


def _start(rng, d, ct):
    covs = {"diag": rng.uniform(0.5, 2, (K, d)), "spherical": rng.uniform(0.5, 2, K),
            "full": np.stack([np.diag(rng.uniform(0.5, 2, d)) + 0.1 for _ in range(K)]),
            "tied": np.diag(rng.uniform(0.5, 2, d)) + 0.1}[ct]
    return dict(startprob_=rng.dirichlet(np.ones(K)),
                transmat_=rng.dirichlet(np.ones(K), K),
                means_=rng.normal(size=(K, d)) * 3, covars_=covs)


def _fit_both(ours, ref, start, x, n_iter, check_score=False):
    for m in (ours, ref):
        m.set_params(n_iter=n_iter, init_params="")
        for name, value in start.items():
            setattr(m, name, value)
    ref.set_params(tol=-np.inf)  # hmmlearn then runs exactly n_iter iterations
    ours.set_params(tol=-1.0)  # |gain| <= -1 never holds: exactly n_iter iterations
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit(x, LENGTHS)
    with jax.enable_x64(True):
        ours.fit(x, LENGTHS)
        if check_score:  # once: each score compiles another forward-backward
            np.testing.assert_allclose(ours.score(x, LENGTHS), ref.score(x, LENGTHS), rtol=1e-6)
    np.testing.assert_allclose(ours.monitor_.history, ref.monitor_.history, rtol=1e-6)
    np.testing.assert_allclose(ours.startprob_, ref.startprob_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ours.transmat_, ref.transmat_, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("ct", ["diag", "spherical", "full", "tied"])
def test_gaussian_matches_hmmlearn(ct):
    x = _gaussian_data(0)
    start = _start(np.random.default_rng(1), x.shape[1], ct)
    # Non-default priors in one case, defaults (covars_prior=1e-2 ...) in the others.
    priors = dict(startprob_prior=2.0, transmat_prior=1.5, means_prior=0.5, means_weight=0.3,
                  covars_prior=0.2, covars_weight=4.0) if ct == "diag" else {}
    ours = GaussianHMM(K, covariance_type=ct, **priors)
    ref = hl.GaussianHMM(K, covariance_type=ct, **priors)
    _fit_both(ours, ref, start, x, n_iter=4, check_score=ct == "full")
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-6)
    ref_covars = ref._covars_[:, 0] if ct == "spherical" else ref._covars_  # (K, D) tiled
    np.testing.assert_allclose(ours._covars_, ref_covars, rtol=1e-6, atol=1e-12)


def test_gaussian_params_subset_matches_hmmlearn():
    """``params`` letters: parameters not listed stay fixed, as in hmmlearn. (hmmlearn
    0.3.3 cannot update covariances without means: its ``post`` count is then 0.)"""
    x = _gaussian_data(2)
    start = _start(np.random.default_rng(3), x.shape[1], "full")
    ours = GaussianHMM(K, covariance_type="full", params="tm")
    ref = hl.GaussianHMM(K, covariance_type="full", params="tm")
    _fit_both(ours, ref, start, x, n_iter=3)
    np.testing.assert_array_equal(ours.startprob_, start["startprob_"])
    np.testing.assert_allclose(ours.covars_, start["covars_"], rtol=1e-12)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-6)


def test_categorical_matches_hmmlearn():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 5, size=(sum(LENGTHS), 1))
    start = dict(startprob_=rng.dirichlet(np.ones(K)), transmat_=rng.dirichlet(np.ones(K), K),
                 emissionprob_=rng.dirichlet(np.ones(5), K))
    ours = CategoricalHMM(K, n_features=5, emissionprob_prior=1.2)
    ref = hl.CategoricalHMM(K, n_features=5, emissionprob_prior=1.2)
    _fit_both(ours, ref, start, x, n_iter=4)
    np.testing.assert_allclose(ours.emissionprob_, ref.emissionprob_, rtol=1e-6, atol=1e-12)


def test_poisson_matches_hmmlearn():
    rng = np.random.default_rng(5)
    x = rng.poisson(rng.choice([1.0, 4.0, 9.0], size=(sum(LENGTHS), 1)), size=(sum(LENGTHS), 2))
    start = dict(startprob_=rng.dirichlet(np.ones(K)), transmat_=rng.dirichlet(np.ones(K), K),
                 lambdas_=rng.uniform(1, 8, (K, 2)))
    ours = PoissonHMM(K, lambdas_prior=0.5, lambdas_weight=0.1)
    ref = hl.PoissonHMM(K, lambdas_prior=0.5, lambdas_weight=0.1)
    _fit_both(ours, ref, start, x, n_iter=4)
    np.testing.assert_allclose(ours.lambdas_, ref.lambdas_, rtol=1e-6)


def test_decoding_matches_hmmlearn():
    x = _gaussian_data(6)
    start = _start(np.random.default_rng(7), x.shape[1], "diag")
    ours, ref = GaussianHMM(K), hl.GaussianHMM(K)
    for m in (ours, ref):
        for name, value in start.items():
            setattr(m, name, value)
    with jax.enable_x64(True):
        ours._shift = np.zeros(2)  # as if fitted on already centred data
        lp, states = ours.decode(x, LENGTHS)
        post = ours.predict_proba(x, LENGTHS)
    ref_lp, ref_states = ref.decode(x, LENGTHS)
    np.testing.assert_array_equal(states, ref_states)
    np.testing.assert_allclose(lp, ref_lp, rtol=1e-8)
    np.testing.assert_allclose(post, ref.predict_proba(x, LENGTHS), atol=1e-8)


def _family_fit(fam, x, w, p0, n_iter):
    return jaxem.em.run(fam, p0, jnp.asarray(x), jnp.asarray(w), max_iter=n_iter, tol=-1.0)


def test_log_likelihood_never_decreases_and_parallel_equals_sequential():
    """Maximum likelihood (no priors): EM is monotone; the associative-scan E-step gives
    the same trajectory as the sequential one."""
    x = _gaussian_data(8)
    xp, w = pad_sequences(x, LENGTHS)
    with jax.enable_x64(True):
        traces = []
        for parallel in (False, True):
            fam = hmm("gaussian", covariance_type="full", seq_len=max(LENGTHS),
                      covars_prior=0.0, parallel=parallel)
            p0 = fam.init(jax.random.key(0), jnp.asarray(xp), jnp.asarray(w), K, "random")
            out = _family_fit(fam, xp, w, p0, n_iter=15)
            traces.append(np.asarray(out.trace))
        assert np.all(np.diff(traces[0]) >= -1e-10)
        np.testing.assert_allclose(traces[1], traces[0], rtol=1e-9)


def test_padded_batches_equal_separate_fits():
    """Two data sets with different sequence structures, padded into one (B, n, D) batch
    (one with an all-padding dummy sequence) and fitted by one jaxem.fit call, equal
    separate fits."""
    rng = np.random.default_rng(9)
    x1 = _gaussian_data(10)
    x2 = rng.normal(size=(20, 2))
    lengths2 = [12, 8]
    seq_len = max(LENGTHS)
    a, wa = pad_sequences(x1, LENGTHS, seq_len)
    b, wb = pad_sequences(x2, lengths2, seq_len)
    b, wb = np.pad(b, ((0, a.shape[0] - b.shape[0]), (0, 0))), np.pad(wb, (0, a.shape[0] - b.shape[0]))
    fam = hmm("gaussian", covariance_type="diag", seq_len=seq_len)
    with jax.enable_x64(True):
        p0 = fam.init(jax.random.key(1), jnp.asarray(a), jnp.asarray(wa), K, "random")
        batch = jaxem.fit(fam, np.stack([a, b]), weights=np.stack([wa, wb]), n_components=K,
                          key=jax.random.key(0), init=p0, max_iter=6, tol=-1.0)
        b_own, wb_own = pad_sequences(x2, lengths2)
        fam2 = hmm("gaussian", covariance_type="diag", seq_len=max(lengths2))
        for i, (fm, xx, ww) in enumerate([(fam, a, wa), (fam2, b_own, wb_own)]):
            single = _family_fit(fm, xx, ww, p0, n_iter=6)
            np.testing.assert_allclose(batch.trace[i], single.trace, rtol=1e-10)
            for got, want in zip(jax.tree.leaves(batch.params), jax.tree.leaves(single.params)):
                np.testing.assert_allclose(got[i], want, rtol=1e-9, atol=1e-12)


def test_restarts_run_in_parallel_and_the_best_wins():
    x = _gaussian_data(11)
    model = GaussianHMM(K, n_iter=20, n_init=4, random_state=0).fit(x, LENGTHS)
    assert model.restarts_log_likelihood_.shape == (4,)
    np.testing.assert_allclose(model.monitor_.history[-1], model.restarts_log_likelihood_.max(),
                               rtol=1e-6)
    sample, states = model.sample(30, random_state=1)
    assert sample.shape == (30, 2) and states.shape == (30,)
    assert model.predict(x, LENGTHS).shape == (sum(LENGTHS),)


@pytest.mark.parametrize("make, x, lengths, match", [
    (lambda: GaussianHMM(2), np.zeros((10, 1)), [4, 5], "sum to 9"),
    (lambda: GaussianHMM(2), np.zeros((10, 1)), [10, 0], "empty"),
    (lambda: GaussianHMM(2), np.array([[np.nan], [np.nan], [np.nan]]), None, "NaN"),
    (lambda: PoissonHMM(2), np.array([[0.0], [np.nan], [1.0]]), None, "NaN"),
    (lambda: GaussianHMM(2), np.array([[0.0], [np.inf], [1.0]]), None, "infinity"),
    (lambda: CategoricalHMM(2, n_features=3), np.array([[0], [3], [1]]), None, "up to 2"),
    (lambda: CategoricalHMM(2), np.array([[0], [-1], [1]]), None, "non-negative"),
    (lambda: PoissonHMM(2), np.array([[0.0], [1.5], [1.0]]), None, "counts"),
])
def test_bad_input_raises_a_clear_value_error(make, x, lengths, match):
    with pytest.raises(ValueError, match=match):
        make().fit(x, lengths)
