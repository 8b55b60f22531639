"""A mixture of independent Poisson counts, ``x (n, D)`` of non-negative integers.

``log p(x_n, z_n = k) = log pi_k + sum_d (x_nd log l_kd - l_kd - log x_nd!)`` over the
observed features only: a missing entry (NaN, or ``-1`` / any negative value, which is
what :func:`jaxem.fit` accepts) is marginalised exactly. Shapes, ``K`` components:

=================  ==========  ===================================================
array              shape       meaning
=================  ==========  ===================================================
``weights``        ``(K,)``    mixing weights ``pi_k``
``rates``          ``(K, D)``  Poisson means ``l_kd``
``sum_x``          ``(K, D)``  ``sum_n r_nk x_nd`` over observed entries
``observed``       ``(K, D)``  ``sum_n r_nk [x_nd observed]``: the denominators
=================  ==========  ===================================================
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from jaxem.families import _discrete as dx
from jaxem.families.base import Mixture, family


class PoissonParams(NamedTuple):
    weights: jax.Array  # (K,)
    rates: jax.Array  # (K, D)


class PoissonStats(NamedTuple):
    """Expected sufficient statistics, additive over rows."""

    counts: jax.Array  # (K,) sum_n r_nk
    sum_x: jax.Array  # (K, D) sum_n r_nk x_nd over observed entries
    observed: jax.Array  # (K, D) sum_n r_nk over observed entries


@family
class Poisson(Mixture):
    """A Poisson mixture family.

    Args:
      alpha: pseudo-count added to every expected count: a symmetric Dirichlet prior on
        the weights, and ``alpha`` pseudo-events on each rate.
      beta: pseudo-observations on each rate. With them the rates have a
        Gamma(alpha + 1, beta) prior and the M-step is the MAP estimate
        ``l_kd = (sum_x_kd + alpha) / (observed_kd + beta)``; ``alpha = beta = 0`` is
        maximum likelihood. Both traced: no recompilation.

    >>> import jax.numpy as jnp
    >>> fam = Poisson()
    >>> x = jnp.array([[3.0, 1.0], [5.0, -1.0], [0.0, 2.0]])  # -1: missing
    >>> resp = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> fam.m_step(fam.stats(x, resp)).rates.tolist()
    [[4.0, 1.0], [0.0, 2.0]]
    """

    alpha: float | jax.Array = 0.0
    beta: float | jax.Array = 0.0

    gemm_rows = property(lambda self: True, doc="The E-step is GEMMs over rows.")

    def log_joint(self, params: PoissonParams, x: jax.Array) -> jax.Array:
        """``log p(x_n, z_n = k)`` over the observed features: ``x (n, D)`` -> ``(n, K)``."""
        lam = params.rates
        m = dx.observed(x)
        xo = dx.fill(x, m).astype(lam.dtype)
        log_fact = jnp.sum(jnp.where(m, gammaln(xo + 1.0), 0.0), axis=1, keepdims=True)
        return (dx.dot(xo, dx.safe_log(lam).T) - dx.dot(m.astype(lam.dtype), lam.T)
                - log_fact + dx.safe_log(params.weights))

    def stats(self, x: jax.Array, resp: jax.Array,
              params: PoissonParams | None = None) -> PoissonStats:
        """Expected statistics of ``x (n, D)`` under ``resp (n, K)`` (weights included)."""
        del params
        return PoissonStats(*dx.feature_stats(x, resp))

    def m_step(self, stats: PoissonStats, params: PoissonParams | None = None) -> PoissonParams:
        """MAP rates ``(sum_x + alpha) / (observed + beta)`` and weights."""
        a, b = self.alpha, self.beta
        # No data: the current value, or pooled over components, or 1 if never observed.
        rates = dx.map_estimate(stats.sum_x, stats.observed, a, b, 1.0,
                                None if params is None else params.rates)
        weights = dx.mix_weights(stats.counts, a, None if params is None else params.weights)
        return PoissonParams(weights, rates)

    def log_prior(self, params: PoissonParams) -> jax.Array:
        """``log p(params)`` up to a constant (Dirichlet on the weights, Gamma on the
        rates). MAP-EM never decreases ``sum_n w_n log p(x_n) + log_prior``."""
        lam = params.rates
        gamma = jnp.where(self.alpha > 0, self.alpha * dx.safe_log(lam), 0.0) - self.beta * lam
        return dx.log_dirichlet(self.alpha, params.weights) + jnp.sum(gamma)

    def n_free_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters, for BIC and AIC: ``K - 1 + K D``."""
        return dx.n_free_parameters(n_components, n_features)

    def sample(self, key: jax.Array, params: PoissonParams,
               n: int) -> tuple[jax.Array, jax.Array]:
        """Draw ``n`` rows: ``(counts (n, D) in the params' dtype, labels (n,))``."""
        return dx.sample_rows(key, params.weights, params.rates, n, jax.random.poisson)

    def to_unconstrained(self, params: PoissonParams) -> dict:
        """``{"logits": log weights (K,), "rates": log rates (K, D)}``."""
        tiny = jnp.finfo(params.rates.dtype).tiny
        return {"logits": dx.weight_logits(params.weights),
                "rates": jnp.log(jnp.maximum(params.rates, tiny))}

    def from_unconstrained(self, u: dict) -> PoissonParams:
        return PoissonParams(jax.nn.softmax(u["logits"]), jnp.exp(u["rates"]))


def poisson(alpha: float = 0.0, beta: float = 0.0) -> Poisson:
    """The Poisson mixture family with Gamma pseudo-counts ``alpha``, ``beta``."""
    return Poisson(alpha, beta)
