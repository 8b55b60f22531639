"""Gaussian mixtures with ``full``, ``tied``, ``diag`` or ``spherical`` covariances.

Parameters are stored as scikit-learn stores them: mixing weights, means and the
Cholesky factor of the precision, so the E-step is a matrix multiply (GEMM-shaped).

Shapes, ``K`` components and ``D`` features:

=============  ==========================  ==========================
type           ``precisions_cholesky``     ``GaussianStats.sum_xx``
=============  ==========================  ==========================
``full``       ``(K, D, D)``               ``(K, D, D)``
``tied``       ``(D, D)``                  ``(D, D)``
``diag``       ``(K, D)``                  ``(K, D)``
``spherical``  ``(K,)``                    ``(K,)``
=============  ==========================  ==========================
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from jaxem.families.base import Mixture, family

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
# The second moments are differences of large numbers: never let a GPU use TF32 there.
_HIGHEST = jax.lax.Precision.HIGHEST


class GaussianParams(NamedTuple):
    weights: jax.Array  # (K,)
    means: jax.Array  # (K, D)
    precisions_cholesky: jax.Array  # see the module table


class GaussianStats(NamedTuple):
    """Expected sufficient statistics, additive over rows."""

    counts: jax.Array  # (K,) sum_n r_nk
    sum_x: jax.Array  # (K, D) sum_n r_nk x_n
    sum_xx: jax.Array  # second moments, see the module table


@family(static=("covariance_type",))
class Gaussian(Mixture):
    """A Gaussian mixture family.

    Args:
      covariance_type: one of ``full``, ``tied``, ``diag``, ``spherical`` (static).
      reg_covar: added to the diagonal of every covariance (traced: no recompilation).

    >>> import jax.numpy as jnp
    >>> fam = Gaussian("diag")
    >>> x = jnp.array([[0.0, 0.0], [1.0, 1.0], [10.0, 10.0]])
    >>> resp = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> params = fam.m_step(fam.stats(x, resp))
    >>> params.means.round(3).tolist()
    [[0.5, 0.5], [10.0, 10.0]]
    >>> fam.log_joint(params, x).shape
    (3, 2)
    """

    covariance_type: str = "full"
    reg_covar: float = 1e-6

    def __post_init__(self):
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"Invalid covariance_type {self.covariance_type!r}: "
                f"use one of {', '.join(COVARIANCE_TYPES)}."
            )

    # -- E-step ---------------------------------------------------------------------
    def log_joint(self, params: GaussianParams, x: jax.Array) -> jax.Array:
        """``log p(x_n, z_n = k)``: ``x (n, D)`` -> ``(n, K)``."""
        mu, p = params.means, params.precisions_cholesky
        d = x.shape[-1]
        ct = self.covariance_type
        if ct == "full":
            y = jnp.einsum("nd,kde->nke", x, p) - jnp.einsum("kd,kde->ke", mu, p)
            maha = jnp.sum(y * y, axis=-1)
            log_det = jnp.sum(jnp.log(jnp.diagonal(p, axis1=-2, axis2=-1)), axis=-1)
        elif ct == "tied":
            y = (x @ p)[:, None, :] - (mu @ p)[None, :, :]
            maha = jnp.sum(y * y, axis=-1)
            log_det = jnp.sum(jnp.log(jnp.diagonal(p)))
        elif ct == "diag":
            prec = p * p
            maha = (
                jnp.sum(mu * mu * prec, axis=1)
                - 2.0 * x @ (mu * prec).T
                + (x * x) @ prec.T
            )
            log_det = jnp.sum(jnp.log(p), axis=1)
        else:  # spherical
            prec = p * p
            maha = (
                jnp.sum(mu * mu, axis=1) * prec
                - 2.0 * (x @ mu.T) * prec
                + jnp.sum(x * x, axis=1)[:, None] * prec
            )
            log_det = d * jnp.log(p)
        log_gauss = -0.5 * (d * math.log(2 * math.pi) + maha) + log_det
        return jnp.log(params.weights) + log_gauss

    def stats(self, x: jax.Array, resp: jax.Array) -> GaussianStats:
        """``x (n, D)``, weighted ``resp (n, K)`` -> sums over the rows."""
        counts = jnp.sum(resp, axis=0)
        sum_x = jnp.matmul(resp.T, x, precision=_HIGHEST)
        ct = self.covariance_type
        if ct == "full":
            n, d = x.shape
            k = resp.shape[1]
            if d <= k:
                # One GEMM (K, n) @ (n, D*D) on the row outer products: fastest, and
                # with restarts vmapped (x shared) it is one GEMM for all of them.
                xx = (x[:, :, None] * x[:, None, :]).reshape(n, d * d)
                sum_xx = jnp.matmul(resp.T, xx, precision=_HIGHEST).reshape(k, d, d)
            else:  # (n, K*D) is the smaller intermediate
                rx = (resp[:, :, None] * x[:, None, :]).reshape(n, k * d)
                sum_xx = jnp.matmul(rx.T, x, precision=_HIGHEST).reshape(k, d, d)
        elif ct == "tied":
            xw = x * jnp.sum(resp, axis=1)[:, None]
            sum_xx = jnp.matmul(xw.T, x, precision=_HIGHEST)
        elif ct == "diag":
            sum_xx = jnp.matmul(resp.T, x * x, precision=_HIGHEST)
        else:
            sum_xx = jnp.matmul(resp.T, jnp.sum(x * x, axis=1), precision=_HIGHEST)
        return GaussianStats(counts, sum_x, sum_xx)

    # -- M-step ---------------------------------------------------------------------
    def m_step(self, stats: GaussianStats, params: GaussianParams | None = None) -> GaussianParams:
        """Closed-form maximiser; ``params`` (the current value) is not needed here."""
        del params
        sum_x = stats.sum_x
        # As scikit-learn: a tiny count keeps empty components finite.
        nk = stats.counts + 10 * jnp.finfo(sum_x.dtype).eps
        means = sum_x / nk[:, None]
        d = sum_x.shape[-1]
        eye = jnp.eye(d, dtype=sum_x.dtype)
        ct = self.covariance_type
        if ct == "full":
            cov = stats.sum_xx / nk[:, None, None] - jnp.einsum("kd,ke->kde", means, means)
            prec_chol = _precision_cholesky(cov + self.reg_covar * eye)
        elif ct == "tied":
            outer = jnp.einsum("k,kd,ke->de", nk, means, means, precision=_HIGHEST)
            cov = (stats.sum_xx - outer) / jnp.sum(nk)
            prec_chol = _precision_cholesky(cov + self.reg_covar * eye)
        elif ct == "diag":
            # One-pass moments can cancel to a tiny negative number: clip at 0.
            var = jnp.maximum(stats.sum_xx / nk[:, None] - means * means, 0.0)
            prec_chol = jax.lax.rsqrt(var + self.reg_covar)
        else:
            var = jnp.maximum(stats.sum_xx / nk - jnp.sum(means * means, axis=1), 0.0) / d
            prec_chol = jax.lax.rsqrt(var + self.reg_covar)
        return GaussianParams(nk / jnp.sum(nk), means, prec_chol)

    # -- helpers used by the engine and the estimators ---------------------------------
    def translate(self, params: GaussianParams, shift: jax.Array) -> GaussianParams:
        """The same mixture moved by ``shift (D,)``: the engine fits centred data."""
        return params._replace(means=params.means + shift)

    def covariances(self, params: GaussianParams) -> jax.Array:
        """Covariances in the shape of ``precisions_cholesky``."""
        p = params.precisions_cholesky
        if self.covariance_type in ("full", "tied"):
            p_inv = jnp.linalg.inv(p)  # any triangular factor, or none
            return jnp.swapaxes(p_inv, -1, -2) @ p_inv
        return 1.0 / (p * p)

    def precisions(self, params: GaussianParams) -> jax.Array:
        p = params.precisions_cholesky
        if self.covariance_type in ("full", "tied"):
            return p @ jnp.swapaxes(p, -1, -2)
        return p * p

    def precisions_cholesky_from(self, *, covariances=None, precisions=None) -> jax.Array:
        """``precisions_cholesky`` from given covariances or precisions (one of them)."""
        if self.covariance_type in ("diag", "spherical"):
            return jax.lax.rsqrt(covariances) if precisions is None else jnp.sqrt(precisions)
        if precisions is None:
            return _precision_cholesky(covariances)
        return jnp.linalg.cholesky(precisions)  # lower triangular: also P P^T = precisions

    def n_free_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters, for BIC and AIC."""
        k, d = n_components, n_features
        cov = {"full": k * d * (d + 1) // 2, "tied": d * (d + 1) // 2,
               "diag": k * d, "spherical": k}[self.covariance_type]
        return cov + k * d + k - 1

    def sample(self, key: jax.Array, params: GaussianParams, n: int) -> tuple[jax.Array, jax.Array]:
        """Draw ``n`` points: ``(x (n, D), component labels (n,))``."""
        key_z, key_x = jax.random.split(key)
        z = jax.random.categorical(key_z, jnp.log(params.weights), shape=(n,))
        mu = params.means
        eps = jax.random.normal(key_x, (n, mu.shape[-1]), dtype=mu.dtype)
        p = params.precisions_cholesky
        if self.covariance_type == "full":
            p = p[z]
        if self.covariance_type in ("full", "tied"):
            # x = mu + P^{-T} eps has covariance (P P^T)^{-1}.
            pt = jnp.broadcast_to(jnp.swapaxes(p, -1, -2), (n,) + p.shape[-2:])
            step = jnp.linalg.solve(pt, eps[..., None])[..., 0]
        elif self.covariance_type == "diag":
            step = eps / p[z]
        else:
            step = eps / p[z][:, None]
        return mu[z] + step, z


def _precision_cholesky(cov: jax.Array) -> jax.Array:
    """Upper-triangular ``P`` with ``P P^T = cov^{-1}`` (scikit-learn's convention).

    A covariance that is not positive definite gives NaN, which the driver flags.
    """
    chol = jnp.linalg.cholesky(cov)
    eye = jnp.broadcast_to(jnp.eye(cov.shape[-1], dtype=cov.dtype), cov.shape)
    return jnp.swapaxes(solve_triangular(chol, eye, lower=True), -1, -2)


def gaussian(covariance_type: str = "full", reg_covar: float = 1e-6) -> Gaussian:
    """The Gaussian mixture family of the given covariance type."""
    return Gaussian(covariance_type, reg_covar)
