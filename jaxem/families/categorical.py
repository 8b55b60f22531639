"""Naive Bayes with a hidden class: a mixture of independent categorical attributes.

Row ``n`` holds ``D`` integer codes, attribute ``d`` taking values ``0 .. V_d - 1``
(``n_categories = (V_1, ..., V_D)``, static). Given the component ``k`` the attributes
are independent: ``p(x_n, z_n = k) = pi_k prod_d theta[k, d, x_nd]``. The probabilities
are stored padded to ``V = max V_d`` with zeros beyond each attribute's ``V_d``:

=====================  ============  ==========================================
array                  shape         meaning
=====================  ============  ==========================================
``weights``            ``(K,)``      ``pi_k``
``probabilities``      ``(K, D, V)``  ``theta[k, d, v] = p(x_d = v | z = k)``
``value_counts``       ``(K, D, V)``  expected counts ``sum_n r_nk [x_nd = v]``
=====================  ============  ==========================================

The E-step is one GEMM: the one-hot rows ``(n, D V)`` times ``log theta (D V, K)``. A
missing code (``-1``, any negative value, NaN, or a code ``>= V_d``) has an all-zero
one-hot row, so it adds nothing to the likelihood or to the counts (seed 001: expected
counts over the observed attributes only). Data reach the family as floats (the engine
casts), codes being exact integers below ``2**24`` in float32.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem.families import _discrete as dx
from jaxem.families.base import Mixture, family


class CategoricalParams(NamedTuple):
    weights: jax.Array  # (K,)
    probabilities: jax.Array  # (K, D, V), 0 beyond each attribute's number of values


class CategoricalStats(NamedTuple):
    """Expected counts, additive over rows."""

    counts: jax.Array  # (K,) sum_n r_nk
    value_counts: jax.Array  # (K, D, V) sum_n r_nk [x_nd = v], observed entries only


@family(static=("n_categories",))
class Categorical(Mixture):
    """A mixture of independent categorical attributes (naive Bayes, hidden class).

    Args:
      n_categories: the number of values of each attribute, a tuple (static).
      alpha: pseudo-count added to every expected count: a symmetric Dirichlet prior on
        the weights and on each attribute's probabilities (Laplace smoothing at 1); the
        M-step is the MAP estimate. 0 is maximum likelihood. Traced: no recompilation.

    >>> import jax.numpy as jnp
    >>> fam = Categorical((2, 3), alpha=0.0)
    >>> x = jnp.array([[0, 2], [1, -1], [0, 0]])  # -1: missing
    >>> resp = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> params = fam.m_step(fam.stats(x, resp))
    >>> params.probabilities[0].tolist()  # attribute 1 of component 0: codes 2 and 0
    [[1.0, 0.0, 0.0], [0.5, 0.0, 0.5]]
    >>> params.probabilities[1, 1].tolist()  # never observed: the pooled estimate
    [0.5, 0.0, 0.5]
    """

    n_categories: tuple[int, ...]
    alpha: float | jax.Array = 1.0

    def __post_init__(self):
        n_cat = self.n_categories
        if (not isinstance(n_cat, tuple) or not n_cat
                or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in n_cat)):
            raise ValueError("n_categories must be a non-empty tuple of positive integers "
                             f"(the number of values of each attribute), got {n_cat!r}.")

    gemm_rows = property(lambda self: True, doc="The E-step is one GEMM over rows.")

    @property
    def valid(self) -> np.ndarray:
        """``(D, V)`` bool: value ``v`` exists for attribute ``d``."""
        n_cat = np.asarray(self.n_categories)
        return np.arange(n_cat.max())[None, :] < n_cat[:, None]

    def one_hot(self, x: jax.Array, dtype) -> jax.Array:
        """``x (n, D)`` codes -> ``(n, D * V)`` indicators; a missing code is all zeros."""
        n_cat = jnp.asarray(self.n_categories)
        ok = dx.observed(x) & (jnp.where(dx.observed(x), x, 0) < n_cat)
        codes = jnp.where(ok, x, -1).astype(jnp.int32)  # one_hot(-1) is all zeros
        oh = jax.nn.one_hot(codes, self.valid.shape[1], dtype=dtype)
        return oh.reshape(x.shape[0], -1)

    # -- E-step ---------------------------------------------------------------------
    def log_joint(self, params: CategoricalParams, x: jax.Array) -> jax.Array:
        """``log p(x_n, z_n = k)`` over the observed attributes: ``x (n, D)`` -> ``(n, K)``."""
        k = params.weights.shape[0]
        log_theta = dx.safe_log(params.probabilities).reshape(k, -1)
        oh = self.one_hot(x, params.probabilities.dtype)
        return dx.dot(oh, log_theta.T) + dx.safe_log(params.weights)

    def stats(self, x: jax.Array, resp: jax.Array,
              params: CategoricalParams | None = None) -> CategoricalStats:
        """Expected counts of ``x (n, D)`` under ``resp (n, K)`` (weights included)."""
        del params
        k = resp.shape[1]
        vc = dx.dot(resp.T, self.one_hot(x, resp.dtype)).reshape(k, *self.valid.shape)
        return CategoricalStats(jnp.sum(resp, axis=0), vc)

    # -- M-step ---------------------------------------------------------------------
    def m_step(self, stats: CategoricalStats,
               params: CategoricalParams | None = None) -> CategoricalParams:
        """MAP estimates ``theta[k, d, v] = (N_kdv + alpha) / sum_v (N_kdv + alpha)``."""
        valid = jnp.asarray(self.valid)
        prior = self.alpha * valid
        num = stats.value_counts + prior
        if params is None:  # pooled over components, or uniform if never observed
            pooled = jnp.sum(stats.value_counts, axis=0) + prior
            uniform = valid / jnp.sum(valid, axis=1, keepdims=True)
            fallback = dx.ratio(pooled, jnp.sum(pooled, axis=1, keepdims=True), uniform)
            fallback = fallback.astype(num.dtype)
        else:
            fallback = params.probabilities
        probs = dx.ratio(num, jnp.sum(num, axis=2, keepdims=True), fallback)
        weights = dx.mix_weights(stats.counts, self.alpha,
                                 None if params is None else params.weights)
        return CategoricalParams(weights, jnp.where(valid, probs, 0.0))

    def log_prior(self, params: CategoricalParams) -> jax.Array:
        """``log p(params)`` up to a constant: the Dirichlet priors the M-step maximises
        with. MAP-EM never decreases ``sum_n w_n log p(x_n) + log_prior``."""
        return (dx.log_dirichlet(self.alpha, params.weights)
                + dx.log_dirichlet(self.alpha, params.probabilities, jnp.asarray(self.valid)))

    # -- model ----------------------------------------------------------------------
    def n_free_parameters(self, n_components: int, n_features: int | None = None) -> int:
        """Free parameters, for BIC and AIC: ``K - 1 + K sum_d (V_d - 1)``."""
        del n_features  # the attributes are the family's
        k = n_components
        return k - 1 + k * int(sum(v - 1 for v in self.n_categories))

    def sample(self, key: jax.Array, params: CategoricalParams,
               n: int) -> tuple[jax.Array, jax.Array]:
        """Draw ``n`` rows: ``(codes (n, D) in the params' float dtype, labels (n,))``."""
        draw = lambda k, p: jax.random.categorical(k, dx.safe_log(p), axis=-1)
        return dx.sample_rows(key, params.weights, params.probabilities, n, draw)

    # -- reparameterisation for the gradient baseline (jaxem.gradient) ----------------
    def to_unconstrained(self, params: CategoricalParams) -> dict:
        """``{"logits": log weights (K,), "log_probabilities": (K, D, V)}``, zeros
        (ignored) beyond each attribute's values; probabilities are their softmax."""
        tiny = jnp.finfo(params.weights.dtype).tiny
        valid = jnp.asarray(self.valid)
        log_p = jnp.log(jnp.maximum(params.probabilities, tiny))
        return {"logits": dx.weight_logits(params.weights),
                "log_probabilities": jnp.where(valid, log_p, 0.0)}

    def from_unconstrained(self, u: dict) -> CategoricalParams:
        valid = jnp.asarray(self.valid)
        logits = jnp.where(valid, u["log_probabilities"], dx.LOG_ZERO)
        probs = jnp.where(valid, jax.nn.softmax(logits, axis=-1), 0.0)
        return CategoricalParams(jax.nn.softmax(u["logits"]), probs)


def categorical(n_categories, alpha: float = 1.0) -> Categorical:
    """The categorical (naive Bayes, hidden class) mixture family: ``n_categories`` is
    the number of values of each attribute (a sequence of ints), ``alpha`` the
    pseudo-count (see :class:`Categorical`)."""
    return Categorical(tuple(int(v) for v in np.atleast_1d(n_categories)), alpha)
