"""Exact EM for Gaussian mixtures on rows with missing entries (NaN).

A row's likelihood under component ``k`` is the marginal density of its observed
features; the M-step takes the expected complete-data statistics: for the missing
features, the conditional mean ``mu_m + S_mo S_oo^-1 (x_o - mu_o)`` and the conditional
covariance ``S_mm - S_mo S_oo^-1 S_om`` given the observed ones (Little & Rubin,
*Statistical Analysis with Missing Data*, ch. 8 and 11). Every row goes through the same
compiled computation with masks, never a loop over missing patterns:

* ``diag``/``spherical``: features are independent given the component, so a missing
  feature drops out of the density, and its expected square is ``(mu - mu)^2 + var``.
* ``full``/``tied``: with ``o`` the row's observed mask, ``S~ = (o o^T) * S + diag(1 - o)``
  is block-diagonal (``S_oo`` and an identity), so one Cholesky per row and component
  gives ``log det S_oo``, the Mahalanobis distance over the observed features and, with
  ``y = S~^-1 (o * (x - mu))``, the conditional mean of the missing ones, ``mu + S y``.

Work is ``(rows, K, D)`` (diag) or ``(rows, K, D, D)`` with a ``D x D`` Cholesky per
row and component (full/tied), bounded by the engine's chunks.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


# Batched Cholesky and triangular solves written with jnp: XLA's CPU LAPACK kernels for a
# batch of (n, K) matrices deadlocked inside EM's while_loop on a 2-thread pool (jaxlib
# 0.10.2, D = 16, a few thousand rows: both threads waiting in ParallelBatchMap).
# Column by column in a fori_loop: O(D^3) per matrix as LAPACK, a D-step program.
def _cholesky(a):
    """Lower Cholesky factor of SPD ``a (..., D, D)``."""
    d = a.shape[-1]
    idx = jnp.arange(d)

    def column(j, low):
        row = low[..., j, :]  # its entries before j are set, the rest 0
        diag = jnp.sqrt(a[..., j, j] - jnp.sum(row * row, axis=-1))
        col = (a[..., :, j] - jnp.einsum("...ik,...k->...i", low, row)) / diag[..., None]
        col = jnp.where(idx > j, col, jnp.where(idx == j, diag[..., None], 0.0))
        return low.at[..., :, j].set(col)

    return jax.lax.fori_loop(0, d, column, jnp.zeros_like(a))


def _cho_solve(low, b):
    """``(L L^T)^{-1} b`` for ``low (..., D, D)`` lower and ``b (..., D, m)``."""
    d = low.shape[-1]

    def forward(i, y):  # L y = b
        yi = (b[..., i, :] - jnp.einsum("...k,...km->...m", low[..., i, :], y))
        return y.at[..., i, :].set(yi / low[..., i, i, None])

    def backward(t, z):  # L^T z = y
        i = d - 1 - t
        zi = (y[..., i, :] - jnp.einsum("...k,...km->...m", low[..., :, i], z))
        return z.at[..., i, :].set(zi / low[..., i, i, None])

    y = jax.lax.fori_loop(0, d, forward, jnp.zeros_like(b))
    return jax.lax.fori_loop(0, d, backward, jnp.zeros_like(b))


def _mask(x):
    """``(observed (n, D) 0/1, x with 0 where missing)``."""
    observed = ~jnp.isnan(x)
    return observed.astype(x.dtype), jnp.where(observed, x, 0.0)


def fill_means(x, weights):
    """``x (n, D)`` with each missing entry replaced by its feature's mean over the rows
    where it is observed, weighted by ``weights (n,)`` (0 for a feature never observed):
    complete rows for a starting point (an HMM emission's ``init``), not for EM."""
    o, x0 = _mask(x)
    total = jnp.matmul(weights, o * x0, precision=_HIGHEST)
    count = jnp.matmul(weights, o, precision=_HIGHEST)
    return jnp.where(o > 0, x0, total / jnp.maximum(count, jnp.finfo(x.dtype).tiny))


def _conditional(family, params, x):
    """Per row and component: ``delta (n, K, D)`` = expected ``x - mu_k`` (observed
    differences, conditional means of the missing), the conditional covariance of the
    missing features (``(n, K, D)`` diagonal for diag/spherical, ``(n, K, D, D)`` else),
    the Mahalanobis distance over the observed features and ``log det`` of their
    covariance (both ``(n, K)``)."""
    o, x0 = _mask(x)
    mu = params.means
    diff = o[:, None, :] * (x0[:, None, :] - mu[None])  # (n, K, D)
    ct = family.covariance_type
    if ct in ("diag", "spherical"):
        p = params.precisions_cholesky
        p = p if ct == "diag" else jnp.broadcast_to(p[:, None], mu.shape)
        maha = jnp.sum((diff * p[None]) ** 2, axis=-1)
        log_det = -2.0 * jnp.matmul(o, jnp.log(p).T, precision=_HIGHEST)  # of S_oo
        cond_cov = (1.0 - o)[:, None, :] / (p * p)[None]
        return diff, cond_cov, maha, log_det
    cov = family.covariances(params)
    cov = jnp.broadcast_to(cov, mu.shape + mu.shape[-1:])  # tied: one for every k
    oo = o[:, :, None] * o[:, None, :]  # (n, D, D)
    eye = jnp.eye(mu.shape[-1], dtype=x.dtype)
    s_tilde = oo[:, None] * cov[None] + (eye - eye * o[:, None, :])[:, None]
    chol = _cholesky(s_tilde)  # (n, K, D, D)
    y = _cho_solve(chol, diff[..., None])[..., 0]
    maha = jnp.sum(diff * y, axis=-1)
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    miss = 1.0 - o
    delta = diff + miss[:, None, :] * jnp.einsum("kde,nke->nkd", cov, y, precision=_HIGHEST)
    rows_o = o[:, None, :, None] * cov[None]  # S with its missing rows zeroed
    g = _cho_solve(chol, rows_o)
    cond_cov = cov[None] - jnp.einsum("nkdi,nkde->nkie", rows_o, g, precision=_HIGHEST)
    cond_cov = cond_cov * (miss[:, :, None] * miss[:, None, :])[:, None]
    return delta, cond_cov, maha, log_det


def log_joint(family, params, x):
    """``log p(x_o, z = k)`` over each row's observed features: ``(n, K)``."""
    _, _, maha, log_det = _conditional(family, params, x)
    n_obs = jnp.sum(~jnp.isnan(x), axis=1).astype(x.dtype)
    log_gauss = -0.5 * (n_obs[:, None] * math.log(2 * math.pi) + maha + log_det)
    return jnp.log(params.weights) + log_gauss


def stats(family, x, resp, params):
    """Expected complete-data statistics (``GaussianStats``, second moments about the
    current means as :meth:`Gaussian.stats` takes them)."""
    from jaxem.families.gaussian import GaussianStats

    delta, cond_cov, _, _ = _conditional(family, params, x)
    counts = jnp.sum(resp, axis=0)
    sum_delta = jnp.einsum("nk,nkd->kd", resp, delta, precision=_HIGHEST)
    sum_x = sum_delta + counts[:, None] * params.means
    ct = family.covariance_type
    if ct in ("diag", "spherical"):
        sum_xx = jnp.einsum("nk,nkd->kd", resp, delta * delta + cond_cov, precision=_HIGHEST)
        if ct == "spherical":
            sum_xx = jnp.sum(sum_xx, axis=1)
    else:
        sum_xx = (jnp.einsum("nk,nkd,nke->kde", resp, delta, delta, precision=_HIGHEST)
                  + jnp.einsum("nk,nkde->kde", resp, cond_cov, precision=_HIGHEST))
        if ct == "tied":
            sum_xx = jnp.sum(sum_xx, axis=0)
    return GaussianStats(counts, sum_x, sum_xx)


def impute(family, params, x, resp):
    """``x (n, D)`` with each missing entry replaced by its conditional expectation
    ``sum_k resp_nk E[x | x_o, z = k]``; observed entries are returned unchanged."""
    delta, _, _, _ = _conditional(family, params, x)
    expected = jnp.einsum("nk,nkd->nd", resp, delta + params.means[None], precision=_HIGHEST)
    return jnp.where(jnp.isnan(x), expected, x)


def impute_draws(family, params, x, resp, key, n_imputations: int):
    """``(n_imputations, n, D)`` draws from the posterior predictive of the missing
    entries of ``x (n, D)``: per draw and row, a component ``k ~ resp`` (the row's
    posterior ``(n, K)``), then the missing entries from ``N(E[x_m | x_o, k],
    Cov[x_m | x_o, k])``; observed entries are returned unchanged in every draw.

    The conditional covariance is factored by ``eigh`` (negative rounding clipped to 0),
    which never fails where a Cholesky factor of a nearly singular one would."""
    delta, cond_cov, _, _ = _conditional(family, params, x)
    mean = delta + params.means[None]  # (n, K, D)
    if cond_cov.ndim == 3:  # diag, spherical: independent given the component
        factor = jnp.sqrt(jnp.maximum(cond_cov, 0.0))
    else:
        vals, vecs = jnp.linalg.eigh(cond_cov)
        factor = vecs * jnp.sqrt(jnp.maximum(vals, 0.0))[..., None, :]  # F F^T = cov
    rows = jnp.arange(x.shape[0])
    log_resp = jnp.log(resp)

    def one(key):
        key_z, key_e = jax.random.split(key)
        z = jax.random.categorical(key_z, log_resp, axis=-1)  # (n,)
        eps = jax.random.normal(key_e, x.shape, x.dtype)
        f = factor[rows, z]
        noise = f * eps if f.ndim == 2 else jnp.einsum("nde,ne->nd", f, eps,
                                                      precision=_HIGHEST)
        return jnp.where(jnp.isnan(x), mean[rows, z] + noise, x)

    return jax.lax.map(one, jax.random.split(key, n_imputations))
