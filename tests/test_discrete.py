"""Bernoulli, categorical and Poisson mixtures: against a plain NumPy EM, brute force and
the engine's invariants; missing entries marginalised exactly; the estimators' checks."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats as sps
from scipy.special import logsumexp
from sklearn.exceptions import ConvergenceWarning, NotFittedError

import jaxem
from _sklearn_checks import run_checks, run_y_checks, y_checks_expected_to_fail
from jaxem.families import (BernoulliParams, CategoricalParams, PoissonParams, bernoulli,
                            categorical, poisson)

N_CAT = (2, 3, 4)


# -- data and starting points ------------------------------------------------------------------
def make_data(kind, seed, n=40, missing=0.2):
    """Small data with a fraction of entries missing (-1): ``x (n, D)`` float64."""
    rng = np.random.default_rng(seed)
    if kind == "categorical":
        x = np.stack([rng.integers(0, v, n) for v in N_CAT], axis=1).astype(float)
    elif kind == "bernoulli":
        x = (rng.random((n, 4)) < rng.random(4)).astype(float)
    else:
        x = rng.poisson(rng.uniform(0.5, 6, size=4), size=(n, 4)).astype(float)
    drop = rng.random(x.shape) < missing
    drop[np.arange(n), rng.integers(0, x.shape[1], n)] = False  # no row all missing
    return np.where(drop, -1.0, x)


def make_params(kind, seed, k=3):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(k) * 3)
    if kind == "categorical":
        p = np.zeros((k, len(N_CAT), max(N_CAT)))
        for j, v in enumerate(N_CAT):
            p[:, j, :v] = rng.dirichlet(np.ones(v) * 2, size=k)
        return CategoricalParams(w, p)
    if kind == "bernoulli":
        return BernoulliParams(w, rng.uniform(0.1, 0.9, (k, 4)))
    return PoissonParams(w, rng.uniform(0.5, 6, (k, 4)))


def make_family(kind, alpha):
    return {"categorical": lambda: categorical(N_CAT, alpha), "bernoulli": lambda: bernoulli(alpha),
            "poisson": lambda: poisson(alpha, 0.5 * alpha)}[kind]()


KINDS = ["categorical", "bernoulli", "poisson"]


# -- the reference: a plainly written float64 EM ------------------------------------------------
def ref_log_emission(kind, params, x):
    """``log p(x_obs | z = k)``: ``(n, K)``, a loop over features, missing ones skipped."""
    n, d = x.shape
    k = len(params[0])
    out = np.zeros((n, k))
    for j in range(d):
        obs = x[:, j] >= 0
        xj = np.where(obs, x[:, j], 0).astype(int)
        for c in range(k):
            if kind == "categorical":
                lp = np.log(params[1][c, j, xj])
            elif kind == "bernoulli":
                lp = sps.bernoulli.logpmf(xj, params[1][c, j])
            else:
                lp = sps.poisson.logpmf(xj, params[1][c, j])
            out[:, c] += np.where(obs, lp, 0.0)
    return out


def ref_em_step(kind, params, x, w, alpha):
    """One EM step: ``(new params, mean log-likelihood at params)`` (MAP with ``alpha``)."""
    lj = np.log(params[0]) + ref_log_emission(kind, params, x)
    ll = logsumexp(lj, axis=1)
    r = np.exp(lj - ll[:, None]) * w[:, None]
    nk = r.sum(0)
    k = len(nk)
    weights = (nk + alpha) / (nk.sum() + k * alpha)
    obs = x >= 0
    if kind == "categorical":
        p = np.zeros_like(params[1])
        for j, v in enumerate(N_CAT):
            for val in range(v):
                p[:, j, val] = r.T @ (x[:, j] == val) + alpha
            p[:, j, :v] /= p[:, j, :v].sum(axis=1, keepdims=True)
    elif kind == "bernoulli":
        p = (r.T @ np.where(obs, x, 0) + alpha) / (r.T @ obs + 2 * alpha)
    else:
        p = (r.T @ np.where(obs, x, 0) + alpha) / (r.T @ obs + 0.5 * alpha)
    return type(params)(weights, p), float(np.sum(w * ll) / np.sum(w))


def ref_log_prior(kind, params, alpha):
    """The log density (up to a constant) of the prior whose MAP the M-step above is:
    Dirichlet(alpha + 1) on the weights and categorical rows, Beta(alpha + 1, alpha + 1)
    on Bernoulli probabilities, Gamma(alpha + 1, rate alpha / 2) on Poisson rates."""
    weights, p = params
    lp = alpha * np.sum(np.log(weights))
    if kind == "categorical":
        for j, v in enumerate(N_CAT):
            lp += alpha * np.sum(np.log(p[:, j, :v]))
    elif kind == "bernoulli":
        lp += alpha * np.sum(np.log(p) + np.log1p(-p))
    else:
        lp += np.sum(alpha * np.log(p) - 0.5 * alpha * p)
    return lp


# -- EM against the reference ------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("missing", [0.0, 0.25], ids=["complete", "missing"])
def test_em_equals_numpy_reference(x64, kind, missing):
    x = make_data(kind, 1, missing=missing)
    w = np.random.default_rng(2).integers(1, 4, len(x)).astype(float)
    alpha, k_iter = 0.5, 8  # the shapes and max_iter other tests use: one compilation
    p0 = make_params(kind, 3)
    res = jaxem.fit(make_family(kind, alpha), x, n_components=3, key=jax.random.key(0),
                    init=p0, weights=w, tol=0.0, max_iter=k_iter)
    params, trace, lls = p0, [], []
    for _ in range(k_iter):  # the trace is the MAP objective at the E-step's parameters
        objective = ref_log_prior(kind, params, alpha) / np.sum(w)
        params, ll = ref_em_step(kind, params, x, w, alpha)
        trace.append(ll + objective)
        lls.append(ll)
    for got, want in zip(res.params, params):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.trace, trace, rtol=1e-10)
    np.testing.assert_allclose(res.log_likelihood, lls[-1], rtol=1e-10)
    assert np.all(np.diff(trace) >= -1e-12)  # EM increases the MAP objective
    assert res.params.weights.dtype == jnp.float64


@pytest.mark.parametrize("kind, init", [("categorical", "k-means++"), ("bernoulli", "random"),
                                        ("poisson", "random_from_data")])
def test_float32_by_default_and_generic_inits(kind, init):
    """The engine's initialisations work on the family, missing entries included (the
    fourth, "kmeans", is the estimators' default, used on the digits below)."""
    x = make_data(kind, 4)
    res = jaxem.fit(make_family(kind, 0.0), x, n_components=3, key=jax.random.key(0),
                    init=init, n_init=2)
    assert all(a.dtype == jnp.float32 for a in res.params)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in res.params)
    assert bool(jnp.isfinite(res.log_likelihood)) and bool(res.converged)


# -- likelihood by brute force -----------------------------------------------------------------
def values_of(kind, j):
    return range({"categorical": N_CAT[j % len(N_CAT)], "bernoulli": 2}.get(kind, 40))


def brute_log_likelihood(kind, params, row):
    """``log p(x_obs)``: the sum over z and over every completion of the missing entries of
    ``p(z) prod_d p(x_d | z)``, one completion per grid point (Poisson counts truncated
    at 40, the rates being below 6)."""
    missing = [j for j, v in enumerate(row) if v < 0]
    grid = np.meshgrid(*(np.arange(len(values_of(kind, j))) for j in missing), indexing="ij")
    full = np.tile(row, (grid[0].size if missing else 1, 1))
    for j, g in zip(missing, grid):
        full[:, j] = g.ravel()
    full = full.astype(int)
    total = 0.0
    for c, wc in enumerate(params[0]):
        p = np.full(len(full), wc)
        for j in range(full.shape[1]):
            v = full[:, j]
            if kind == "categorical":
                p = p * params[1][c, j, v]
            elif kind == "bernoulli":
                p = p * np.where(v == 1, params[1][c, j], 1 - params[1][c, j])
            else:
                lam = params[1][c, j]
                p = p * np.exp(-lam) * lam ** v / np.array([math.factorial(t) for t in v])
        total += p.sum()
    return math.log(total)


@pytest.mark.parametrize("kind", KINDS)
def test_log_likelihood_is_the_sum_over_missing_values(x64, kind):
    x = make_data(kind, 5, n=12, missing=0.3)
    params = make_params(kind, 6)
    fam = make_family(kind, 1.0)
    got = np.asarray(jaxem.log_likelihood(fam, params, x))
    want = [brute_log_likelihood(kind, params, row) for row in x]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    # NaN marks a missing entry as well as -1.
    nan = np.asarray(jaxem.log_likelihood(fam, params, np.where(x < 0, np.nan, x)))
    np.testing.assert_array_equal(nan, got)


# -- invariants --------------------------------------------------------------------------------
_step = jax.jit(lambda fam, params, x, w: jaxem.em_step(fam, params, x, w))


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10**6), alpha=st.sampled_from([0.0, 0.3, 1.0]),
       kind=st.sampled_from(KINDS), missing=st.floats(0.0, 0.5))
def test_map_objective_never_decreases(seed, alpha, kind, missing):
    with jax.enable_x64(True):
        x = make_data(kind, seed, n=30, missing=missing)
        w = np.random.default_rng(seed).uniform(0.5, 2.0, len(x))
        fam = make_family(kind, alpha)
        params = jax.tree.map(jnp.asarray, make_params(kind, seed + 1))
        objective = []
        for _ in range(15):
            new, mean_ll = _step(fam, params, x, w)
            objective.append(float(mean_ll) * w.sum() + float(fam.log_prior(params)))
            params = new
        diffs = np.diff(objective)
        assert np.all(diffs >= -1e-9 * np.abs(objective[:-1])), (objective, diffs)


@pytest.mark.parametrize("kind", KINDS)
def test_restarts_and_datasets_batched_equal_a_loop_and_padding_changes_nothing(x64, kind):
    fam = make_family(kind, 0.5)
    xs = [make_data(kind, s, n=n) for s, n in ((7, 30), (8, 22))]
    inits = [jax.tree.map(lambda *a: np.stack(a), *[make_params(kind, 10 * s + r)
                                                    for r in range(3)]) for s in (1, 2)]
    # Two data sets of different sizes: the second padded with garbage rows of weight 0.
    pad = np.full((8, xs[0].shape[1]), 7.0)
    batch = np.stack([xs[0], np.concatenate([xs[1], pad])])
    w = np.stack([np.ones(30), np.r_[np.ones(22), np.zeros(8)]])
    init = jax.tree.map(lambda a, b: np.stack([a, b]), *inits)
    res = jaxem.fit(fam, batch, weights=w, n_components=3, key=jax.random.key(0), n_init=3,
                    init=init, max_iter=20, tol=1e-8)
    for b in range(2):
        for r in range(3):
            one = jaxem.fit(fam, xs[b], n_components=3, key=jax.random.key(1),
                            init=jax.tree.map(lambda a: a[r], inits[b]), max_iter=20, tol=1e-8)
            got = jax.tree.map(lambda a: a[b, r], res.restarts)
            for g, o in zip(got.params, one.params):
                np.testing.assert_allclose(g, o, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(got.trace, one.trace, rtol=1e-10)
            assert int(got.n_iter) == int(one.n_iter)


@pytest.mark.parametrize("kind", KINDS)
def test_weights_equal_repeated_rows_and_chunks_equal_one_pass(x64, kind):
    fam = make_family(kind, 1.0)
    x = make_data(kind, 9)
    reps = np.random.default_rng(3).integers(1, 3, len(x))
    p0 = make_params(kind, 4)
    kw = dict(n_components=3, key=jax.random.key(0), init=p0, tol=0.0, max_iter=8)
    weighted = jaxem.fit(fam, x, weights=reps.astype(float), **kw)
    repeated = jaxem.fit(fam, np.repeat(x, reps, axis=0), **kw)
    chunked = jaxem.fit(fam, x, weights=reps.astype(float), chunk_size=7, **kw)
    for a, b, c in zip(weighted.params, repeated.params, chunked.params):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(weighted.trace, chunked.trace, rtol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_component_and_unobserved_feature_stay_finite(x64, kind):
    """alpha = 0 (maximum likelihood): a component with weight 0 and a feature missing in
    every row have no estimate; they keep their values and nothing becomes NaN."""
    fam = make_family(kind, 0.0)
    x = make_data(kind, 11)
    x[:, 1] = -1.0
    p0 = make_params(kind, 12)
    p0 = p0._replace(weights=np.array([0.5, 0.5, 0.0]))
    res = jaxem.fit(fam, x, n_components=3, key=jax.random.key(0), init=p0, tol=0.0,
                    max_iter=8)
    assert not bool(res.failed)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in res.params)
    assert float(res.params.weights[2]) == 0.0
    np.testing.assert_array_equal(res.params[1][:, 1], np.asarray(p0[1])[:, 1])
    np.testing.assert_array_equal(res.params[1][2], np.asarray(p0[1])[2])


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_baseline(x64, kind):
    """The unconstrained round trip, and a zero gradient at EM's maximum (alpha = 0)."""
    fam = make_family(kind, 0.0)
    x = make_data(kind, 13, n=40, missing=0.1)
    w = np.ones(len(x))
    params = jax.tree.map(jnp.asarray, make_params(kind, 14))
    for a, b in zip(fam.from_unconstrained(fam.to_unconstrained(params)), params):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    em = jaxem.fit(fam, x, n_components=3, key=jax.random.key(0), init=params, tol=1e-13,
                   max_iter=3000)
    loss = lambda u: jaxem.gradient.mean_log_likelihood(fam, fam.from_unconstrained(u), x, w)
    grad = jax.grad(loss)(fam.to_unconstrained(em.params))
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad)) < 1e-5
    res = jaxem.fit_gradient(fam, x, n_components=3, key=jax.random.key(0),
                             optimizer=optax.adam, learning_rate=0.05, max_iter=100,
                             init=params)
    assert float(res.log_likelihood) <= float(em.log_likelihood) + 1e-9
    assert float(res.log_likelihood) > float(res.trace[0])


# -- estimators --------------------------------------------------------------------------------
def _estimator(kind, **kw):
    cls = {"categorical": jaxem.CategoricalMixture, "bernoulli": jaxem.BernoulliMixture,
           "poisson": jaxem.PoissonMixture}[kind]
    return cls(**kw)


@pytest.mark.parametrize("kind", KINDS)
def test_estimator_api_and_missing_entries(x64, kind):
    x = make_data(kind, 15, n=60, missing=0.15)
    X = np.where(x < 0, np.nan, x)
    est = _estimator(kind, n_components=3, n_init=2, random_state=0, alpha=1.0,
                     init_params="random_from_data").fit(X)
    assert est.weights_.shape == (3,) and est.converged_ and est.n_iter_ >= 1
    assert est.restarts_.log_likelihood.shape == (2,)
    params = est._params()
    ll = np.array([brute_log_likelihood(kind, params, row) for row in x[:8]])
    np.testing.assert_allclose(est.score_samples(X[:8]), ll, rtol=1e-10)
    np.testing.assert_allclose(est.score(X), est.score_samples(X).mean())
    np.testing.assert_allclose(est.predict_proba(X).sum(axis=1), 1.0)
    np.testing.assert_array_equal(est.predict(X), est.predict_proba(X).argmax(axis=1))
    n_par = est._n_parameters()
    assert n_par == (2 + 3 * sum(v - 1 for v in N_CAT) if kind == "categorical" else 2 + 3 * 4)
    np.testing.assert_allclose(est.bic(X), -2 * est.score(X) * 60 + n_par * np.log(60))
    np.testing.assert_allclose(est.aic(X), -2 * est.score(X) * 60 + 2 * n_par)
    xs, ys = est.sample(50)
    assert xs.shape == (50, 4 if kind != "categorical" else 3) and np.all(np.diff(ys) >= 0)
    assert np.all(est.score_samples(xs) > -np.inf)
    if kind == "categorical":
        assert [p.shape for p in est.probabilities_] == [(3, v) for v in N_CAT]
        assert est.n_categories_.tolist() == list(N_CAT)
        # -1 and NaN are the same missing code.
        np.testing.assert_array_equal(est.score_samples(x[:8]), est.score_samples(X[:8]))
    elif kind == "bernoulli":
        np.testing.assert_allclose(est.feature_log_prob_, np.log(est.probabilities_))
    else:
        assert est.rates_.shape == (3, 4)


def test_estimator_is_the_engine_fit(x64):
    """CategoricalMixture's parameters are the NumPy reference EM's from its own start."""
    x = make_data("categorical", 16, n=50)
    with pytest.warns(ConvergenceWarning, match="did not converge"):  # tol=0: never
        est = jaxem.CategoricalMixture(3, alpha=0.5, tol=0.0, max_iter=7, random_state=1).fit(x)
    assert est.n_iter_ == 7 and not est.converged_
    start = jaxem.batch.initial_params(categorical(N_CAT, 0.5), x, n_components=3,
                                       key=jaxem.estimators._base.key_from(1),
                                       init="random_from_data")
    params = jax.tree.map(lambda a: np.asarray(a[0]), start)
    for _ in range(7):
        params, _ = ref_em_step("categorical", params, x, np.ones(len(x)), 0.5)
    for j, v in enumerate(N_CAT):
        np.testing.assert_allclose(est.probabilities_[j], params[1][:, j, :v], rtol=1e-10)
    np.testing.assert_allclose(est.weights_, params[0], rtol=1e-10)


def test_binarised_digits_against_the_reference(x64):
    """Real data: scikit-learn's digits, binarised (1797 x 64), K = 10."""
    from sklearn.datasets import load_digits
    from sklearn.metrics import adjusted_rand_score
    digits = load_digits()
    x = (digits.data > 7).astype(float)
    rng = np.random.default_rng(0)
    p0 = BernoulliParams(np.full(10, 0.1), rng.uniform(0.25, 0.75, (10, 64)))
    res = jaxem.fit(bernoulli(1.0), x, n_components=10, key=jax.random.key(0), init=p0,
                    tol=0.0, max_iter=10)
    params = p0
    for _ in range(10):
        params, _ = ref_em_step("bernoulli", params, x, np.ones(len(x)), 1.0)
    np.testing.assert_allclose(res.params.probabilities, params.probabilities, rtol=1e-8)
    est = jaxem.BernoulliMixture(10, random_state=0).fit(x)  # k-means start
    # The clusters follow the digits (chance would be 0).
    assert adjusted_rand_score(digits.target, est.predict(x)) > 0.3


@pytest.mark.parametrize("kind, X, words", [
    ("bernoulli", [[0, 1], [2, 1], [1, 0]], "binary values"),
    ("bernoulli", [[0, 1], [-1, 1], [1, 0]], "binary values"),
    ("poisson", [[0, 1], [-3, 1], [1, 0]], "non-negative integer counts"),
    ("poisson", [[0, 1.5], [3, 1], [1, 0]], "non-negative integer counts"),
    ("categorical", [[0, 1], [-2, 1], [1, 0]], "integer category codes"),
    ("categorical", [[0, 1], [0.5, 1], [1, 0]], "integer category codes"),
    ("bernoulli", [[0, 1], [np.nan, np.nan], [1, 0]], "every entry missing"),
    ("categorical", [[0, 1], [-1, -1], [1, 0]], "every entry missing"),
    ("poisson", [[0, 1], [np.inf, 1], [1, 0]], "infinity"),
])
def test_bad_input_raises_naming_it(kind, X, words):
    with pytest.raises(ValueError, match=words) as err:
        _estimator(kind, n_components=2).fit(np.array(X, float))
    assert "X" in str(err.value)
    assert "np." not in str(err.value)  # the entry as a plain number, not np.float32(...)


def test_bad_arguments_and_unfitted():
    X = np.array([[0, 1], [1, 0], [1, 1], [0, 0]])
    with pytest.raises(NotFittedError):
        jaxem.BernoulliMixture(2).predict(X)
    with pytest.raises(ValueError, match="alpha"):
        jaxem.BernoulliMixture(2, alpha=-1.0).fit(X)
    with pytest.raises(ValueError, match="n_components"):
        jaxem.PoissonMixture(5).fit(X)
    with pytest.raises(ValueError, match="n_categories"):
        jaxem.CategoricalMixture(2, n_categories=[2, 2, 2]).fit(X)
    with pytest.raises(ValueError, match=r"n_categories\[1\] = 1"):
        jaxem.CategoricalMixture(2, n_categories=[2, 1]).fit(X)
    cm = jaxem.CategoricalMixture(2, random_state=0).fit(X)
    with pytest.raises(ValueError, match=r"n_categories_\[0\] = 2"):
        cm.predict(np.array([[2, 0]]))
    with pytest.raises(ValueError, match="features"):
        cm.predict(np.array([[0, 0, 1]]))
    with pytest.raises(ValueError, match="every entry missing"):
        cm.score_samples(np.array([[-1, -1]]))
    with pytest.raises(ValueError, match="n_samples"):
        cm.sample(0)


# -- scikit-learn's own checks ------------------------------------------------------------------
# The checks that cannot apply as written fail for a stated cause, asserted by run_checks
# (see tests/_sklearn_checks.py): y read as partial labels, and for counts and codes one
# check that feeds random floats without consulting the input tags.
_REAL_X = ("the check passes random floats in [0, 1) whatever the input tags; counts and "
           "category codes are integers")
_WEIGHTS_VS_REPEATS = ("random initialisation draws differ between weighted and repeated "
                       "rows (the components come out permuted); from the same start they "
                       "are equal: test_weights_equal_repeated_rows_and_chunks_equal_one_pass")


@pytest.mark.parametrize("estimator", [
    jaxem.BernoulliMixture(2, binarize=0.5, random_state=0),  # BernoulliNB's threshold
    jaxem.CategoricalMixture(2, random_state=0),
    jaxem.PoissonMixture(2, random_state=0),
], ids=lambda est: type(est).__name__)
def test_check_estimator(x64, estimator):  # float64: the invariance checks use rtol 1e-7
    expected, causes = y_checks_expected_to_fail(), {}
    equivalence = "check_sample_weight_equivalence_on_dense_data"
    if isinstance(estimator, jaxem.BernoulliMixture):
        without_y_fails = {equivalence: _WEIGHTS_VS_REPEATS}
    else:  # tagged categorical: the other checks pass non-negative integers
        expected[equivalence] = _REAL_X
        causes[equivalence] = "X must hold"
        without_y_fails = {equivalence: _REAL_X}
    run_checks(estimator, expected, causes)
    run_y_checks(estimator, without_y_fails)
