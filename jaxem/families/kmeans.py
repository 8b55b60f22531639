"""k-means as hard EM (Lloyd's algorithm).

The E-step assigns each row to its nearest centre (a one-hot "responsibility"), the
M-step moves each centre to the weighted mean of its rows. The objective reported in
the engine's ``log_likelihood`` slot is minus the mean squared distance to the nearest
centre, so ``inertia = -log_likelihood * sum(weights)``.

The family's ``m_step`` sees only additive sums, so an empty cluster keeps its centre.
:func:`lloyd` is scikit-learn's Lloyd iteration exactly (what ``jaxem.KMeans`` runs):
an empty cluster moves to the row farthest from its centre, and the run stops when
the centres moved by at most ``tol`` (squared Frobenius norm), counting iterations as
scikit-learn does. A run is a ``while_loop`` over passes of :mod:`jaxem.rows`, so it
is chunked, split over devices and vmapped over restarts like :func:`jaxem.em.run`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxem import rows
from jaxem.families.base import Mixture, all_finite, family, tree_where

_HIGHEST = jax.lax.Precision.HIGHEST


class KMeansParams(NamedTuple):
    centers: jax.Array  # (K, D)


class KMeansStats(NamedTuple):
    counts: jax.Array  # (K,)
    sum_x: jax.Array  # (K, D)


@family
class KMeans(Mixture):
    """The k-means family (no hyper-parameters).

    >>> import jax.numpy as jnp
    >>> fam = KMeans()
    >>> params = KMeansParams(jnp.array([[0.0], [5.0]]))
    >>> x = jnp.array([[1.0], [4.0], [6.0]])
    >>> resp, objective = fam.posterior(fam.log_joint(params, x))
    >>> resp.tolist(), objective.tolist()
    ([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], [-1.0, -1.0, -1.0])
    """

    centres_data = True  # has translate (see jaxem.families.base.Family)

    def log_joint(self, params: KMeansParams, x: jax.Array) -> jax.Array:
        """Minus the squared distance of each row to each centre: ``(n, K)``."""
        c = params.centers
        sq = (
            jnp.sum(x * x, axis=1)[:, None]
            - 2.0 * x @ c.T
            + jnp.sum(c * c, axis=1)[None, :]
        )
        return -jnp.maximum(sq, 0.0)

    def posterior(self, log_joint: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Hard assignment to the nearest centre (the first one on ties)."""
        labels = jnp.argmax(log_joint, axis=-1)
        resp = jax.nn.one_hot(labels, log_joint.shape[-1], dtype=log_joint.dtype)
        return resp, jnp.max(log_joint, axis=-1)

    def stats(self, x: jax.Array, resp: jax.Array, params: KMeansParams | None = None) -> KMeansStats:
        return KMeansStats(jnp.sum(resp, axis=0), jnp.matmul(resp.T, x, precision=_HIGHEST))

    def m_step(self, stats: KMeansStats, params: KMeansParams | None = None) -> KMeansParams:
        """Centroids; an empty cluster keeps its current centre."""
        counts = stats.counts[:, None]
        means = stats.sum_x / jnp.where(counts > 0, counts, 1)
        if params is None:
            return KMeansParams(means)
        return KMeansParams(jnp.where(counts > 0, means, params.centers))

    def translate(self, params: KMeansParams, shift: jax.Array) -> KMeansParams:
        return KMeansParams(params.centers + shift)

    def locations(self, params: KMeansParams) -> jax.Array:
        return params.centers


def kmeans() -> KMeans:
    """The k-means (hard EM) family."""
    return KMeans()


def sq_distances(centers: jax.Array, x: jax.Array) -> jax.Array:
    """Squared distances ``(n, K)`` from ``x (n, D)`` to ``centers (K, D)`` by direct
    differences: exact wherever the data lie, unlike the GEMM form of ``log_joint``
    (float32 keeps 7 digits of ``|x|^2``, which is all of it at ``|x| = 1e6``)."""
    return jnp.sum((x[:, None, :] - centers[None]) ** 2, axis=-1)


class Far(NamedTuple):
    """The ``K`` positive-weight rows farthest from their centres, farthest first (the
    lower row index first on ties): candidates for empty clusters."""

    sq_dist: jax.Array  # (K,) -inf where fewer rows were seen
    x: jax.Array  # (K, D)
    weight: jax.Array  # (K,)
    label: jax.Array  # (K,) int32, the cluster each row is in


def _top(far: Far, k: int) -> Far:
    """The ``k`` largest of a concatenation of ``Far`` rows (stable: earlier wins ties)."""
    _, i = jax.lax.top_k(far.sq_dist, k)
    return jax.tree.map(lambda a: a[i], far)


def lloyd_pass(params: KMeansParams, x: jax.Array, weights: jax.Array,
               labels: jax.Array | None = None, chunk_size: int | None = None,
               axis_name: str | None = None) -> tuple[KMeansStats, jax.Array, Far, jax.Array]:
    """One pass over the rows at ``params``: ``(stats, inertia, far, labels)``.

    ``stats`` are the weighted counts and sums of each cluster, ``inertia`` the sum of
    weighted squared distances to the nearest centre, ``labels (n,)`` the nearest
    centres (written over the given ``labels``, or ``None`` for no labels). The nearest
    centre is found by the GEMM form (fast); its distance by direct difference
    (accurate).
    """
    c = params.centers
    k = c.shape[0]
    offset = rows.row_offset(x.shape[0], axis_name)

    def fold(carry, xc, wc, idx):
        stats, inertia, far, out = carry
        lab = jnp.argmax(KMeans().log_joint(params, xc), axis=1).astype(jnp.int32)
        d2 = jnp.sum((xc - c[lab]) ** 2, axis=1)
        resp = jax.nn.one_hot(lab, k, dtype=xc.dtype) * wc[:, None]
        stats = jax.tree.map(jnp.add, stats, KMeans().stats(xc, resp))
        mine = _top(Far(jnp.where(wc > 0, d2, -jnp.inf), xc, wc, lab), min(k, xc.shape[0]))
        far = _top(jax.tree.map(lambda a, b: jnp.concatenate([a, b]), far, mine), k)
        if out is not None:
            out = out.at[idx - offset].set(lab)
        return stats, inertia + wc @ d2, far, out

    init = (KMeansStats(jnp.zeros(k, x.dtype), jnp.zeros_like(c)), jnp.zeros((), x.dtype),
            Far(jnp.full(k, -jnp.inf, x.dtype), jnp.zeros_like(c), jnp.zeros(k, x.dtype),
                jnp.zeros(k, jnp.int32)), labels)
    stats, inertia, far, labels = rows.scan_rows(fold, init, x, weights, chunk_size,
                                                 axis_name)
    stats, inertia = rows.psum((stats, inertia), axis_name)
    if axis_name is not None:  # every device's K farthest, in device (= row) order
        far = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]),
                           jax.lax.all_gather(far, axis_name))
        far = _top(far, k)
    return stats, inertia, far, labels


def relocate(stats: KMeansStats, far: Far) -> KMeansStats:
    """scikit-learn's empty-cluster relocation: the ``j``-th empty cluster takes the
    ``j``-th farthest row, which leaves its own cluster; nothing moves when every row
    sits on its centre (more clusters than distinct rows)."""
    empty = stats.counts == 0
    rank = jnp.clip(jnp.cumsum(empty) - 1, 0, far.sq_dist.shape[0] - 1)
    move = empty & (far.sq_dist[0] > 0) & jnp.isfinite(far.sq_dist[rank])
    w = jnp.where(move, far.weight[rank], 0)  # (K,)
    wx = far.x[rank] * w[:, None]
    old = far.label[rank]
    counts = jnp.where(move, w, stats.counts).at[old].add(-w)
    sum_x = jnp.where(move[:, None], wx, stats.sum_x).at[old].add(-wx)
    return KMeansStats(counts, sum_x)


def lloyd_m_step(stats: KMeansStats, far: Far) -> KMeansParams:
    """Centroids after relocation; a cluster still empty sits on the largest one's
    centre (scikit-learn's ``_average_centers``)."""
    stats = relocate(stats, far)
    counts = stats.counts[:, None]
    means = stats.sum_x / jnp.where(counts > 0, counts, 1)
    return KMeansParams(jnp.where(counts > 0, means, means[jnp.argmax(stats.counts)]))


class LloydResult(NamedTuple):
    """One k-means run (or a batch of them, with leading axes): the fields of
    :class:`jaxem.em.EMResult`, the objective being minus the mean squared distance."""

    params: KMeansParams
    log_likelihood: jax.Array  # () -inertia / sum(weights) at the returned centres
    trace: jax.Array  # (max_iter,) the same at each iteration's centres, NaN after
    n_iter: jax.Array  # () int32
    converged: jax.Array  # () no label changed, or the centres moved by at most tol
    failed: jax.Array  # () a distance overflowed; the last finite centres are kept
    center_shift: jax.Array  # () squared Frobenius norm of the last move
    strict: jax.Array  # () converged because no label changed


def lloyd(params: KMeansParams, x: jax.Array, weights: jax.Array, *,
          max_iter: int | jax.Array, tol: float | jax.Array, chunk_size: int | None = None,
          axis_name: str | None = None, trace_length: int | None = None) -> LloydResult:
    """scikit-learn's Lloyd k-means from ``params`` on ``x (n, D)`` (pure; jit and vmap).

    Iteration ``i`` assigns the rows to the centres and moves the centres (relocating
    empty ones); the run stops when no label of a positive-weight row changed ("strict
    convergence") or the squared move is at most ``tol``, so ``n_iter`` is
    scikit-learn's ``n_iter_``. The labels are carried from pass to pass: ``(n,)`` int32
    per run. One more pass takes the objective of the returned centres, which is what
    scikit-learn compares across restarts. ``max_iter`` may be traced when the static
    ``trace_length >= max_iter`` is given (one compilation serves every ``max_iter``).

    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0.0], [1.0], [10.0], [11.0]])
    >>> r = lloyd(KMeansParams(jnp.array([[0.0], [50.0]])), x, jnp.ones(4), max_iter=10, tol=0.0)
    >>> r.params.centers.ravel().tolist(), int(r.n_iter), bool(r.strict)
    ([0.5, 10.5], 3, True)
    """
    dtype = params.centers.dtype
    trace_length = max_iter if trace_length is None else trace_length

    def body(carry):
        s, labels, phase = carry  # phase 0: iterating, 1: finished, 2: evaluated
        # One pass serves both an iteration and, once finished, the final objective
        # (a single copy of the pass in the compiled loop).
        stats, inertia, far, new_labels = lloyd_pass(s.params, x, weights, labels,
                                                     chunk_size, axis_name)
        objective = -inertia / jnp.sum(stats.counts)
        new = lloyd_m_step(stats, far)
        shift = jnp.sum((new.centers - s.params.centers) ** 2)
        changed = rows.psum(jnp.sum((new_labels != labels) & (weights > 0)), axis_name)
        ok = all_finite(new) & jnp.isfinite(objective) & jnp.isfinite(shift)
        strict = ok & (changed == 0)
        step = LloydResult(tree_where(ok, new, s.params), objective,
                           s.trace.at[s.n_iter].set(objective), s.n_iter + 1,
                           strict | (ok & (shift <= tol)), ~ok, shift, strict)
        last = s._replace(log_likelihood=objective, failed=s.failed | ~jnp.isfinite(objective))
        done = (step.n_iter >= max_iter) | step.converged | step.failed
        return (tree_where(phase == 0, step, last), new_labels,
                jnp.where(phase == 0, done.astype(jnp.int32), 2))

    zero = jnp.zeros((), dtype)
    start = LloydResult(params, zero, jnp.full((trace_length,), jnp.nan, dtype),
                        jnp.zeros((), jnp.int32), jnp.array(False), jnp.array(False), zero,
                        jnp.array(False))
    carry = (start, jnp.full(x.shape[0], -1, jnp.int32), jnp.zeros((), jnp.int32))
    return jax.lax.while_loop(lambda c: c[2] < 2, body, carry)[0]
