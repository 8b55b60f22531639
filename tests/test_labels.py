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
        has_e_step = True  # declared (jaxem.families.base.Family), not guessed

        def e_step(self, params, x, weights):
            raise AssertionError("not reached")

    with pytest.raises(ValueError, match="partial labels are for mixtures, not Sequences"):
        em.e_step(Sequences(), None, jnp.zeros((2, 5)), labels=jnp.zeros(2, jnp.int32))


# -- through the public API: jaxem.fit(labels=) and the estimators' fit(X, y) ------------------
def _blobs(seed=0, n=150, spread=1.0):
    """Three 2-D blobs; ``z (n,)`` the blob of each row."""
    rng = np.random.default_rng(seed)
    z = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 2)) * spread + np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])[z]
    return x, z


def _class_moments(x, y, w, k, covariance_type, reg_covar):
    """The closed-form M-step of fully labelled rows, in float64 NumPy."""
    weights, means, covs = [], [], []
    for c in range(k):
        wc = w * (y == c)
        mean = wc @ x / wc.sum()
        diff = x - mean
        weights.append(wc.sum() / w.sum())
        means.append(mean)
        covs.append((wc[:, None] * diff).T @ diff)  # scatter, divided below
    counts = np.array(weights) * w.sum()
    covs = np.array(covs)
    d = x.shape[1]
    if covariance_type == "full":
        cov = covs / counts[:, None, None] + reg_covar * np.eye(d)
    elif covariance_type == "tied":
        cov = covs.sum(0) / w.sum() + reg_covar * np.eye(d)
    elif covariance_type == "diag":
        cov = np.einsum("kdd->kd", covs) / counts[:, None] + reg_covar
    else:
        cov = np.einsum("kdd->k", covs) / counts / d + reg_covar
    return np.array(weights), np.array(means), cov


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_fully_labelled_fit_is_the_closed_form_per_class_m_step(x64, covariance_type):
    x, z = _blobs(1, spread=2.0)  # overlapping: unlabelled EM would move rows across
    w = np.random.default_rng(2).uniform(0.5, 2.0, len(x))
    want = _class_moments(x, z, w, 3, covariance_type, 1e-6)
    gm = jaxem.GaussianMixture(3, covariance_type=covariance_type, random_state=0)
    gm.fit(x, z, sample_weight=w)
    for name, value in zip(("weights_", "means_", "covariances_"), want):
        np.testing.assert_allclose(getattr(gm, name), value, rtol=1e-9, err_msg=name)
    assert gm.converged_ and gm.n_iter_ == 2  # the second E-step repeats the first
    # The labelled start is already the answer (max_iter=0 returns the start).
    start = jaxem.GaussianMixture(3, covariance_type=covariance_type, max_iter=0,
                                  random_state=0).fit(x, z, sample_weight=w)
    np.testing.assert_allclose(start.means_, want[1], rtol=1e-9)
    # The objective: sum over rows of w log p(x, z = y), per unit of weight.
    lj = np.log(want[0]) + np.array([
        _gauss_logpdf(x, want[1][c], _full_cov(want[2], c, covariance_type, 2))
        for c in range(3)]).T
    np.testing.assert_allclose(gm.lower_bound_, w @ lj[np.arange(len(x)), z] / w.sum(),
                               rtol=1e-9)


def _full_cov(cov, c, covariance_type, d):
    return {"full": lambda: cov[c], "tied": lambda: cov, "diag": lambda: np.diag(cov[c]),
            "spherical": lambda: np.eye(d) * cov[c]}[covariance_type]()


def _gauss_logpdf(x, mean, cov):
    diff = x - mean
    sol = np.linalg.solve(cov, diff.T).T
    return -0.5 * (np.sum(diff * sol, 1) + np.linalg.slogdet(cov)[1]
                   + x.shape[1] * np.log(2 * np.pi))


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_fully_labelled_bernoulli_is_the_closed_form(x64, alpha):
    rng = np.random.default_rng(3)
    z = rng.integers(0, 2, 80)
    x = (rng.random((80, 5)) < np.array([[0.2] * 5, [0.8] * 5])[z]).astype(float)
    x[rng.random(x.shape) < 0.2] = np.nan  # missing entries: per-feature denominators
    bm = jaxem.BernoulliMixture(2, alpha=alpha, random_state=0).fit(x, z)
    obs = ~np.isnan(x)
    for c in range(2):
        rows = z == c
        ones = np.nansum(x[rows], axis=0)
        np.testing.assert_allclose(bm.probabilities_[c],
                                   (ones + alpha) / (obs[rows].sum(0) + 2 * alpha), rtol=1e-10)
    np.testing.assert_allclose(bm.weights_, (np.bincount(z) + alpha) / (80 + 2 * alpha),
                               rtol=1e-10)


def test_labels_name_components_and_stay_clamped(x64):
    """Label j is component j, whatever order an unsupervised start would give; the
    labelled training rows keep their label (even a wrong one); other rows follow
    their blob."""
    x, z = _blobs(4, spread=0.6)  # 5 standard deviations apart: no row is ambiguous
    names = np.array([2, 0, 1])  # blob b is component names[b]
    y = np.where(np.random.default_rng(5).random(len(x)) < 0.15, names[z], -1)
    known = y >= 0
    gm = jaxem.GaussianMixture(3, random_state=0)
    labels = gm.fit_predict(x, y)
    np.testing.assert_array_equal(labels, names[z])
    # The fitted posterior of the labelled rows is one-hot on their label.
    np.testing.assert_allclose(gm.predict_proba(x[known]), np.eye(3)[y[known]], atol=1e-6)
    # A wrong label is clamped all the same: fit_predict returns it.
    wrong = y.copy()
    wrong[0] = (names[z[0]] + 1) % 3
    labels = jaxem.GaussianMixture(3, random_state=0).fit_predict(x, wrong)
    np.testing.assert_array_equal(labels[wrong >= 0], wrong[wrong >= 0])
    # The discrete mixtures name components the same way.
    counts = np.random.default_rng(6).poisson(np.array([1.0, 12.0, 40.0])[z][:, None],
                                              (len(x), 4)).astype(float)
    pm = jaxem.PoissonMixture(3, random_state=0)
    np.testing.assert_array_equal(pm.fit_predict(counts, y), names[z])
    np.testing.assert_allclose(pm.predict_proba(counts[known]), np.eye(3)[y[known]],
                               atol=1e-6)


def test_y_none_and_all_unlabelled_equal_plain_em(x64):
    x, _ = _blobs(7, spread=1.5)
    plain = jaxem.GaussianMixture(3, n_init=2, random_state=0).fit(x)
    for y in (None, np.full(len(x), -1)):
        other = jaxem.GaussianMixture(3, n_init=2, random_state=0).fit(x, y)
        np.testing.assert_array_equal(other.means_, plain.means_)
        assert other.lower_bounds_ == plain.lower_bounds_
    fam = jaxem.gaussian("full")
    a = jaxem.fit(fam, x, n_components=3, key=jax.random.key(0), n_init=2)
    b = jaxem.fit(fam, x, n_components=3, key=jax.random.key(0), n_init=2,
                  labels=np.full(len(x), -1))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(u, v)


def test_fit_labels_batched_padded_and_on_devices_equal_single_fits(x64):
    x, z = _blobs(8, n=90)
    fam = jaxem.gaussian("diag")
    y1 = np.where(np.arange(90) % 4 == 0, z, -1)
    y2 = np.where(np.arange(90) % 3 == 0, (z + 1) % 3, -1)
    kw = dict(n_components=3, key=jax.random.key(0), max_iter=30, tol=1e-10)
    one = [jaxem.fit(fam, x[:n], labels=y[:n], **kw) for n, y in ((90, y1), (70, y2))]
    w = np.ones((2, 90))
    w[1, 70:] = 0.0  # the second data set padded with weight 0 (its labels are ignored)
    y2_padded = np.r_[y2[:70], np.full(20, 2)]
    both = jaxem.fit(fam, np.stack([x, x]), weights=w, labels=np.stack([y1, y2_padded]), **kw)
    on_devices = jaxem.fit(fam, x, labels=y1, devices=jax.devices()[:1], **kw)
    for b, single in enumerate(one):
        for got, want in zip(jax.tree.map(lambda a: a[b], both.params), single.params):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    for got, want in zip(on_devices.params, one[0].params):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("labels, words", [
    (np.full(40, 3), r"labels must be -1 \(unlabelled\) or a component index 0 \.\. 2 "
                     r"\(n_components=3\), got 3 at index 0"),
    (np.r_[np.zeros(39), -2], "got -2 at index 39"),
    (np.zeros(39), r"labels must have shape \(40,\)"),
    (np.zeros((1, 40)), r"labels must have shape \(40,\)"),
    (np.r_[np.zeros(39), 0.5], r"labels must be integers .* got 0.5 at index 39"),
    (np.r_[np.zeros(39), np.nan], "labels must be integers"),
    (np.array(["a"] * 40), "labels must be integers .* dtype <U1"),
    (np.zeros(40, bool), "labels must be integers .* dtype bool"),
])
def test_fit_refuses_bad_labels_before_compiling(labels, words):
    x = np.random.default_rng(0).normal(size=(40, 2))
    with pytest.raises(ValueError, match=words):
        jaxem.fit(jaxem.gaussian(), x, n_components=3, key=jax.random.key(0), labels=labels)


def test_fit_labels_shape_of_a_batch_and_sequence_families():
    x = np.zeros((2, 40, 2))
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 40\)"):
        jaxem.fit(jaxem.gaussian(), x, n_components=2, key=jax.random.key(0),
                  labels=np.zeros(40))

    class Sequences:  # a family with its own E-step (as the HMMs)
        has_e_step = True

    with pytest.raises(ValueError, match="partial labels.* not Sequences"):
        jaxem.batch.check_labels(np.zeros(40), (40,), 2, Sequences())


@pytest.mark.parametrize("make", [jaxem.GaussianMixture, jaxem.PoissonMixture],
                         ids=["gaussian", "poisson"])
@pytest.mark.parametrize("y, words", [
    ([0, 1, 2, -1, 0, 1], r"y must be -1 \(unlabelled\) or a component index 0 \.\. 1 "
                          r"\(n_components=2\), got 2 at index 2"),
    ([0, 1, -5, -1, 0, 1], "got -5 at index 2"),
    ([0, 1, -1], r"y must have shape \(6,\)"),
    ([[0], [1], [1], [0], [0], [1]], r"y must have shape \(6,\)"),
    ([0, 1, 0.5, -1, 0, 1], "y must be integers"),
    ([0, 1, np.inf, -1, 0, 1], "y must be integers"),
    (["a", "b", "a", "b", "a", "b"], "y must be integers"),
])
def test_estimators_refuse_hostile_y(make, y, words):
    X = np.array([[0, 1], [1, 3], [2, 0], [4, 4], [0, 0], [3, 1]], float)
    with pytest.raises(ValueError, match=words):
        make(2).fit(X, y)
    with pytest.raises(ValueError, match=words):
        make(2).fit_predict(X, y)
