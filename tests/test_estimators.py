"""The scikit-learn-style estimators: scikit-learn's own checks and its estimators as oracles."""
import warnings

import jax
import numpy as np
import pytest
from sklearn import cluster, mixture
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

import jaxem
from _sklearn_checks import run_y_checks, y_checks_expected_to_fail
from jaxem.datasets import load_faithful

# Random starts draw differently from weighted rows than from repeated rows, so a fit with
# integer weights equals a fit on repeated rows only from the same starting parameters
# (tested below), not from random ones.
_WEIGHTS_VS_REPEATS = {
    "check_sample_weight_equivalence_on_dense_data":
        "random initialisation draws differ between weighted and repeated rows",
    "check_sample_weight_equivalence_on_sparse_data":
        "random initialisation draws differ between weighted and repeated rows",
}


@parametrize_with_checks(
    [jaxem.GaussianMixture(n_components=2, max_iter=20), jaxem.KMeans(n_clusters=2)],
    expected_failed_checks=lambda est: {
        **_WEIGHTS_VS_REPEATS,
        # fit(X, y) reads y as partial labels: see tests/_sklearn_checks.py, and below.
        **({"check_estimators_nan_inf": "NaN is a missing value, fitted by exact EM",
            # (one sample: refused, as scikit-learn does, before y is read)
            **{name: reason for name, reason in y_checks_expected_to_fail().items()
               if name != "check_fit2d_1sample"}}
           if isinstance(est, jaxem.GaussianMixture) else {})},
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_sklearn_checks_that_pass_y_pass_without_it():
    """The checks expected to fail above on y alone pass with y dropped (y=None)."""
    run_y_checks(jaxem.GaussianMixture(n_components=2, max_iter=20), _WEIGHTS_VS_REPEATS)


def _blobs(seed=0, n=120, d=3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (3, d))
    return np.concatenate([c + rng.normal(size=(n // 3, d)) for c in centers])


def _start(x, covariance_type, k=3):
    """Starting parameters from one iteration of scikit-learn, shared by both fits."""
    g = mixture.GaussianMixture(k, covariance_type=covariance_type, max_iter=1, random_state=1)
    with warnings.catch_warnings():  # one iteration does not converge, on purpose
        warnings.simplefilter("ignore", ConvergenceWarning)
        return g.fit(x).weights_, g.means_, g.precisions_


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_gaussian_mixture_matches_sklearn(covariance_type):
    with jax.enable_x64(True):
        x = _blobs()
        w0, m0, p0 = _start(x, covariance_type)
        kw = dict(covariance_type=covariance_type, weights_init=w0, means_init=m0,
                  precisions_init=p0, max_iter=5, tol=0)
        with pytest.warns(ConvergenceWarning):  # both say that 5 iterations did not converge
            ours = jaxem.GaussianMixture(3, **kw).fit(x)
        with pytest.warns(ConvergenceWarning):
            ref = mixture.GaussianMixture(3, **kw).fit(x)
        for name in ("weights_", "means_", "covariances_", "precisions_", "lower_bounds_"):
            np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-6,
                                       err_msg=name)
        assert ours.n_iter_ == ref.n_iter_ == 5
        assert ours.means_.dtype == np.float64
        np.testing.assert_allclose(ours.score_samples(x), ref.score_samples(x), rtol=1e-8)
        np.testing.assert_allclose(ours.predict_proba(x), ref.predict_proba(x), atol=1e-8)
        np.testing.assert_allclose(ours.bic(x), ref.bic(x), rtol=1e-8)
        np.testing.assert_allclose(ours.aic(x), ref.aic(x), rtol=1e-8)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # fixed iterations
def test_partial_init_and_warm_start():
    """Means given, the rest from init_params; warm_start continues from the fit."""
    with jax.enable_x64(True):
        x = _blobs(1)
        _, m0, _ = _start(x, "full")
        gm = jaxem.GaussianMixture(3, means_init=m0, max_iter=2, tol=0, random_state=0)
        gm.fit(x)
        two = gm.means_.copy()
        gm.set_params(warm_start=True).fit(x)
        four = jaxem.GaussianMixture(3, means_init=m0, max_iter=4, tol=0, random_state=0).fit(x)
        np.testing.assert_allclose(gm.means_, four.means_, rtol=1e-10)
        assert not np.allclose(two, four.means_)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # fixed iterations
def test_integer_weights_equal_repeated_rows():
    with jax.enable_x64(True):
        x = _blobs(2)
        reps = np.random.default_rng(0).integers(0, 3, len(x))
        w0, m0, p0 = _start(x, "diag")
        kw = dict(covariance_type="diag", weights_init=w0, means_init=m0, precisions_init=p0,
                  max_iter=6, tol=0)
        weighted = jaxem.GaussianMixture(3, **kw).fit(x, sample_weight=reps)
        repeated = jaxem.GaussianMixture(3, **kw).fit(np.repeat(x, reps, axis=0))
        np.testing.assert_allclose(weighted.means_, repeated.means_, rtol=1e-9)
        np.testing.assert_allclose(weighted.lower_bounds_, repeated.lower_bounds_, rtol=1e-9)


def test_kmeans_matches_sklearn():
    with jax.enable_x64(True):
        x = _blobs(3, n=150, d=4)
        c0 = x[[0, 1, 2]]  # poor start on purpose: Lloyd needs several iterations
        ours = jaxem.KMeans(3, init=c0, max_iter=100, tol=0).fit(x)
        ref = cluster.KMeans(3, init=c0, n_init=1, max_iter=100, tol=0,
                             algorithm="lloyd").fit(x)
        np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-10)
        np.testing.assert_array_equal(ours.labels_, ref.labels_)
        np.testing.assert_allclose(ours.inertia_, ref.inertia_, rtol=1e-10)
        np.testing.assert_allclose(ours.transform(x), ref.transform(x), rtol=1e-7)
        np.testing.assert_allclose(ours.score(x), ref.score(x), rtol=1e-10)


def test_restarts_run_batched_and_best_wins():
    x = load_faithful()
    gm = jaxem.GaussianMixture(3, n_init=6, init_params="random", random_state=0).fit(x)
    lls = gm.restarts_.log_likelihood
    assert lls.shape == (6,) and gm.best_restart_ == int(np.nanargmax(lls))
    assert gm.lower_bound_ == pytest.approx(np.nanmax(lls))


def test_float32_by_default():
    gm = jaxem.GaussianMixture(2, random_state=0).fit(load_faithful().astype(np.float64))
    assert gm.means_.dtype == np.float32 and np.all(np.isfinite(gm.covariances_))


@pytest.mark.parametrize(
    "make, fit_x, match",
    [
        (lambda: jaxem.GaussianMixture(2, covariance_type="banana"), None, "covariance_type"),
        (lambda: jaxem.GaussianMixture(5), np.zeros((3, 2)), "n_samples >= n_components"),
        (lambda: jaxem.GaussianMixture(2, means_init=np.zeros((3, 2))), None, "means_init"),
        (lambda: jaxem.GaussianMixture(2, weights_init=[0.2, 0.2]), None, "weights_init"),
        (lambda: jaxem.GaussianMixture(2, precisions_init=np.ones((2, 2))), None,
         "precisions_init"),
        (lambda: jaxem.GaussianMixture(2, init_params="magic"), None, "init_params"),
        (lambda: jaxem.KMeans(2, init=np.zeros((3, 2))), None, "initial centers"),
        (lambda: jaxem.KMeans(9), np.zeros((3, 2)), "n_clusters"),
    ],
)
def test_bad_input_raises(make, fit_x, match):
    x = load_faithful() if fit_x is None else fit_x
    with pytest.raises(ValueError, match=match):
        make().fit(x)


@pytest.mark.parametrize("est", [jaxem.GaussianMixture(2), jaxem.KMeans(2)])
def test_predict_checks_features_and_nan(est):
    x = load_faithful()
    est.fit(x)
    with pytest.raises(ValueError, match="features"):
        est.predict(x[:, :1])
    bad = x.copy()
    bad[0] = np.nan  # GaussianMixture fits NaN entries as missing, but not a row of them
    with pytest.raises(ValueError, match="NaN"):
        est.fit(bad)
