"""Starting parameters, as scikit-learn's ``init_params`` methods.

Every method yields starting responsibilities ``resp (n, K)``; the starting parameters
are the family's M-step on them, ``family.m_step(family.stats(x, w * resp))`` (twice,
the second time about the first's means). As in
scikit-learn, ``k-means++`` and ``random_from_data`` put one unit of responsibility on
each chosen row (so Gaussian components start at those rows with covariance
``reg_covar``), ``random`` draws uniform responsibilities, and ``kmeans`` uses the
labels of a k-means fit (jaxem's own, :mod:`jaxem.families.kmeans`).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxem import em
from jaxem.families.kmeans import KMeans, KMeansParams

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")


def kmeans_plusplus(key: jax.Array, x: jax.Array, weights: jax.Array,
                    n_components: int) -> jax.Array:
    """Greedy k-means++ seeding (as scikit-learn's): ``(n_components,)`` row indices.

    Rows of weight 0 are never chosen.
    """
    n_trials = 2 + int(math.log(n_components))
    sq_dist = lambda c: -KMeans().log_joint(KMeansParams(c), x).T  # (m, n)

    def sample(key, d2, shape):
        p = weights * d2
        p = jnp.where(jnp.sum(p) > 0, p, weights)  # all rows equal: fall back to w
        return jax.random.categorical(key, jnp.log(p), shape=shape)

    key, first_key = jax.random.split(key)
    first = sample(first_key, jnp.ones_like(weights), ())
    closest = sq_dist(x[first][None])[0]
    idx = jnp.zeros(n_components, jnp.int32).at[0].set(first)

    def step(carry, key):
        idx, closest, c = carry
        cand = sample(key, closest, (n_trials,))
        d2 = jnp.minimum(closest, sq_dist(x[cand]))  # (n_trials, n)
        best = jnp.argmin(d2 @ weights)
        return (idx.at[c].set(cand[best]), d2[best], c + 1), None

    keys = jax.random.split(key, n_components - 1)
    (idx, _, _), _ = jax.lax.scan(step, (idx, closest, 1), keys)
    return idx


def initial_resp(key: jax.Array, x: jax.Array, weights: jax.Array, n_components: int,
                 method: str = "kmeans") -> jax.Array:
    """Starting responsibilities ``(n, K)`` by ``method`` (one of :data:`INIT_METHODS`)."""
    n = x.shape[0]
    k = n_components
    if method == "random":
        r = jax.random.uniform(key, (n, k), dtype=x.dtype)
        return r / jnp.sum(r, axis=1, keepdims=True)
    if method == "random_from_data":
        g = jax.random.gumbel(key, (n,), dtype=x.dtype) + jnp.log(weights)
        idx = jax.lax.top_k(g, k)[1]
    elif method in ("k-means++", "kmeans"):
        idx = kmeans_plusplus(key, x, weights, k)
    else:
        raise ValueError(f"Unknown init method {method!r}: use one of {', '.join(INIT_METHODS)}.")
    one_per_seed = jnp.zeros((n, k), x.dtype).at[idx, jnp.arange(k, dtype=idx.dtype)].set(1.0)
    if method != "kmeans":
        return one_per_seed
    fam = KMeans()
    centers = fam.m_step(fam.stats(x, one_per_seed))
    # scikit-learn's KMeans defaults: 300 iterations, tol 1e-4 of the mean variance.
    mean = weights @ x / jnp.sum(weights)
    tol = 1e-4 * jnp.mean(weights @ (x - mean) ** 2 / jnp.sum(weights))
    fitted = em.run(fam, centers, x, weights, max_iter=300, tol=tol)
    return em.responsibilities(fam, fitted.params, x)


def initialize(family, key: jax.Array, x: jax.Array, weights: jax.Array,
               n_components: int, method: str = "kmeans"):
    """Starting parameters of ``family`` for ``x (n, D)`` by ``method``."""
    resp = initial_resp(key, x, weights, n_components, method) * weights[:, None]
    # Two passes, so that second moments are taken about the first pass's means.
    first = family.m_step(family.stats(x, resp), None)
    return family.m_step(family.stats(x, resp, first), first)
