"""HMMs and the mixture classifier on data with missing entries (NaN): brute-force
enumeration of the state paths with scipy's marginal densities as the oracle, EM's
monotonicity, recovery of the truth, per-class fits by hand, and the complete-data path
unchanged when there is no NaN."""
import itertools

import jax
import numpy as np
import pytest
from scipy import stats

import jaxem
from jaxem.estimators import hmm as hmm_estimators
from jaxem.families.hmm import hmm, pad_sequences

CTS = ["full", "tied", "diag", "spherical"]


def _with_nan(x, frac, seed, empty=()):
    """``x`` with a fraction ``frac`` of its entries NaN (MCAR) and rows ``empty`` all NaN."""
    x = np.array(x, dtype=float)
    x[np.random.default_rng(seed).random(x.shape) < frac] = np.nan
    x[list(empty)] = np.nan
    return x


def _full_covs(ct, covars, k, d):
    """Covariances as ``(K, D, D)`` from a ``covariance_type``'s storage."""
    if ct == "full":
        return covars
    if ct == "tied":
        return np.broadcast_to(covars, (k, d, d))
    if ct == "diag":
        return np.stack([np.diag(c) for c in covars])
    return np.stack([np.eye(d) * c for c in covars])


def _marginal_logpdf(x, mean, cov):
    """``log N(x_o; mean_o, cov_oo)`` over the observed (non-NaN) entries; 0 if none."""
    o = ~np.isnan(x)
    if not o.any():
        return 0.0
    return stats.multivariate_normal(mean[o], cov[np.ix_(o, o)]).logpdf(x[o])


def _enumerate(startprob, transmat, log_b):
    """Over all state paths of one sequence (``log_b (T, K)`` emission log-densities):
    ``(log p(x), posterior marginals (T, K), max_z log p(x, z))``."""
    t, k = log_b.shape
    paths = np.array(list(itertools.product(range(k), repeat=t)))
    lp = (np.log(startprob)[paths[:, 0]] + log_b[np.arange(t), paths].sum(1)
          + np.log(transmat)[paths[:, :-1], paths[:, 1:]].sum(1))
    total = np.logaddexp.reduce(lp)
    marg = np.stack([np.bincount(p, np.exp(lp - total), k) for p in paths.T])
    return total, marg, lp.max()


def _brute_force(startprob, transmat, log_density, x, lengths):
    """``(log p(X), posteriors (n, K), Viterbi log-probability)`` summed over sequences,
    ``log_density(x_t) -> (K,)``."""
    out, posts, best = 0.0, [], 0.0
    for seq in np.split(x, np.cumsum(lengths)[:-1]):
        total, marg, top = _enumerate(startprob, transmat,
                                      np.array([log_density(row) for row in seq]))
        out, best = out + total, best + top
        posts.append(marg)
    return out, np.concatenate(posts), best


def _hmm_by_hand(rng, k, d, ct):
    """A GaussianHMM with random parameters set as attributes (no fit)."""
    a = rng.normal(size=(k, d, d)) * 0.5 + np.eye(d)
    full = a @ np.swapaxes(a, 1, 2) + 0.3 * np.eye(d)
    covars = {"full": full, "tied": full[0], "diag": np.einsum("kdd->kd", full),
              "spherical": np.einsum("kdd->k", full) / d}[ct]
    model = jaxem.GaussianHMM(k, covariance_type=ct)
    model.startprob_ = rng.dirichlet(np.ones(k))
    model.transmat_ = rng.dirichlet(np.ones(k), k)
    model.means_ = rng.normal(size=(k, d)) * 2
    model.covars_ = covars
    return model, _full_covs(ct, covars, k, d)


LENGTHS = [4, 3]


@pytest.mark.parametrize("ct", CTS)
def test_gaussian_hmm_with_nan_equals_brute_force_enumeration(ct, x64):
    rng = np.random.default_rng(CTS.index(ct))
    k, d = 3, 3
    model, covs = _hmm_by_hand(rng, k, d, ct)
    x = _with_nan(rng.normal(size=(sum(LENGTHS), d)) * 2, 0.35, seed=1, empty=[1])
    assert np.isnan(x).any() and not np.isnan(x).all(axis=1)[[0, 2, 3, 4, 5, 6]].any()

    def log_density(row):
        return np.array([_marginal_logpdf(row, model.means_[j], covs[j]) for j in range(k)])

    ll, post, best = _brute_force(model.startprob_, model.transmat_, log_density, x, LENGTHS)
    score, got_post = model.score_samples(x, LENGTHS)
    np.testing.assert_allclose(score, ll, rtol=1e-10)
    np.testing.assert_allclose(model.score(x, LENGTHS), ll, rtol=1e-10)
    np.testing.assert_allclose(got_post, post, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(model.predict_proba(x, LENGTHS), post, rtol=1e-8, atol=1e-12)
    log_prob, states = model.decode(x, LENGTHS)
    np.testing.assert_allclose(log_prob, best, rtol=1e-10)
    assert states.shape == (sum(LENGTHS),)
    np.testing.assert_array_equal(model.predict(x, LENGTHS), states)


def test_gmmhmm_with_nan_equals_brute_force_enumeration(x64):
    rng = np.random.default_rng(7)
    k, m, d = 2, 2, 3
    a = rng.normal(size=(k, m, d, d)) * 0.5 + np.eye(d)
    covs = a @ np.swapaxes(a, -1, -2) + 0.3 * np.eye(d)
    model = jaxem.GMMHMM(k, n_mix=m, covariance_type="full")
    model.startprob_ = rng.dirichlet(np.ones(k))
    model.transmat_ = rng.dirichlet(np.ones(k), k)
    model.weights_ = rng.dirichlet(np.ones(m), k)
    model.means_ = rng.normal(size=(k, m, d)) * 2
    model.covars_ = covs
    x = _with_nan(rng.normal(size=(sum(LENGTHS), d)) * 2, 0.35, seed=2, empty=[5])

    def log_density(row):
        return np.array([np.logaddexp.reduce([
            np.log(model.weights_[j, i]) + _marginal_logpdf(row, model.means_[j, i],
                                                             covs[j, i])
            for i in range(m)]) for j in range(k)])

    ll, post, _ = _brute_force(model.startprob_, model.transmat_, log_density, x, LENGTHS)
    score, got_post = model.score_samples(x, LENGTHS)
    np.testing.assert_allclose(score, ll, rtol=1e-10)
    np.testing.assert_allclose(got_post, post, rtol=1e-8, atol=1e-12)


def _sample_hmm(rng, startprob, transmat, means, covs, lengths):
    xs, zs = [], []
    for n in lengths:
        z = [rng.choice(len(startprob), p=startprob)]
        for _ in range(n - 1):
            z.append(rng.choice(len(startprob), p=transmat[z[-1]]))
        z = np.array(z)
        xs.append(np.stack([rng.multivariate_normal(means[j], covs[j]) for j in z]))
        zs.append(z)
    return np.concatenate(xs), np.concatenate(zs)


_TRUTH = dict(startprob=np.array([0.6, 0.4]), transmat=np.array([[0.9, 0.1], [0.2, 0.8]]),
              means=np.array([[0.0, 0.0, 0.0], [3.0, -2.0, 1.0]]),
              covs=np.array([[[1.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 1.0]],
                             [[1.0, -0.5, 0.2], [-0.5, 1.5, 0.0], [0.2, 0.0, 0.8]]]))


@pytest.mark.parametrize("ct", CTS)
def test_em_with_missing_entries_never_decreases_the_log_likelihood(ct, x64):
    rng = np.random.default_rng(11)
    lengths = [40, 25]
    x, _ = _sample_hmm(rng, **_TRUTH, lengths=lengths)
    x = _with_nan(x, 0.25, seed=3, empty=[7, 50])
    # covars_prior=0 (and the default weights): the M-step is maximum likelihood, the
    # objective EM increases is the recorded log-likelihood.
    model = jaxem.GaussianHMM(2, covariance_type=ct, covars_prior=0.0, n_iter=15, tol=-1.0,
                              random_state=0).fit(x, lengths)
    history = np.asarray(model.monitor_.history)
    assert len(history) == 15 and np.all(np.isfinite(history))
    assert np.all(np.diff(history) >= -1e-9 * np.abs(history[1:]))
    assert history[-1] > history[0]


def test_fit_with_twenty_percent_missing_recovers_the_truth():
    rng = np.random.default_rng(12)
    lengths = [400] * 5
    x, z = _sample_hmm(rng, **_TRUTH, lengths=lengths)
    x = _with_nan(x, 0.2, seed=4)
    model = jaxem.GaussianHMM(2, covariance_type="full", n_iter=200, tol=1e-4, n_init=2,
                              random_state=0).fit(x, lengths)
    order = np.argsort(model.means_[:, 0])  # the truth's state 0 has the smaller mean
    np.testing.assert_allclose(model.means_[order], _TRUTH["means"], atol=0.15)
    np.testing.assert_allclose(model.covars_[order], _TRUTH["covs"], atol=0.2)
    np.testing.assert_allclose(model.transmat_[np.ix_(order, order)], _TRUTH["transmat"],
                               atol=0.04)
    # Decoding with NaN: the states of nearly every step, also of those with gaps.
    states = np.argsort(order)[model.predict(x, lengths)]
    assert np.mean(states == z) > 0.95


@pytest.mark.parametrize("make", [
    lambda: jaxem.GaussianHMM(2, covariance_type="full", n_iter=4, tol=-1.0, random_state=0),
    lambda: jaxem.GMMHMM(2, n_mix=2, covariance_type="diag", n_iter=4, tol=-1.0,
                         random_state=0),
])
def test_without_nan_the_fit_is_exactly_the_complete_data_path(make, monkeypatch):
    x, _ = _sample_hmm(np.random.default_rng(13), **_TRUTH, lengths=[30, 20])
    new = make().fit(x, [30, 20])
    # The code before missing values: the family as built, never switched.
    monkeypatch.setattr(hmm_estimators, "with_missing", lambda family, x: family)
    old = make().fit(x, [30, 20])
    np.testing.assert_array_equal(new.monitor_.history, old.monitor_.history)
    np.testing.assert_array_equal(new.means_, old.means_)
    np.testing.assert_array_equal(new.covars_, old.covars_)
    np.testing.assert_array_equal(new.transmat_, old.transmat_)
    np.testing.assert_array_equal(new.predict_proba(x), old.predict_proba(x))
    # With NaN, the switch is on (the complete-data density of a NaN entry is NaN).
    monkeypatch.undo()
    xm = _with_nan(x, 0.1, seed=5)
    assert np.isfinite(make().fit(xm, [30, 20]).score(xm, [30, 20]))


@pytest.mark.parametrize("emission", ["gaussian", "mixture"])
def test_jaxem_fit_switches_an_hmm_with_gaussian_emissions_to_missing_values(emission, x64):
    lengths = [30, 20]
    x, _ = _sample_hmm(np.random.default_rng(14), **_TRUTH, lengths=lengths)
    x = _with_nan(x, 0.2, seed=6, empty=[3])
    xp, w = pad_sequences(x, lengths)
    fam = (hmm("gaussian", covariance_type="diag", covars_prior=0.0, seq_len=30)
           if emission == "gaussian" else hmm(jaxem.gaussian("diag", reg_covar=0.0), seq_len=30))
    assert fam.supports_missing and not fam.missing
    assert fam.with_missing().missing and fam.with_missing().with_missing(False) == fam
    res = jaxem.fit(fam, xp, weights=w, n_components=2, key=jax.random.key(0), max_iter=10,
                    tol=-1.0)
    trace = np.asarray(res.trace)
    assert not bool(res.failed) and np.all(np.isfinite(trace))
    assert np.all(np.diff(trace) >= -1e-10)
    # The fitted model, scored by the estimator, against brute-force enumeration.
    p = jax.tree.map(np.asarray, res.params)
    emit = fam.emission if emission == "gaussian" else fam.emission.base
    covs = _full_covs("diag", np.asarray(emit.covariances(res.params.emission)), 2, 3)

    def log_density(row):
        return np.array([_marginal_logpdf(row, p.emission.means[j], covs[j]) for j in range(2)])

    model = jaxem.GaussianHMM(2, covariance_type="diag")
    model.startprob_, model.transmat_, model.means_ = p.startprob, p.transmat, p.emission.means
    model.covars_ = np.einsum("kdd->kd", covs)
    short = [4, 3]  # enumeration: the first steps of each sequence
    xs = np.concatenate([x[:4], x[30:33]])
    ll, _, _ = _brute_force(p.startprob, p.transmat, log_density, xs, short)
    np.testing.assert_allclose(model.score(xs, short), ll, rtol=1e-10)


def test_nan_is_refused_where_it_has_no_meaning():
    x = np.random.default_rng(15).normal(size=(12, 2))
    x[:, 1] = np.nan
    with pytest.raises(ValueError, match=r"column\(s\) \[1\] have every value missing"):
        jaxem.GaussianHMM(2).fit(x)
    with pytest.raises(ValueError, match="NaN"):
        jaxem.PoissonHMM(2).fit(np.array([[1.0], [np.nan], [3.0]]))
    x[:, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        jaxem.GaussianHMM(2).fit(x)


# -- the classifier --------------------------------------------------------------------------
def _classes(seed, n=150):
    """Two classes apart along feature 0 only, correlated features."""
    rng = np.random.default_rng(seed)
    cov = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.4], [0.2, 0.4, 1.0]])
    x = np.concatenate([rng.multivariate_normal([0, 0, 0], cov, n),
                        rng.multivariate_normal([5, 0, 1], cov, n)])
    return x, np.repeat(np.array(["a", "b"]), n)


def _gaps(x, seed):
    """20% of the entries of ``x`` NaN, every row keeping its last feature or more."""
    out = _with_nan(x, 0.2, seed)
    empty = np.all(np.isnan(out), axis=1)
    out[empty, -1] = x[empty, -1]
    return out


def test_classifier_with_nan_equals_per_class_mixtures_fitted_by_hand(x64):
    x, y = _classes(16)
    x_missing = _gaps(x, seed=7)
    clf = jaxem.MixtureClassifier(1, covariance_type="full", tol=1e-12, max_iter=1000,
                                  random_state=0).fit(x_missing, y)
    dens = []
    for c, label in enumerate(clf.classes_):
        gm = jaxem.GaussianMixture(1, covariance_type="full", tol=1e-12, max_iter=1000,
                                   random_state=0).fit(x_missing[y == label])
        np.testing.assert_allclose(clf.means_[c], gm.means_, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(clf.precisions_cholesky_[c], gm.precisions_cholesky_,
                                   rtol=1e-6, atol=1e-8)
        dens.append(gm.score_samples(x_missing))
    joint = np.stack(dens, axis=1) + np.log(clf.class_prior_)
    post = np.exp(joint - np.logaddexp.reduce(joint, axis=1, keepdims=True))
    np.testing.assert_allclose(clf.predict_proba(x_missing), post, rtol=1e-6, atol=1e-10)
    right = clf.predict(x_missing) == y
    seen = ~np.isnan(x_missing[:, 0])  # the feature that separates the classes
    assert np.mean(right[seen]) > 0.98 and np.mean(right[~seen]) > 0.6


def test_classifier_with_nan_predicts_sensibly_and_flags_what_it_cannot_tell():
    x, y = _classes(17)
    x_missing = _gaps(x, seed=8)
    clf = jaxem.MixtureClassifier(2, random_state=0).fit(x_missing, y)
    test, y_test = _classes(18)
    complete = clf.predict(test)
    # A few entries missing barely change the predictions of held-out rows.
    assert np.mean(complete == y_test) > 0.98
    assert np.mean(clf.predict(_gaps(test, seed=9)) == y_test) > 0.9
    # Without the feature that separates the classes a row is ambiguous, not anomalous;
    # a row far away in the features it has is anomalous.
    rows = np.array([[np.nan, 0.5, 0.5], [0.0, 0.0, np.nan], [np.nan, 40.0, np.nan]])
    assert clf.is_ambiguous(rows[:2]).tolist() == [True, False]
    assert clf.is_anomalous(rows).tolist() == [False, False, True]
    np.testing.assert_allclose(clf.predict_proba(rows[:1]), [[0.5, 0.5]], atol=0.1)
    with pytest.raises(ValueError, match="every value missing"):
        clf.predict([[np.nan, np.nan, np.nan]])


def test_classifier_without_nan_is_the_complete_data_path(x64):
    x, y = _classes(19)
    clf = jaxem.MixtureClassifier(2, random_state=0).fit(x, y)
    rows = x[::10]
    # The complete rows' posteriors alone (complete-data path) and next to a row with NaN
    # (the missing-value path for all of them) agree.
    alone = clf.predict_proba(rows)
    with_gap = clf.predict_proba(np.concatenate([rows, [[np.nan, 1.0, 1.0]]]))[:-1]
    np.testing.assert_allclose(with_gap, alone, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(clf.predict(rows), y[::10])
