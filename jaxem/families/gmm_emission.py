"""Gaussian-mixture emissions of a hidden Markov model: hmmlearn's ``GMMHMM`` emission.

State ``k`` emits from its own mixture of ``M`` Gaussians::

    log p(x | z = k) = logsumexp_m [log w_km + log N(x; mu_km, Sigma_km)].

Each state's mixture is a :class:`jaxem.families.gaussian.Gaussian` with ``M``
components, ``vmap``-ped over the ``K`` states: the GEMM-shaped, float32-robust
densities and the second moments about the current means are that family's, written once.

Shapes (``K`` states, ``M`` components per state, ``D`` features), hmmlearn's:

=============  ========================  ========================  =====================
type           ``precisions_cholesky``   covariances (``covars_``)  ``stats.sum_xx``
=============  ========================  ========================  =====================
``full``       ``(K, M, D, D)``          ``(K, M, D, D)``          ``(K, M, D, D)``
``tied``       ``(K, D, D)``             ``(K, D, D)``             ``(K, D, D)``
``diag``       ``(K, M, D)``             ``(K, M, D)``             ``(K, M, D)``
``spherical``  ``(K, M)``                ``(K, M)``                ``(K, M)``
=============  ========================  ========================  =====================

``tied`` is hmmlearn's GMMHMM meaning: the ``M`` components *of one state* share one
covariance (not one covariance for the whole model, as in ``GaussianHMM``).

The statistics are :class:`~jaxem.families.gaussian.GaussianStats` with a leading state
axis: ``counts (K, M)``, ``sum_x (K, M, D)`` and ``sum_xx`` about the current means, which
is exactly what hmmlearn's covariance update uses (its ``c_n`` is accumulated about the
means of the E-step, also when the M-step moves them).

>>> import jax.numpy as jnp
>>> em = GMMEmission(n_mix=2, covariance_type="diag")
>>> params = em.from_covariances(jnp.full((4, 2), 0.5), jnp.zeros((4, 2, 3)),
...                              jnp.ones((4, 2, 3)))  # K=4 states, M=2, D=3
>>> em.log_likelihoods(params, jnp.zeros((5, 3))).shape  # (n, K)
(5, 4)
"""
from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxem.families import gaussian_missing
from jaxem.families.base import Family, family
from jaxem.families.gaussian import COVARIANCE_TYPES, Gaussian, GaussianParams, GaussianStats
from jaxem.init import initial_resp

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 on a GPU in the moments


class GMMEmissionParams(NamedTuple):
    weights: Array  # (K, M) mixing weights of each state's mixture, rows sum to 1
    means: Array  # (K, M, D)
    precisions_cholesky: Array  # see the module table (scikit-learn's storage)


class GMMPriors(NamedTuple):
    """hmmlearn's priors broadcast to its shapes (see :meth:`GMMEmission.priors`)."""

    weights_prior: Array  # (K, M) Dirichlet concentrations
    means_prior: Array  # (K, M, D) Normal prior mean
    means_weight: Array  # (K, M) its precision (a pseudo-count)
    covars_prior: Array  # full (K, M, D, D), tied (K, D, D), diag (K, M, D), spherical (K, M)
    covars_weight: Array  # full (K, M), tied (K,), diag (K, M, D), spherical (K, M)


def default_covars_priors(covariance_type: str, n_mix: int, n_features: int):
    """hmmlearn 0.3.3's ``(covars_prior, covars_weight)`` defaults: with them the
    covariance update of ``full``, ``tied`` and ``diag`` is the maximum-likelihood one;
    ``spherical``'s denominator is ``D (n + 1) - M`` (``D n`` only when ``D == M``)."""
    m, d = n_mix, n_features
    return {"full": (0.0, -(1.0 + d + 1.0)), "tied": (0.0, -(m + d + 1.0)),
            "diag": (-1.5, 0.0), "spherical": (-(m + 2.0) / 2.0, 0.0)}[covariance_type]


@family(static=("n_mix", "covariance_type", "missing"))
class GMMEmission(Family):
    """Gaussian-mixture emissions with hmmlearn's ``GMMHMM`` priors (same defaults).

    Args:
      n_mix: mixture components per state, ``M`` (static).
      covariance_type: ``full``, ``tied``, ``diag`` or ``spherical`` (static; see the
        module table).
      weights_prior: Dirichlet prior on each state's weights, ``(K, M)`` or broadcastable.
      means_prior, means_weight: Normal prior on the means (``(K, M, D)``, ``(K, M)``).
      covars_prior, covars_weight: inverse-Wishart (full, tied) or inverse-Gamma (diag,
        spherical) prior, in hmmlearn's parametrisation; ``None``: hmmlearn's defaults
        (:func:`default_covars_priors`).
      min_covar: added to the diagonal of the starting covariance, and to a covariance
        the M-step leaves singular (hmmlearn adds it only when evaluating a density).
      missing: NaN entries are missing values (static; the engine sets it when ``x`` has
        NaN): each state's mixture is then the Gaussian family's exact EM over the
        observed features (:mod:`jaxem.families.gaussian_missing`); a step with none
        observed has log-density 0 in every state.

    The priors and ``min_covar`` are traced: changing them does not recompile.
    """

    n_mix: int = 1
    covariance_type: str = "diag"
    weights_prior: float | Array = 1.0
    means_prior: float | Array = 0.0
    means_weight: float | Array = 0.0
    covars_prior: float | Array | None = None
    covars_weight: float | Array | None = None
    min_covar: float | Array = 1e-3
    missing: bool = False

    letters = "wmc"  # hmmlearn's params letters: weights, means, covariances
    supports_missing = True  # declared capabilities (see jaxem.families.base.Family)

    def __post_init__(self):
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"Invalid covariance_type {self.covariance_type!r}: "
                             f"use one of {', '.join(COVARIANCE_TYPES)}.")
        if (not isinstance(self.n_mix, numbers.Integral) or isinstance(self.n_mix, bool)
                or self.n_mix < 1):
            raise ValueError(f"n_mix must be a positive integer, got {self.n_mix!r}.")

    @property
    def _gaussian(self) -> Gaussian:
        """One state's mixture: a Gaussian family with ``M`` components."""
        return Gaussian(self.covariance_type, missing=self.missing)

    @staticmethod
    def _per_state(params: GMMEmissionParams) -> GaussianParams:
        """The states' mixtures as Gaussian parameters with a leading ``K`` axis."""
        return GaussianParams(params.weights, params.means, params.precisions_cholesky)

    def _check_shapes(self, params: GMMEmissionParams) -> None:
        if params.weights.shape[-1] != self.n_mix or params.means.shape[-2] != self.n_mix:
            raise ValueError(f"The emission has n_mix={self.n_mix} but its parameters have "
                             f"weights {params.weights.shape} and means {params.means.shape} "
                             "(expected (K, n_mix) and (K, n_mix, D)).")

    # -- priors ---------------------------------------------------------------------------
    def priors(self, n_components: int, n_features: int, dtype) -> GMMPriors:
        """The priors broadcast to hmmlearn's shapes (its ``_fix_priors_shape``), with
        its defaults for ``covars_prior``/``covars_weight`` where they are ``None``."""
        k, m, d = n_components, self.n_mix, n_features
        cp0, cw0 = default_covars_priors(self.covariance_type, m, d)
        cp = cp0 if self.covars_prior is None else self.covars_prior
        cw = cw0 if self.covars_weight is None else self.covars_weight
        shapes = {"full": ((k, m, d, d), (k, m)), "tied": ((k, d, d), (k,)),
                  "diag": ((k, m, d), (k, m, d)), "spherical": ((k, m), (k, m))}
        cp_shape, cw_shape = shapes[self.covariance_type]
        b = lambda v, shape: jnp.broadcast_to(jnp.asarray(v, dtype), shape)
        return GMMPriors(b(self.weights_prior, (k, m)), b(self.means_prior, (k, m, d)),
                         b(self.means_weight, (k, m)), b(cp, cp_shape), b(cw, cw_shape))

    # -- E-step ---------------------------------------------------------------------------
    def _log_joint(self, params: GMMEmissionParams, x: Array) -> Array:
        """``log w_km + log N(x_n; mu_km, Sigma_km)``: ``x (n, D)`` -> ``(K, n, M)``."""
        self._check_shapes(params)
        return jax.vmap(self._gaussian.log_joint, (0, None))(self._per_state(params), x)

    def log_likelihoods(self, params: GMMEmissionParams, x: Array) -> Array:
        """``log p(x_n | z_n = k)``: ``x (n, D)`` -> ``(n, K)``."""
        return jax.nn.logsumexp(self._log_joint(params, x), axis=-1).T

    def stats(self, x: Array, resp: Array, params: GMMEmissionParams) -> GaussianStats:
        """Per-component sums, additive over rows: ``x (n, D)`` and the weighted state
        posteriors ``resp (n, K)`` -> :class:`GaussianStats` with a leading ``K`` axis.

        A component's responsibility is ``resp_nk p(m | x_n, z_n = k)`` (hmmlearn's
        ``post_comp_mix``); ``sum_xx`` is taken about the current means ``params.means``.
        """
        if params is None:
            raise ValueError("GMMEmission.stats needs the current parameters (the "
                             "components' responsibilities within each state).")
        lj = self._log_joint(params, x)
        lse = jax.nn.logsumexp(lj, axis=-1, keepdims=True)
        # A state whose every component has weight 0 (lse = -inf) takes no responsibility.
        finite = jnp.isfinite(lse)
        mix = jnp.where(finite, jnp.exp(lj - jnp.where(finite, lse, 0.0)), 0.0)
        r = mix * resp.T[:, :, None]  # (K, n, M)
        return jax.vmap(self._gaussian.stats, (None, 0, 0))(x, r, self._per_state(params))

    # -- M-step ---------------------------------------------------------------------------
    def m_step(self, stats: GaussianStats, params: GMMEmissionParams,
               update: str) -> GMMEmissionParams:
        """hmmlearn 0.3.3's ``GMMHMM._do_mstep``, priors included: weights, then means
        (with the new weights), then covariances (with the new means and ``sum_xx``
        about the old ones, as hmmlearn). Parameters whose letter (``w``, ``m``, ``c``)
        is not in ``update`` keep their value.

        Where hmmlearn divides by zero or gets a negative weight (a component or state
        with no responsibility; a Dirichlet concentration below 1), the current value is
        kept (weights are clipped at 0); a singular covariance gets ``min_covar`` on its
        diagonal. Everywhere else the result is hmmlearn's.
        """
        counts, sum_x, sum_xx = stats.counts, stats.sum_x, stats.sum_xx
        k, m, d = sum_x.shape
        pr = self.priors(k, d, sum_x.dtype)
        safe = lambda den, ok: jnp.where(ok, den, 1.0)

        weights = params.weights
        if "w" in update:  # (post_mix_sum + alpha - 1) / (post_sum + sum_m (alpha - 1))
            w_n = jnp.maximum(counts + pr.weights_prior - 1.0, 0.0)
            w_d = jnp.sum(w_n, axis=1, keepdims=True)
            weights = jnp.where(w_d > 0, w_n / safe(w_d, w_d > 0), params.weights)

        means = params.means
        lam = pr.means_weight
        if "m" in update:  # (lambda mu_0 + sum r x) / (lambda + sum r)
            m_n = lam[..., None] * pr.means_prior + sum_x
            m_d = counts + lam
            # hmmlearn: an unused component (weight 0, nothing to average) gets 0 / 1.
            m_d = jnp.where((weights == 0) & jnp.all(m_n == 0, axis=-1), 1.0, m_d)
            ok = (m_d > 0)[..., None]
            means = jnp.where(ok, m_n / safe(m_d, m_d > 0)[..., None], params.means)

        if "c" not in update:
            return GMMEmissionParams(weights, means, params.precisions_cholesky)

        cm = means - pr.means_prior  # (K, M, D)
        cp, cw = pr.covars_prior, pr.covars_weight
        ct = self.covariance_type
        outer = lambda a: a[..., :, None] * a[..., None, :]
        if ct == "full":
            c_n = jnp.swapaxes(cp, -1, -2) + lam[..., None, None] * outer(cm) + sum_xx
            c_d = counts + 1.0 + cw + d + 1.0  # (K, M)
            ok, shape = c_d > 0, (k, m, 1, 1)
        elif ct == "tied":
            c_n = (jnp.einsum("km,kmd,kme->kde", lam, cm, cm, precision=_HIGHEST)
                   + jnp.swapaxes(cp, -1, -2) + sum_xx)
            c_d = jnp.sum(counts, axis=1) + m + cw + d + 1.0  # (K,)
            ok, shape = c_d > 0, (k, 1, 1)
        elif ct == "diag":
            c_n = lam[..., None] * cm**2 + 2.0 * cw + sum_xx
            c_d = counts[..., None] + 1.0 + 2.0 * (cp + 1.0)  # (K, M, D)
            ok, shape = c_d > 0, (k, m, d)
        else:
            c_n = lam * jnp.sum(cm**2, axis=-1) + 2.0 * cw + sum_xx
            c_d = d * (counts + 1.0) + 2.0 * (cp + 1.0)  # (K, M)
            ok, shape = c_d > 0, (k, m)
        cov = c_n / safe(c_d, ok).reshape(shape)
        prec = self._regularised_precisions(cov)
        prec = jnp.where(ok.reshape(shape), prec, params.precisions_cholesky)
        return GMMEmissionParams(weights, means, prec)

    def _regularised_precisions(self, cov: Array) -> Array:
        """``precisions_cholesky`` of ``cov``, with ``min_covar`` added to the diagonal of
        a covariance that is singular (no Cholesky factor) or, for diag/spherical, not
        positive (a component on one point)."""
        g = self._gaussian
        if self.covariance_type in ("diag", "spherical"):
            return g.precisions_cholesky_from(
                covariances=jnp.where(cov > 0, cov, cov + self.min_covar))
        prec = g.precisions_cholesky_from(covariances=cov)
        eye = self.min_covar * jnp.eye(cov.shape[-1], dtype=cov.dtype)
        ok = jnp.all(jnp.isfinite(prec), axis=(-2, -1), keepdims=True)
        return jnp.where(ok, prec, g.precisions_cholesky_from(covariances=cov + eye))

    # -- conversions ----------------------------------------------------------------------
    def covariances(self, params: GMMEmissionParams) -> Array:
        """hmmlearn's ``covars_`` (see the module table)."""
        return self._gaussian.covariances(GaussianParams(None, None, params.precisions_cholesky))

    def from_covariances(self, weights, means, covars) -> GMMEmissionParams:
        """Parameters from hmmlearn's ``weights_``, ``means_`` and ``covars_``."""
        prec = self._gaussian.precisions_cholesky_from(covariances=jnp.asarray(covars))
        return GMMEmissionParams(weights, means, prec)

    def translate(self, params: GMMEmissionParams, shift: Array) -> GMMEmissionParams:
        """The same emissions moved by ``shift (D,)``."""
        return params._replace(means=params.means + shift)

    # -- start and sampling ---------------------------------------------------------------
    def init(self, key, x: Array, weights: Array, n_components: int,
             method: str = "kmeans") -> GMMEmissionParams:
        """hmmlearn's start: ``method`` (k-means) splits the rows into ``K`` clusters and
        each cluster's rows into ``M`` by k-means (:func:`_split`; the component means);
        a cluster with fewer than ``M`` rows (or a sub-cluster left empty) gets means
        drawn from ``N(mean of the K centres, data covariance)``. Weights ``1 / M``;
        every covariance the weighted data covariance plus ``min_covar`` (spherical: the
        mean of its entries, as hmmlearn). ``x (n, D)``, ``weights (n,)``; with
        ``missing``, each missing entry at its feature's observed mean."""
        if self.missing:
            x = gaussian_missing.fill_means(x, weights)
        k, m, d = n_components, self.n_mix, x.shape[1]
        k_state, k_mix, k_draw = jax.random.split(key, 3)
        tiny = jnp.finfo(x.dtype).tiny
        state = initial_resp(k_state, x, weights, k, method) * weights[:, None]  # (n, K)
        n_k = jnp.sum(state, axis=0)
        centres = (state.T @ x) / jnp.maximum(n_k, tiny)[:, None]
        main = jnp.mean(centres, axis=0)

        w = weights / jnp.sum(weights)
        xc = x - w @ x
        n_eff = jnp.sum(weights)  # np.cov's unbiased normaliser (unit weights: n / (n - 1))
        cv = (xc * w[:, None]).T @ xc * (n_eff / jnp.maximum(n_eff - 1, 1.0))
        cv = cv + self.min_covar * jnp.eye(d, dtype=x.dtype)

        # Each state's rows (all rows for a cluster too small to split: its means are
        # drawn instead, and this keeps its k-means well defined).
        rows_k = jnp.sum((state > 0).astype(jnp.int32), axis=0)
        big = rows_k >= m
        w_k = jnp.where(big[:, None], state.T, weights[None, :])  # (K, n)
        sub = _split(k_mix, x, w_k, m)  # (K, n, M)
        sub_n = jnp.sum(sub, axis=1)  # (K, M)
        sub_means = jnp.einsum("knm,nd->kmd", sub, x) / jnp.maximum(sub_n, tiny)[..., None]
        eps = jax.random.normal(k_draw, (k, m, d), x.dtype)
        draws = main + eps @ jnp.linalg.cholesky(cv).T
        means = jnp.where((big[:, None] & (sub_n > 0))[..., None], sub_means, draws)

        covs = {"full": jnp.broadcast_to(cv, (k, m, d, d)),
                "tied": jnp.broadcast_to(cv, (k, d, d)),
                "diag": jnp.broadcast_to(jnp.diag(cv), (k, m, d)),
                "spherical": jnp.full((k, m), jnp.mean(cv), x.dtype)}[self.covariance_type]
        return self.from_covariances(jnp.full((k, m), 1.0 / m, x.dtype), means, covs)

    def sample(self, key, params: GMMEmissionParams, states: Array) -> Array:
        """One draw per step: ``states (n,)`` -> ``x (n, D)`` (a component of the state's
        mixture by its weight, then that Gaussian)."""
        k_mix, k_x = jax.random.split(key)
        comp = jax.random.categorical(k_mix, jnp.log(params.weights[states]))  # (n,)
        mu = params.means[states, comp]
        eps = jax.random.normal(k_x, mu.shape, mu.dtype)
        p = params.precisions_cholesky
        ct = self.covariance_type
        if ct in ("full", "tied"):
            p = p[states, comp] if ct == "full" else p[states]
            # x = mu + P^{-T} eps has covariance (P P^T)^{-1}.
            step = jnp.linalg.solve(jnp.swapaxes(p, -1, -2), eps[..., None])[..., 0]
        elif ct == "diag":
            step = eps / p[states, comp]
        else:
            step = eps / p[states, comp][:, None]
        return mu + step


def _split(key, x: Array, weights: Array, n_clusters: int, n_iter: int = 20) -> Array:
    """k-means with ``n_clusters`` centres within each of ``K`` weightings of the rows,
    all at once: ``x (n, D)``, ``weights (K, n)`` -> weighted one-hot labels ``(K, n, M)``.

    Seeds are ``M`` distinct rows drawn by weight (Gumbel top-k), then ``n_iter`` Lloyd
    steps (a centre left without rows stays). One small fused loop: cheaper to compile
    than ``K`` runs of the general k-means, and only a start (hmmlearn's differs in its
    random numbers anyway).
    """
    tiny = jnp.finfo(x.dtype).tiny
    gumbel = jax.random.gumbel(key, weights.shape, x.dtype)
    score = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)) + gumbel,
                      -jnp.inf)
    centres = x[jax.lax.top_k(score, n_clusters)[1]]  # (K, M, D)

    def labels(c):
        d2 = (jnp.sum(c * c, axis=-1)[:, None, :]
              - 2.0 * jnp.einsum("nd,kmd->knm", x, c, precision=_HIGHEST))
        return jax.nn.one_hot(jnp.argmin(d2, axis=-1), n_clusters, dtype=x.dtype) * weights[
            ..., None]

    def lloyd(_, c):
        r = labels(c)
        n_c = jnp.sum(r, axis=1)[..., None]
        return jnp.where(n_c > 0, jnp.einsum("knm,nd->kmd", r, x) / jnp.maximum(n_c, tiny), c)

    return labels(jax.lax.fori_loop(0, n_iter, lloyd, centres))
