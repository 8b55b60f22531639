"""Component trimming (jaxem.trim): after its last trim a trimmed fit is a fit of the
survivors alone, the trace never decreases between trims, threshold 0 is the plain fit,
and trims are recorded with the iteration that made them; GaussianMixture(trim_threshold=...)
is that fit, compacted to the survivors."""
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st
from sklearn.mixture import GaussianMixture as SkGM

import jaxem
from jaxem import em
from jaxem.estimators._base import key_from
from jaxem.trim import TrimmedParams, history, n_live, start, trimmed

# EM under jit: a test's repeated runs of one shape compile once.
run = jax.jit(em.run, static_argnames=("max_iter", "chunk_size", "axis_name"))
K = 8  # components to start with; the data have 3 blobs, so several fade


def _start(fam, x, seed=1, k=K):
    """``k`` components at random rows: several sit in the same blob and some fade."""
    return jaxem.initialize(fam, jax.random.key(seed), jnp.asarray(x), jnp.ones(len(x)), k,
                            "random_from_data")


def _trims(tp):
    """``{iteration: [components]}`` of a single instance's recorded trims."""
    at = np.asarray(tp.trimmed_at)
    return {int(t): np.flatnonzero(at == t).tolist() for t in np.unique(at[at > 0])}


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
def test_after_its_last_trim_the_fit_is_a_fit_of_the_survivors(ct, make_blobs, x64):
    x, _ = make_blobs(0, 200, 2, 3)
    x = jnp.asarray(x)
    base = jaxem.gaussian(ct, reg_covar=1e-6)
    fam = trimmed(base, 0.1)
    p0 = _start(base, x)
    n = 40
    out = run(fam, start(p0), x, max_iter=n, tol=-1.0)
    trims = _trims(out.params)
    assert trims, "the test needs a trim"
    last = max(trims)
    assert last < n - 5
    # Stop right after the last trim's M-step, keep the survivors, go on with the plain
    # family: the same trajectory.
    at_last = run(fam, start(p0), x, max_iter=last, tol=-1.0).params
    assert _trims(at_last) == trims
    survivors = fam.survivors(at_last)
    k_live = int(n_live(at_last))
    assert survivors.means.shape == (k_live, 2)
    np.testing.assert_allclose(jnp.sum(survivors.weights), 1.0, rtol=1e-12)
    plain = run(base, survivors, x, max_iter=n - last, tol=-1.0)
    np.testing.assert_allclose(out.trace[last:], plain.trace, rtol=1e-10)
    got = fam.survivors(out.params)
    for a, b in zip(got, plain.params):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # Dropped components keep weight 0 and stay dropped.
    dropped = np.asarray(out.params.active) == 0
    np.testing.assert_array_equal(np.asarray(out.params.params.weights)[dropped], 0.0)
    np.testing.assert_array_equal(np.asarray(out.params.trimmed_at)[~dropped], -1)
    assert int(out.params.n_iter) == n


def test_trims_are_recorded_and_the_trace_rises_between_them(make_blobs, x64):
    x, _ = make_blobs(0, 200, 2, 3)
    x = jnp.asarray(x)
    base = jaxem.gaussian("full", reg_covar=0.0)  # EM's guarantee holds without it
    fam = trimmed(base, 0.1)
    p0 = start(_start(jaxem.gaussian("full"), x))  # (a start needs reg_covar > 0)
    out = run(fam, p0, x, max_iter=40, tol=-1.0)
    tp, trace = out.params, np.asarray(out.trace)
    trims = _trims(tp)
    assert trims and int(n_live(tp)) == K - sum(len(v) for v in trims.values())
    # The decision: in the M-step of iteration t, the dropped components' renormalised
    # weights were below the threshold, the others' not.
    step = jax.jit(lambda p: jaxem.em_step(fam, p, x)[0])
    path = [p0]  # path[t]: the parameters after t iterations
    for _ in range(max(trims)):
        path.append(step(path[-1]))
    assert _trims(path[-1]) == trims
    for t, comps in trims.items():
        before = path[t - 1]
        after_m = jaxem.m_step(base, jaxem.e_step(fam, before, x)[0], before.params)
        live = np.asarray(before.active) > 0
        w = np.where(live, np.asarray(after_m.weights), 0.0)
        w = w / w.sum()
        dropped = np.isin(np.arange(K), comps)
        assert np.all(w[dropped] < 0.1) and np.all(w[live & ~dropped] >= 0.1)
    for t in range(1, len(trace)):  # a trim in the M-step of t changes trace[t]
        if t not in trims:
            assert trace[t] >= trace[t - 1] - 1e-9 * abs(trace[t]), t
    # history: live components after each iteration
    h = history(tp)
    assert h.shape == (41,) and h[0] == K and h[-1] == int(n_live(tp))
    for t, comps in trims.items():
        assert h[t - 1] - h[t] == len(comps)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), threshold=st.floats(0.0, 0.3))
@example(seed=797, threshold=0.0)
def test_log_likelihood_never_decreases_between_trims(seed, threshold):
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        x = jnp.asarray(np.concatenate([rng.normal(size=(60, 2)),
                                        rng.normal(size=(60, 2)) + 5.0]))
        base = jaxem.gaussian("diag", reg_covar=0.0)
        p0 = _start(jaxem.gaussian("diag"), x, seed=seed, k=6)
        out = run(trimmed(base, threshold), start(p0), x, max_iter=25, tol=-1.0)
        at, trace = np.asarray(out.params.trimmed_at), np.asarray(out.trace)
        assert int(n_live(out.params)) >= 1
        # With reg_covar=0 (so the M-step is the exact maximiser and EM is monotone) a
        # component may collapse onto one row, the likelihood's singularity (seed=797,
        # threshold=0.0): its variance is then rounding, and a negative one must stop
        # the run flagged, never silently; up to there the trace still never decreases.
        finite = np.isfinite(trace)
        if not finite.all():
            assert bool(out.failed) and not finite[np.argmin(finite):].any()
            trace = trace[:np.argmin(finite)]
        for t in range(1, len(trace)):
            if not np.any(at == t):
                assert trace[t] >= trace[t - 1] - 1e-9 * abs(trace[t])


def test_the_last_component_is_never_dropped(make_blobs, x64):
    x, _ = make_blobs(0, 100, 2, 2)
    fam = trimmed(jaxem.gaussian("spherical"), 0.9)  # every weight is below 0.9
    out = run(fam, start(_start(jaxem.gaussian("spherical"), x, k=4)), jnp.asarray(x),
                 max_iter=5, tol=-1.0)
    assert int(n_live(out.params)) == 1
    assert np.asarray(out.params.trimmed_at).tolist().count(1) == 3
    np.testing.assert_allclose(jnp.max(out.params.params.weights), 1.0)
    assert np.all(np.isfinite(out.trace))


@pytest.mark.parametrize("ct", ["full", "tied"])
def test_threshold_zero_is_the_plain_fit(ct, make_blobs, x64):
    x, _ = make_blobs(1, 150, 2, 3)
    base = jaxem.gaussian(ct)
    p0 = _start(base, x)
    key = jax.random.key(0)
    got = jaxem.fit(trimmed(base, 0.0), x, n_components=K, key=key, init=start(p0),
                    max_iter=30, tol=-1.0)
    want = jaxem.fit(base, x, n_components=K, key=key, init=p0, max_iter=30, tol=-1.0)
    np.testing.assert_allclose(got.trace, want.trace, rtol=1e-10)
    for a, b in zip(got.params.params, want.params):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert int(n_live(got.params)) == K and np.all(np.asarray(got.params.trimmed_at) == -1)


def test_fit_batches_restarts_and_data_sets_with_weights_and_chunks(make_blobs, x64):
    a, _ = make_blobs(2, 120, 2, 3)
    b, _ = make_blobs(3, 90, 2, 2)
    xb = np.zeros((2, 120, 2))
    xb[0], xb[1, :90] = a, b
    xb[1, 90:] = 1e6  # padding: weight 0, any value
    w = np.ones((2, 120))
    w[1, 90:] = 0.0
    fam = trimmed(jaxem.gaussian("diag"), 0.08)
    starts = jaxem.batch.initial_params(fam, xb, n_components=6, key=jax.random.key(0),
                                        n_init=3, weights=w, init="random_from_data")
    assert isinstance(starts, TrimmedParams) and starts.active.shape == (2, 3, 6)
    kw = dict(n_components=6, key=jax.random.key(0), max_iter=30, tol=-1.0)
    batched = jaxem.fit(fam, xb, weights=w, n_init=3, init=starts, chunk_size=32, **kw)
    assert batched.restarts.params.active.shape == (2, 3, 6)
    assert np.any(np.asarray(batched.restarts.params.active) == 0)  # something trimmed
    for d, x in enumerate([a, b]):
        one = jax.tree.map(lambda t: t[d], starts)
        single = jaxem.fit(fam, x, n_init=3, init=one, **kw)
        np.testing.assert_allclose(batched.restarts.trace[d], single.restarts.trace,
                                   rtol=1e-9)
        np.testing.assert_array_equal(batched.restarts.params.trimmed_at[d],
                                      single.restarts.params.trimmed_at)
        np.testing.assert_allclose(batched.restarts.params.params.means[d],
                                   single.restarts.params.params.means, rtol=1e-9, atol=1e-9)
    # Its own initialisation: every component starts live.
    assert starts.trimmed_at.dtype == jnp.int32 and np.all(np.asarray(starts.trimmed_at) == -1)


def test_sample_weights_are_repeated_rows(make_blobs, x64):
    x, _ = make_blobs(4, 60, 2, 2)
    fam = trimmed(jaxem.gaussian("full"), 0.1)
    p0 = start(_start(jaxem.gaussian("full"), x, k=5))
    reps = np.arange(60) % 3 + 1
    weighted = run(fam, p0, jnp.asarray(x), jnp.asarray(reps, jnp.float64), max_iter=20,
                      tol=-1.0)
    repeated = run(fam, p0, jnp.asarray(np.repeat(x, reps, axis=0)), max_iter=20, tol=-1.0)
    np.testing.assert_allclose(weighted.trace, repeated.trace, rtol=1e-10)
    np.testing.assert_array_equal(weighted.params.trimmed_at, repeated.params.trimmed_at)


def test_free_parameters_count_only_live_components(make_blobs, x64):
    x, _ = make_blobs(0, 200, 2, 3)
    base = jaxem.gaussian("full")
    fam = trimmed(base, 0.1)
    out = run(fam, start(_start(base, x)), jnp.asarray(x), max_iter=40, tol=-1.0)
    k = int(n_live(out.params))
    assert k < K
    sk = SkGM(k, covariance_type="full")
    sk.means_ = np.zeros((k, 2))
    assert fam.n_parameters(out.params, 2) == sk._n_parameters() == fam.n_free_parameters(k, 2)
    batch = jax.tree.map(lambda a: jnp.stack([a, a]), out.params)
    np.testing.assert_array_equal(fam.n_parameters(batch, 2), [sk._n_parameters()] * 2)


def test_other_mixture_families_with_weights_and_priors():
    # A Bernoulli mixture with a Dirichlet/Beta prior: the trace is the MAP objective.
    rng = np.random.default_rng(0)
    x = (rng.uniform(size=(200, 6)) < np.where(np.arange(200)[:, None] < 100, 0.9, 0.1))
    x = x.astype(np.float32)
    kw = dict(n_components=5, key=jax.random.key(0), max_iter=15, tol=-1.0,
              init="random_from_data")
    base = jaxem.bernoulli(alpha=1.0)
    plain = jaxem.fit(base, x, **kw)
    got = jaxem.fit(trimmed(base, 0.0), x, **kw)
    np.testing.assert_allclose(got.trace, plain.trace, rtol=1e-5)
    strict = jaxem.fit(trimmed(base, 0.3), x, **kw)
    assert 1 <= int(n_live(strict.params)) < 5
    at, trace = np.asarray(strict.params.trimmed_at), np.asarray(strict.trace)
    assert np.all(np.isfinite(trace)) and trace[-1] > -10  # no log 0 in the prior
    for t in range(1, len(trace)):
        if not np.any(at == t):
            assert trace[t] >= trace[t - 1] - 1e-5 * abs(trace[t])


def test_a_new_threshold_does_not_recompile(make_blobs):
    x, _ = make_blobs(0, 50, 2, 2)
    step = jax.jit(lambda fam, p: jaxem.em_step(fam, p, jnp.asarray(x, jnp.float32))[0])
    p0 = start(_start(jaxem.gaussian("diag"), x.astype(np.float32), k=4))
    step(trimmed(jaxem.gaussian("diag"), 0.1), p0)
    before = step._cache_size()
    step(trimmed(jaxem.gaussian("diag"), 0.2), p0)
    assert step._cache_size() == before


@pytest.mark.parametrize("bad,error,words", [
    (dict(family=jaxem.kmeans(), threshold=0.1), None, None),
    (dict(family=jaxem.gaussian(), threshold=1.0), ValueError, "threshold must be in"),
    (dict(family=jaxem.gaussian(), threshold=-0.1), ValueError, "threshold must be in"),
    (dict(family=jaxem.GaussianMixture(), threshold=0.1), TypeError, "mixture family"),
])
def test_bad_arguments(bad, error, words, make_blobs):
    if error is None:  # k-means has no weights: the first use says so
        fam = trimmed(**bad)
        with pytest.raises(TypeError, match="no weights"):
            jaxem.fit(fam, make_blobs(0, 30, 2, 2)[0], n_components=2,
                      key=jax.random.key(0), max_iter=2)
        return
    with pytest.raises(error, match=words):
        trimmed(**bad)


def test_survivors_and_history_want_one_instance(make_blobs):
    x, _ = make_blobs(0, 40, 2, 2)
    fam = trimmed(jaxem.gaussian(), 0.1)
    res = jaxem.fit(fam, x, n_components=3, key=jax.random.key(0), n_init=2, max_iter=3)
    with pytest.raises(ValueError, match="one instance"):
        fam.survivors(res.restarts.params)
    with pytest.raises(ValueError, match="one instance"):
        history(res.restarts.params)


# -- the estimator option: GaussianMixture(trim_threshold=...) ------------------------------
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # tol=0
@pytest.mark.parametrize("ct", ["full", "tied"])
def test_estimator_is_compact_and_equals_a_fresh_fit_of_the_survivors(ct, make_blobs, x64):
    x, _ = make_blobs(0, 200, 2, 3)
    n = 40
    est = jaxem.GaussianMixture(K, covariance_type=ct, trim_threshold=0.1, max_iter=n,
                                tol=0.0, init_params="random_from_data", random_state=0,
                                ).fit(x)
    at = est.trimmed_at_
    k = int(np.sum(at < 0))
    assert at.shape == (K,) and 1 <= k < K
    last = int(at.max())
    assert last < n - 5
    # compact: only the survivors, counted as a k-component mixture
    assert est.n_components_ == k and est.means_.shape == (k, 2)
    assert est.weights_.shape == (k,) and np.all(est.weights_ > 0.1)
    sk = SkGM(k, covariance_type=ct)
    sk.means_ = np.zeros((k, 2))
    assert est._n_parameters() == sk._n_parameters()
    # The same start (the estimator's key) trimmed up to its last trim, then the plain
    # estimator on the survivors from there: the same fit.
    fam = trimmed(jaxem.gaussian(ct), 0.1)
    upto = jaxem.fit(fam, x, n_components=K, key=key_from(0), init="random_from_data",
                     max_iter=last, tol=0.0).params
    np.testing.assert_array_equal(upto.trimmed_at, at)
    survivors = fam.survivors(upto)
    fresh = jaxem.GaussianMixture(
        k, covariance_type=ct, max_iter=n - last, tol=0.0,
        weights_init=np.asarray(survivors.weights), means_init=np.asarray(survivors.means),
        precisions_init=np.asarray(jaxem.gaussian(ct).precisions(survivors))).fit(x)
    for name in ("weights_", "means_", "precisions_cholesky_", "covariances_",
                 "precisions_"):
        np.testing.assert_allclose(getattr(est, name), getattr(fresh, name), rtol=1e-9,
                                   atol=1e-12, err_msg=name)
    np.testing.assert_allclose(est.lower_bounds_[last:], fresh.lower_bounds_, rtol=1e-10)
    np.testing.assert_array_equal(est.predict(x), fresh.predict(x))
    np.testing.assert_allclose(est.score_samples(x), fresh.score_samples(x), rtol=1e-10)
    np.testing.assert_allclose(est.bic(x), fresh.bic(x), rtol=1e-10)
    # every restart's full trimmed parameters are kept
    assert isinstance(est.restarts_.params, TrimmedParams)
    assert est.restarts_.params.active.shape == (1, K)


def test_estimator_round_trips_and_refits_without_trimming(make_blobs, x64, tmp_path):
    x, _ = make_blobs(0, 150, 2, 3)
    est = jaxem.GaussianMixture(6, trim_threshold=0.15, init_params="random_from_data",
                                random_state=0).fit(x)
    assert est.n_components_ < 6
    est.save(tmp_path / "m.npz")
    for back in (jaxem.load(tmp_path / "m.npz"), pickle.loads(pickle.dumps(est))):
        assert back.get_params() == est.get_params()
        np.testing.assert_array_equal(back.trimmed_at_, est.trimmed_at_)
        assert back.n_components_ == est.n_components_
        np.testing.assert_array_equal(back.restarts_.params.trimmed_at,
                                      est.restarts_.params.trimmed_at)
        np.testing.assert_array_equal(back.predict_proba(x), est.predict_proba(x))
        np.testing.assert_array_equal(back.score_samples(x), est.score_samples(x))
    est.set_params(trim_threshold=None).fit(x)  # nothing trimmed, no stale record
    assert est.n_components_ == 6 and not hasattr(est, "trimmed_at_")
    est.set_params(trim_threshold=0.15, max_iter=0).fit(x)  # the start: all live
    assert est.n_components_ == 6 and np.all(est.trimmed_at_ == -1)


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, -0.1, 1.5, "x"])
def test_estimator_threshold_must_be_in_the_open_unit_interval(value, monkeypatch):
    from jaxem.estimators import gaussian_mixture as gm_module
    monkeypatch.setattr(gm_module, "fit", None)  # refused before anything compiles
    x = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.raises(ValueError, match=re.escape(
            "'trim_threshold' parameter of GaussianMixture must be a float in the range "
            "(0.0, 1.0) or None")):
        jaxem.GaussianMixture(3, trim_threshold=value).fit(x)


@pytest.mark.parametrize("y,nan,words", [([0, -1] * 10, False, "partial labels"),
                                         (None, True, "missing values")])
def test_estimator_refuses_labels_and_missing_values(y, nan, words, monkeypatch):
    from jaxem.estimators import gaussian_mixture as gm_module
    monkeypatch.setattr(gm_module, "fit", None)
    x = np.random.default_rng(0).normal(size=(20, 2))
    if nan:
        x[3, 1] = np.nan
    with pytest.raises(ValueError, match=words):
        jaxem.GaussianMixture(3, trim_threshold=0.1).fit(x, y)
