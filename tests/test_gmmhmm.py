"""``jaxem.GMMHMM`` and its emission against hmmlearn 0.3.3's ``GMMHMM`` (the oracle).

Every comparison starts both libraries from the same hand-set parameters
(``init_params=""``) and runs a fixed number of iterations (``tol=-inf``). The shapes are
shared by the tests (``K`` states, ``M`` components, ``D`` features, ``LENGTHS``,
``N_ITER``) so that they reuse each other's compilations.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hmmlearn import hmm as hl

import jaxem
from jaxem import em, persist
from jaxem.families.gaussian import GaussianStats
from jaxem.families.gmm_emission import GMMEmission, GMMEmissionParams
from jaxem.families.hmm import HMM

K, M, D = 3, 2, 2  # D == M: spherical's default prior is then maximum likelihood too
LENGTHS = [25, 35]
N_ITER = 4
CTS = ["diag", "spherical", "full", "tied"]


def _data(seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [4.0, 1.0], [1.0, 5.0]])
    z = rng.integers(0, 3, sum(LENGTHS))
    return centres[z] + rng.normal(size=(sum(LENGTHS), D)) * rng.uniform(0.5, 1.5, D) + offset


def _start(ct, seed=1, offset=0.0):
    """Starting attributes in hmmlearn's shapes."""
    rng = np.random.default_rng(seed)
    def spd(*shape):
        a = rng.normal(size=shape + (D, D)) * 0.4
        return a @ np.swapaxes(a, -1, -2) + 0.8 * np.eye(D)
    covars = {"diag": rng.uniform(0.5, 2.0, (K, M, D)), "spherical": rng.uniform(0.5, 2.0, (K, M)),
              "full": spd(K, M), "tied": spd(K)}[ct]
    return dict(startprob_=rng.dirichlet(np.ones(K)), transmat_=rng.dirichlet(np.ones(K), K),
                weights_=rng.dirichlet(np.ones(M), K),
                means_=rng.normal(size=(K, M, D)) * 2 + [2.0, 2.0] + offset, covars_=covars)


def _priors(ct):
    """Non-default priors of every kind, some scalars and some arrays (hmmlearn's shapes)."""
    rng = np.random.default_rng(2)
    cov = {"diag": dict(covars_prior=rng.uniform(0.2, 1.0, (K, M, D)), covars_weight=0.3),
           "spherical": dict(covars_prior=0.5, covars_weight=rng.uniform(0.1, 0.5, (K, M))),
           "full": dict(covars_prior=0.3 * np.eye(D) + 0.05, covars_weight=1.0),
           "tied": dict(covars_prior=0.4 * np.eye(D), covars_weight=rng.uniform(0, 2, K))}[ct]
    return dict(weights_prior=rng.uniform(1.0, 3.0, (K, M)), means_prior=rng.normal(size=(M, D)),
                means_weight=rng.uniform(0.1, 2.0, (K, M)), startprob_prior=2.0,
                transmat_prior=1.5, **cov)


def _built(cls, attrs, **kwargs):
    model = cls(n_components=K, n_mix=M, **kwargs)
    for name, value in attrs.items():
        setattr(model, name, np.array(value, dtype=float))
    return model


def _oracle(attrs, **kwargs):
    """hmmlearn's GMMHMM from ``attrs``. With ``init_params=""`` its ``_init`` sets
    nothing but still runs k-means (about 0.5 s): skipped, its ``_check`` does the rest."""
    assert kwargs["init_params"] == ""
    model = _built(hl.GMMHMM, attrs, **kwargs)
    model._init = lambda X, lengths=None: None
    return model


ATTRS = ("startprob_", "transmat_", "weights_", "means_", "covars_")


@pytest.mark.parametrize("ct", CTS)
def test_fit_matches_hmmlearn_with_and_without_priors(ct, x64):
    X, start = _data(), _start(ct)
    kw = dict(covariance_type=ct, n_iter=N_ITER, tol=-np.inf, init_params="")
    for priors in ({}, _priors(ct)):
        ref = _oracle(start, **kw, **priors).fit(X, LENGTHS)
        ours = _built(jaxem.GMMHMM, start, **kw, **priors).fit(X, LENGTHS)
        for name in ATTRS:
            np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-6,
                                       atol=1e-9, err_msg=f"{ct} {name} priors={bool(priors)}")
        history = np.array(ours.monitor_.history)
        np.testing.assert_allclose(history, np.array(ref.monitor_.history), rtol=1e-6)
        assert len(history) == N_ITER
        if not priors:  # maximum likelihood: Baum-Welch never decreases it
            assert np.all(np.diff(history) >= -1e-8 * np.abs(history[1:])), history
    if ct != "diag":
        return
    # The fitted model's inference is hmmlearn's too. It sees the emission only through
    # its log-likelihoods, which the histories above already compare for every type.
    np.testing.assert_allclose(ours.score(X, LENGTHS), ref.score(X, LENGTHS), rtol=1e-6)
    np.testing.assert_allclose(ours.predict_proba(X, LENGTHS), ref.predict_proba(X, LENGTHS),
                               atol=1e-6)
    lp, states = ours.decode(X, LENGTHS)
    ref_lp, ref_states = ref.decode(X, LENGTHS)
    np.testing.assert_allclose(lp, ref_lp, rtol=1e-6)
    np.testing.assert_array_equal(states, ref_states)
    np.testing.assert_allclose(ours.aic(X, LENGTHS), ref.aic(X, LENGTHS), rtol=1e-6)
    np.testing.assert_allclose(ours.bic(X, LENGTHS), ref.bic(X, LENGTHS), rtol=1e-6)


def test_params_letters_keep_the_others_as_hmmlearn(x64):
    """Only the listed parameters move (here ``w`` and ``c``: covariances about the fixed
    means), exactly as hmmlearn's."""
    X, start = _data(3), _start("diag", seed=4)
    kw = dict(covariance_type="diag", n_iter=N_ITER, tol=-np.inf, init_params="",
              params="wc")
    ref = _oracle(start, **kw).fit(X, LENGTHS)
    ours = _built(jaxem.GMMHMM, start, **kw).fit(X, LENGTHS)
    for name in ATTRS:
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-6,
                                   atol=1e-9)
    np.testing.assert_allclose(ours.means_, start["means_"], rtol=1e-14)  # up to the centring
    np.testing.assert_array_equal(ours.transmat_, start["transmat_"])


@pytest.mark.parametrize("ct", ["diag", "full"])  # the GEMM forms, and direct differences
def test_float32_far_from_the_origin_agrees_with_float64(ct):
    """Data and means offset by 1000: float32 (centred data, moments about the current
    means) follows the float64 fit."""
    X, start = _data(5, offset=1000.0), _start(ct, seed=6, offset=1000.0)
    kw = dict(covariance_type=ct, n_iter=N_ITER, tol=-np.inf, init_params="")
    ours32 = _built(jaxem.GMMHMM, start, **kw).fit(X, LENGTHS)
    with jax.enable_x64(True):
        ours64 = _built(jaxem.GMMHMM, start, **kw).fit(X, LENGTHS)
    assert ours32.means_.dtype == np.float32 and ours64.means_.dtype == np.float64
    # Measured: means 3e-5 apart (half a float32 ulp at 1000), covariances 1e-6 relative.
    np.testing.assert_allclose(ours32.monitor_.history, ours64.monitor_.history, rtol=2e-6)
    np.testing.assert_allclose(ours32.means_, ours64.means_, atol=3e-4)
    np.testing.assert_allclose(ours32.covars_, ours64.covars_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours32.weights_, ours64.weights_, atol=2e-5)
    np.testing.assert_allclose(ours32.transmat_, ours64.transmat_, atol=2e-5)


def test_priors_are_traced_so_changing_them_does_not_recompile(monkeypatch, x64):
    """Three fits with different priors trace the engine at most once (none when an
    earlier test compiled these shapes), and the priors do change the fit."""
    monkeypatch.setattr(em, "run", chex.assert_max_traces(em.run, n=1))
    X, start = _data(), _start("diag")
    kw = dict(covariance_type="diag", n_iter=N_ITER, tol=-np.inf, init_params="")
    means = [_built(jaxem.GMMHMM, start, **kw, **priors).fit(X, LENGTHS).means_
             for priors in ({}, _priors("diag"), dict(means_weight=5.0, weights_prior=3.0))]
    assert not np.allclose(means[0], means[1]) and not np.allclose(means[1], means[2])


@pytest.fixture(scope="module")
def started_from_kmeans():
    """A float32 fit from hmmlearn's start (k-means per state): one state's cluster is a
    single far point, fewer rows than n_mix, so its means are drawn."""
    X = _data(7)
    X[-1] = [40.0, -30.0]
    model = jaxem.GMMHMM(K, n_mix=M, covariance_type="diag", n_iter=N_ITER, random_state=0)
    return model.fit(X, LENGTHS), X


def test_fit_from_kmeans_start_is_finite_samples_and_decodes(started_from_kmeans):
    model, X = started_from_kmeans
    for name in ATTRS:
        assert np.all(np.isfinite(getattr(model, name))), name
    assert model.weights_.shape == (K, M) and model.covars_.shape == (K, M, D)
    assert model.means_.dtype == np.float32
    np.testing.assert_allclose(model.weights_.sum(axis=1), 1, rtol=1e-5)
    assert np.isfinite(model.score(X, LENGTHS))
    assert np.all(np.diff(model.monitor_.history) > -1e-3)
    sample, states = model.sample(20, random_state=1)
    assert sample.shape == (20, D) and states.shape == (20,) and np.all(np.isfinite(sample))
    assert model.predict(X, LENGTHS).shape == (sum(LENGTHS),)


def test_save_load_round_trip(started_from_kmeans, tmp_path):
    model, X = started_from_kmeans
    model.save(tmp_path / "gmmhmm.npz")
    back = jaxem.load(tmp_path / "gmmhmm.npz")
    assert type(back) is jaxem.GMMHMM and back.get_params() == model.get_params()
    for name in ATTRS:
        np.testing.assert_array_equal(getattr(back, name), getattr(model, name))
    assert back.score(X, LENGTHS) == model.score(X, LENGTHS)
    np.testing.assert_array_equal(back.predict(X, LENGTHS), model.predict(X, LENGTHS))
    assert list(back.monitor_.history) == list(model.monitor_.history)
    # The family and its parameters (functional API) round-trip too.
    family = HMM(GMMEmission(M, "tied", covars_weight=jnp.arange(K, dtype=jnp.float32)),
                 seq_len=max(LENGTHS))
    params = GMMEmissionParams(model.weights_, model.means_, np.ones((K, D, D), np.float32))
    persist.save((family, params), tmp_path / "family.npz")
    fam2, params2 = persist.load(tmp_path / "family.npz")
    assert type(fam2.emission) is GMMEmission and fam2.emission.covariance_type == "tied"
    np.testing.assert_array_equal(fam2.emission.covars_weight, family.emission.covars_weight)
    np.testing.assert_array_equal(params2.means, params.means)


@pytest.mark.parametrize("ct", CTS)
def test_emission_samples_have_the_mixture_moments(ct):
    start = _start(ct, seed=9)
    emission = GMMEmission(M, ct)
    params = emission.from_covariances(*(jnp.asarray(start[a], jnp.float32)
                                         for a in ("weights_", "means_", "covars_")))
    x = np.asarray(jax.jit(emission.sample)(jax.random.key(0), params,
                                            jnp.ones(20000, jnp.int32)), np.float64)
    w, mu = start["weights_"][1], start["means_"][1]
    cov = np.asarray(emission.covariances(params), np.float64)[1]
    cov = {"diag": np.stack([np.diag(c) for c in cov]) if ct == "diag" else None,
           "spherical": np.stack([np.eye(D) * c for c in np.atleast_1d(cov)]),
           "full": cov, "tied": np.broadcast_to(cov, (M, D, D))}[ct]
    mean = w @ mu
    second = np.einsum("m,mde->de", w, cov + np.einsum("md,me->mde", mu, mu))
    np.testing.assert_allclose(x.mean(axis=0), mean, atol=0.06)
    np.testing.assert_allclose(np.cov(x.T), second - np.outer(mean, mean), atol=0.12)


def test_m_step_stays_finite_where_hmmlearn_divides_by_zero():
    """A component without responsibility: hmmlearn gives weight 0, mean 0 / 1 and a
    covariance 0 / 0 = NaN; jaxem keeps that covariance. A weights prior below 1 would
    make hmmlearn's weight negative; jaxem clips it at 0 (and renormalises)."""
    emission = GMMEmission(M, "diag", weights_prior=jnp.float32(0.5))
    start = _start("diag", seed=10)
    params = emission.from_covariances(*(jnp.asarray(start[a], jnp.float32)
                                         for a in ("weights_", "means_", "covars_")))
    counts = jnp.array([[5.0, 0.0], [3.0, 0.2], [2.0, 4.0]])
    stats = GaussianStats(counts, counts[..., None] * jnp.ones(D), counts[..., None] * 0.5
                          * jnp.ones(D))
    new = jax.jit(emission.m_step, static_argnums=2)(stats, params, "wmc")
    for leaf in new:
        assert np.all(np.isfinite(leaf))
    np.testing.assert_array_equal(new.weights[0], [1.0, 0.0])
    np.testing.assert_array_equal(new.weights[1], [1.0, 0.0])  # 0.2 - 0.5 < 0: clipped
    np.testing.assert_allclose(new.weights[2], [1.5 / 5.0, 3.5 / 5.0], rtol=1e-6)
    np.testing.assert_array_equal(new.means[0, 1], 0.0)  # hmmlearn's 0 / 1
    np.testing.assert_array_equal(new.precisions_cholesky[0, 1], params.precisions_cholesky[0, 1])
    np.testing.assert_allclose(new.means[2, 1], np.ones(D), rtol=1e-6)


# -- hostile input: clear ValueErrors, before anything is compiled ---------------------------
def _diag_model(**kwargs):
    return _built(jaxem.GMMHMM, _start("diag"), covariance_type="diag", **kwargs)


@pytest.mark.parametrize("change, words", [
    (dict(n_mix=3), r"weights_ must have shape \(3, 3\)"),
    (dict(n_mix=0), "n_mix"),
    (dict(n_mix=1.5), "n_mix"),
    (dict(covariance_type="bad"), "covariance_type"),
    (dict(weights_prior=np.ones(5)), r"weights_prior has shape \(5,\), which does not broadcast"),
    (dict(covars_prior=np.ones((2, 7))), "covars_prior has shape"),
    (dict(means_prior=np.nan), "means_prior contains NaN"),
])
def test_bad_hyper_parameters_raise(change, words):
    model = _diag_model()
    model.set_params(**change)
    with pytest.raises(ValueError, match=words):
        model.score(_data())


@pytest.mark.parametrize("name, value, words", [
    ("means_", np.zeros((K, 3, D)), r"means_ must have shape \(n_components, n_mix, n_feat"),
    ("covars_", np.ones((K, M)), r"'diag' covars_ must have shape \(3, 2, 2\)"),
    ("covars_", -np.ones((K, M, D)), "covars_ must be positive"),
    ("weights_", np.full((K, M), 0.7), "weights_ rows must sum to 1"),
])
def test_bad_attributes_raise(name, value, words):
    model = _diag_model()
    setattr(model, name, value)
    for call in (lambda: model.score(_data()), lambda: model.sample(3),
                 lambda: model.set_params(init_params="", n_iter=1).fit(_data())):
        with pytest.raises(ValueError, match=words):
            call()


def test_full_covariance_not_positive_definite_raises():
    model = _built(jaxem.GMMHMM, _start("full"), covariance_type="full")
    model.covars_[1, 0] = [[1.0, 2.0], [2.0, 1.0]]
    with pytest.raises(ValueError, match="covars_ of state 1, mixture 0 must be symmetric"):
        model.score(_data())


@pytest.mark.parametrize("lengths, words", [
    ([25, 30], "lengths sum to 55 but X has 60 rows"),
    ([70, -10], "positive"),
    ([30.5, 29.5], "integers"),
    ([[30, 30]], "1-d"),
])
def test_bad_lengths_raise(lengths, words):
    for call in ("fit", "score", "decode"):
        with pytest.raises(ValueError, match=words):
            getattr(_diag_model(), call)(_data(), lengths)


def test_bad_X_raises():
    model = _diag_model()
    with pytest.raises(ValueError, match="3 features, but GMMHMM is expecting 2"):
        model.score(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="NaN"):
        model.fit(np.full((10, 2), np.nan))


def test_emission_rejects_bad_configuration():
    with pytest.raises(ValueError, match="n_mix must be a positive integer"):
        GMMEmission(n_mix=0)
    with pytest.raises(ValueError, match="Invalid covariance_type"):
        GMMEmission(2, "bad")
    emission = GMMEmission(3, "diag")
    params = GMMEmissionParams(jnp.full((K, M), 0.5), jnp.zeros((K, M, D)), jnp.ones((K, M, D)))
    with pytest.raises(ValueError, match="n_mix=3"):
        emission.log_likelihoods(params, jnp.zeros((4, D)))
