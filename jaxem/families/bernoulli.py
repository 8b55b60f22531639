"""A mixture of independent Bernoulli features (binary data, ``x (n, D)`` of 0/1).

``p(x_n, z_n = k) = pi_k prod_d p_kd^x_nd (1 - p_kd)^(1 - x_nd)``, the product over the
observed features only: a missing entry (NaN, or ``-1`` / any negative value, which is
what :func:`jaxem.fit` accepts) is marginalised exactly. Shapes, ``K`` components:

=================  ==========  ===================================================
array              shape       meaning
=================  ==========  ===================================================
``weights``        ``(K,)``    mixing weights ``pi_k``
``probabilities``  ``(K, D)``  ``p_kd = p(x_d = 1 | z = k)``
``ones``           ``(K, D)``  expected counts of ones ``sum_n r_nk x_nd`` (observed)
``observed``       ``(K, D)``  ``sum_n r_nk [x_nd observed]``: the denominators
=================  ==========  ===================================================

The E-step is two GEMMs, the statistics three.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxem.families import _discrete as dx
from jaxem.families.base import Mixture, family


class BernoulliParams(NamedTuple):
    weights: jax.Array  # (K,)
    probabilities: jax.Array  # (K, D) p(x_d = 1 | z = k)


class BernoulliStats(NamedTuple):
    """Expected counts, additive over rows."""

    counts: jax.Array  # (K,) sum_n r_nk
    ones: jax.Array  # (K, D) sum_n r_nk x_nd over observed entries
    observed: jax.Array  # (K, D) sum_n r_nk over observed entries


def _log1m(p: jax.Array) -> jax.Array:
    """``log(1 - p)`` with ``log 0 = LOG_ZERO`` at ``p = 1``."""
    ok = p < 1
    return jnp.where(ok, jnp.log1p(-jnp.where(ok, p, 0.0)), dx.LOG_ZERO)


@family
class Bernoulli(Mixture):
    """A Bernoulli mixture family (latent class analysis for binary features).

    Args:
      alpha: pseudo-count added to every expected count: a symmetric Dirichlet prior on
        the weights and a Beta(alpha + 1, alpha + 1) prior on each ``p_kd`` (Laplace
        smoothing at 1); the M-step is the MAP estimate, 0 is maximum likelihood.
        Traced: no recompilation.

    >>> import jax.numpy as jnp
    >>> fam = Bernoulli(alpha=0.0)
    >>> x = jnp.array([[1.0, 0.0], [1.0, jnp.nan], [0.0, 1.0]])
    >>> resp = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> params = fam.m_step(fam.stats(x, resp))
    >>> params.probabilities.tolist()  # feature 1 of component 0: one observed row
    [[1.0, 0.0], [0.0, 1.0]]
    """

    alpha: float | jax.Array = 1.0

    gemm_rows = property(lambda self: True, doc="The E-step is GEMMs over rows.")

    def log_joint(self, params: BernoulliParams, x: jax.Array) -> jax.Array:
        """``log p(x_n, z_n = k)`` over the observed features: ``x (n, D)`` -> ``(n, K)``."""
        p = params.probabilities
        m = dx.observed(x)
        ones = dx.fill(x, m).astype(p.dtype)
        zeros = jnp.where(m, 1.0 - ones, 0.0)
        return (dx.dot(ones, dx.safe_log(p).T) + dx.dot(zeros, _log1m(p).T)
                + dx.safe_log(params.weights))

    def stats(self, x: jax.Array, resp: jax.Array,
              params: BernoulliParams | None = None) -> BernoulliStats:
        """Expected counts of ``x (n, D)`` under ``resp (n, K)`` (weights included)."""
        del params
        return BernoulliStats(*dx.feature_stats(x, resp))

    def m_step(self, stats: BernoulliStats,
               params: BernoulliParams | None = None) -> BernoulliParams:
        """MAP estimates ``p_kd = (ones_kd + alpha) / (observed_kd + 2 alpha)``."""
        a = self.alpha
        # No data: the current value, or pooled over components, or 1/2 if never observed.
        probs = dx.map_estimate(stats.ones, stats.observed, a, 2 * a, 0.5,
                                None if params is None else params.probabilities)
        weights = dx.mix_weights(stats.counts, a, None if params is None else params.weights)
        return BernoulliParams(weights, probs)

    def log_prior(self, params: BernoulliParams) -> jax.Array:
        """``log p(params)`` up to a constant (Dirichlet on the weights, Beta on each
        ``p_kd``). MAP-EM never decreases ``sum_n w_n log p(x_n) + log_prior``."""
        p = params.probabilities
        beta = jnp.where(self.alpha > 0, self.alpha * (dx.safe_log(p) + _log1m(p)), 0.0)
        return dx.log_dirichlet(self.alpha, params.weights) + jnp.sum(beta)

    def n_free_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters, for BIC and AIC: ``K - 1 + K D``."""
        return dx.n_free_parameters(n_components, n_features)

    def sample(self, key: jax.Array, params: BernoulliParams,
               n: int) -> tuple[jax.Array, jax.Array]:
        """Draw ``n`` rows: ``(x (n, D) of 0/1 in the params' dtype, labels (n,))``."""
        return dx.sample_rows(key, params.weights, params.probabilities, n,
                              jax.random.bernoulli)

    def to_unconstrained(self, params: BernoulliParams) -> dict:
        """``{"logits": log weights (K,), "probabilities": logit p (K, D)}``."""
        p = dx.clip_unit(params.probabilities)
        return {"logits": dx.weight_logits(params.weights),
                "probabilities": jnp.log(p) - jnp.log1p(-p)}

    def from_unconstrained(self, u: dict) -> BernoulliParams:
        return BernoulliParams(jax.nn.softmax(u["logits"]), jax.nn.sigmoid(u["probabilities"]))


def bernoulli(alpha: float = 1.0) -> Bernoulli:
    """The Bernoulli mixture family with pseudo-count ``alpha`` (see :class:`Bernoulli`)."""
    return Bernoulli(alpha)
