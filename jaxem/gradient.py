"""Gradient ascent on the marginal log-likelihood with optax: the baseline EM is compared with.

The objective is the exact mean per-sample log-likelihood of the data,
``sum_n w_n logsumexp_k log_joint(params, x)[n, k] / sum_n w_n``, differentiated by
``jax.grad``. Constraints are removed by the family's reparameterisation
(``family.to_unconstrained`` / ``family.from_unconstrained``: softmax logits for the
mixing weights, log-diagonal Cholesky factors or log variances for the covariances), so
any ``optax.GradientTransformation`` applies: sgd with or without momentum, adam,
lbfgs (whose line search gets ``value_fn``) ...

:func:`run` is one instance, the analogue of :func:`jaxem.em.run`, and returns the same
:class:`jaxem.em.EMResult`. :func:`fit_gradient` batches it exactly as :func:`jaxem.fit`
batches EM (restarts and data sets vmapped in one jit, the same data checks, inits and
best-restart selection), and adds a vmapped axis for a learning-rate sweep.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxem import batch
from jaxem.em import EMResult
from jaxem.families.base import all_finite, tree_where

Array = jax.Array
PyTree = Any


def mean_log_likelihood(family, params: PyTree, x: Array, weights: Array) -> Array:
    """``sum_n w_n log p(x_n) / sum_n w_n`` with ``log p(x_n)`` the log-sum-exp of
    ``family.log_joint(params, x)`` (``x (n, D)``, ``weights (n,)``): differentiable."""
    ll_rows = jax.nn.logsumexp(family.log_joint(params, x), axis=-1)
    return jnp.sum(jnp.where(weights > 0, weights * ll_rows, 0.0)) / jnp.sum(weights)


def _check_family(family):
    if not (hasattr(family, "to_unconstrained") and hasattr(family, "from_unconstrained")):
        name = type(family).__name__
        hint = (" k-means is hard EM: its objective (minus the distance to the nearest "
                "centre) is piecewise and has no marginal likelihood to climb; fit it "
                "with jaxem.fit, or use jaxem.gaussian('spherical') for a soft version."
                if name == "KMeans" else "")
        raise TypeError(f"Gradient ascent needs a family with to_unconstrained and "
                        f"from_unconstrained methods; {name} has none.{hint}")


def run(family, params: PyTree, x: Array, weights: Array | None = None,
        key: Array | None = None, *, optimizer: optax.GradientTransformation,
        max_iter: int = 1000, tol: float | Array = 0.0,
        batch_size: int | None = None) -> EMResult:
    """Gradient ascent from ``params`` on one data set (pure; jit and vmap it freely).

    One iteration evaluates the full-data mean log-likelihood at the current parameters
    (recorded in ``trace``) and takes one optimiser step, so, as in :func:`jaxem.em.run`,
    the returned ``params`` are one step past ``log_likelihood``.

    Args:
      family: a family with ``log_joint`` and ``to_/from_unconstrained``.
      params: starting parameters.
      x: ``(n_samples, n_features)``; weights: ``(n_samples,)``, 0 for padding.
      key: for mini-batches (unused when ``batch_size`` is None).
      optimizer: any optax transformation (minimising minus the mean log-likelihood).
      max_iter: steps (static: the length of ``trace``).
      tol: if ``> 0``, stop when the mean log-likelihood changed by at most ``tol``
        (EM's rule); ``0`` runs exactly ``max_iter`` steps.
      batch_size: rows per step drawn (with replacement, with probability proportional to
        ``weights``) for stochastic gradients; ``None`` is full batch. The trace is
        still the full-data log-likelihood (one extra forward pass per step).

    ``failed`` is set when the parameters, the gradient or the log-likelihood become
    non-finite (divergence); the last parameters with a finite log-likelihood are kept.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}.")
    _check_family(family)
    n = x.shape[0]
    if weights is None:
        weights = jnp.ones(n, x.dtype)
    optimizer = optax.with_extra_args_support(optimizer)
    dtype = jnp.result_type(*jax.tree.leaves(params))

    def loss(u, xb, wb):
        return -mean_log_likelihood(family, family.from_unconstrained(u), xb, wb)

    u0 = family.to_unconstrained(params)
    init = (u0, optimizer.init(u0), params, jnp.zeros((), jnp.uint32) if key is None else key,
            EMResult(params=params, log_likelihood=jnp.array(-jnp.inf, dtype),
                     trace=jnp.full((max_iter,), jnp.nan, dtype),
                     n_iter=jnp.array(0, jnp.int32), converged=jnp.array(False),
                     failed=jnp.array(False)))

    def cond(state):
        res = state[-1]
        return (res.n_iter < max_iter) & ~res.converged & ~res.failed

    def body(state):
        u, opt_state, prev_params, key, res = state
        if batch_size is None:
            xb, wb = x, weights
            value, grad = jax.value_and_grad(loss)(u, xb, wb)
            ll = -value
        else:
            key, sub = jax.random.split(key)
            idx = jax.random.choice(sub, n, (batch_size,), p=weights / jnp.sum(weights))
            xb, wb = x[idx], jnp.ones(batch_size, x.dtype)
            value, grad = jax.value_and_grad(loss)(u, xb, wb)
            ll = -loss(u, x, weights)
        updates, new_opt_state = optimizer.update(
            grad, opt_state, u, value=value, grad=grad, value_fn=lambda v: loss(v, xb, wb))
        new_u = optax.apply_updates(u, updates)
        new_params = family.from_unconstrained(new_u)
        ll_ok = jnp.isfinite(ll) & jnp.isfinite(value) & all_finite(grad)
        ok = ll_ok & all_finite(new_u) & all_finite(new_params)
        # current params: finite log-likelihood; new params: only finite so far.
        current = res.params
        kept = tree_where(ok, new_params, tree_where(ll_ok, current, prev_params))
        return (new_u, new_opt_state, current, key, EMResult(
            params=kept,
            log_likelihood=jnp.where(ll_ok, ll, res.log_likelihood),
            trace=res.trace.at[res.n_iter].set(ll),
            n_iter=res.n_iter + 1,
            converged=ok & (tol > 0) & (jnp.abs(ll - res.log_likelihood) <= tol),
            failed=~ok,
        ))

    return jax.lax.while_loop(cond, body, init)[-1]


def fit_gradient(family, x, *, n_components: int, key: Array,
                 optimizer: optax.GradientTransformation | Callable[..., Any],
                 learning_rate=None, n_init: int = 1, weights=None, max_iter: int = 1000,
                 tol: float = 0.0, init: str | PyTree = "kmeans",
                 batch_size: int | None = None) -> batch.FitResult:
    """Fit ``family`` by gradient ascent, batched as :func:`jaxem.fit` batches EM.

    Args:
      family: e.g. ``jaxem.gaussian("full")`` (not k-means: see the error it raises).
      x: ``(n_samples, n_features)`` or ``(n_datasets, n_samples, n_features)``.
      n_components, key, n_init, weights, init: as in :func:`jaxem.fit` (the same
        checks, the same starting points for the same ``key``).
      optimizer: an ``optax.GradientTransformation`` (``optax.adam(0.05)``,
        ``optax.lbfgs()`` ...), used as is; or an optax optimiser *factory* whose first
        argument is the learning rate (``optax.adam``, ``functools.partial(optax.sgd,
        momentum=0.9)`` -- define it once: the factory is a compile-time constant),
        built inside the jit with ``optax.inject_hyperparams`` so that
      learning_rate: (factory only) a float, or a 1-D array for a sweep, is traced data:
        new values never recompile, and a sweep is one vmapped program whose results
        gain a leading ``(n_learning_rates,)`` axis.
      max_iter, tol, batch_size: see :func:`run` (``tol=0``: exactly ``max_iter`` steps).

    Returns a :class:`jaxem.FitResult` (``restarts`` holds every restart). It does not
    raise when restarts diverge: ``failed`` flags them (per restart in ``restarts``;
    at the top level only when every restart failed), and they never win the best-of
    selection.

    >>> import jax, optax, jaxem
    >>> x = jaxem.datasets.load_faithful()
    >>> res = jaxem.fit_gradient(jaxem.gaussian("full"), x, n_components=2, n_init=3,
    ...                          key=jax.random.key(0), optimizer=optax.adam,
    ...                          learning_rate=[0.01, 0.1], max_iter=50, init="random")
    >>> res.log_likelihood.shape, res.restarts.trace.shape
    ((2,), (2, 3, 50))
    """
    _check_family(family)
    if isinstance(optimizer, optax.GradientTransformation):
        if learning_rate is not None:
            raise ValueError("learning_rate is for an optimiser factory such as optax.adam; "
                             "a built GradientTransformation already has its own.")
    elif callable(optimizer):
        if learning_rate is None:
            raise ValueError("Give learning_rate with an optimiser factory, e.g. "
                             "optimizer=optax.adam, learning_rate=0.05.")
    else:
        raise TypeError(f"optimizer must be an optax.GradientTransformation or a factory "
                        f"such as optax.adam, got {type(optimizer).__name__}.")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}.")
    single = jnp.ndim(x) == 2
    x, weights, keys, method, params0 = batch._prepare(family, x, weights, key, n_init,
                                                       n_components, init)
    if learning_rate is not None:
        learning_rate = jnp.asarray(learning_rate, x.dtype)
        if learning_rate.ndim > 1:
            raise ValueError("learning_rate must be a scalar or a 1-D array (a sweep).")
    result = _fit_gradient(family, x, weights, keys, params0, tol, learning_rate,
                           optimizer=optimizer, n_components=n_components, method=method,
                           max_iter=max_iter, batch_size=batch_size)
    if single:  # drop the data-set axis, which follows the sweep axis if any
        axis = 1 if learning_rate is not None and learning_rate.ndim == 1 else 0
        result = jax.tree.map(lambda a: jnp.take(a, 0, axis=axis), result)
    return result


@functools.partial(jax.jit, static_argnames=("optimizer", "n_components", "method",
                                             "max_iter", "batch_size"))
def _fit_gradient(family, x, weights, keys, params0, tol, learning_rate, *, optimizer,
                  n_components, method, max_iter, batch_size):
    """As :func:`jaxem.batch._fit`, with an optional leading learning-rate axis."""

    def fit_at(lr):
        opt = optimizer if lr is None else optax.inject_hyperparams(optimizer)(learning_rate=lr)

        def driver(params, x, w, key, axis_name):
            del axis_name  # never sharded
            return run(family, params, x, w, key, optimizer=opt, max_iter=max_iter, tol=tol,
                       batch_size=batch_size)

        return batch._restarts(family, driver, x, weights, keys, params0, n_components, method)

    if learning_rate is not None and learning_rate.ndim == 1:
        return jax.vmap(fit_at)(learning_rate)
    return fit_at(learning_rate)
