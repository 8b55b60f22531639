"""``jaxem.GaussianMixture`` as a drop-in: each gap closed against scikit-learn as the
oracle, and hostile inputs answered with scikit-learn's error and words.

Oracle tests run in float64 (the ``x64`` fixture), where jaxem and scikit-learn from
the same explicit starting parameters take the same EM steps.
"""
import contextlib
import io
import re
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn import mixture
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils._param_validation import InvalidParameterError

import jaxem
from jaxem.estimators import gaussian_mixture as gm_module


def _data(seed=0, n=120):
    """Two overlapping 2-D blobs and explicit starting parameters for both libraries."""
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(size=(n // 2, 2)),
                   rng.normal(size=(n - n // 2, 2)) @ [[1.0, 0.3], [0.0, 0.6]] + 1.5])
    init = dict(weights_init=np.array([0.4, 0.6]), means_init=np.array([[-0.5, 0.0],
                                                                        [2.0, 1.0]]),
                precisions_init=np.array([[[1.0, 0.2], [0.2, 1.5]], np.eye(2) * 2.0]))
    return x, init


def _both(**kw):
    return jaxem.GaussianMixture(**kw), mixture.GaussianMixture(**kw)


def _raised(make_and_fit, exc=ValueError) -> str:
    with pytest.raises(exc) as info:
        make_and_fit()
    return str(info.value)


# -- the gaps of the issue, each against scikit-learn --------------------------------------
@pytest.mark.parametrize("max_iter", [1, 3])
def test_warm_start_converges_like_sklearn(x64, max_iter):
    """``while not gm.converged_: gm.fit(X)`` ends, after the same calls as scikit-learn,
    with the same parameters: a warm start compares with the previous lower bound."""
    x, init = _data()
    ours, ref = _both(n_components=2, warm_start=True, max_iter=max_iter, tol=1e-4, **init)
    history = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(60):
            ours.fit(x)
            ref.fit(x)
            history.append((ours.converged_, ours.n_iter_))
            assert (ours.converged_, ours.n_iter_) == (ref.converged_, ref.n_iter_)
            np.testing.assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=1e-9)
            if ref.converged_:
                break
    assert ours.converged_, history
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-7)
    np.testing.assert_allclose(ours.precisions_cholesky_, ref.precisions_cholesky_, rtol=1e-6)


def test_max_iter_zero_returns_the_initialisation(x64):
    """As scikit-learn: the starting parameters, no EM step, no warning. (scikit-learn
    1.9 itself fails here with all three ``*_init`` given: it never sets
    ``covariances_``; jaxem does.)"""
    x, init = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn does not warn for max_iter=0
        ours = jaxem.GaussianMixture(2, max_iter=0, **init).fit(x)
        ref = mixture.GaussianMixture(2, max_iter=0, means_init=init["means_init"],
                                      init_params="random_from_data").fit(x)
    np.testing.assert_array_equal(ours.weights_, init["weights_init"])
    np.testing.assert_array_equal(ours.means_, init["means_init"])
    np.testing.assert_allclose(ours.precisions_, init["precisions_init"], rtol=1e-12)
    np.testing.assert_allclose(ours.covariances_, np.linalg.inv(init["precisions_init"]),
                               rtol=1e-12)
    assert (ours.n_iter_, ours.converged_, ours.lower_bound_, ours.lower_bounds_) == (
        ref.n_iter_, ref.converged_, ref.lower_bound_, ref.lower_bounds_)
    np.testing.assert_array_equal(ref.means_, init["means_init"])


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_precisions_init_factor_is_sklearns(x64, covariance_type):
    """Given precisions are stored as scikit-learn stores them: for ``full``/``tied`` the
    upper-triangular factor with positive diagonal (the one its M-step computes), so the
    first EM step equals scikit-learn's."""
    x, init = _data()
    prec = {"full": init["precisions_init"], "tied": init["precisions_init"][0],
            "diag": np.array([[1.0, 2.0], [3.0, 0.5]]),
            "spherical": np.array([1.0, 4.0])}[covariance_type]
    kw = dict(init, precisions_init=prec, covariance_type=covariance_type)
    chol = jaxem.GaussianMixture(2, max_iter=0, **kw).fit(x).precisions_cholesky_
    if covariance_type in ("full", "tied"):
        np.testing.assert_allclose(chol @ np.swapaxes(chol, -1, -2), prec, rtol=1e-12)
        np.testing.assert_array_equal(np.tril(chol, -1), 0.0)
        assert np.all(np.diagonal(chol, axis1=-2, axis2=-1) > 0)
    else:
        np.testing.assert_allclose(chol**2, prec, rtol=1e-12)
    ours, ref = _both(n_components=2, max_iter=1, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        np.testing.assert_allclose(ours.fit(x).lower_bound_, ref.fit(x).lower_bound_,
                                   rtol=1e-12)
    np.testing.assert_allclose(ours.precisions_cholesky_, ref.precisions_cholesky_,
                               rtol=1e-8)


_BAD_INIT = {
    "weights shape": dict(weights_init=np.full((2, 1), 0.5)),
    "weights sum": dict(weights_init=[0.3, 0.3]),
    "means shape": dict(means_init=np.zeros((3, 2))),
    "full shape": dict(precisions_init=np.ones((3, 2, 2))),
    "full asymmetric": dict(precisions_init=np.array([[[1.0, 0.5], [0.0, 1.0]], np.eye(2)])),
    "full not positive": dict(precisions_init=np.array([np.eye(2), -np.eye(2)])),
    "tied not positive": dict(covariance_type="tied", precisions_init=[[1.0, 2.0], [2.0, 1.0]]),
    "tied shape": dict(covariance_type="tied", precisions_init=np.eye(3)),
    "diag negative": dict(covariance_type="diag", precisions_init=[[1.0, 1.0], [1.0, -1.0]]),
    "spherical zero": dict(covariance_type="spherical", precisions_init=[1.0, 0.0]),
    "spherical shape": dict(covariance_type="spherical", precisions_init=[1.0, 1.0, 1.0]),
}


@pytest.mark.parametrize("kw", _BAD_INIT.values(), ids=_BAD_INIT.keys())
def test_initial_parameters_checked_like_sklearn(monkeypatch, kw):
    """scikit-learn's message, plus the argument's name, before any compilation."""
    monkeypatch.setattr(gm_module, "fit", None)  # would raise TypeError if reached
    monkeypatch.setattr(gm_module, "initial_params", None)
    x, _ = _data()
    expected = _raised(lambda: mixture.GaussianMixture(2, **kw).fit(x))
    message = _raised(lambda: jaxem.GaussianMixture(2, **kw).fit(x))
    assert message.startswith(expected.rstrip(".")), (message, expected)
    assert re.search(r"\((weights|means|precisions)_init", message)


def test_weights_out_of_range_message_names_min_and_max():
    """scikit-learn swaps the two values in this message (its bug); jaxem does not."""
    x, _ = _data()
    message = _raised(lambda: jaxem.GaussianMixture(2, weights_init=[1.5, -0.5]).fit(x))
    assert "should be in the range [0, 1]" in message
    assert "max value 1.50000, min value -0.50000" in message


def test_sample_compiles_once_for_any_n(x64):
    x, init = _data()
    gm = jaxem.GaussianMixture(2, max_iter=0, random_state=0, **init).fit(x)
    gm.sample(1)
    before = gm_module._sample_block._cache_size()
    for n in (2, 3, 17, 100, 1000, 5000):
        xs, ys = gm.sample(n)
        assert xs.shape == (n, 2) and ys.shape == (n,)
        assert np.all(np.diff(ys) >= 0)  # grouped by component, as scikit-learn
    assert gm_module._sample_block._cache_size() == before
    xs, ys = gm.sample(20000)
    for k in range(2):  # the draws follow the model
        np.testing.assert_allclose(np.mean(ys == k), gm.weights_[k], atol=0.02)
        np.testing.assert_allclose(xs[ys == k].mean(axis=0), gm.means_[k], atol=0.05)
        np.testing.assert_allclose(np.cov(xs[ys == k].T), gm.covariances_[k], atol=0.1)


def _stdout(fit):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit()
    return out.getvalue()


@pytest.mark.parametrize("verbose", [1, 2])
def test_verbose_prints_sklearns_messages(x64, verbose):
    x, init = _data()
    ours, ref = _both(n_components=2, verbose=verbose, verbose_interval=2, tol=1e-6, **init)
    mine, theirs = _stdout(lambda: ours.fit(x)), _stdout(lambda: ref.fit(x))
    assert ours.n_iter_ == ref.n_iter_ >= 2
    if verbose == 1:
        assert mine == theirs
    else:  # same lines and changes; the times differ
        number = re.compile(r"time lapse [0-9.]+s")
        assert number.sub("time lapse", mine) == number.sub("time lapse", theirs)


def test_convergence_warning_is_sklearns(x64):
    x, init = _data()
    ours, ref = _both(n_components=2, max_iter=1, **init)
    with pytest.warns(ConvergenceWarning) as theirs:
        ref.fit(x)
    with pytest.warns(ConvergenceWarning) as mine:
        ours.fit(x)
    assert [str(w.message) for w in mine] == [str(w.message) for w in theirs]


@pytest.mark.parametrize("method", ["predict", "predict_proba", "score", "score_samples",
                                    "sample", "bic", "aic"])
def test_not_fitted_error_is_sklearns(method):
    x, _ = _data()
    arg = () if method == "sample" else (x,)
    expected = _raised(lambda: getattr(mixture.GaussianMixture(2), method)(*arg),
                       NotFittedError)
    assert _raised(lambda: getattr(jaxem.GaussianMixture(2), method)(*arg),
                   NotFittedError) == expected


_BAD_PARAMS = [dict(n_components=0), dict(n_components=-1), dict(n_components=2.5),
               dict(n_init=0), dict(n_init=-1), dict(n_init=1.5), dict(max_iter=-1),
               dict(tol=-1.0), dict(reg_covar=-1e-6), dict(covariance_type="banana"),
               dict(init_params="magic"), dict(verbose_interval=0), dict(warm_start="yes")]
# jaxem's options beyond scikit-learn's: its message names them after scikit-learn's words.
_MORE_OPTIONS = {"n_components": " or a str among {'aic', 'bic'}"}


@pytest.mark.parametrize("kw", _BAD_PARAMS, ids=[str(k) for k in _BAD_PARAMS])
def test_invalid_parameters_like_sklearn_before_compiling(monkeypatch, kw):
    monkeypatch.setattr(gm_module, "fit", None)
    monkeypatch.setattr(gm_module, "initial_params", None)
    x, _ = _data()
    expected = _raised(lambda: mixture.GaussianMixture(**kw).fit(x), InvalidParameterError)
    for name in set(kw) & set(_MORE_OPTIONS):
        expected = expected.replace(". Got ", f"{_MORE_OPTIONS[name]}. Got ")
    message = _raised(lambda: jaxem.GaussianMixture(**kw).fit(x), InvalidParameterError)
    assert _sorted_sets(message) == _sorted_sets(expected)


def _sorted_sets(message):
    """The message with each ``{...}`` of options sorted: a set prints in hash order."""
    return re.sub(r"\{([^}]*)\}", lambda m: str(sorted(m.group(1).split(", "))), message)


def test_chunk_size_validated():
    x, _ = _data()
    message = _raised(lambda: jaxem.GaussianMixture(chunk_size=0).fit(x), InvalidParameterError)
    assert "'chunk_size' parameter of GaussianMixture must be an int in the range [1, inf)" \
        in message


# -- a failed fit says what went wrong ------------------------------------------------------
def test_singular_covariance_message_is_sklearns(x64):
    x = np.vstack([np.ones((5, 5)), np.zeros((5, 5))])
    kw = dict(n_components=10, reg_covar=0, random_state=0)
    expected = _raised(lambda: mixture.GaussianMixture(**kw).fit(x))
    assert _raised(lambda: jaxem.GaussianMixture(**kw).fit(x), jaxem.FitError) == expected


def test_float32_overflow_message_says_scale_or_float64():
    """Data at 1e19 overflow float32 (scikit-learn fits them in float64): the error says
    so, not "increase reg_covar"."""
    x, _ = _data()
    message = _raised(lambda: jaxem.GaussianMixture(2, random_state=0).fit(x * 1e19),
                      jaxem.FitError)
    assert "overflow float32" in message and "x64" in message and "Scale" in message
    assert "reg_covar" not in message


# -- hostile inputs -------------------------------------------------------------------------
_X, _ = _data()
_BAD_X = {
    "strings": (np.array([["a", "b"], ["c", "d"]]), ValueError, "could not convert"),
    "complex": (_X + 1j, ValueError, "Complex data not supported"),
    "sparse": (sp.csr_matrix(_X), TypeError, "Sparse data was passed"),
    "inf": (np.where(np.arange(_X.size).reshape(_X.shape) == 3, np.inf, _X), ValueError,
            "Input X contains infinity"),
    "1-D": (_X[:, 0], ValueError, "Expected 2D array, got 1D array"),
    "3-D": (_X[None], ValueError, "Found array with dim 3"),
    "one row": (_X[:1], ValueError, "minimum of 2 is required"),
    "no rows": (_X[:0], ValueError, "0 sample(s)"),
    "fewer rows than components": (_X[:2], ValueError, "n_samples >= n_components"),
}


def test_nan_is_missing_but_a_row_of_nan_is_refused():
    # A deliberate difference: scikit-learn refuses any NaN; jaxem fits NaN entries as
    # missing values (tests/test_gaussian_missing.py) but not a row with none observed.
    x = np.where(np.arange(_X.shape[0])[:, None] == 3, np.nan, _X)
    with pytest.raises(ValueError, match="every value missing"):
        jaxem.GaussianMixture(3).fit(x)


@pytest.mark.parametrize("x, error, words", _BAD_X.values(), ids=_BAD_X.keys())
def test_bad_x_to_fit(x, error, words):
    with pytest.raises(error, match=re.escape(words)):
        jaxem.GaussianMixture(3).fit(x)
    with pytest.raises(error, match=re.escape(words)):  # the oracle says the same
        mixture.GaussianMixture(3).fit(x)


def _fitted():
    x, init = _data()
    return jaxem.GaussianMixture(2, max_iter=0, **init).fit(x), x


def test_float16_and_integer_x_are_converted(x64):
    """As scikit-learn: converted to float64 (x64 mode), the same model as the converted data."""
    x, init = _data()
    for cast in (x.astype(np.float16), np.round(x * 10).astype(np.int64)):
        ours = jaxem.GaussianMixture(2, max_iter=0, **init).fit(cast)
        assert ours.means_.dtype == np.float64
        same = jaxem.GaussianMixture(2, max_iter=0, **init).fit(cast.astype(np.float64))
        np.testing.assert_array_equal(ours.score_samples(cast), same.score_samples(cast))
        mixture.GaussianMixture(2, max_iter=0).fit(cast)  # scikit-learn accepts it too


@pytest.mark.parametrize("method", ["predict", "predict_proba", "score_samples", "score"])
def test_wrong_feature_count_at_predict(x64, method):
    gm, x = _fitted()
    with pytest.raises(ValueError, match="X has 1 features, but GaussianMixture is "
                                         "expecting 2 features as input"):
        getattr(gm, method)(x[:, :1])


@pytest.mark.parametrize("name, value, words", [
    ("means_", np.zeros((2, 3)), "means_ must have shape (n_components, n_features=2)"),
    ("weights_", np.full(3, 1 / 3), "weights_ has shape (3,)"),
    ("precisions_cholesky_", np.ones((2, 2)), "precisions_cholesky_ has shape (2, 2)"),
])
def test_parameters_set_by_hand_with_wrong_shapes(x64, name, value, words):
    gm, x = _fitted()
    setattr(gm, name, value)
    with pytest.raises(ValueError, match=re.escape(words)):
        gm.predict(x)
    with pytest.raises(ValueError, match=re.escape(words)):
        gm.sample(3)


@pytest.mark.parametrize("n", [0, -1, 2.5, "3"])
def test_bad_n_samples(x64, n):
    gm, _ = _fitted()
    with pytest.raises(ValueError, match="Invalid value for 'n_samples'"):
        gm.sample(n)


@pytest.mark.parametrize("weights, words", [([1.0] * 5, "sample_weight must have shape"),
                                            (-np.ones(120), "non-negative"),
                                            (np.zeros(120), "must not be all zero")])
def test_bad_sample_weight(weights, words):
    x, _ = _data()
    with pytest.raises(ValueError, match=words):
        jaxem.GaussianMixture(2).fit(x, sample_weight=weights)
