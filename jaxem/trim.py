"""Component trimming: start with many components, drop the ones that fade, keep fitting.

The classic picture (Gutierrez-Osuna's annulus): 900 points on a ring, a mixture of 30
Gaussians started at 30 random points with broad covariances, and every component whose
mixing weight falls below a threshold during EM is removed, so the fit ends with a
compact model of a few components.

:func:`trimmed` wraps a mixture family (one whose parameters have mixing ``weights``:
Gaussian of every covariance type, Bernoulli, categorical, Poisson). Its parameters are
:class:`TrimmedParams`: the wrapped family's, an ``active`` mask, the iteration at which
each component was dropped, and an iteration counter. Its M-step is the wrapped M-step
followed by the trim: live components whose new weight is below ``threshold`` are
dropped (never the last one) and the weights of the rest renormalised. A dropped
component is masked exactly as :mod:`jaxem.select` masks components (``-inf`` in the
log-joint, so no part in the log-sum-exp or the statistics), so from its last trim on a
trimmed fit *is* a fit of the survivors alone. Shapes never change, so the driver is
untouched and :func:`jaxem.fit` runs trimmed fits over restarts and data sets, with
sample weights and chunking, as any other family.

Iterations are counted as the driver counts them: ``trimmed_at[k] = t`` means the M-step
of iteration ``t`` (1-based, as ``n_iter``) dropped component ``k``, so ``trace[t - 1]``
is the last log-likelihood with it and ``trace[t]`` the first without; between trims the
trace never decreases (with ``reg_covar=0``; for a family with a prior the trace is the MAP
objective, see :meth:`Trimmed.log_prior`).

>>> import jax, jaxem
>>> x = jaxem.datasets.load_faithful()
>>> family = jaxem.trimmed(jaxem.gaussian("full"), threshold=0.05)
>>> result = jaxem.fit(family, x, n_components=8, key=jax.random.key(0), max_iter=200,
...                    init="random_from_data")
>>> int(jaxem.trim.n_live(result.params)) < 8           # some components were dropped
True
>>> compact = family.survivors(result.params)           # a plain Gaussian mixture
>>> compact.means.shape[0] == int(jaxem.trim.n_live(result.params))
True
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem.families.base import family as register_family
from jaxem.select import MaskedWrapper, base_init, masked_m_step, per_component

PyTree = Any


class TrimmedParams(NamedTuple):
    """Parameters of a :func:`trimmed` family, ``K`` components (leading batch axes
    allowed in the helpers below)."""

    params: PyTree  # the wrapped family's parameters, all K components
    active: jax.Array  # (K,) 1.0 for a live component, 0.0 for a dropped one
    trimmed_at: jax.Array  # (K,) int: the iteration whose M-step dropped it, -1 if live
    n_iter: jax.Array  # () int: M-steps taken so far (what trimmed_at counts)


@register_family
class Trimmed(MaskedWrapper):
    """A mixture family whose components are dropped when their weight falls below
    ``threshold`` (traced: a new threshold does not recompile). See the module
    docstring; make one with :func:`trimmed`."""

    base: Any
    threshold: float | jax.Array = 0.01

    @property
    def reg_covar(self):  # the wrapped family's, for the engine's failure advice
        if not hasattr(self.base, "reg_covar"):
            raise AttributeError(f"{type(self.base).__name__} has no reg_covar")
        return self.base.reg_covar

    def log_prior(self, tp: TrimmedParams) -> jax.Array:
        """The wrapped family's prior (MAP-EM's objective adds it) over the live
        components: a dropped component's weight counts as 1 there, so the weights'
        symmetric Dirichlet ``sum_k alpha log w_k`` (jaxem's discrete families) sums over
        the live ones; a dropped component's frozen parameters add a constant between
        trims. With nothing dropped it is the wrapped prior exactly."""
        prior = getattr(self.base, "log_prior", None)
        if prior is None:
            return jnp.zeros((), tp.params.weights.dtype)
        w = tp.params.weights
        return prior(tp.params._replace(weights=jnp.where(tp.active > 0, w, jnp.ones_like(w))))

    def init(self, key, x, weights, n_components, method, chunk_size=None, axis_name=None):
        """The wrapped family's starting parameters, every component live."""
        return start(base_init(self.base, key, x, weights, n_components, method, chunk_size,
                               axis_name))

    def m_step(self, stats, tp: TrimmedParams) -> TrimmedParams:
        """The wrapped M-step on the live components, then the trim."""
        if not isinstance(tp, TrimmedParams):
            raise TypeError("a trimmed family's M-step needs the current TrimmedParams; "
                            "wrap starting parameters with jaxem.trim.start(params).")
        new = masked_m_step(self.base, stats, tp.params, tp.active)
        if not hasattr(new, "weights"):
            raise TypeError(f"trimming drops components by their mixing weight, but "
                            f"{type(self.base).__name__} parameters have no weights.")
        w = new.weights
        live = tp.active > 0
        below = live & (w < self.threshold)
        # Never the last one: when every live component is below, the heaviest stays.
        heaviest = jnp.arange(w.shape[0]) == jnp.argmax(jnp.where(live, w, -jnp.inf))
        drop = below & ~(heaviest & jnp.all(below | ~live))
        kept = jnp.where(live & ~drop, w, 0.0)
        new = new._replace(weights=jnp.where(jnp.any(drop), kept / jnp.sum(kept), w))
        n_iter = tp.n_iter + 1
        return TrimmedParams(
            new,
            jnp.where(drop, jnp.zeros_like(tp.active), tp.active),
            jnp.where(drop, n_iter, tp.trimmed_at).astype(tp.trimmed_at.dtype),
            n_iter)

    # -- host-side helpers ------------------------------------------------------------
    def n_free_parameters(self, n_components: int, n_features: int) -> int:
        """The wrapped family's count for ``n_components`` *live* components (pass
        :func:`n_live`; :meth:`n_parameters` does it from the parameters)."""
        return self.base.n_free_parameters(n_components, n_features)

    def n_parameters(self, tp: TrimmedParams, n_features: int):
        """Free parameters of the fitted model, counting only the live components (what
        BIC and AIC need): an ``int``, or an array over leading batch axes."""
        live = np.asarray(n_live(tp))
        counts = np.vectorize(lambda k: self.base.n_free_parameters(int(k), n_features),
                              otypes=[int])(live)
        return int(counts) if counts.ndim == 0 else counts

    def survivors(self, tp: TrimmedParams) -> PyTree:
        """The wrapped family's parameters of the live components only (one instance):
        a plain ``K_live``-component model, e.g. to continue with the wrapped family."""
        if np.ndim(tp.active) != 1:
            raise ValueError(f"survivors takes one instance's parameters (active of shape "
                             f"(K,)), got active of shape {np.shape(tp.active)}: pick a "
                             "restart or data set first.")
        keep = np.flatnonzero(np.asarray(tp.active) > 0)
        k = np.shape(tp.active)[0]
        flags = per_component(self.base, tp.params, k)
        return jax.tree.map(lambda c, a: jnp.asarray(a)[keep] if c else jnp.asarray(a),
                            flags, tp.params)


def trimmed(family, threshold: float = 0.01) -> Trimmed:
    """``family`` with component trimming: after each M-step, live components whose
    mixing weight is below ``threshold`` are dropped (see :mod:`jaxem.trim`).

    Args:
      family: a mixture family whose parameters have ``weights``, e.g.
        ``jaxem.gaussian("full")``.
      threshold: in ``[0, 1)``; 0 never drops anything (the plain fit).
    """
    if hasattr(family, "e_step") or not hasattr(family, "log_joint"):
        raise TypeError(f"trimmed wraps a mixture family (with log_joint and mixing "
                        f"weights), got {family!r}.")
    if isinstance(family, Trimmed):
        raise TypeError("family is already trimmed.")
    if not isinstance(threshold, jax.core.Tracer):
        value = float(threshold)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}.")
    return Trimmed(family, threshold)


def start(params: PyTree) -> TrimmedParams:
    """Starting :class:`TrimmedParams` from a plain mixture's parameters (every
    component live; leading batch axes allowed), e.g. for ``jaxem.fit(..., init=)``."""
    if not hasattr(params, "weights"):
        raise TypeError(f"trimming drops components by their mixing weight, but "
                        f"{type(params).__name__} has no weights.")
    w = jnp.asarray(params.weights)
    return TrimmedParams(params, jnp.ones_like(w), jnp.full(w.shape, -1, jnp.int32),
                         jnp.zeros(w.shape[:-1], jnp.int32))


def n_live(tp: TrimmedParams) -> jax.Array:
    """Live components: ``()``, or over leading batch axes."""
    return jnp.sum(jnp.asarray(tp.active) > 0, axis=-1)


def history(tp: TrimmedParams, n_iter=None) -> np.ndarray:
    """Live components after each of the iterations ``0 … n_iter``: ``(n_iter + 1,)``
    (one instance). ``n_iter`` defaults to the parameters' own counter."""
    if np.ndim(tp.trimmed_at) != 1:
        raise ValueError(f"history takes one instance's parameters (trimmed_at of shape "
                         f"(K,)), got {np.shape(tp.trimmed_at)}: pick a restart or data set.")
    n = int(np.asarray(tp.n_iter if n_iter is None else n_iter))
    at = np.asarray(tp.trimmed_at).astype(int)
    t = np.arange(n + 1)[:, None]
    return np.sum((at[None] < 0) | (at[None] > t), axis=1)
