"""hmmlearn's ``GMMHMM``: a hidden Markov model whose states emit Gaussian mixtures.

A thin shell over :class:`jaxem.families.hmm.HMM` with
:class:`jaxem.families.gmm_emission.GMMEmission`, sharing everything else with
:class:`jaxem.estimators.hmm.GaussianHMM` (input checks, ``lengths``, restarts,
``init_params`` rules, ``monitor_``, scoring, decoding, sampling, persistence).

hmmlearn 0.3.3's parameters, priors (and their defaults, which depend on
``covariance_type``), attributes and M-step; with the same starting parameters the fits
agree (see ``tests/test_gmmhmm.py``). Fitted attributes, ``K`` states, ``M = n_mix``:

===============  =============================================================
``startprob_``   ``(K,)``
``transmat_``    ``(K, K)``
``weights_``     ``(K, M)`` each state's mixing weights
``means_``       ``(K, M, n_features)``
``covars_``      full ``(K, M, D, D)``, tied ``(K, D, D)`` (one per state, shared by
                 its components), diag ``(K, M, D)``, spherical ``(K, M)``
===============  =============================================================

Differences, all deliberate: those of :mod:`jaxem.estimators.hmm` (stopping rule,
Dirichlet(1) starting transitions, one scaled forward-backward); the k-means start is
jaxem's own (the component means of a state cluster too small to split are drawn from
this model's ``random_state``, not NumPy's global generator); and where hmmlearn's
M-step divides by zero or produces a negative weight (a component that no data point
visits, a weights prior below 1) the current value is kept and weights are clipped at 0,
and a singular covariance gets ``min_covar`` on its diagonal, so no NaN appears.

>>> import numpy as np
>>> from jaxem import GMMHMM
>>> rng = np.random.default_rng(0)
>>> X = np.concatenate([rng.normal(0, 1, (60, 1)), rng.normal(8, 1, (60, 1))])
>>> model = GMMHMM(n_components=2, n_mix=2, n_iter=5, random_state=0).fit(X)
>>> model.weights_.shape, model.means_.shape, model.covars_.shape
((2, 2), (2, 2, 1), (2, 2, 1))
"""
from __future__ import annotations

from numbers import Integral, Real

import jax.numpy as jnp
import numpy as np
from scipy import linalg
from sklearn.utils._param_validation import Interval, StrOptions

from jaxem.estimators.hmm import _array, _BaseHMM, _GaussianRows, _probabilities
from jaxem.families.gmm_emission import GMMEmission, GMMEmissionParams, default_covars_priors
from jaxem.families.hmm import HMM

__all__ = ["GMMHMM"]


class GMMHMM(_GaussianRows, _BaseHMM):
    """Hidden Markov model with Gaussian-mixture emissions (hmmlearn's ``GMMHMM``).

    Parameters are hmmlearn's (``n_mix`` components per state; ``weights_prior``,
    ``means_prior``/``means_weight``, ``covars_prior``/``covars_weight``: scalars or
    arrays that broadcast to hmmlearn's shapes; ``None``: hmmlearn's defaults for the
    ``covariance_type``), plus jaxem's ``n_init`` (restarts run in parallel) and
    ``parallel`` (an ``O(log T)``-depth forward-backward). NaN entries of ``X`` are
    missing values, as in :class:`~jaxem.GaussianHMM` (each state's mixture by exact EM
    over the observed features; a step with every value missing has log-density 0).
    """

    _emission = "gmm"
    _attributes = {"s": "startprob_", "t": "transmat_", "w": "weights_", "m": "means_",
                   "c": "covars_"}
    _parameter_constraints = {
        **_BaseHMM._parameter_constraints,
        "n_mix": [Interval(Integral, 1, None, closed="left")],
        "covariance_type": [StrOptions({"spherical", "diag", "full", "tied"})],
        "min_covar": [Interval(Real, 0, None, closed="left")],
        "weights_prior": [Real, "array-like"],
        "means_prior": [Real, "array-like"],
        "means_weight": [Real, "array-like"],
        "covars_prior": [Real, "array-like", None],
        "covars_weight": [Real, "array-like", None],
    }

    def __init__(self, n_components=1, n_mix=1, min_covar=1e-3, startprob_prior=1.0,
                 transmat_prior=1.0, weights_prior=1.0, means_prior=0.0, means_weight=0.0,
                 covars_prior=None, covars_weight=None, algorithm="viterbi",
                 covariance_type="diag", random_state=None, n_iter=10, tol=1e-2,
                 verbose=False, params="stmcw", init_params="stmcw", implementation="log",
                 n_init=1, parallel=False):
        self.n_components = n_components
        self.n_mix = n_mix
        self.min_covar = min_covar
        self.startprob_prior = startprob_prior
        self.transmat_prior = transmat_prior
        self.weights_prior = weights_prior
        self.means_prior = means_prior
        self.means_weight = means_weight
        self.covars_prior = covars_prior
        self.covars_weight = covars_weight
        self.algorithm = algorithm
        self.covariance_type = covariance_type
        self.random_state = random_state
        self.n_iter = n_iter
        self.tol = tol
        self.verbose = verbose
        self.params = params
        self.init_params = init_params
        self.implementation = implementation
        self.n_init = n_init
        self.parallel = parallel

    # -- the family ---------------------------------------------------------------------
    def _priors(self):
        """hmmlearn's priors broadcast to its shapes (its ``_fix_priors_shape``), float64,
        ``means_prior`` moved with the data; a ValueError names a prior that does not fit."""
        k, m, d, ct = self.n_components, self.n_mix, self.n_features, self.covariance_type
        cp0, cw0 = default_covars_priors(ct, m, d)
        cp_shape, cw_shape = {"full": ((k, m, d, d), (k, m)), "tied": ((k, d, d), (k,)),
                              "diag": ((k, m, d), (k, m, d)),
                              "spherical": ((k, m), (k, m))}[ct]
        spec = {"weights_prior": (self.weights_prior, (k, m)),
                "means_prior": (self.means_prior, (k, m, d)),
                "means_weight": (self.means_weight, (k, m)),
                "covars_prior": (cp0 if self.covars_prior is None else self.covars_prior,
                                 cp_shape),
                "covars_weight": (cw0 if self.covars_weight is None else self.covars_weight,
                                  cw_shape)}
        out = {}
        for name, (value, shape) in spec.items():
            a = _array(value, name)
            try:
                out[name] = np.broadcast_to(a, shape)
            except ValueError:
                raise ValueError(f"{name} has shape {a.shape}, which does not broadcast to "
                                 f"{shape} (hmmlearn's shape for covariance_type={ct!r}, "
                                 f"n_components={k}, n_mix={m}, n_features={d}).") from None
        out["means_prior"] = out["means_prior"] - getattr(self, "_shift", 0.0)
        return out

    def _family(self, seq_len, dtype):
        f = lambda v: jnp.asarray(v, dtype)
        emission = GMMEmission(n_mix=int(self.n_mix), covariance_type=self.covariance_type,
                               min_covar=f(self.min_covar),
                               **{k: f(v) for k, v in self._priors().items()})
        return HMM(emission, seq_len=int(seq_len), update=self.params,
                   startprob_prior=f(self.startprob_prior),
                   transmat_prior=f(self.transmat_prior), parallel=self.parallel)

    # -- attributes -----------------------------------------------------------------------
    def _n_features_of_attributes(self):
        return _array(self.means_, "means_", ndim=3).shape[2]

    def _n_emission_scalars(self):
        k, m, d = self.n_components, self.n_mix, self.n_features
        cov = {"spherical": k * m, "diag": k * m * d, "full": k * m * d * (d + 1) // 2,
               "tied": k * d * (d + 1) // 2}[self.covariance_type]
        return {"m": k * m * d, "c": cov, "w": m - 1}  # "w": hmmlearn 0.3.3's count

    def _check_emission(self, letter, n_features):
        k, m, d, ct = self.n_components, self.n_mix, n_features, self.covariance_type
        if letter == "w":
            return _probabilities(self.weights_, "weights_", (k, m))
        if letter == "m":
            means = _array(self.means_, "means_", ndim=3)
            if means.shape != (k, m, d):
                raise ValueError(f"means_ must have shape (n_components, n_mix, n_features) "
                                 f"= {(k, m, d)}, got {means.shape}.")
            return means
        c = _array(self.covars_, "covars_")
        shape = {"spherical": (k, m), "diag": (k, m, d), "full": (k, m, d, d),
                 "tied": (k, d, d)}[ct]
        if c.shape != shape:
            raise ValueError(f"{ct!r} covars_ must have shape {shape} (n_components={k}, "
                             f"n_mix={m}, n_features={d}), got {c.shape}.")
        if ct in ("spherical", "diag"):
            if np.any(c <= 0):
                raise ValueError(f"{ct!r} covars_ must be positive.")
            return c
        for i, mat in enumerate(c.reshape(-1, d, d)):
            if not np.allclose(mat, mat.T) or np.any(linalg.eigvalsh(mat) <= 0):
                which = f"state {i}" if ct == "tied" else f"state {i // m}, mixture {i % m}"
                raise ValueError(f"{ct!r} covars_ of {which} must be symmetric, "
                                 "positive-definite.")
        return c

    def _emission_params(self, given, dtype):
        shift = getattr(self, "_shift", 0.0)
        w, m, c = given.get("w"), given.get("m"), given.get("c")
        prec = None
        if c is not None:
            em = GMMEmission(int(self.n_mix), self.covariance_type)
            prec = em.from_covariances(None, None, jnp.asarray(c, dtype)).precisions_cholesky
        return GMMEmissionParams(None if w is None else jnp.asarray(w, dtype),
                                 None if m is None else jnp.asarray(m - shift, dtype), prec)

    def _store_emission(self, emission, family):
        self.weights_ = np.asarray(emission.weights)
        self.means_ = np.asarray(emission.means) + self._shift
        self.covars_ = np.array(family.emission.covariances(emission))
