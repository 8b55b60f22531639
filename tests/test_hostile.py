"""Hostile inputs to the functional API: every one a clear error before compilation,
failed fits that say what went wrong, and batched L-BFGS that cannot hang."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.sparse

import jaxem
from jaxem import gradient

N, D, K = 40, 2, 2
X = np.random.default_rng(0).normal(size=(N, D)).astype(np.float32) + np.r_[0, 4][
    np.arange(N) % 2, None]
KEY = jax.random.key(0)
GAUSS = jaxem.gaussian("diag")


def _fit(**kw):
    args = dict(family=GAUSS, x=X, n_components=K, key=KEY, max_iter=3)
    args.update(kw)
    return jaxem.fit(args.pop("family"), args.pop("x"), **args)


def _grad(**kw):
    args = dict(family=GAUSS, x=X, n_components=K, key=KEY, max_iter=3,
                optimizer=optax.adam(0.05))
    args.update(kw)
    return jaxem.fit_gradient(args.pop("family"), args.pop("x"), **args)


def _stream(**kw):
    args = dict(family=GAUSS, x=X, n_components=K, key=KEY, max_iter=3, init="random")
    args.update(kw)
    return jaxem.fit_stream(args.pop("family"), args.pop("x"), **args)


def _online(**kw):
    args = dict(family=GAUSS, x=X, n_components=K, key=KEY, batch_size=8, init="random")
    args.update(kw)
    return jaxem.fit_online(args.pop("family"), args.pop("x"), **args)


ENTRY = {"fit": _fit, "fit_gradient": _grad, "fit_stream": _stream, "fit_online": _online}
ALL = tuple(ENTRY)
IN_MEMORY = ("fit", "fit_gradient")

# (entry points, kwargs, error type, words the message must contain)
COMMON = [
    (dict(n_components=0), ValueError, ["n_components", ">= 1", "0"]),
    (dict(n_components=-1), ValueError, ["n_components", ">= 1"]),
    (dict(n_components=2.5), ValueError, ["n_components", "integer"]),
    (dict(n_components=2.0), ValueError, ["n_components", "integer"]),
    (dict(n_components=True), ValueError, ["n_components", "integer"]),
    (dict(n_components="2"), ValueError, ["n_components", "integer"]),
    (dict(n_components=N + 1), ValueError, [f"n_components={N + 1}", "positive weight"]),
    (dict(n_init=0), ValueError, ["n_init", ">= 1"]),
    (dict(n_init=-1), ValueError, ["n_init", ">= 1"]),
    (dict(n_init=1.5), ValueError, ["n_init", "integer"]),
    (dict(key=0), TypeError, ["key", "jax.random.key(0)"]),
    (dict(key=np.arange(3)), TypeError, ["key", "shape (3,)"]),
    (dict(key=jax.random.split(KEY, 2)), TypeError, ["key", "one JAX PRNG key"]),
    (dict(key=None), TypeError, ["key"]),
    (dict(family="gaussian"), TypeError, ["family"]),
    (dict(family=jaxem.gaussian("full", reg_covar=-1.0)), ValueError, ["reg_covar"]),
    (dict(family=jaxem.gaussian("full", reg_covar=float("nan"))), ValueError, ["reg_covar"]),
    (dict(x=X.astype(np.float16)), ValueError, ["float16", "float32"]),
    (dict(x=X.astype(jnp.bfloat16)), ValueError, ["bfloat16", "float32"]),
    (dict(x=X.astype(np.complex64)), ValueError, ["complex", "real"]),
    (dict(x=X.astype(object)), ValueError, ["numeric", "object"]),
    (dict(x=X.astype(str)), ValueError, ["numeric"]),
    (dict(x=scipy.sparse.csr_matrix(X)), TypeError, ["sparse", "toarray"]),
    (dict(x=X[:, 0]), ValueError, ["(n_samples, n_features)", "reshape(-1, 1)"]),
    (dict(x=np.where(np.arange(N)[:, None] == 3, np.nan, X)), ValueError, ["NaN"]),
    (dict(x=np.where(np.arange(N)[:, None] == 3, np.inf, X)), ValueError, ["infinity"]),
    (dict(weights=-np.ones(N)), ValueError, ["weights", "non-negative"]),
    (dict(weights=np.full(N, np.nan)), ValueError, ["weights"]),
    (dict(weights=np.ones(N - 1)), ValueError, ["weights"]),
]
IN_MEMORY_ONLY = [
    (dict(x=np.zeros((0, D), np.float32)), ValueError, ["x is empty"]),
    (dict(x=np.zeros((N, 0), np.float32)), ValueError, ["x is empty"]),
    (dict(x=X[None, None]), ValueError, ["(n_datasets, n_samples, n_features)"]),
    (dict(x="data.npy"), ValueError, ["numeric", "string"]),
    (dict(x=[[1.0, 2.0], [3.0]]), ValueError, ["rectangular"]),
    (dict(weights=np.zeros(N)), ValueError, ["weights are all zero"]),
    (dict(weights=np.ones((N, 2))), ValueError, ["weights must have shape"]),
    (dict(weights=np.full(N, 1j)), ValueError, ["weights", "real"]),
    (dict(max_iter=0), ValueError, ["max_iter", ">= 1"]),
    (dict(max_iter=-3), ValueError, ["max_iter", ">= 1"]),
    (dict(max_iter=2.5), ValueError, ["max_iter", "integer"]),
    (dict(tol=float("nan")), ValueError, ["tol", "NaN"]),
    (dict(tol="small"), ValueError, ["tol", "number"]),
]
CHUNKED = [  # fit_gradient has no chunk_size
    (dict(chunk_size=0), ValueError, ["chunk_size", ">= 1"]),
    (dict(chunk_size=-5), ValueError, ["chunk_size", ">= 1"]),
    (dict(chunk_size=2.5), ValueError, ["chunk_size", "integer"]),
]
STREAM_ONLY = [
    (dict(x=X[None]), ValueError, ["(n_samples, n_features)"]),
    (dict(weights=np.zeros(N)), ValueError, ["n_components=2", "positive weight"]),
    (dict(block_size=0), ValueError, ["block_size", ">= 1"]),
    (dict(init_size=-1), ValueError, ["init_size", ">= 1"]),
]
GRADIENT_ONLY = [
    (dict(optimizer=optax.sgd(-0.1)), ValueError, ["learning rate", "negative"]),
    (dict(optimizer=optax.adam(-0.05)), ValueError, ["learning rate", "negative"]),
    (dict(optimizer=optax.adam, learning_rate=-0.1), ValueError, ["learning_rate", "positive"]),
    (dict(optimizer=optax.adam, learning_rate=0.0), ValueError, ["learning_rate", "positive"]),
    (dict(optimizer=optax.adam, learning_rate=[0.1, -0.1]), ValueError, ["learning_rate"]),
    (dict(optimizer=optax.adam, learning_rate=np.nan), ValueError, ["learning_rate"]),
    (dict(optimizer=optax.adam, learning_rate=[[0.1]]), ValueError, ["1-D"]),
    (dict(optimizer=optax.adam, learning_rate="fast"), ValueError, ["learning_rate"]),
    (dict(optimizer=optax.lbfgs), ValueError, ["optax.lbfgs()", "factory", "call it"]),
    (dict(optimizer=optax.adam), ValueError, ["factory", "learning_rate"]),
    (dict(optimizer=optax.adam(0.1), learning_rate=0.1), ValueError, ["learning_rate"]),
    (dict(optimizer="adam"), TypeError, ["optimizer", "optax"]),
    (dict(optimizer=None), TypeError, ["optimizer", "optax"]),
    (dict(optimizer=optax.GradientTransformation), TypeError, ["optimizer"]),
    (dict(optimizer=len, learning_rate=0.1), TypeError, ["not an optax factory"]),
    (dict(optimizer=lambda lr: lr, learning_rate=0.1), TypeError, ["GradientTransformation"]),
    (dict(batch_size=0), ValueError, ["batch_size", ">= 1"]),
    (dict(max_linesearch_steps=0), ValueError, ["max_linesearch_steps"]),
    (dict(family=jaxem.kmeans()), TypeError, ["k-means"]),
]
ONLINE_ONLY = [
    (dict(batch_size=0), ValueError, ["batch_size", ">= 1"]),
    (dict(n_epochs=0), ValueError, ["n_epochs", ">= 1"]),
]
CASES = ([(e, *c) for c in COMMON for e in ALL]
         + [(e, *c) for c in IN_MEMORY_ONLY for e in IN_MEMORY]
         + [(e, *c) for c in CHUNKED for e in ("fit", "fit_stream", "fit_online")]
         + [(e, *c) for c in STREAM_ONLY for e in ("fit_stream", "fit_online")]
         + [("fit_gradient", *c) for c in GRADIENT_ONLY]
         + [("fit_online", *c) for c in ONLINE_ONLY]
         + [("fit", dict(devices=jax.devices()[0]), ValueError, ["devices", "list"]),
            ("fit", dict(devices=[]), ValueError, ["devices"])])


def _id(case):
    entry, kw, _, _ = case
    return entry + "-" + "-".join(f"{k}={v!r:.20}" for k, v in kw.items())


@pytest.mark.parametrize("entry, kwargs, error, words", CASES, ids=map(_id, CASES))
def test_bad_input_is_a_clear_error_before_compiling(entry, kwargs, error, words,
                                                     monkeypatch):
    def no_compile(*a, **k):
        raise AssertionError("compiled before the input was checked")

    for name in ("_fit", "_initial"):
        monkeypatch.setattr(jaxem.batch, name, no_compile)
    monkeypatch.setattr(gradient, "_fit_gradient", no_compile)
    with pytest.raises(error) as err:
        ENTRY[entry](**kwargs)
    message = str(err.value)
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("x", [X.astype(np.int64), X > 2, jnp.asarray(X), X.tolist()])
def test_integer_boolean_and_list_data_are_fitted_as_floats(x):
    r = _fit(x=x)
    assert jnp.issubdtype(r.params.means.dtype, jnp.floating)
    assert bool(jnp.isfinite(r.log_likelihood))


@pytest.mark.parametrize("entry", ["fit", "fit_stream"])
def test_negative_tol_runs_exactly_max_iter(entry):
    # Not an error: hmmlearn's tol=-inf idiom, used by the HMM estimators.
    for tol in (-1.0, -np.inf):
        r = ENTRY[entry](tol=tol, max_iter=4)
        assert int(r.n_iter) == 4 and not bool(r.converged)


def test_legacy_uint32_key_is_accepted():
    assert bool(jnp.isfinite(_fit(key=jax.random.PRNGKey(0)).log_likelihood))


# -- failed fits: advice specific to the family and the cause ----------------------------
def test_gaussian_failure_names_reg_covar():
    # A third component far from the data gets no responsibility: with reg_covar=0 its
    # covariance becomes 0 and the fit fails (as in test_engine).
    fam = jaxem.gaussian("full", reg_covar=0.0)
    starts = jaxem.families.GaussianParams(
        np.float32([0.45, 0.45, 0.1]), np.float32([[0, 0], [0, 4], [1e3, 1e3]]),
        fam.precisions_cholesky_from(covariances=np.float32([np.eye(2)] * 2
                                                            + [1e-4 * np.eye(2)])))
    with pytest.raises(jaxem.FitError) as err:
        jaxem.fit(fam, X, n_components=3, key=KEY, init=starts, max_iter=1)
    message = str(err.value)
    assert "reg_covar (now 0)" in message and "duplicated points" in message
    assert "overflow" not in message


@pytest.mark.parametrize("family", [jaxem.kmeans(), jaxem.gaussian("spherical")])
def test_float32_overflow_says_rescale_or_float64(family):
    x = (X * 1e19).astype(np.float32)
    with pytest.raises(jaxem.FitError) as err:
        jaxem.fit(family, x, n_components=K, key=KEY, max_iter=3)
    message = str(err.value)
    assert "overflow float32" in message and "rescale x" in message and "float64" in message
    assert "reg_covar" not in message


def test_kmeans_failure_does_not_mention_reg_covar():
    advice = jaxem.batch.failure_advice(jaxem.kmeans())
    assert "reg_covar" not in advice and "k-means" in advice


def test_stream_failure_uses_the_same_advice():
    x = (X * 1e19).astype(np.float32)
    with pytest.raises(jaxem.FitError, match="overflow float32"):
        jaxem.fit_stream(jaxem.gaussian("spherical"), x, n_components=K, key=KEY,
                         max_iter=3)


# -- gradient baseline: bounded line searches and compilation reuse ----------------------
def test_linesearch_that_never_ends_is_cut_off():
    # A zoom line search allowed 10**9 trials on an objective it can never satisfy (NaN
    # values past the first step) would loop for ever; bounded_linesearch stops it.
    opt = optax.chain(optax.sgd(1.0), optax.scale_by_zoom_linesearch(
        max_linesearch_steps=10**9))
    u = jnp.ones(3)
    value_fn = lambda v: jnp.where(jnp.all(v == u), jnp.sum(v * v), jnp.nan)  # noqa: E731

    @jax.jit
    def step(u, state):
        with gradient.bounded_linesearch(7):
            return opt.update(2 * u, state, u, value=jnp.sum(u * u), grad=2 * u,
                              value_fn=value_fn)

    _, state = jax.vmap(step)(jnp.stack([u, u]), jax.vmap(opt.init)(jnp.stack([u, u])))
    info = optax.tree.get(state, "info")
    assert np.all(np.asarray(info.num_linesearch_steps) == 7)


def test_batched_lbfgs_finishes():
    # Reproduces the hang of the issue on this data: without the bound, max_iter=60
    # never returned (one member's zoom line search looped past its own limit).
    script = textwrap.dedent("""
        import jax, numpy as np, optax, jaxem
        from sklearn.datasets import make_blobs
        x, _ = make_blobs(n_samples=2000, centers=4, cluster_std=1.0, random_state=0)
        r = jaxem.fit_gradient(jaxem.gaussian("spherical"), x.astype(np.float32),
                               n_components=4, n_init=4, key=jax.random.key(0),
                               optimizer=optax.lbfgs(), max_iter=60)
        assert np.isfinite(np.asarray(r.restarts.log_likelihood)).all()
        assert not np.asarray(r.restarts.failed).any()
        print("finished", float(r.log_likelihood))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "finished" in out.stdout


def test_fresh_equal_optimizer_does_not_recompile():
    x = X[:37]  # a shape no other test uses: a fresh cache entry
    kw = dict(x=x, optimizer=optax.lbfgs(), max_iter=4, init="random")
    _grad(**kw)
    size = gradient._fit_gradient._cache_size()
    for optimizer in (optax.lbfgs(), optax.lbfgs(memory_size=10)):  # equal settings
        _grad(**{**kw, "optimizer": optimizer})
    assert gradient._fit_gradient._cache_size() == size
    _grad(**{**kw, "optimizer": optax.lbfgs(memory_size=3)})  # other settings compile
    assert gradient._fit_gradient._cache_size() == size + 1


def test_fingerprint_tells_settings_apart():
    fp = gradient.fingerprint
    assert fp(optax.adam(0.1)) == fp(optax.adam(0.1))
    assert fp(optax.adam(0.1)) != fp(optax.adam(0.2))
    assert fp(optax.adam(0.1)) != fp(optax.sgd(0.1))
    assert fp(optax.adam(optax.linear_schedule(0.1, 0.0, 10))) == fp(
        optax.adam(optax.linear_schedule(0.1, 0.0, 10)))
    assert fp(optax.adam(optax.linear_schedule(0.1, 0.0, 10))) != fp(
        optax.adam(optax.linear_schedule(0.1, 0.0, 11)))
