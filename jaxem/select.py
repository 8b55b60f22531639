"""Choose the number of components: K = k_min..k_max × restarts in one compiled program.

Every instance has ``k_max`` components; those beyond its K are *masked* (:class:`Masked`):
their log-joint is ``-inf``, so they take no part in the log-sum-exp, get no
responsibility, keep weight 0 and their parameters through the M-step, and are not
counted as parameters. Shapes are therefore static and all K and restarts are one
``vmap`` of the driver (:func:`jaxem.fit`); a masked fit equals the unmasked
K-component fit from the same starting parameters.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem import em
from jaxem.batch import fit, initial_params
from jaxem.families.base import family as register_family
from jaxem.init import initialize

PyTree = Any


class MaskedParams(NamedTuple):
    params: PyTree  # the wrapped family's parameters, k_max components
    active: jax.Array  # (k_max,) 1.0 for a component in use, 0.0 for a masked one


@register_family
class Masked:
    """A mixture family with some components switched off (see the module docstring)."""

    base: Any

    @property
    def gemm_rows(self) -> bool:
        return getattr(self.base, "gemm_rows", False)

    def log_joint(self, mp: MaskedParams, x: jax.Array) -> jax.Array:
        lj = self.base.log_joint(mp.params, x)
        return jnp.where(mp.active > 0, lj, -jnp.inf)

    def posterior(self, log_joint):
        return self.base.posterior(log_joint)

    def stats(self, x, resp, mp: MaskedParams | None = None):
        return self.base.stats(x, resp, None if mp is None else mp.params)

    def m_step(self, stats, mp: MaskedParams) -> MaskedParams:
        new = self.base.m_step(stats, mp.params)
        on = mp.active > 0
        k = on.shape[0]

        def keep(a_new, a_old):  # a masked component keeps its parameters
            if a_new.ndim == 0 or a_new.shape[0] != k:
                return a_new  # shared across components (e.g. a tied covariance)
            return jnp.where(on.reshape((k,) + (1,) * (a_new.ndim - 1)), a_new, a_old)

        new = jax.tree.map(keep, new, mp.params)
        if hasattr(new, "weights"):  # renormalise over the active components only
            w = jnp.where(on, new.weights, 0.0)
            new = new._replace(weights=w / jnp.sum(w))
        return MaskedParams(new, mp.active)

    def translate(self, mp: MaskedParams, shift) -> MaskedParams:
        return mp._replace(params=self.base.translate(mp.params, shift))

    def locations(self, mp: MaskedParams):
        return self.base.locations(mp.params)

    def init(self, key, x, w, n_components, method):
        return MaskedParams(initialize(self.base, key, x, w, n_components, method),
                            jnp.ones(n_components, x.dtype))


def mask(params: PyTree, n_active: int) -> MaskedParams:
    """``params`` with only the first ``n_active`` components in use (weights
    renormalised over them)."""
    k = jax.tree.leaves(params)[0].shape[-1] if not hasattr(params, "weights") \
        else params.weights.shape[-1]
    active = (jnp.arange(k) < n_active).astype(jax.tree.leaves(params)[0].dtype)
    if hasattr(params, "weights"):
        w = params.weights * active
        params = params._replace(weights=w / jnp.sum(w, axis=-1, keepdims=True))
    return MaskedParams(params, jnp.broadcast_to(active, params.weights.shape
                                                  if hasattr(params, "weights") else (k,)))


class Selection(NamedTuple):
    """Per data set (a leading axis when ``x`` is a batch): the table over K and the
    choice. Arrays over K have shape ``(..., n_k)``, K = ``n_components``."""

    n_components: np.ndarray  # (n_k,) the K tried
    log_likelihood: np.ndarray  # (..., n_k) total log-likelihood of the best restart per K
    bic: np.ndarray  # (..., n_k)
    aic: np.ndarray  # (..., n_k)
    n_converged: np.ndarray  # (..., n_k) restarts that converged
    best: np.ndarray  # (...) the K with the lowest criterion
    params: PyTree  # (..., n_k, ...) best restart's parameters per K (k_max components,
    #                 those beyond K with weight 0)


@functools.partial(jax.jit, static_argnames="chunk_size")
def _sums_at(family, params, x, weights, chunk_size):
    """``(sum w log p(x), sum w)`` for every instance in ``params`` (leading restart
    axis, after a data-set axis when ``x`` is a batch)."""
    def one(p, x, w):
        return em.e_step(family, p, x, w, chunk_size)[1:]

    if x.ndim == 2:
        w = jnp.ones(x.shape[0], x.dtype) if weights is None else weights
        return jax.vmap(one, (0, None, None))(params, x, w)
    w = jnp.ones(x.shape[:2], x.dtype) if weights is None else weights
    return jax.vmap(jax.vmap(one, (0, None, None)), (0, 0, 0))(params, x, w)


def select_n_components(family, x, *, k_max: int, key: jax.Array, k_min: int = 1,
                        n_init: int = 1, criterion: str = "bic", weights=None,
                        max_iter: int = 100, tol: float = 1e-3, init: str = "k-means++",
                        chunk_size: int | None = None) -> Selection:
    """Fit K = ``k_min`` … ``k_max`` components × ``n_init`` restarts in one compiled
    program and pick K by BIC (or AIC).

    Args:
      family: a mixture family (e.g. ``jaxem.gaussian("full")``) with
        ``n_free_parameters``.
      x: ``(n_samples, n_features)`` or a batch ``(n_datasets, n_samples, n_features)``.
      init: how restarts start. With ``"k-means++"`` or ``"random_from_data"`` (the
        default and its neighbour) the first K components of a ``k_max`` start are
        exactly a K-component start (seeds are drawn one after another); other methods
        start each K from the first K components of a ``k_max`` initialisation.
    Returns:
      a :class:`Selection`.
    """
    if criterion not in ("bic", "aic"):
        raise ValueError(f"criterion must be 'bic' or 'aic', got {criterion!r}.")
    for name, v in (("k_min", k_min), ("k_max", k_max)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}.")
    if k_min > k_max:
        raise ValueError(f"k_min={k_min} is larger than k_max={k_max}.")
    x = jnp.asarray(x)
    starts = initial_params(family, x, n_components=k_max, key=key, n_init=n_init,
                            weights=weights, init=init)  # (..., n_init, ...)
    ks = np.arange(k_min, k_max + 1)
    lead = x.ndim - 2  # 1 with a batch of data sets
    # Instances ordered (K, restart): the restart axis becomes n_k * n_init.
    per_k = [mask(starts, int(k)) for k in ks]
    masked = jax.tree.map(lambda *a: jnp.concatenate(a, axis=lead), *per_k)
    res = fit(Masked(family), x, n_components=k_max, key=key, n_init=len(ks) * n_init,
              weights=weights, max_iter=max_iter, tol=tol, init=masked,
              chunk_size=chunk_size)
    r = res.restarts
    # The log-likelihood at the returned parameters (the driver records the one before
    # the last M-step), as scikit-learn's bic(X) and aic(X) take it.
    ll_sum, w_sum = _sums_at(Masked(family), r.params, x, weights, chunk_size)
    ll = np.asarray(ll_sum / w_sum).reshape(r.log_likelihood.shape[:lead] + (len(ks), n_init))
    ok = np.isfinite(ll) & ~np.asarray(r.failed).reshape(ll.shape)
    ll = np.where(ok, ll, -np.inf)
    best_restart = np.argmax(ll, axis=-1)  # (..., n_k)
    n_rows = np.asarray(w_sum).reshape(ll.shape)[..., :1, 0]  # (..., 1): per data set
    total = np.take_along_axis(ll, best_restart[..., None], -1)[..., 0] * n_rows
    n_params = np.array([family.n_free_parameters(int(k), x.shape[-1]) for k in ks])
    bic = -2 * total + n_params * np.log(n_rows)
    aic = -2 * total + 2 * n_params
    crit = bic if criterion == "bic" else aic
    conv = np.asarray(r.converged).reshape(ll.shape).sum(-1)

    def pick(a):  # (..., n_k * n_init, ...) -> best restart per K: (..., n_k, ...)
        a = np.asarray(a).reshape(a.shape[:lead] + (len(ks), n_init) + a.shape[lead + 1:])
        idx = best_restart.reshape(best_restart.shape + (1,) * (a.ndim - lead - 1))
        return np.take_along_axis(a, idx, axis=lead + 1).squeeze(lead + 1)

    params = jax.tree.map(pick, r.params.params)
    return Selection(ks, total, bic, aic, conv, ks[np.argmin(crit, axis=-1)], params)
