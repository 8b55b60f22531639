"""Emission models of a hidden Markov model: per-state densities, additive statistics, M-step.

An emission model has

* ``log_likelihoods(params, x (n, D)) -> (n, K)``: ``log p(x_n | z_n = k)``,
* ``stats(x, resp, params) -> stats``: additive over rows (``resp (n, K)`` carries the
  weights; ``params`` the current value, about which Gaussian moments are taken),
* ``m_step(stats, params, update) -> params``: hmmlearn 0.3.3's M-step with its priors,
  keeping the current values of parameters whose letter is not in ``update``,
* ``init(key, x, weights, n_components, method) -> params`` and
  ``sample(key, params, states (n,)) -> x (n, D)``;
* optionally ``log_prior(params)``, added to the HMM's objective.

:class:`MixtureEmission` makes any mixture family an emission, so one family object
serves a mixture and an HMM.

Hyper-parameters (priors) are traced data fields: changing them does not recompile.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxem.families import gaussian_missing
from jaxem.families.base import Family, capability, family, log_prior
from jaxem.families.gaussian import COVARIANCE_TYPES, Gaussian, GaussianParams
from jaxem.init import initial_resp, initialize

Array = jax.Array


# -- Gaussian ----------------------------------------------------------------------------------
class GaussianEmissionParams(NamedTuple):
    means: Array  # (K, D)
    precisions_cholesky: Array  # as jaxem.families.gaussian (scikit-learn's storage)


@family(static=("covariance_type", "missing"))
class GaussianEmission(Family):
    """Gaussian emissions; the priors are hmmlearn's ``GaussianHMM`` ones (same defaults).

    ``means_prior``/``means_weight``: Normal prior on the means; ``covars_prior``/
    ``covars_weight``: (inverse-)Wishart/Gamma prior on the covariances, used exactly as
    hmmlearn uses them (``covars_prior`` is *added to every entry* of a full covariance
    numerator). ``min_covar`` is added to the diagonal of the starting covariance.

    ``missing`` (static; the engine sets it when ``x`` has NaN): NaN entries are missing
    values, by the Gaussian family's exact EM (:mod:`jaxem.families.gaussian_missing`):
    a step's density is the marginal of its observed features (1, i.e. log-density 0,
    when none is), and the statistics are the expected ones given the observed features.
    """

    covariance_type: str = "diag"
    means_prior: float | Array = 0.0
    means_weight: float | Array = 0.0
    covars_prior: float | Array = 1e-2
    covars_weight: float | Array = 1.0
    min_covar: float | Array = 1e-3
    missing: bool = False

    letters = "mc"
    supports_missing = True  # declared capabilities (see jaxem.families.base.Family)

    def __post_init__(self):
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"Invalid covariance_type {self.covariance_type!r}: "
                             f"use one of {', '.join(COVARIANCE_TYPES)}.")

    @property
    def _gaussian(self) -> Gaussian:
        return Gaussian(self.covariance_type, missing=self.missing)

    def log_likelihoods(self, params: GaussianEmissionParams, x: Array) -> Array:
        k = params.means.shape[0]
        ones = jnp.ones(k, params.means.dtype)  # log 1 = 0: log_joint is the density
        return self._gaussian.log_joint(GaussianParams(ones, *params), x)

    def stats(self, x: Array, resp: Array, params: GaussianEmissionParams | None = None):
        """Second moments about the current means ``params.means`` (float32: the M-step
        then corrects a small number instead of cancelling large ones)."""
        if params is None:
            return self._gaussian.stats(x, resp)
        ones = jnp.ones(params.means.shape[0], params.means.dtype)
        return self._gaussian.stats(x, resp, GaussianParams(ones, *params))

    def covariances(self, params: GaussianEmissionParams) -> Array:
        """hmmlearn's ``_covars_`` storage (``spherical``: ``(K,)``)."""
        return self._gaussian.covariances(GaussianParams(None, *params))

    def from_covariances(self, means: Array, covars: Array) -> GaussianEmissionParams:
        return GaussianEmissionParams(
            means, self._gaussian.precisions_cholesky_from(covariances=covars))

    def m_step(self, stats, params: GaussianEmissionParams, update: str):
        # hmmlearn's formulas, with its sum_n r (x - mu)^2 = obs2 - 2 mu obs + mu^2 post
        # written about the old means m0 (stats.sum_xx = sum_n r (x - m0)^2 =: a2): with
        # a1 = sum_n r (x - m0) and delta = mu - m0 it is a2 - 2 delta a1 + delta^2 post.
        post, obs, a2 = stats.counts, stats.sum_x, stats.sum_xx
        mp, mw, cp, cw = self.means_prior, self.means_weight, self.covars_prior, self.covars_weight
        d = obs.shape[-1]
        means = ((mw * mp + obs) / (mw + post[:, None])) if "m" in update else params.means
        if "c" not in update:
            return params._replace(means=means)
        md = means - mp
        a1 = obs - post[:, None] * params.means
        delta = means - params.means
        ct = self.covariance_type
        if ct == "diag":
            c_n = mw * md**2 + a2 - 2 * delta * a1 + delta**2 * post[:, None]
            c_d = jnp.maximum(cw - 1, 0) + post[:, None]
            cov = (cp + c_n) / jnp.maximum(c_d, 1e-5)
        elif ct == "spherical":  # hmmlearn: the diag estimate averaged over features
            c_n = (jnp.sum(mw * md**2 - 2 * delta * a1 + delta**2 * post[:, None], axis=1)
                   + a2)
            cov = (cp + c_n / d) / jnp.maximum(jnp.maximum(cw - 1, 0) + post, 1e-5)
        else:
            outer = lambda a, b: a[..., :, None] * b[..., None, :]
            ad = outer(a1, delta)
            c_n = (mw * outer(md, md) - ad - jnp.swapaxes(ad, -1, -2)
                   + outer(delta, delta) * post[:, None, None])
            cvw = jnp.maximum(cw - d, 0)
            if ct == "full":
                cov = (cp + c_n + a2) / (cvw + post[:, None, None])
            else:  # tied: a2 is already summed over states
                cov = (cp + jnp.sum(c_n, axis=0) + a2) / (cvw + jnp.sum(post))
            # A singular covariance (a feature constant within a state) has no Cholesky
            # factor: add min_covar to its diagonal, as hmmlearn does for its density.
            prec = self._gaussian.precisions_cholesky_from(covariances=cov)
            eye = self.min_covar * jnp.eye(d, dtype=cov.dtype)
            ok = jnp.all(jnp.isfinite(prec), axis=(-2, -1), keepdims=True)
            cov = jnp.where(ok, cov, cov + eye)
        return self.from_covariances(means, cov)

    def init(self, key, x, weights, n_components, method="kmeans"):
        """Means from ``method`` (k-means by default, as hmmlearn); every covariance the
        weighted data covariance plus ``min_covar`` (hmmlearn's start). With ``missing``,
        from ``x`` with each missing entry at its feature's observed mean."""
        if self.missing:
            x = gaussian_missing.fill_means(x, weights)
        resp = initial_resp(key, x, weights, n_components, method) * weights[:, None]
        s = Gaussian(self.covariance_type).stats(x, resp)
        means = s.sum_x / jnp.maximum(s.counts, 1e-10)[:, None]
        w = weights / jnp.sum(weights)
        xc = x - w @ x
        # np.cov's unbiased normaliser, with weights: sum w / (sum w - 1) for unit weights.
        n_eff = jnp.sum(weights)
        cv = (xc * w[:, None]).T @ xc * (n_eff / jnp.maximum(n_eff - 1, 1.0))
        cv = cv + self.min_covar * jnp.eye(x.shape[1], dtype=x.dtype)
        ct = self.covariance_type
        covs = {"full": jnp.broadcast_to(cv, (n_components,) + cv.shape),
                "tied": cv,
                "diag": jnp.broadcast_to(jnp.diag(cv), means.shape),
                "spherical": jnp.full(n_components, jnp.mean(cv), x.dtype)}[ct]
        return self.from_covariances(means, covs)

    def sample(self, key, params: GaussianEmissionParams, states: Array) -> Array:
        mu, p = params.means, params.precisions_cholesky
        eps = jax.random.normal(key, (states.shape[0], mu.shape[1]), mu.dtype)
        ct = self.covariance_type
        if ct in ("full", "tied"):
            p = p[states] if ct == "full" else jnp.broadcast_to(p, (states.shape[0],) + p.shape)
            step = jnp.linalg.solve(jnp.swapaxes(p, -1, -2), eps[..., None])[..., 0]
        elif ct == "diag":
            step = eps / p[states]
        else:
            step = eps / p[states][:, None]
        return mu[states] + step

    def translate(self, params: GaussianEmissionParams, shift: Array) -> GaussianEmissionParams:
        return params._replace(means=params.means + shift)


# -- categorical -------------------------------------------------------------------------------
class CategoricalEmissionParams(NamedTuple):
    emissionprob: Array  # (K, n_symbols)


class CategoricalStats(NamedTuple):
    obs: Array  # (K, n_symbols) expected symbol counts


@family(static=("n_symbols",))
class CategoricalEmission:
    """Discrete symbols ``0 .. n_symbols - 1`` in ``x (n, 1)``; Dirichlet prior as hmmlearn's."""

    n_symbols: int
    emissionprob_prior: float | Array = 1.0

    letters = "e"

    def _one_hot(self, x, dtype):
        return jax.nn.one_hot(x[:, 0].astype(jnp.int32), self.n_symbols, dtype=dtype)

    def log_likelihoods(self, params, x):
        return jnp.log(params.emissionprob).T[x[:, 0].astype(jnp.int32)]

    def stats(self, x, resp, params=None):
        return CategoricalStats(resp.T @ self._one_hot(x, resp.dtype))

    def m_step(self, stats, params, update):
        if "e" not in update:
            return params
        p = jnp.maximum(self.emissionprob_prior - 1 + stats.obs, 0)
        s = jnp.sum(p, axis=1, keepdims=True)
        return CategoricalEmissionParams(p / jnp.where(s == 0, 1, s))

    def init(self, key, x, weights, n_components, method=None):
        p = jax.random.uniform(key, (n_components, self.n_symbols), x.dtype)
        return CategoricalEmissionParams(p / jnp.sum(p, axis=1, keepdims=True))

    def sample(self, key, params, states):
        logits = jnp.log(params.emissionprob)[states]
        return jax.random.categorical(key, logits)[:, None]


# -- Poisson -----------------------------------------------------------------------------------
class PoissonEmissionParams(NamedTuple):
    lambdas: Array  # (K, D)


class PoissonStats(NamedTuple):
    post: Array  # (K,)
    obs: Array  # (K, D)


@family
class PoissonEmission:
    """Independent Poisson counts per feature; Gamma prior exactly as hmmlearn's."""

    lambdas_prior: float | Array = 0.0
    lambdas_weight: float | Array = 0.0

    letters = "l"

    def log_likelihoods(self, params, x):
        lam = params.lambdas
        # A rate of 0 emits only 0: log 0 = -inf would give 0 * -inf = NaN for zero counts.
        log_lam = jnp.where(lam > 0, jnp.log(jnp.where(lam > 0, lam, 1)), -1e30)
        return (x @ log_lam.T - jnp.sum(lam, axis=1)
                - jnp.sum(jax.scipy.special.gammaln(x + 1), axis=1, keepdims=True))

    def stats(self, x, resp, params=None):
        return PoissonStats(jnp.sum(resp, axis=0), resp.T @ x)

    def m_step(self, stats, params, update):
        if "l" not in update:
            return params
        n = jnp.sum(stats.post)  # hmmlearn uses the total, not the per-state, count here
        y_bar = stats.obs / stats.post[:, None]
        return PoissonEmissionParams((self.lambdas_prior + n * y_bar) / (self.lambdas_weight + n))

    def init(self, key, x, weights, n_components, method=None):
        """Gamma draws matching the data's mean and variance (hmmlearn's start)."""
        w = weights[:, None] * jnp.ones_like(x)
        mean = jnp.sum(w * x) / jnp.sum(w)
        var = jnp.sum(w * (x - mean) ** 2) / jnp.sum(w)
        g = jax.random.gamma(key, mean**2 / var, (n_components, x.shape[1]), x.dtype)
        return PoissonEmissionParams(g * var / mean)

    def sample(self, key, params, states):
        return jax.random.poisson(key, params.lambdas[states]).astype(params.lambdas.dtype)


# -- any mixture family ------------------------------------------------------------------------
@family
class MixtureEmission(Family):
    """A mixture family's component density as an HMM emission: the same family object
    (e.g. :func:`jaxem.bernoulli`, :func:`jaxem.categorical`, :func:`jaxem.poisson`,
    :func:`jaxem.gaussian`) serves a mixture and, wrapped here, an HMM.

    Its params are the family's, with every mixing weight 1 (``log 1 = 0``, so the
    family's ``log_joint`` is the per-state density); its statistics, M-step (with the
    family's prior, letter ``e``) and ``log_prior`` are the family's own, and so is its
    handling of missing values (``supports_missing``, ``missing``: the Gaussians').
    """

    base: Any

    letters = "e"

    @property
    def supports_missing(self) -> bool:
        return capability(self.base, "supports_missing")

    @property
    def missing(self) -> bool:
        return capability(self.base, "missing")

    def with_missing(self, missing: bool = True) -> "MixtureEmission":
        return MixtureEmission(self.base.with_missing(missing))

    @staticmethod
    def _unit_weights(params):
        return params._replace(weights=jnp.ones_like(params.weights))

    def log_likelihoods(self, params, x: Array) -> Array:
        return self.base.log_joint(params, x)

    def stats(self, x: Array, resp: Array, params=None):
        return self.base.stats(x, resp, params)

    def m_step(self, stats, params, update: str):
        if "e" not in update:
            return params
        return self._unit_weights(self.base.m_step(stats, params))

    def log_prior(self, params) -> Array:
        return log_prior(self.base, params)

    def init(self, key, x, weights, n_components, method="kmeans"):
        base = self.base
        if self.missing:  # start from rows with each missing entry at its feature's mean
            base, x = base.with_missing(False), gaussian_missing.fill_means(x, weights)
        if capability(base, "has_init"):
            params = base.init(key, x, weights, n_components, method)
        else:
            params = initialize(base, key, x, weights, n_components, method or "kmeans")
        return self._unit_weights(params)

    def sample(self, key, params, states: Array) -> Array:
        """One draw per step from its state's component: ``x (n, D)``."""
        k = params.weights.shape[-1]

        def one(key, state):
            only = params._replace(weights=jax.nn.one_hot(state, k, dtype=params.weights.dtype))
            return self.base.sample(key, only, 1)[0][0]

        return jax.vmap(one)(jax.random.split(key, states.shape[0]), states)
