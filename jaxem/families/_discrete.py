"""What the discrete and count mixtures share: missing-entry masks, safe logs, MAP steps.

A missing entry is NaN or any negative value (``-1`` is the code to use with
:func:`jaxem.fit`, whose data check rejects NaN). It is marginalised exactly: it adds
nothing to its row's log-likelihood and nothing to the expected counts, whose per-feature
denominators count only the rows where the feature was observed.

Priors are pseudo-counts (``alpha``) added to every expected count, so the M-step is the
MAP estimate under a Dirichlet on the mixing weights and a Dirichlet/Beta (or Gamma) on
the emission parameters; ``alpha = 0`` is maximum likelihood. An expected count of 0 with
``alpha = 0`` (an empty component, or a feature missing in all of a component's rows) has
no estimate: the current value is kept, or, with no current value, the pooled estimate of
all components.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# A finite stand-in for log 0: a zero probability (or rate) times a zero count must be 0,
# not 0 * -inf = NaN, and a row impossible under every component must still give finite
# responsibilities. Small enough that no real log-likelihood comes near it.
LOG_ZERO = -1e30
HIGHEST = jax.lax.Precision.HIGHEST


def safe_log(p: Array) -> Array:
    """``log p`` with ``log 0 = LOG_ZERO``; the gradient is finite everywhere."""
    pos = p > 0
    return jnp.where(pos, jnp.log(jnp.where(pos, p, 1.0)), LOG_ZERO)


def observed(x: Array) -> Array:
    """Boolean mask of the observed entries of ``x``: not NaN and not negative."""
    return ~jnp.isnan(x) & (x >= 0)


def fill(x: Array, mask: Array) -> Array:
    """``x`` with its missing entries set to 0 (so they vanish from products)."""
    return jnp.where(mask, x, 0.0)


def dot(a: Array, b: Array) -> Array:
    """``a @ b`` at full float32 precision (no TF32 on a GPU)."""
    return jnp.matmul(a, b, precision=HIGHEST)


def ratio(num: Array, den: Array, fallback: Array) -> Array:
    """``num / den`` where ``den > 0``, else ``fallback`` (broadcast): never 0 / 0."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), fallback)


def mix_weights(counts: Array, alpha, params_weights: Array | None) -> Array:
    """MAP mixing weights ``(N_k + alpha) / (N + K alpha)`` from ``counts (K,)``."""
    k = counts.shape[0]
    num = counts + alpha
    uniform = jnp.full_like(counts, 1.0 / k)
    fallback = uniform if params_weights is None else params_weights
    return ratio(num, jnp.sum(num), fallback)


def log_dirichlet(alpha, p: Array, mask: Array | None = None) -> Array:
    """``sum alpha * log p`` (a Dirichlet/Beta log-density with pseudo-counts ``alpha``,
    up to its constant); 0 when ``alpha = 0`` even where ``p = 0``."""
    terms = jnp.where(alpha > 0, alpha * safe_log(p), 0.0)
    if mask is not None:
        terms = jnp.where(mask, terms, 0.0)
    return jnp.sum(terms)


def clip_unit(p: Array) -> Array:
    """``p`` kept away from 0 and 1 by the dtype's smallest normal number, so its logit
    and log are finite (the gradient baseline's coordinates)."""
    tiny = jnp.finfo(p.dtype).tiny
    eps = jnp.finfo(p.dtype).eps
    return jnp.clip(p, tiny, 1.0 - eps / 2)


# -- what the mixtures of independent features (Bernoulli, Poisson, categorical) share --
def feature_stats(x: Array, resp: Array) -> tuple[Array, Array, Array]:
    """Expected counts of ``x (n, D)`` under weighted ``resp (n, K)``: ``(sum_n r_nk (K,),
    sum_n r_nk x_nd (K, D), sum_n r_nk [x_nd observed] (K, D))``, over observed entries."""
    m = observed(x)
    return jnp.sum(resp, axis=0), dot(resp.T, fill(x, m)), dot(resp.T, m.astype(resp.dtype))


def map_estimate(sums: Array, observed: Array, a, b, default: float,
                 current: Array | None) -> Array:
    """MAP ``(sums + a) / (observed + b)`` per component and feature, ``(K, D)``. Where
    that is ``0 / 0`` (no data, no prior) it keeps ``current``, or without one takes
    the estimate pooled over the components, or ``default`` for a feature never seen."""
    if current is None:
        current = ratio(jnp.sum(sums, 0) + a, jnp.sum(observed, 0) + b,
                        jnp.full_like(sums[0], default))
    return ratio(sums + a, observed + b, current)


def n_free_parameters(n_components: int, n_features: int) -> int:
    """Free parameters of ``K`` weights and one ``(K, D)`` parameter: ``K - 1 + K D``."""
    return n_components - 1 + n_components * n_features


def sample_rows(key: Array, weights: Array, theta: Array, n: int,
                draw) -> tuple[Array, Array]:
    """``n`` rows of a mixture of independent features with parameters ``theta (K, D,
    ...)``: ``(x (n, D) in theta's dtype, labels (n,))``, ``z ~ weights``, then
    ``x = draw(key, theta[z])`` (e.g. ``jax.random.bernoulli`` or ``jax.random.poisson``
    on the ``(n, D)`` parameters, a categorical draw on ``(n, D, V)`` probabilities)."""
    key_z, key_x = jax.random.split(key)
    z = jax.random.categorical(key_z, safe_log(weights), shape=(n,))
    row_theta = jnp.asarray(theta)[z]
    return draw(key_x, row_theta).astype(row_theta.dtype), z


def weight_logits(weights: Array) -> Array:
    """``log weights`` with 0 clamped to the dtype's smallest normal number: the
    gradient baseline's unconstrained coordinates of the mixing weights."""
    return jnp.log(jnp.maximum(weights, jnp.finfo(weights.dtype).tiny))
