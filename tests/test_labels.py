"""Partial labels (seed 004): labelled rows' responsibilities are clamped to their
component; EM then maximises sum_unlabelled log p(x) + sum_labelled log p(x, z = y)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jaxem
from jaxem import em


def _setup(seed, n=120, frac=0.3):
    rng = np.random.default_rng(seed)
    z = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 2)) + np.array([[0, 0], [3, 0], [0, 3]])[z]
    labels = np.where(rng.random(n) < frac, z, -1)
    fam = jaxem.gaussian("full")
    params = jaxem.initialize(fam, jax.random.key(seed), jnp.asarray(x),
                              jnp.ones(n, x.dtype), 3, "random_from_data")
    return fam, x, labels, params


def _objective(fam, params, x, labels):
    """The semi-supervised log-likelihood, directly (float64 NumPy on the log-joint)."""
    lj = np.asarray(fam.log_joint(params, jnp.asarray(x)), np.float64)
    lse = np.logaddexp.reduce(lj, axis=1)
    known = labels >= 0
    return np.mean(np.where(known, lj[np.arange(len(x)), np.maximum(labels, 0)], lse))


def test_clamped_step_equals_m_step_of_one_hot_and_posterior_rows(x64):
    fam, x, labels, params = _setup(0)
    resp = np.array(em.responsibilities(fam, params, jnp.asarray(x)))
    known = labels >= 0
    resp[known] = np.eye(3)[labels[known]]
    expect = fam.m_step(fam.stats(jnp.asarray(x), jnp.asarray(resp), params), params)
    new, ll = em.em_step(fam, params, jnp.asarray(x), labels=jnp.asarray(labels))
    for a, b in zip(new, expect):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(ll, _objective(fam, params, x, labels), rtol=1e-12)


def test_no_labels_known_equals_plain_em(x64):
    fam, x, _, params = _setup(1)
    a = em.run(fam, params, jnp.asarray(x), max_iter=5, labels=jnp.full(len(x), -1))
    b = em.run(fam, params, jnp.asarray(x), max_iter=5)
    np.testing.assert_allclose(a.trace, b.trace, rtol=1e-12)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 1000), frac=st.floats(0.0, 1.0), chunk=st.sampled_from([None, 7, 32]))
def test_semi_supervised_objective_is_monotone_and_chunking_is_exact(seed, frac, chunk):
    with jax.enable_x64(True):
        fam, x, labels, params = _setup(seed, frac=frac)
        out = em.run(fam, params, jnp.asarray(x), max_iter=15, tol=-1.0, chunk_size=chunk,
                     labels=jnp.asarray(labels))
        full = em.run(fam, params, jnp.asarray(x), max_iter=15, tol=-1.0,
                      labels=jnp.asarray(labels))
        trace = np.asarray(out.trace)
        assert np.all(np.diff(trace) >= -1e-9)
        np.testing.assert_allclose(trace, full.trace, rtol=1e-10)
        # Labelled rows stay in their component: their posterior is not what is used.
        np.testing.assert_allclose(trace[0], _objective(fam, params, x, labels), rtol=1e-10)


def test_labels_for_families_with_their_own_e_step_are_refused():
    class Sequences:  # a family that computes its own E-step (as the HMMs do)
        def e_step(self, params, x, weights):
            raise AssertionError("not reached")

    with pytest.raises(ValueError, match="partial labels are for mixtures, not Sequences"):
        em.e_step(Sequences(), None, jnp.zeros((2, 5)), labels=jnp.zeros(2, jnp.int32))
