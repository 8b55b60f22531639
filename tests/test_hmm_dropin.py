"""jaxem's HMMs as a drop-in for hmmlearn's: each gap of issue 7, hmmlearn 0.3.3 the oracle.

Every comparison builds the same model in both libraries (attributes set by hand) and
checks jaxem against hmmlearn's answer; bad inputs must raise before any compilation
with a message that names the argument.
"""
import logging

import jax
import numpy as np
import pytest
from hmmlearn import hmm as hl
from hmmlearn.base import ConvergenceMonitor as HLMonitor
from sklearn.exceptions import NotFittedError

import jaxem
from jaxem.estimators.hmm import ConvergenceMonitor

WEATHER = dict(startprob_=np.array([0.6, 0.4]),
               transmat_=np.array([[0.7, 0.3], [0.4, 0.6]]),
               emissionprob_=np.array([[0.1, 0.4, 0.5], [0.6, 0.3, 0.1]]))
WALK_SHOP_CLEAN = np.array([[0], [1], [2], [2], [0], [1]])


def _built(cls, attributes, **kwargs):
    """A model of ``cls`` with ``attributes`` set by hand (no fit)."""
    model = cls(**kwargs)
    for name, value in attributes.items():
        setattr(model, name, np.copy(value) if isinstance(value, (list, np.ndarray)) else value)
    return model


def _gaussian_attributes(rng, k=3, d=2, ct="diag"):
    covars = {"diag": rng.uniform(0.5, 2, (k, d)), "spherical": rng.uniform(0.5, 2, k),
              "full": np.stack([np.diag(rng.uniform(0.5, 2, d)) + 0.2 for _ in range(k)]),
              "tied": np.diag(rng.uniform(0.5, 2, d)) + 0.2}[ct]
    return dict(startprob_=rng.dirichlet(np.ones(k)), transmat_=rng.dirichlet(np.ones(k), k),
                means_=rng.normal(size=(k, d)) * 3, covars_=covars)


def _poisson_attributes(rng, k=2, d=3):
    return dict(startprob_=rng.dirichlet(np.ones(k)), transmat_=rng.dirichlet(np.ones(k), k),
                lambdas_=rng.uniform(0.5, 6, (k, d)))


def _assert_inference_matches(ours, ref, x, lengths):
    np.testing.assert_allclose(ours.score(x, lengths), ref.score(x, lengths), rtol=1e-10)
    lp, states = ours.decode(x, lengths)
    ref_lp, ref_states = ref.decode(x, lengths)
    np.testing.assert_allclose(lp, ref_lp, rtol=1e-10)
    np.testing.assert_array_equal(states, ref_states)
    np.testing.assert_array_equal(ours.predict(x, lengths), ref.predict(x, lengths))
    np.testing.assert_allclose(ours.predict_proba(x, lengths), ref.predict_proba(x, lengths),
                               atol=1e-10)
    np.testing.assert_array_equal(ours.decode(x, lengths, algorithm="map")[1],
                                  ref.decode(x, lengths, algorithm="map")[1])


# -- a model built by hand scores, decodes and samples before fit -------------------------
def test_hand_built_categorical_matches_hmmlearn(x64):
    ours = _built(jaxem.CategoricalHMM, WEATHER, n_components=2)
    ref = _built(hl.CategoricalHMM, WEATHER, n_components=2)
    _assert_inference_matches(ours, ref, WALK_SHOP_CLEAN, [3, 3])
    x, z = ours.sample(50, random_state=0)
    assert x.shape == (50, 1) and z.shape == (50,)
    assert np.issubdtype(x.dtype, np.integer) and set(np.unique(x)) <= {0, 1, 2}
    assert ours.n_features == ref.n_features == 3  # set from emissionprob_, as hmmlearn


@pytest.mark.parametrize("ct", ["diag", "spherical", "full", "tied"])
def test_hand_built_gaussian_matches_hmmlearn(ct, x64):
    attrs = _gaussian_attributes(np.random.default_rng(0), ct=ct)
    ours = _built(jaxem.GaussianHMM, attrs, n_components=3, covariance_type=ct)
    ref = _built(hl.GaussianHMM, attrs, n_components=3, covariance_type=ct)
    x, _ = ref.sample(40, random_state=1)
    _assert_inference_matches(ours, ref, x, [25, 15])
    np.testing.assert_allclose(ours.covars_, ref.covars_, rtol=1e-12)


def test_hand_built_poisson_matches_hmmlearn(x64):
    attrs = _poisson_attributes(np.random.default_rng(2))
    ours = _built(jaxem.PoissonHMM, attrs, n_components=2)
    ref = _built(hl.PoissonHMM, attrs, n_components=2)
    x, _ = ref.sample(30, random_state=3)
    _assert_inference_matches(ours, ref, x, None)


def test_wikipedia_forward_backward_matches_hmmlearn(x64):
    """hmmlearn's test_base Wikipedia example (umbrella world) as a CategoricalHMM."""
    attrs = dict(startprob_=[0.5, 0.5], transmat_=[[0.7, 0.3], [0.3, 0.7]],
                 emissionprob_=[[0.9, 0.1], [0.2, 0.8]])
    x = np.array([[0], [0], [1], [0], [0]])
    ours = _built(jaxem.CategoricalHMM, attrs, n_components=2)
    ref = _built(hl.CategoricalHMM, attrs, n_components=2)
    _assert_inference_matches(ours, ref, x, None)


# -- hmmlearn's _check: probabilities that sum to 1, emission shapes -------------------------
@pytest.mark.parametrize("name, value, words", [
    ("startprob_", [0.6, 0.6], "startprob_ must sum to 1"),
    ("startprob_", [0.2, 0.3, 0.5], "startprob_ must have shape (2,)"),
    ("startprob_", [1.5, -0.5], "startprob_ must be non-negative"),
    ("transmat_", [[0.7, 0.7], [0.4, 0.6]], "transmat_ rows must sum to 1"),
    ("transmat_", [[1.0]], "transmat_ must have shape (2, 2)"),
    ("emissionprob_", [[0.1, 0.4, 0.5]], "emissionprob_ must have shape (2, 3)"),
    ("emissionprob_", [[0.1, 0.4, 0.6], [0.6, 0.3, 0.1]], "emissionprob_ rows must sum to 1"),
    ("emissionprob_", [[0.1, np.nan, 0.5], [0.6, 0.3, 0.1]], "emissionprob_ contains NaN"),
])
@pytest.mark.parametrize("method", ["score", "decode", "predict_proba"])
def test_invalid_attributes_raise_naming_them(name, value, words, method):
    model = _built(jaxem.CategoricalHMM, {**WEATHER, name: value}, n_components=2,
                   n_features=3)
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        getattr(model, method)(WALK_SHOP_CLEAN)


@pytest.mark.parametrize("cls, attrs, name, value, words", [
    (jaxem.GaussianHMM, "gauss", "means_", np.zeros((2, 2)), "means_ must have shape"),
    (jaxem.GaussianHMM, "gauss", "covars_", np.ones((3, 3)), "covars_ must have shape"),
    (jaxem.GaussianHMM, "gauss", "covars_", -np.ones((3, 2)), "covars_ must be positive"),
    (jaxem.PoissonHMM, "poisson", "lambdas_", np.ones((3, 3)), "lambdas_ must have shape"),
    (jaxem.PoissonHMM, "poisson", "lambdas_", -np.ones((2, 3)), "lambdas_ must be non-neg"),
])
def test_invalid_emission_parameters_raise_naming_them(cls, attrs, name, value, words):
    rng = np.random.default_rng(4)
    base = _gaussian_attributes(rng) if attrs == "gauss" else _poisson_attributes(rng)
    k = len(base["startprob_"])
    model = _built(cls, {**base, name: value}, n_components=k)
    x = np.ones((5, 2 if attrs == "gauss" else 3))
    with pytest.raises(ValueError, match=words):
        model.score(x)
    with pytest.raises(ValueError, match=words):
        model.sample(3)


def test_full_covariance_not_positive_definite_raises():
    attrs = _gaussian_attributes(np.random.default_rng(5), ct="full")
    attrs["covars_"][1] = [[1.0, 2.0], [2.0, 1.0]]
    model = _built(jaxem.GaussianHMM, attrs, n_components=3, covariance_type="full")
    with pytest.raises(ValueError, match="covars_ of state 1 must be symmetric, positive"):
        model.score(np.zeros((4, 2)))


# -- init_params, n_iter=0, the overwrite notice ---------------------------------------------
def test_empty_init_params_initialises_what_is_unset(x64):
    x = np.random.default_rng(6).normal(size=(60, 2))
    model = jaxem.GaussianHMM(2, init_params="", n_iter=3, random_state=0)
    model.startprob_ = np.array([1.0, 0.0])
    model.fit(x)
    assert model.startprob_[1] == 0  # the user's start is kept (a zero stays zero)
    assert model.means_.shape == (2, 2) and model.transmat_.shape == (2, 2)


@pytest.mark.parametrize("cls, x", [
    (jaxem.GaussianHMM, np.random.default_rng(7).normal(size=(30, 2))),
    (jaxem.CategoricalHMM, np.random.default_rng(7).integers(0, 4, (30, 1))),
    (jaxem.PoissonHMM, np.random.default_rng(7).poisson(3.0, (30, 2))),
])
def test_n_iter_0_returns_the_initialisation_as_hmmlearn(cls, x, x64):
    ref = getattr(hl, cls.__name__)(2, n_iter=0, random_state=0).fit(x)
    ours = cls(2, n_iter=0, random_state=0).fit(x)
    assert ours.monitor_.iter == ref.monitor_.iter == 0
    assert ours.monitor_.converged == ref.monitor_.converged
    assert ours.n_features == ref.n_features
    for name in ("startprob_", "transmat_"):
        assert getattr(ours, name).shape == getattr(ref, name).shape
    np.testing.assert_allclose(ours.transmat_.sum(axis=1), 1)
    assert np.isfinite(ours.score(x))


def test_overwritten_attribute_is_logged_as_hmmlearn(caplog, x64):
    x = np.random.default_rng(8).normal(size=(40, 1))
    messages = []
    for cls in (hl.GaussianHMM, jaxem.GaussianHMM):
        caplog.clear()
        model = cls(2, n_iter=2, random_state=0)
        model.startprob_ = np.array([0.5, 0.5])
        with caplog.at_level(logging.WARNING):
            model.fit(x)
        messages.append([r.getMessage() for r in caplog.records if "overwritten" in
                         r.getMessage()])
    assert messages[1] == messages[0] and len(messages[0]) == 1


def test_too_little_data_is_logged_as_hmmlearn(caplog, x64):
    attrs = _gaussian_attributes(np.random.default_rng(9))
    x = np.random.default_rng(9).normal(size=(4, 2))
    messages = []
    for cls in (hl.GaussianHMM, jaxem.GaussianHMM):
        caplog.clear()
        model = _built(cls, attrs, n_components=3, init_params="", n_iter=1)
        model.fit(x)
        messages.append([r.getMessage() for r in caplog.records if "degenerate" in
                         r.getMessage()])
    assert messages[1] == messages[0] and len(messages[0]) == 1


# -- aic, bic, stationary distribution, currstate, n_features --------------------------------
@pytest.mark.parametrize("ct", ["diag", "full", "tied", "spherical"])
def test_aic_bic_match_hmmlearn(ct, x64):
    attrs = _gaussian_attributes(np.random.default_rng(10), ct=ct)
    ours = _built(jaxem.GaussianHMM, attrs, n_components=3, covariance_type=ct)
    ref = _built(hl.GaussianHMM, attrs, n_components=3, covariance_type=ct)
    x, _ = ref.sample(30, random_state=0)
    np.testing.assert_allclose(ours.aic(x), ref.aic(x), rtol=1e-10)
    np.testing.assert_allclose(ours.bic(x), ref.bic(x), rtol=1e-10)


def test_aic_bic_categorical_and_poisson_match_hmmlearn(x64):
    pa = _poisson_attributes(np.random.default_rng(11))
    for cls, attrs, x in [("CategoricalHMM", WEATHER, WALK_SHOP_CLEAN),
                          ("PoissonHMM", pa, np.random.default_rng(11).poisson(2, (20, 3)))]:
        # n_features given: hmmlearn's aic reads it before its score sets it
        ours = _built(getattr(jaxem, cls), {**attrs, "n_features": 3}, n_components=2)
        ref = _built(getattr(hl, cls), {**attrs, "n_features": 3}, n_components=2)
        np.testing.assert_allclose(ours.aic(x), ref.aic(x), rtol=1e-10)
        np.testing.assert_allclose(ours.bic(x), ref.bic(x), rtol=1e-10)


def test_stationary_distribution_matches_hmmlearn():
    transmat = np.random.default_rng(12).dirichlet(np.ones(5), 5)
    ours = _built(jaxem.PoissonHMM, {"transmat_": transmat}, n_components=5)
    ref = _built(hl.PoissonHMM, {"transmat_": transmat}, n_components=5)
    got = ours.get_stationary_distribution()
    np.testing.assert_allclose(got, ref.get_stationary_distribution(), rtol=1e-10)
    np.testing.assert_allclose(got @ transmat, got, rtol=1e-10)


def test_sample_continues_from_currstate():
    model = _built(jaxem.CategoricalHMM, WEATHER, n_components=2)
    _, z0 = model.sample(10, random_state=0)
    for state in (0, 1):
        x, z = model.sample(7, random_state=1, currstate=state)
        assert z[0] == state and x.shape == (7, 1)
    with pytest.raises(ValueError, match="currstate"):
        model.sample(5, currstate=2)


def test_fit_sets_n_features_as_hmmlearn(x64):
    rng = np.random.default_rng(13)
    symbols = rng.integers(0, 4, (50, 1))
    counts = rng.poisson(2.0, (50, 3))
    for cls, x in [("GaussianHMM", rng.normal(size=(50, 3))), ("CategoricalHMM", symbols),
                   ("PoissonHMM", counts)]:
        ours = getattr(jaxem, cls)(2, n_iter=2, random_state=0).fit(x)
        ref = getattr(hl, cls)(2, n_iter=2, random_state=0).fit(x)
        assert ours.n_features == ref.n_features
    assert jaxem.CategoricalHMM(2, n_features=6, n_iter=1).fit(symbols).n_features == 6


# -- the convergence monitor --------------------------------------------------------------------
@pytest.mark.parametrize("tol, n_iter, values", [
    (1e-3, 2, [-0.01, -0.1]),
    (1e-3, 10, [-0.03, -0.02, -0.01, -0.0101]),
    (1e-3, 10, [-0.03, -0.02]),
    (-np.inf, 3, [-3.0, -2.0, -1.0]),
])
def test_monitor_converged_as_hmmlearn(tol, n_iter, values):
    ours, ref = ConvergenceMonitor(tol, n_iter, False), HLMonitor(tol, n_iter, False)
    for v in values:
        ours.report(v)
        ref.report(v)
        assert ours.converged == ref.converged
    assert list(ours.history) == list(ref.history) and ours.iter == ref.iter


def test_fit_monitor_converged_when_stopped_at_n_iter(x64):
    x = np.random.default_rng(14).normal(size=(40, 1))
    ours = jaxem.GaussianHMM(2, n_iter=2, tol=-np.inf, random_state=0).fit(x)
    ref = hl.GaussianHMM(2, n_iter=2, tol=-np.inf, random_state=0).fit(x)
    assert ours.monitor_.iter == ref.monitor_.iter == 2
    assert ours.monitor_.converged and ref.monitor_.converged


# -- the zero-variance example, wrong numbers of features ---------------------------------------
ZERO_VARIANCE = np.array([  # hmmlearn's test_fit_zero_variance (its issue #2)
    [715.0, 585.0, 0.0, 0.0], [715.0, 520.0, 1.04705811, -60.3696289],
    [715.0, 455.0, 0.72088623, -52.7055664], [715.0, 390.0, -0.457946777, -78.0605469],
    [715.0, 325.0, -6.43127441, -55.9954834], [715.0, 260.0, -2.90063477, -78.0220947],
    [715.0, 195.0, 8.45532227, -70.3294373], [715.0, 130.0, 4.09387207, -58.3621216],
    [715.0, 65.0, -1.21667480, -44.8131409]])


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
def test_zero_variance_example_fits_as_in_hmmlearn(ct, x64):
    hl.GaussianHMM(3, ct, random_state=0).fit(ZERO_VARIANCE)  # the oracle fits it
    model = jaxem.GaussianHMM(3, ct, random_state=0).fit(ZERO_VARIANCE)
    assert np.all(np.isfinite(model.covars_)) and np.all(np.isfinite(model.means_))
    assert np.all(np.linalg.eigvalsh(model.covars_) > 0)


@pytest.mark.parametrize("cls, x, x_bad", [
    (jaxem.GaussianHMM, np.random.default_rng(15).normal(size=(30, 2)), np.zeros((5, 1))),
    (jaxem.PoissonHMM, np.random.default_rng(15).poisson(3.0, (30, 2)), np.zeros((5, 1))),
    (jaxem.GaussianHMM, np.random.default_rng(15).normal(size=(30, 2)), np.zeros((5, 3))),
])
def test_wrong_number_of_features_raises(cls, x, x_bad):
    model = cls(2, n_iter=2, random_state=0).fit(x)
    for method in ("score", "predict", "predict_proba", "decode", "score_samples"):
        with pytest.raises(ValueError, match=f"X has {x_bad.shape[1]} features, but "
                                             f"{cls.__name__} is expecting 2"):
            getattr(model, method)(x_bad)


@pytest.mark.parametrize("cls", [jaxem.GaussianHMM, jaxem.CategoricalHMM, jaxem.PoissonHMM])
@pytest.mark.parametrize("method", ["predict", "score", "predict_proba", "sample"])
def test_unfitted_raises_not_fitted_error(cls, method):
    args = () if method == "sample" else (np.zeros((3, 1), int),)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        getattr(cls(2), method)(*args)


def test_float32_default_and_restarts_still_work():
    """JAX's default float32, restarts in parallel: the fit is usable and its score is
    hmmlearn's for the same parameters (float32 accuracy)."""
    rng = np.random.default_rng(16)
    x = np.concatenate([rng.normal(0, 1, (60, 1)), rng.normal(6, 1, (60, 1))]) + 1e3
    model = jaxem.GaussianHMM(2, n_iter=20, n_init=3, random_state=0).fit(x, [70, 50])
    assert model.means_.dtype == np.float32
    assert model.restarts_log_likelihood_.shape == (3,)
    ref = _built(hl.GaussianHMM, dict(startprob_=model.startprob_.astype(float),
                                      transmat_=model.transmat_.astype(float),
                                      means_=model.means_.astype(float),
                                      covars_=model._covars_.astype(float)), n_components=2)
    np.testing.assert_allclose(model.score(x, [70, 50]), ref.score(x, [70, 50]), rtol=1e-4)


# -- hostile inputs: the error type and the words of its message --------------------------------
_G = np.random.default_rng(17).normal(size=(12, 2))
_BAD = [
    # (estimator, X, lengths, exception, words)
    (lambda: jaxem.GaussianHMM(0), _G, None, ValueError, "'n_components' parameter"),
    (lambda: jaxem.GaussianHMM(-1), _G, None, ValueError, "'n_components' parameter"),
    (lambda: jaxem.GaussianHMM(2.5), _G, None, ValueError, "'n_components' parameter"),
    (lambda: jaxem.GaussianHMM(2, n_iter=-1), _G, None, ValueError, "'n_iter' parameter"),
    (lambda: jaxem.GaussianHMM(2, n_init=0), _G, None, ValueError, "'n_init' parameter"),
    (lambda: jaxem.GaussianHMM(2, covariance_type="bad"), _G, None, ValueError,
     "'covariance_type' parameter"),
    (lambda: jaxem.GaussianHMM(2, algorithm="best"), _G, None, ValueError, "'algorithm'"),
    (lambda: jaxem.GaussianHMM(2, implementation="fast"), _G, None, ValueError,
     "'implementation'"),
    (lambda: jaxem.GaussianHMM(2, params="stmx"), _G, None, ValueError, "params='stmx'"),
    (lambda: jaxem.GaussianHMM(2, min_covar=-1.0), _G, None, ValueError, "'min_covar'"),
    (lambda: jaxem.GaussianHMM(2), _G + 1j, None, ValueError, "Complex data not supported"),
    (lambda: jaxem.GaussianHMM(2), np.array([["a", "b"]] * 4), None, ValueError, "X"),
    (lambda: jaxem.GaussianHMM(2), _G[:, 0], None, ValueError, "Expected 2D array"),
    (lambda: jaxem.GaussianHMM(2), np.full_like(_G, np.nan), None, ValueError, "NaN"),
    (lambda: jaxem.GaussianHMM(2), np.where(_G > 1, np.inf, _G), None, ValueError,
     "infinity"),
    (lambda: jaxem.GaussianHMM(2), np.zeros((0, 2)), None, ValueError, "0 sample"),
    (lambda: jaxem.GaussianHMM(2), _G, [5, 5], ValueError, "lengths sum to 10"),
    (lambda: jaxem.GaussianHMM(2), _G, [12, 0], ValueError, "empty sequences"),
    (lambda: jaxem.GaussianHMM(2), _G, [13, -1], ValueError, "lengths must be positive"),
    (lambda: jaxem.GaussianHMM(2), _G, [6.5, 5.5], ValueError, "lengths must be a 1-d"),
    (lambda: jaxem.GaussianHMM(2), _G, [[6, 6]], ValueError, "lengths must be a 1-d"),
    (lambda: jaxem.PoissonHMM(2), np.array([[1.0], [-2.0], [3.0]]), None, ValueError,
     "non-negative integer counts"),
    (lambda: jaxem.PoissonHMM(2), np.array([[1.0], [2.5], [3.0]]), None, ValueError,
     "non-negative integer counts"),
    (lambda: jaxem.CategoricalHMM(2), np.array([[0.0], [1.5], [1.0]]), None, ValueError,
     "integer symbols"),
    (lambda: jaxem.CategoricalHMM(2), np.array([[0.0], [1.0], [1.0]]), None, ValueError,
     "integer symbols"),
    (lambda: jaxem.CategoricalHMM(2), np.array([[0], [-1], [1]]), None, ValueError,
     "non-negative"),
    (lambda: jaxem.CategoricalHMM(2), np.array([[0, 1], [1, 0]]), None, ValueError,
     "shape (n_samples, 1)"),
    (lambda: jaxem.CategoricalHMM(2, n_features=2), np.array([[0], [2]]), None, ValueError,
     "only emits symbols up to 1"),
    (lambda: jaxem.CategoricalHMM(2, n_features=0), np.array([[0], [1]]), None, ValueError,
     "'n_features' parameter"),
]


@pytest.mark.parametrize("make, x, lengths, exc, words", _BAD)
def test_bad_input_raises_before_compiling(make, x, lengths, exc, words, monkeypatch):
    import jaxem.estimators.hmm as est

    def no_engine(*args, **kwargs):
        raise AssertionError("reached the engine")

    monkeypatch.setattr(est, "_engine_fit", no_engine)
    monkeypatch.setattr(est, "_init_many", no_engine)
    with pytest.raises(exc) as info:
        make().fit(x, lengths)
    assert words in str(info.value)


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_sample_bad_n_samples(n):
    model = _built(jaxem.CategoricalHMM, WEATHER, n_components=2)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        model.sample(n)


def test_unknown_decoder_named():
    model = _built(jaxem.CategoricalHMM, WEATHER, n_components=2)
    with pytest.raises(ValueError, match="Unknown decoder 'best'"):
        model.decode(WALK_SHOP_CLEAN, algorithm="best")
