"""Choosing K in one batched program: masked components change nothing about the
active ones, and the table's BIC/AIC are scikit-learn's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGM

import jaxem
from jaxem import em
from jaxem.select import Masked, mask, select_n_components


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
