"""MixtureClassifier: a Bayes classifier from per-class Gaussian mixtures."""
import numpy as np
import pytest
from scipy import stats
from sklearn.datasets import load_iris
from sklearn.model_selection import cross_val_score
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import jaxem


def test_one_diag_component_per_class_is_gaussian_naive_bayes(x64):
    X, y = load_iris(return_X_y=True)
    nb = GaussianNB().fit(X, y)
    clf = jaxem.MixtureClassifier(1, covariance_type="diag", reg_covar=nb.epsilon_,
                                  tol=0.0, max_iter=3).fit(X, y)
    np.testing.assert_allclose(clf.class_prior_, nb.class_prior_, rtol=1e-12)
    np.testing.assert_allclose(clf.means_[:, 0], nb.theta_, rtol=1e-10)
    np.testing.assert_allclose(clf.predict_log_proba(X), nb.predict_log_proba(X),
                               rtol=1e-8, atol=1e-8)
    np.testing.assert_array_equal(clf.predict(X), nb.predict(X))


def test_posteriors_are_bayes_rule_over_mixture_densities(make_blobs, x64):
    X, y = make_blobs(3, 300, 2, 3, separation=3.0)
    y = np.array(["x", "y", "z"])[y]
    clf = jaxem.MixtureClassifier(2, random_state=0).fit(X, y)
    cov = np.linalg.inv(np.einsum("ckij,ckhj->ckih", clf.precisions_cholesky_,
                                  clf.precisions_cholesky_))
    dens = np.stack([
        sum(clf.weights_[c, k] * stats.multivariate_normal(clf.means_[c, k], cov[c, k]).pdf(X)
            for k in range(2)) for c in range(3)], axis=1)
    joint = dens * clf.class_prior_
    np.testing.assert_allclose(clf.predict_proba(X), joint / joint.sum(1, keepdims=True),
                               rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(clf.score_samples(X), np.log(joint.sum(1)), rtol=1e-10)
    assert set(clf.predict(X)) <= {"x", "y", "z"}


def test_ambiguous_and_anomalous_flags(make_blobs):
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(0, 1, (300, 2)), rng.normal(6, 1, (300, 2))])
    y = np.repeat([0, 1], 300)
    clf = jaxem.MixtureClassifier(1, anomaly_quantile=0.05, random_state=0).fit(X, y)
    # Along the segment between the class centres the posterior crosses 1/2: some
    # points there are ambiguous, the centres are not, and the rule is the posterior's.
    seg = np.linspace(0, 6, 61)[:, None] * np.ones(2)
    flags = clf.is_ambiguous(seg)
    assert flags.any() and not flags[0] and not flags[-1]
    np.testing.assert_array_equal(flags, clf.predict_proba(seg).max(1) < 0.9)
    assert not clf.is_ambiguous(seg, threshold=0.5).any()
    assert clf.is_anomalous([[30.0, -30.0]])[0] and not clf.is_anomalous([[0.0, 0.0]])[0]
    # About the quantile of the training rows fall under their own class's threshold.
    flagged = clf.is_anomalous(X).mean()
    assert 0.0 < flagged <= 0.05 + 1e-9


def test_works_in_a_pipeline_and_cross_validation():
    X, y = load_iris(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), jaxem.MixtureClassifier(1, random_state=0))
    nb = cross_val_score(make_pipeline(StandardScaler(), GaussianNB()), X, y, cv=3).mean()
    ours = cross_val_score(pipe, X, y, cv=3).mean()
    assert ours >= nb - 0.02  # full covariances: at least as good as naive Bayes here


def test_check_estimator(x64):  # float64: its subset-invariance checks use rtol 1e-7
    check_estimator(jaxem.MixtureClassifier(1, random_state=0))


@pytest.mark.parametrize("kwargs,words", [
    ({"n_components": 0}, "n_components must be an integer >= 1"),
    ({"covariance_type": "round"}, "covariance_type must be one of"),
    ({"ambiguity_threshold": 0.0}, "ambiguity_threshold must be in (0, 1]"),
    ({"anomaly_quantile": 1.0}, "anomaly_quantile must be in [0, 1)"),
    ({"priors": [0.2, 0.2]}, "priors must be non-negative and sum to 1"),
    ({"n_components": 60}, "fewer rows than n_components=60"),
])
def test_bad_parameters(kwargs, words):
    X, y = load_iris(return_X_y=True)
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        jaxem.MixtureClassifier(**kwargs).fit(X, y)


def test_a_feature_missing_in_every_row_of_a_class_is_refused():
    X, y = load_iris(return_X_y=True)
    X = X.copy()
    X[y == 2, 3] = np.nan  # class 2's mixture would have no data for feature 3
    with pytest.raises(ValueError, match="feature 3 .* in class 2"):
        jaxem.MixtureClassifier(n_components=1).fit(X, y)
    X[np.flatnonzero(y == 2)[0], 3] = 1.8  # one observed value: fitted
    clf = jaxem.MixtureClassifier(n_components=1).fit(X, y)
    assert np.all(np.isfinite(clf.predict_proba(X)))


def test_one_class_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        jaxem.MixtureClassifier().fit(np.ones((5, 2)) + np.arange(5)[:, None], np.zeros(5))
