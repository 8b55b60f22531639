"""Choose the number of components: K = k_min..k_max × restarts in one compiled program.

Every instance has ``k_max`` components; those beyond its K are *masked* (:class:`Masked`):
their log-joint is ``-inf``, so they take no part in the log-sum-exp, get no
responsibility, keep weight 0 and their parameters through the M-step, and are not
counted as parameters. Shapes are therefore static and all K and restarts are one
``vmap`` of the driver (:func:`jaxem.fit`); a masked fit equals the unmasked
K-component fit from the same starting parameters.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem.batch import fit, initial_params
from jaxem.families.base import Family, capability, family as register_family
from jaxem.init import initialize

PyTree = Any


class MaskedParams(NamedTuple):
    params: PyTree  # the wrapped family's parameters, k_max components
    active: jax.Array  # (k_max,) 1.0 for a component in use, 0.0 for a masked one


# -- masking, shared with jaxem.trim ---------------------------------------------------
def shared_fields(base) -> tuple[str, ...]:
    """Parameter fields of ``base`` shared by all components (no component axis).

    A tied Gaussian's precision factor is one ``(D, D)`` matrix: a shape test cannot
    tell it from a per-component ``(K, D)`` array when ``D == K``, so it is named here.
    """
    return ("precisions_cholesky",) if getattr(base, "covariance_type", None) == "tied" else ()


def per_component(base, params: PyTree, k: int) -> PyTree:
    """A pytree of bools like ``params``: which leaves have the ``k`` components on
    their leading axis (the others, e.g. a tied covariance, are shared)."""
    shared = shared_fields(base)

    def test(a):
        return a.ndim > 0 and a.shape[0] == k

    if hasattr(params, "_fields"):  # a NamedTuple: fields can be named
        return type(params)(*(False if name in shared else jax.tree.map(test, leaf)
                              for name, leaf in zip(params._fields, params)))
    return jax.tree.map(test, params)


def stand_in(base, params: PyTree, active: jax.Array) -> PyTree:
    """``params`` with each inactive component replaced by the first active one, for
    the E-step, whose log-joint masks them: an inactive component keeps the values it
    had when masked (its start, or where it was trimmed), and a tight one far from the
    rows would send a whole chunk of every instance to the Gaussian's exact,
    cancellation-free distances for nothing."""
    on = active > 0
    k = on.shape[0]
    first = jnp.argmax(on)

    def pick(is_component, a):
        if not is_component:
            return a
        return jnp.where(on.reshape((k,) + (1,) * (a.ndim - 1)), a, a[first])

    return jax.tree.map(pick, per_component(base, params, k), params)


def masked_log_joint(base, params: PyTree, active: jax.Array, x: jax.Array) -> jax.Array:
    """``base.log_joint`` with the inactive components at ``-inf``: no part in the
    log-sum-exp, zero responsibility, so no part in the statistics either."""
    return jnp.where(active > 0, base.log_joint(stand_in(base, params, active), x), -jnp.inf)


def masked_m_step(base, stats: PyTree, params: PyTree, active: jax.Array) -> PyTree:
    """``base.m_step`` for the active components: an inactive one keeps its parameters
    (its statistics are empty), and the mixing weights, if any, are renormalised over
    the active ones (0 for the others)."""
    new = base.m_step(stats, params)
    on = active > 0
    k = on.shape[0]

    def keep(is_component, a_new, a_old):
        if not is_component:
            return a_new  # shared across components (e.g. a tied covariance)
        return jnp.where(on.reshape((k,) + (1,) * (a_new.ndim - 1)), a_new, a_old)

    new = jax.tree.map(keep, per_component(base, new, k), new, params)
    if hasattr(new, "weights"):  # renormalise over the active components only
        w = jnp.where(on, new.weights, 0.0)
        new = new._replace(weights=jnp.where(jnp.all(on), new.weights, w / jnp.sum(w)))
    return new


def base_init(base, key, x, weights, n_components, method, chunk_size=None, axis_name=None):
    """Starting parameters of the wrapped family ``base`` (its own ``init``, else
    :func:`jaxem.initialize`)."""
    if hasattr(base, "init"):
        return base.init(key, x, weights, n_components, method)
    return initialize(base, key, x, weights, n_components, method, chunk_size=chunk_size,
                      axis_name=axis_name)


class MaskedWrapper(Family):
    """What a family wrapping ``self.base`` with an ``active`` mask shares (:class:`Masked`
    and :class:`jaxem.trim.Trimmed`): its params have fields ``params`` (the base's) and
    ``active`` ``(K,)``. The base's capabilities are passed through; ``translate`` and
    ``locations`` exist only where the base has them."""

    has_init = True  # a declared capability (see Family): init() below

    @property
    def gemm_rows(self) -> bool:
        return getattr(self.base, "gemm_rows", False)

    @property
    def centres_data(self) -> bool:
        return bool(getattr(self.base, "centres_data", False) or hasattr(self.base, "translate"))

    @property
    def translate(self):
        if not hasattr(self.base, "translate"):
            raise AttributeError(f"{type(self.base).__name__} has no translate")
        return lambda p, shift: p._replace(params=self.base.translate(p.params, shift))

    @property
    def locations(self):
        if not hasattr(self.base, "locations"):
            raise AttributeError(f"{type(self.base).__name__} has no locations")
        return lambda p: self.base.locations(p.params)

    @property
    def fused_rows(self) -> bool:
        return capability(self.base, "fused_rows")

    @property
    def threaded_rows(self) -> bool:
        return capability(self.base, "threaded_rows")

    def log_joint(self, p, x: jax.Array) -> jax.Array:
        return masked_log_joint(self.base, p.params, p.active, x)

    def log_joint_and_stats(self, p, x: jax.Array, weigh):
        """The base's fused E-step, its log-joint masked as :func:`masked_log_joint`'s."""
        def masked(log_joint, axis=-1):
            on = p.active > 0  # against (n, K), or (K, n) with axis=0
            return weigh(jnp.where(on if axis == -1 else on[:, None], log_joint, -jnp.inf), axis)

        return self.base.log_joint_and_stats(stand_in(self.base, p.params, p.active), x,
                                             masked)

    def posterior(self, log_joint, **axis):
        return self.base.posterior(log_joint, **axis)

    def stats(self, x, resp, p=None):
        return self.base.stats(x, resp, None if p is None else p.params)


@register_family
class Masked(MaskedWrapper):
    """A mixture family with some components switched off (see the module docstring)."""

    base: Any

    def m_step(self, stats, mp: MaskedParams) -> MaskedParams:
        return MaskedParams(masked_m_step(self.base, stats, mp.params, mp.active), mp.active)

    def init(self, key, x, w, n_components, method, chunk_size=None, axis_name=None):
        return MaskedParams(base_init(self.base, key, x, w, n_components, method, chunk_size,
                                      axis_name), jnp.ones(n_components, x.dtype))


def mask(params: PyTree, n_active: int | jax.Array) -> MaskedParams:
    """``params`` with only the first ``n_active`` components in use (weights
    renormalised over them); ``n_active`` may be an array that broadcasts against the
    weights' leading axes, with a trailing 1 for the components' axis. NumPy
    ``params`` are masked with NumPy, on the host."""
    leaf = jax.tree.leaves(params)[0]
    xp = np if isinstance(leaf, np.ndarray) else jnp
    k = params.weights.shape[-1] if hasattr(params, "weights") else leaf.shape[-1]
    active = (xp.arange(k) < n_active).astype(leaf.dtype)
    if hasattr(params, "weights"):
        w = params.weights * active
        params = params._replace(weights=w / xp.sum(w, axis=-1, keepdims=True))
    return MaskedParams(params, xp.broadcast_to(active, params.weights.shape
                                                  if hasattr(params, "weights") else (k,)))


def _masked_starts(starts, k_min: int, k_max: int, lead: int) -> MaskedParams:
    """``starts`` (a mixture's, with weights; restart axis after ``lead`` data-set axes)
    masked to each K in ``k_min..k_max``, instances ordered (K, restart) on one axis of
    ``n_k * n_init``: NumPy arrays, made on the host (a compiled program for these few
    numbers took 70 ms to compile; eager, every K's operations compiled again)."""
    n_k = k_max - k_min + 1
    tiled = jax.tree.map(lambda a: np.broadcast_to(
        np.expand_dims(a, lead), a.shape[:lead] + (n_k,) + a.shape[lead:]),
        jax.tree.map(np.asarray, starts))
    masked = mask(tiled, np.arange(k_min, k_max + 1).reshape(n_k, 1, 1))
    return jax.tree.map(lambda a: a.reshape(a.shape[:lead] + (-1,) + a.shape[lead + 2:]),
                        masked)


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


def select_n_components(family, x, *, k_max: int, key: jax.Array, k_min: int = 1,
                        n_init: int = 1, criterion: str = "bic", weights=None,
                        max_iter: int = 100, tol: float = 1e-3, init: str | PyTree = "k-means++",
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
        start each K from the first K components of a ``k_max`` initialisation. Starting
        parameters with ``k_max`` components (``(n_init, k_max, ...)``, as
        :func:`jaxem.batch.initial_params` returns) are used as given, the same way.
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
    # Both calls pad the rows alike (jaxem.batch.batched), so they share their checks'
    # programs; fit pads and centres its own copy (donated: the data held once more,
    # not twice).
    starts = initial_params(family, x, n_components=k_max, key=key, n_init=n_init,
                            weights=weights, init=init)  # (..., n_init, ...)
    shape = np.shape(x)
    lead = len(shape) - 2  # 1 with a batch of data sets
    ks = np.arange(k_min, k_max + 1)
    masked = _masked_starts(starts, k_min, k_max, lead)
    if not lead:  # the data-set axis fit would add, added here on the host: nothing compiled
        masked = jax.tree.map(lambda a: a[None], masked)
    # rescore: the log-likelihood at the returned parameters, as scikit-learn's bic(X)
    # and aic(X) take it (the driver records the one before the last M-step).
    res = fit(Masked(family), x, n_components=k_max, key=key, n_init=len(ks) * n_init,
              weights=weights, max_iter=max_iter, tol=tol, init=masked,
              chunk_size=chunk_size, rescore=True)
    r = res.restarts
    ll = np.asarray(r.log_likelihood).reshape(r.log_likelihood.shape[:lead] + (len(ks), n_init))
    ok = np.isfinite(ll) & ~np.asarray(r.failed).reshape(ll.shape)
    ll = np.where(ok, ll, -np.inf)
    best_restart = np.argmax(ll, axis=-1)  # (..., n_k)
    n_rows = (np.full(shape[:lead], float(shape[-2])) if weights is None  # per data set
              else np.sum(np.asarray(weights, np.float64), axis=-1))[..., None]
    total = np.take_along_axis(ll, best_restart[..., None], -1)[..., 0] * n_rows
    n_params = np.array([family.n_free_parameters(int(k), shape[-1]) for k in ks])
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
