"""The gradient baseline: its gradients, reparameterisation, batching and compile count."""
import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxem
from jaxem import gradient
from jaxem.families.gaussian import COVARIANCE_TYPES, Gaussian

K, D = 2, 2


def _data(n=60, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    z = rng.integers(0, K, n)
    centres = np.array([[0.0, 0.0], [3.0, 1.0]])
    return (centres[z] + rng.normal(size=(n, D)) * np.array([1.0, 0.6])).astype(dtype)


def _random_u(family, rng, dtype=np.float32, scale=1.0):
    """Arbitrary unconstrained coordinates of the family's shape."""
    tri = D * (D + 1) // 2
    shape = {"full": (K, tri), "tied": (tri,), "diag": (K, D), "spherical": (K,)}
    return {"logits": jnp.asarray(rng.normal(size=K) * scale, dtype),
            "means": jnp.asarray(rng.normal(size=(K, D)) * scale, dtype),
            "precisions_cholesky": jnp.asarray(
                rng.normal(size=shape[family.covariance_type]) * scale, dtype)}


def _loss(family, x):
    w = jnp.ones(x.shape[0], x.dtype)
    return lambda u: gradient.mean_log_likelihood(family, family.from_unconstrained(u), x, w)


# -- gradients ---------------------------------------------------------------------------
@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_gradient_matches_finite_differences(ct):
    with jax.enable_x64(True):
        fam = Gaussian(ct)
        x = jnp.asarray(_data(30, dtype=np.float64))
        u = _random_u(fam, np.random.default_rng(1), np.float64, scale=0.5)
        f = jax.jit(_loss(fam, x))
        g = jax.grad(_loss(fam, x))(u)
        flat, unravel = jax.flatten_util.ravel_pytree(u)
        h = 1e-6
        fd = np.array([(f(unravel(flat.at[i].add(h))) - f(unravel(flat.at[i].add(-h)))) / (2 * h)
                       for i in range(flat.size)])
        np.testing.assert_allclose(jax.flatten_util.ravel_pytree(g)[0], fd, rtol=1e-6, atol=1e-8)


def test_gradient_wrt_log_joint_is_responsibilities():
    # A stub family whose log_joint is its parameter: d(mean ll)/d(log_joint) = resp * w / sum w.
    class Stub:
        def log_joint(self, params, x):
            return params

    rng = np.random.default_rng(2)
    log_joint = jnp.asarray(rng.normal(size=(7, 3)) * 3, jnp.float32)
    w = jnp.asarray(rng.uniform(0.5, 2.0, size=7), jnp.float32)
    g = jax.grad(lambda lj: gradient.mean_log_likelihood(Stub(), lj, None, w))(log_joint)
    resp = jaxem.families.Gaussian().posterior(log_joint)[0]
    np.testing.assert_allclose(g, resp * (w / w.sum())[:, None], rtol=1e-5, atol=1e-7)


def test_gradient_of_logits_and_means_are_responsibility_weighted():
    # Seed 004: the gradient is the responsibility-weighted sum of the components' gradients.
    with jax.enable_x64(True):
        fam = Gaussian("full")
        x = jnp.asarray(_data(40, dtype=np.float64))
        u = _random_u(fam, np.random.default_rng(3), np.float64, scale=0.5)
        params = fam.from_unconstrained(u)
        g = jax.grad(_loss(fam, x))(u)
        resp = jaxem.responsibilities(fam, params, x)
        n = x.shape[0]
        np.testing.assert_allclose(g["logits"], resp.mean(0) - params.weights, atol=1e-12)
        prec = fam.precisions(params)
        diff = x[:, None, :] - params.means[None]  # (n, K, D)
        expected = jnp.einsum("nk,kde,nke->kd", resp, prec, diff) / n
        np.testing.assert_allclose(g["means"], expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_small_learning_rate_increases_log_likelihood(ct):
    fam = Gaussian(ct)
    x = jnp.asarray(_data())
    params = fam.from_unconstrained(_random_u(fam, np.random.default_rng(4), scale=0.3))
    run = jax.jit(lambda p: gradient.run(fam, p, x, optimizer=optax.sgd(1e-2), max_iter=30))
    res = run(params)
    trace = np.asarray(res.trace)
    assert not bool(res.failed) and int(res.n_iter) == 30
    assert np.all(np.diff(trace) >= -1e-6), trace
    assert trace[-1] > trace[0] + 1e-3


def test_gradient_vanishes_at_em_fixed_point():
    with jax.enable_x64(True):
        fam = Gaussian("full", reg_covar=0.0)
        x = jnp.asarray(_data(80, dtype=np.float64))
        start = fam.from_unconstrained(_random_u(fam, np.random.default_rng(5), np.float64, 0.3))
        fitted = jaxem.run(fam, start, x, max_iter=3000, tol=1e-13)
        assert bool(fitted.converged)
        g_fixed = jax.grad(_loss(fam, x))(fam.to_unconstrained(fitted.params))
        g_start = jax.grad(_loss(fam, x))(fam.to_unconstrained(start))
        norm = lambda g: float(jnp.linalg.norm(jax.flatten_util.ravel_pytree(g)[0]))
        assert norm(g_fixed) < 1e-5 * max(norm(g_start), 1.0)


# -- reparameterisation --------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(ct=st.sampled_from(COVARIANCE_TYPES), seed=st.integers(0, 2**31 - 1),
       scale=st.floats(0.01, 4.0))
def test_from_unconstrained_is_always_valid_and_round_trips(ct, seed, scale):
    with jax.enable_x64(True):
        fam = Gaussian(ct)
        u = _random_u(fam, np.random.default_rng(seed), np.float64, scale)
        params = fam.from_unconstrained(u)
        w = np.asarray(params.weights)
        assert np.all(w > 0) and abs(w.sum() - 1) < 1e-12
        prec = np.asarray(fam.precisions(params))
        if ct in ("full", "tied"):
            prec = prec.reshape(-1, D, D)
            np.testing.assert_allclose(prec, np.swapaxes(prec, -1, -2), atol=1e-12)
            assert np.all(np.linalg.eigvalsh(prec) > 0)
        else:
            assert np.all(prec > 0)
        back = fam.to_unconstrained(params)
        # logits are defined up to a constant; the rest exactly.
        logits = np.asarray(back["logits"] - u["logits"])
        np.testing.assert_allclose(logits, logits.mean(), atol=1e-9)
        for name in ("means", "precisions_cholesky"):
            np.testing.assert_allclose(back[name], u[name], rtol=1e-8, atol=1e-8 * scale)


@pytest.mark.parametrize("ct", ["full", "tied"])
def test_round_trip_from_any_cholesky_factor(ct):
    # jaxem/sklearn store an upper factor, precisions_cholesky_from(precisions=) a lower one:
    # both describe the same model, and both map to the same unconstrained point.
    with jax.enable_x64(True):
        fam = Gaussian(ct)
        x = jnp.asarray(_data(50, dtype=np.float64))
        params = jaxem.initialize(fam, jax.random.key(0), x, jnp.ones(50), K, "random")
        lower = fam.precisions_cholesky_from(precisions=fam.precisions(params))
        assert not np.allclose(lower, params.precisions_cholesky)
        for p in (params, params._replace(precisions_cholesky=lower)):
            back = fam.from_unconstrained(fam.to_unconstrained(p))
            np.testing.assert_allclose(back.weights, params.weights, rtol=1e-12)
            np.testing.assert_allclose(back.precisions_cholesky, params.precisions_cholesky,
                                       rtol=1e-9, atol=1e-12)


# -- batching ------------------------------------------------------------------------------
FAM = Gaussian("diag")
SGD = optax.sgd  # one factory object: the jit cache is keyed on it


def _starts(n_init, seed=6):
    rng = np.random.default_rng(seed)
    us = [_random_u(FAM, rng, scale=0.3) for _ in range(n_init)]
    return jax.tree.map(lambda *a: jnp.stack(a), *[FAM.from_unconstrained(u) for u in us])


def test_batched_equals_looped_and_sweep_equals_separate_fits():
    x = jnp.asarray(np.stack([_data(seed=0), _data(seed=1)]))
    starts = _starts(3)
    lrs = jnp.array([0.05, 0.2], jnp.float32)
    res = jaxem.fit_gradient(FAM, x, n_components=K, key=jax.random.key(0), n_init=3,
                             optimizer=SGD, learning_rate=lrs, max_iter=25, init=starts)
    assert res.restarts.trace.shape == (2, 2, 3, 25)  # (lr, data set, restart, iteration)
    one = jax.jit(lambda p, xb, lr: gradient.run(
        FAM, FAM.translate(p, -xb.mean(0)), xb - xb.mean(0), optimizer=optax.sgd(lr),
        max_iter=25))
    for i, lr in enumerate(lrs):
        for b in range(2):
            for r in range(3):
                ref = one(jax.tree.map(lambda a: a[r], starts), x[b], lr)
                np.testing.assert_allclose(res.restarts.trace[i, b, r], ref.trace,
                                           rtol=2e-5, atol=2e-5)
            best = int(np.argmax(res.restarts.log_likelihood[i, b]))
            assert int(res.best[i, b]) == best


def test_learning_rate_sweep_does_not_recompile(monkeypatch):
    x = jnp.asarray(_data(48))  # a shape no other test uses: a fresh cache entry
    monkeypatch.setattr(gradient, "run", chex.assert_max_traces(gradient.run, n=2))
    kw = dict(n_components=K, key=jax.random.key(1), n_init=2, optimizer=SGD, max_iter=5,
              init=_starts(2))
    for lr in (0.1, 0.01, 0.3):  # scalars: one trace
        jaxem.fit_gradient(FAM, x, learning_rate=lr, **kw)
    for lrs in ([0.1, 0.2], [0.3, 0.4]):  # a sweep of two: one more
        jaxem.fit_gradient(FAM, x, learning_rate=lrs, **kw)


def test_divergence_is_flagged_and_never_wins():
    x = jnp.asarray(_data())
    starts = _starts(2, seed=7)
    res = jaxem.fit_gradient(FAM, x, n_components=K, key=jax.random.key(2), n_init=2,
                             optimizer=SGD, learning_rate=jnp.array([1e6, 0.05]), max_iter=25,
                             init=starts)
    failed = np.asarray(res.restarts.failed)
    assert failed[0].all() and not failed[1].any()
    assert bool(res.failed[0]) and not bool(res.failed[1])
    assert jaxem.families.base.all_finite(res.restarts.params)  # last good params kept
    assert np.isfinite(res.restarts.log_likelihood).all()


def test_tol_stops_like_em_and_kmeans_is_refused():
    x = jnp.asarray(_data())
    res = jaxem.fit_gradient(FAM, x, n_components=K, key=jax.random.key(3), n_init=2,
                             optimizer=SGD, learning_rate=0.05, max_iter=25, init=_starts(2),
                             tol=3e-2)
    n = np.asarray(res.restarts.n_iter)
    assert res.restarts.converged.all() and (n < 25).all()
    trace = np.asarray(res.restarts.trace)
    for r in range(2):
        steps = np.abs(np.diff(trace[r, : n[r]]))
        assert steps[-1] <= 3e-2 and (steps[:-1] > 3e-2).all()
        assert np.isnan(trace[r, n[r]:]).all()
    with pytest.raises(TypeError, match="k-means"):
        jaxem.fit_gradient(jaxem.kmeans(), x, n_components=K, key=jax.random.key(0),
                           optimizer=optax.adam(0.1))


def test_compare_starts_every_method_at_the_same_point():
    x = jnp.asarray(_data())
    cmp = jaxem.compare(FAM, x, n_components=K, key=jax.random.key(4), n_init=2,
                        max_iter=25, init=_starts(2), optimizers={"sgd": (SGD, 0.05)})
    em, sgd = cmp.methods["EM"], cmp.methods["sgd"]
    np.testing.assert_allclose(em.trace[:, 0], sgd.trace[:, 0], rtol=1e-5)
    finals = np.concatenate([em.final_log_likelihood, sgd.final_log_likelihood])
    assert cmp.best_log_likelihood == pytest.approx(finals.max())
    for m in (em, sgd):
        reached = np.nan_to_num(m.trace, nan=-np.inf).max(1) >= cmp.best_log_likelihood - cmp.eps
        np.testing.assert_array_equal(m.reached, reached)
        assert np.isfinite(m.iterations_to_best[m.reached]).all()
        assert m.fraction_reached == pytest.approx(reached.mean())
