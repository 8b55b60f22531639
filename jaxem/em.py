"""The EM driver: E-step -> M-step under ``lax.while_loop``, for one instance.

It knows nothing about a particular model: a family supplies ``log_joint``,
``posterior``, ``stats(x, resp, params)`` and ``m_step(stats, params)`` (a mixture; both
get the current ``params``, about which a family may centre its statistics), or its own
``e_step(params, x, weights) -> (stats, sum of weighted log-likelihood, sum of weights)``
(e.g. an HMM). Batching over restarts and data sets is ``vmap`` of :func:`run`
(see :mod:`jaxem.batch`); a vmapped ``while_loop`` keeps finished instances frozen
and stops when all of them are finished.

Semantics follow scikit-learn's ``GaussianMixture`` so it is an exact oracle: one
iteration is an E-step at the current parameters (its mean log-likelihood is recorded)
followed by an M-step; the run stops after ``max_iter`` iterations or when the mean
log-likelihood changed by at most ``tol``. The returned parameters are one M-step past
the returned ``log_likelihood``.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxem import rows
from jaxem.families.base import all_finite, capability, log_prior, tree_where

Array = jax.Array
PyTree = Any


class EMResult(NamedTuple):
    """The outcome of EM for one instance (or a batch of them, with leading axes)."""

    params: PyTree
    log_likelihood: Array  # () mean per-sample log-likelihood of the last E-step
    # (max_iter,) the objective per iteration, NaN after the stop: the mean
    # log-likelihood, plus log_prior / sum of weights for a family with a prior (MAP)
    trace: Array
    n_iter: Array  # () int, iterations run
    converged: Array  # () bool
    failed: Array  # () bool: the M-step gave non-finite parameters; the last good kept


def _rows(family, params, x, weights, labels=None):
    """Sums over a block of rows: ``(stats, sum w * log p(x), sum w)``.

    ``labels (n,)``: a row with label ``k >= 0`` has its responsibilities clamped to
    component ``k`` and contributes ``log p(x, z = k)``; -1 marks an unlabelled row
    (semi-supervised EM maximises the sum of both kinds of terms)."""
    def weigh(log_joint, axis=-1):  # (weighted responsibilities, per-row log-likelihood)
        # axis: the components' axis, -1 for (n, K); a fused family may hand (K, n)
        # with axis=0 (its posterior then takes that axis).
        resp, ll_rows = (family.posterior(log_joint) if axis == -1
                         else family.posterior(log_joint, axis=axis))
        per_row = lambda a: jnp.expand_dims(a, axis)  # (n,) against resp's layout
        if labels is not None:
            known = labels >= 0
            onehot = jax.nn.one_hot(labels, log_joint.shape[axis], dtype=resp.dtype, axis=axis)
            resp = jnp.where(per_row(known), onehot, resp)
            ll_rows = jnp.where(known, jnp.sum(
                onehot * jnp.where(onehot > 0, log_joint, 0.0), axis=axis), ll_rows)
        return resp * per_row(weights), ll_rows

    if capability(family, "fused_rows"):
        stats, ll_rows = family.log_joint_and_stats(params, x, weigh)
    else:
        resp, ll_rows = weigh(family.log_joint(params, x))
        stats = family.stats(x, resp, params)
    ll_sum = jnp.sum(jnp.where(weights > 0, weights * ll_rows, 0.0))
    return stats, ll_sum, jnp.sum(weights)


def e_step(family, params: PyTree, x: Array, weights: Array | None = None,
           chunk_size: int | None = None, axis_name: str | None = None,
           labels: Array | None = None, share: tuple[Array, int] | None = None
           ) -> tuple[PyTree, Array, Array]:
    """The E-step as additive sums.

    Args:
      family: a model family.
      params: its parameters.
      x: ``(n_samples, n_features)`` data (for sequence families, what they take).
      weights: ``(n_samples,)`` non-negative sample weights; 0 marks padding.
      chunk_size: process rows in chunks of this many, so the largest live array is
        ``(chunk_size, K, D)`` rather than ``(n_samples, K, D)``. ``None``: all at once.
      axis_name: inside ``shard_map`` over rows, the mesh axis to ``psum`` the sums over.
      labels: ``(n_samples,)`` int component labels, -1 where unknown (partial labels;
        mixture families only).
      share: ``(i, count)``: the sums over chunks ``i, i + count, ...`` only (see
        :func:`jaxem.rows.scan_rows`); the ``count`` shares add up to the whole.

    Returns:
      ``(stats, sum of weighted log-likelihoods, sum of weights)``, over all devices.
    """
    if weights is None:
        weights = jnp.ones(x.shape[0], dtype=x.dtype)
    if capability(family, "has_e_step"):
        if labels is not None:
            raise ValueError(f"partial labels are for mixtures, not {type(family).__name__}.")
        if share is not None:
            raise ValueError(f"{type(family).__name__} takes its E-step whole, not in shares.")
        return rows.psum(family.e_step(params, x, weights), axis_name)
    if labels is None:
        return rows.sum_rows(lambda xc, wc, _: _rows(family, params, xc, wc), x, weights,
                             chunk_size, axis_name, share)
    return rows.sum_rows(lambda xl, wc, _: _rows(family, params, xl[0], wc, xl[1]),
                         (x, labels), weights, chunk_size, axis_name, share)


def m_step(family, stats: PyTree, params: PyTree | None = None) -> PyTree:
    """The M-step: the family's closed-form maximiser of the expected log-likelihood."""
    return family.m_step(stats, params)


def em_step(family, params: PyTree, x: Array, weights: Array | None = None,
            chunk_size: int | None = None, axis_name: str | None = None,
            labels: Array | None = None) -> tuple[PyTree, Array]:
    """One EM iteration: ``(new params, mean log-likelihood at the old params)``."""
    stats, ll_sum, w_sum = e_step(family, params, x, weights, chunk_size, axis_name, labels)
    return m_step(family, stats, params), ll_sum / w_sum


def responsibilities(family, params: PyTree, x: Array) -> Array:
    """Posterior ``p(z_n = k | x_n)``: ``x (n, D)`` -> ``(n, K)``."""
    return family.posterior(family.log_joint(params, x))[0]


def log_likelihood(family, params: PyTree, x: Array) -> Array:
    """Per-row log-likelihood ``log p(x_n)``: ``x (n, D)`` -> ``(n,)``."""
    return family.posterior(family.log_joint(params, x))[1]


def start(params: PyTree, max_iter: int) -> EMResult:
    """The driver's state before the first iteration (``max_iter`` is the trace length)."""
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}.")
    dtype = jnp.result_type(*jax.tree.leaves(params))
    return EMResult(
        params=params,
        log_likelihood=jnp.array(-jnp.inf, dtype),
        trace=jnp.full((max_iter,), jnp.nan, dtype),
        n_iter=jnp.array(0, jnp.int32),
        converged=jnp.array(False),
        failed=jnp.array(False),
    )


def running(state: EMResult) -> Array:
    """Whether the instance still iterates: neither converged, failed, nor at max_iter."""
    return (state.n_iter < state.trace.shape[-1]) & ~state.converged & ~state.failed


def objective(family, params: PyTree, ll_sum: Array, w_sum: Array) -> Array:
    """What EM increases, per unit of weight: ``(sum_n w_n log p(x_n) + log_prior) /
    sum_n w_n`` (the mean log-likelihood for a family without a prior)."""
    return (ll_sum + log_prior(family, params)) / w_sum


def advance(state: EMResult, new_params: PyTree, log_likelihood: Array,
            tol: float | Array, objective: Array | None = None) -> EMResult:
    """One iteration's bookkeeping: ``log_likelihood`` (and ``objective``, default the
    same) was taken at ``state.params`` and ``new_params`` is the M-step after it.
    ``trace`` records the objective. Non-finite parameters set ``failed`` and keep the
    last good ones; an objective change of at most ``tol`` sets ``converged``. A finished
    instance (``not running(state)``) is returned unchanged, so a host loop over blocks
    of data (:mod:`jaxem.stream`) freezes it exactly as the ``while_loop`` does."""
    objective = log_likelihood if objective is None else objective
    ok = all_finite(new_params) & jnp.isfinite(objective)
    previous = jnp.where(state.n_iter > 0, state.trace[jnp.maximum(state.n_iter - 1, 0)],
                         -jnp.inf)
    new = EMResult(
        params=tree_where(ok, new_params, state.params),
        log_likelihood=log_likelihood,
        trace=state.trace.at[state.n_iter].set(objective),
        n_iter=state.n_iter + 1,
        converged=ok & (jnp.abs(objective - previous) <= tol),
        failed=~ok,
    )
    return tree_where(running(state), new, state)


def run(family, params: PyTree, x: Array, weights: Array | None = None, *,
        max_iter: int = 100, tol: float | Array = 1e-3,
        chunk_size: int | None = None, axis_name: str | None = None,
        labels: Array | None = None) -> EMResult:
    """Run EM from ``params`` on one data set (pure; jit and vmap it freely).

    Args:
      family: a model family.
      params: starting parameters.
      x: ``(n_samples, n_features)`` data (this device's rows inside ``shard_map``).
      weights: ``(n_samples,)`` sample weights, 0 for padding rows.
      max_iter: the most iterations (static: it is the length of ``trace``).
      tol: stop when the objective (the mean log-likelihood, plus the family's
        ``log_prior`` over the sum of weights: MAP) changes by at most this (traced).
      chunk_size: rows per chunk of the E-step (static), ``None`` for all at once.
      axis_name: the mesh axis the rows are split over (inside ``shard_map``), or None.
      labels: ``(n_samples,)`` component labels, -1 for unlabelled rows (see
        :func:`e_step`); the recorded log-likelihood is then the semi-supervised one.

    It is :func:`resume` from :func:`start` for up to ``max_iter`` iterations, so a run
    in blocks of iterations (``jaxem.fit(..., progress=True)``) gives identical results.
    """
    return resume(family, start(params, max_iter), x, weights, n_steps=max_iter, tol=tol,
                  chunk_size=chunk_size, axis_name=axis_name, labels=labels)


def step(family, state: EMResult, sums: tuple[PyTree, Array, Array],
         tol: float | Array) -> EMResult:
    """One iteration from the E-step's ``sums = (stats, sum w log p, sum w)`` at
    ``state.params``: the M-step and :func:`advance` (the body of :func:`resume`; also
    what a host loop over blocks or shares of the rows runs after adding their sums)."""
    stats, ll_sum, w_sum = sums
    return advance(state, m_step(family, stats, state.params), ll_sum / w_sum, tol,
                   objective(family, state.params, ll_sum, w_sum))


def resume(family, state: EMResult, x: Array, weights: Array | None = None, *,
           n_steps: int | Array, tol: float | Array = 1e-3, chunk_size: int | None = None,
           axis_name: str | None = None, labels: Array | None = None) -> EMResult:
    """Continue the driver from ``state`` for at most ``n_steps`` more iterations (it
    stops earlier when the instance converges, fails or reaches the trace's length).

    ``n_steps`` may be traced, so one compilation serves every block size. Under
    ``vmap`` an instance that stops is frozen (returned unchanged), so running
    ``n_steps = a`` then ``b`` equals running ``a + b`` at once, bit for bit: the
    state between blocks is the ``while_loop``'s carry. Arguments as :func:`run`.

    >>> import jax, jax.numpy as jnp, jaxem
    >>> fam, x = jaxem.gaussian("diag"), jnp.asarray(jaxem.datasets.load_faithful())
    >>> p0 = jaxem.initialize(fam, jax.random.key(0), x, jnp.ones(len(x)), 2)
    >>> state = jaxem.em.start(p0, max_iter=10)
    >>> for _ in range(5):
    ...     state = jaxem.em.resume(fam, state, x, n_steps=2, tol=-1.0)
    >>> once = jaxem.em.run(fam, p0, x, max_iter=10, tol=-1.0)
    >>> int(state.n_iter), bool(jnp.array_equal(state.trace, once.trace))
    (10, True)
    """
    if weights is None:
        weights = jnp.ones(x.shape[0], dtype=x.dtype)

    def body(state: EMResult):
        return step(family, state, e_step(family, state.params, x, weights, chunk_size,
                                          axis_name, labels), tol)

    stop = state.n_iter + n_steps
    return jax.lax.while_loop(lambda s: running(s) & (s.n_iter < stop), body, state)
