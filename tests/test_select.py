"""Choosing K in one batched program: masked components change nothing about the
active ones, and the table's BIC/AIC are scikit-learn's; GaussianMixture(n_components="bic")
is that choice, then the chosen K's fit."""
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGM
from sklearn.utils._param_validation import InvalidParameterError

import jaxem
from jaxem import em
from jaxem.estimators._base import key_from
from jaxem.batch import initial_params
from jaxem.select import Masked, Selection, _masked_starts, mask, select_n_components


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
def test_masked_fit_equals_unmasked_k_component_fit(ct, make_blobs, x64):
    x, _ = make_blobs(0, 200, 2, 3)
    fam = jaxem.gaussian(ct)
    start = jaxem.initialize(fam, jax.random.key(1), jnp.asarray(x), jnp.ones(len(x)), 5,
                             "k-means++")
    masked = em.run(Masked(fam), mask(start, 3), jnp.asarray(x), max_iter=20, tol=-1.0)
    first3 = jax.tree.map(lambda a: a[:3] if a.ndim and a.shape[0] == 5 else a, start)
    first3 = first3._replace(weights=first3.weights / jnp.sum(first3.weights))
    plain = em.run(fam, first3, jnp.asarray(x), max_iter=20, tol=-1.0)
    np.testing.assert_allclose(masked.trace, plain.trace, rtol=1e-10)
    got = masked.params.params
    np.testing.assert_allclose(got.weights[:3], plain.params.weights, rtol=1e-10)
    np.testing.assert_array_equal(got.weights[3:], 0.0)
    np.testing.assert_allclose(got.means[:3], plain.params.means, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ct", ["diag", "spherical", "tied"])
def test_inactive_components_take_no_part_in_the_e_step(ct, make_blobs):
    # An inactive component left tight and far away (as a trim may leave it) changes
    # nothing, bit for bit (it would send every chunk to the exact distances), and it
    # keeps its values through the M-step.
    x, _ = make_blobs(0, 200, 2, 3)
    x = jnp.asarray(x, jnp.float32)
    fam = jaxem.gaussian(ct)
    start = jaxem.initialize(fam, jax.random.key(1), x, jnp.ones(len(x)), 5, "k-means++")
    p = start.precisions_cholesky
    far = start._replace(means=start.means.at[3:].set(1e4),
                         precisions_cholesky=p if ct == "tied" else p.at[3:].multiply(1e3))
    near = em.run(Masked(fam), mask(start, 3), x, max_iter=5, tol=-1.0)
    away = em.run(Masked(fam), mask(far, 3), x, max_iter=5, tol=-1.0)
    np.testing.assert_array_equal(near.trace, away.trace)
    np.testing.assert_array_equal(near.params.params.means[:3], away.params.params.means[:3])
    np.testing.assert_array_equal(away.params.params.means[3:], far.means[3:])


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("n_sets", [0, 2])
def test_the_sweep_starts_are_a_mask_per_k(ct, n_sets, make_blobs):
    # select_n_components masks every K at once; the same as one mask per K, in order
    # (K, restart), bit for bit, for one data set and for a batch of them.
    x, _ = make_blobs(2, 120, 3, 3)
    starts = initial_params(jaxem.gaussian(ct), jnp.asarray(x, jnp.float32), n_components=5,
                            key=jax.random.key(0), n_init=3, init="k-means++")
    lead = int(n_sets > 0)
    if n_sets:
        starts = jax.tree.map(lambda a: jnp.stack([a * (i + 1) for i in range(n_sets)]),
                              starts)
    got = _masked_starts(starts, 2, 5, lead)
    host = jax.tree.map(np.asarray, starts)  # what _masked_starts masks, with NumPy
    want = jax.tree.map(lambda *a: np.concatenate(a, axis=lead),
                        *[mask(host, k) for k in range(2, 6)])
    on_device = jax.tree.map(lambda *a: jnp.concatenate(a, axis=lead),
                             *[mask(starts, k) for k in range(2, 6)])
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w, d in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(on_device)):
        np.testing.assert_array_equal(g, w)
        np.testing.assert_allclose(g, d, rtol=1e-6)  # NumPy's and JAX's masks agree


def test_masked_tied_fit_with_as_many_features_as_components(make_blobs, x64):
    # A tied precision factor (D, D) with D == k_max is shared, not per component.
    x, _ = make_blobs(5, 150, 3, 2)
    fam = jaxem.gaussian("tied")
    start = jaxem.initialize(fam, jax.random.key(1), jnp.asarray(x), jnp.ones(len(x)), 3,
                             "k-means++")
    masked = em.run(Masked(fam), mask(start, 2), jnp.asarray(x), max_iter=10, tol=-1.0)
    first2 = start._replace(weights=start.weights[:2] / jnp.sum(start.weights[:2]),
                            means=start.means[:2])
    plain = em.run(fam, first2, jnp.asarray(x), max_iter=10, tol=-1.0)
    np.testing.assert_allclose(masked.trace, plain.trace, rtol=1e-10)
    np.testing.assert_allclose(masked.params.params.precisions_cholesky,
                               plain.params.precisions_cholesky, rtol=1e-10)


def test_families_without_translate(x64):
    rng = np.random.default_rng(0)
    x = (rng.uniform(size=(120, 5)) < np.where(np.arange(120)[:, None] < 60, 0.85, 0.15))
    sel = select_n_components(jaxem.bernoulli(alpha=0.0), x.astype(float), k_max=3,
                              key=jax.random.key(0), n_init=2, init="random_from_data")
    assert sel.best == 2


def test_selection_table_matches_scikit_learn_and_picks_the_true_k(make_blobs, x64):
    x, _ = make_blobs(2, 600, 2, 3, separation=6.0)
    sel = select_n_components(jaxem.gaussian("full"), x, k_max=5, key=jax.random.key(0),
                              n_init=3)
    np.testing.assert_array_equal(sel.n_components, [1, 2, 3, 4, 5])
    assert sel.best == 3
    for i, k in enumerate(sel.n_components):
        sk = SkGM(int(k), covariance_type="full")  # its bic/aic on our fitted parameters
        p = jax.tree.map(lambda a: np.asarray(a)[i], sel.params)
        sk.weights_, sk.means_ = p.weights[:k], p.means[:k]
        sk.precisions_cholesky_ = p.precisions_cholesky[:k]
        sk.covariances_ = np.linalg.inv(p.precisions_cholesky[:k]
                                        @ np.swapaxes(p.precisions_cholesky[:k], 1, 2))
        np.testing.assert_allclose(sel.bic[i], sk.bic(x), rtol=1e-9)
        np.testing.assert_allclose(sel.aic[i], sk.aic(x), rtol=1e-9)


def test_batch_of_data_sets_gets_one_table_each(make_blobs, x64):
    a, _ = make_blobs(3, 200, 2, 1)
    b, _ = make_blobs(4, 200, 2, 3, separation=8.0)
    sel = select_n_components(jaxem.gaussian("diag"), np.stack([a, b]), k_max=4,
                              key=jax.random.key(0), n_init=2)
    assert sel.bic.shape == (2, 4)
    assert sel.best.tolist() == [1, 3]


@pytest.mark.parametrize("kwargs,words", [
    ({"k_max": 0}, "k_max must be an integer >= 1"),
    ({"k_max": 2, "k_min": 3}, "k_min=3 is larger than k_max=2"),
    ({"k_max": 2, "criterion": "icl"}, "criterion must be 'bic' or 'aic'"),
])
def test_bad_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        select_n_components(jaxem.gaussian(), np.ones((10, 2)), key=jax.random.key(0),
                            **kwargs)


# -- the estimator option: GaussianMixture(n_components="bic" / "aic") --------------------
def _fitted(x, *, n_components, **kw):
    return jaxem.GaussianMixture(n_components, random_state=0, **kw).fit(x)


@pytest.mark.parametrize("criterion", ["bic", "aic"])
def test_estimator_chooses_k_as_select_n_components_does(criterion, make_blobs, x64):
    x, _ = make_blobs(2, 600, 2, 3, separation=6.0)
    gm = _fitted(x, n_components=criterion, max_components=5, n_init=2)
    sel = select_n_components(jaxem.gaussian("full"), x, k_max=5, n_init=2,
                              key=key_from(0), criterion=criterion, init="kmeans")
    assert gm.n_components_ == sel.best == 3
    assert gm.means_.shape == (3, 2) and gm.weights_.shape == (3,)
    assert isinstance(gm.selection_, Selection)
    np.testing.assert_array_equal(gm.selection_.n_components, [1, 2, 3, 4, 5])
    np.testing.assert_allclose(gm.selection_.bic, sel.bic, rtol=1e-10)
    np.testing.assert_allclose(gm.selection_.aic, sel.aic, rtol=1e-10)
    assert gm.restarts_.log_likelihood.shape == (2,)  # the chosen K's restarts
    # scored as a plain 3-component mixture (its bic/aic match the table's entry)
    np.testing.assert_allclose(gm.bic(x), sel.bic[2], rtol=1e-6)
    np.testing.assert_allclose(gm.aic(x), sel.aic[2], rtol=1e-6)


@pytest.mark.parametrize("ct", ["full", "tied"])
def test_estimator_fit_is_the_sweeps_fit_of_the_chosen_k(ct, make_blobs, x64):
    # One restart (no ties between restarts to break): the fitted parameters are the
    # sweep's for the chosen K, with the default init ("kmeans": a K start is the first
    # K components of the k_max start, not a K-component k-means).
    x, _ = make_blobs(0, 200, 2, 3, separation=6.0)
    gm = _fitted(x, n_components="bic", max_components=5, covariance_type=ct, tol=1e-8)
    k, p = gm.n_components_, gm.selection_.params
    assert 1 < k < 5  # some components masked in the sweep's fit of K
    i = k - 1  # row of K in the table
    np.testing.assert_allclose(gm.weights_, p.weights[i, :k], rtol=1e-9)
    np.testing.assert_array_equal(p.weights[i, k:], 0.0)
    np.testing.assert_allclose(gm.means_, p.means[i, :k], rtol=1e-9, atol=1e-12)
    chol = p.precisions_cholesky[i] if ct == "tied" else p.precisions_cholesky[i, :k]
    np.testing.assert_allclose(gm.precisions_cholesky_, chol, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gm.lower_bound_ * len(x), gm.selection_.log_likelihood[i],
                               rtol=1e-6)  # before / after the last M-step


def test_estimator_fit_equals_gaussian_mixture_of_the_chosen_k(make_blobs, x64):
    # With k-means++ starts the sweep's K starts are GaussianMixture(K)'s own.
    x, _ = make_blobs(2, 300, 2, 3, separation=6.0)
    kw = dict(n_init=3, init_params="k-means++", tol=1e-10)
    gm = _fitted(x, n_components="bic", max_components=5, **kw)
    plain = _fitted(x, n_components=gm.n_components_, **kw)
    assert gm.n_components_ == 3 and gm.n_iter_ == plain.n_iter_
    for name in ("weights_", "means_", "precisions_cholesky_", "covariances_"):
        np.testing.assert_allclose(getattr(gm, name), getattr(plain, name), rtol=1e-9,
                                   atol=1e-12, err_msg=name)
    np.testing.assert_allclose(gm.lower_bounds_, plain.lower_bounds_, rtol=1e-10)
    np.testing.assert_allclose(gm.restarts_.trace, plain.restarts_.trace, rtol=1e-10)
    np.testing.assert_array_equal(gm.predict(x), plain.predict(x))


def test_estimator_selection_survives_save_load_and_pickle(make_blobs, x64, tmp_path):
    x, _ = make_blobs(2, 200, 2, 2, separation=6.0)
    gm = _fitted(x, n_components="aic", max_components=3)
    gm.save(tmp_path / "m.npz")
    for back in (jaxem.load(tmp_path / "m.npz"), pickle.loads(pickle.dumps(gm))):
        assert back.get_params() == gm.get_params() and back.n_components_ == 2
        assert isinstance(back.selection_, Selection) and back.selection_.best == 2
        for a, b in zip(jax.tree.leaves(back.selection_), jax.tree.leaves(gm.selection_)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(back.predict_proba(x), gm.predict_proba(x))
    # An integer n_components refits without a selection: none is left over.
    gm.set_params(n_components=2).fit(x)
    assert not hasattr(gm, "selection_") and gm.n_components_ == 2


@pytest.mark.parametrize("kw,y,error,words", [
    (dict(n_components="BIC"), None, InvalidParameterError,
     "must be an int in the range [1, inf) or a str among {"),
    (dict(n_components="bic", max_components=0), None, InvalidParameterError,
     "'max_components' parameter"),
    (dict(n_components="bic", trim_threshold=0.1), None, ValueError, "one or the other"),
    (dict(n_components="aic"), [0, -1] * 10, ValueError, "partial labels"),
    (dict(n_components="bic", means_init=np.zeros((2, 2))), None, ValueError,
     "means_init fix"),
    (dict(n_components="bic", max_iter=0), None, ValueError, "max_iter must be >= 1"),
])
def test_estimator_refuses_what_names_components_before_k_is_chosen(kw, y, error, words,
                                                                   monkeypatch):
    from jaxem.estimators import gaussian_mixture as gm_module
    monkeypatch.setattr(gm_module, "fit", None)  # refused before anything compiles
    monkeypatch.setattr(gm_module, "select_n_components", None)
    x = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.raises(error, match=re.escape(words)):
        jaxem.GaussianMixture(**kw).fit(x, y)
