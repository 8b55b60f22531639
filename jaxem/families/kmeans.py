"""k-means as hard EM (Lloyd's algorithm).

The E-step assigns each row to its nearest centre (a one-hot "responsibility"), the
M-step moves each centre to the weighted mean of its rows. The objective reported in
the engine's ``log_likelihood`` slot is minus the mean squared distance to the nearest
centre, so ``inertia = -log_likelihood * sum(weights)``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxem.families.base import Mixture, family

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
