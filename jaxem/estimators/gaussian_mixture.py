"""``GaussianMixture`` with scikit-learn's names; restarts run in one batched call."""
from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted, validate_data

from jaxem.batch import fit, initial_params
from jaxem.estimators._base import float_dtype, key_from, posterior, sample_weights, to_numpy
from jaxem.families.gaussian import GaussianParams, gaussian
from jaxem.init import INIT_METHODS


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM, a drop-in for ``sklearn.mixture.GaussianMixture``.

    Parameters and fitted attributes are scikit-learn's; in addition ``fit`` takes
    ``sample_weight``, the ``n_init`` restarts run in parallel in one compiled call,
    ``chunk_size`` bounds the memory of every pass over the rows, ``devices`` (a list of
    JAX devices) splits the rows over them (see :func:`jaxem.fit`), and ``restarts_``
    holds every restart's parameters, log-likelihood, trace and flags.

    >>> from jaxem import GaussianMixture
    >>> from jaxem.datasets import load_faithful
    >>> gm = GaussianMixture(n_components=2, n_init=8, random_state=0).fit(load_faithful())
    >>> gm.means_.shape, gm.converged_
    ((2, 2), True)
    >>> gm.restarts_.log_likelihood.shape
    (8,)
    """

    def __init__(self, n_components=1, *, covariance_type="full", tol=1e-3, reg_covar=1e-6,
                 max_iter=100, n_init=1, init_params="kmeans", weights_init=None,
                 means_init=None, precisions_init=None, random_state=None, warm_start=False,
                 verbose=0, verbose_interval=10, chunk_size=None, devices=None):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.chunk_size = chunk_size
        self.devices = devices

    # -- fitting ------------------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None):
        """Fit by EM; ``X: (n_samples, n_features)``, ``sample_weight: (n_samples,)``."""
        self._fit(X, sample_weight)
        return self

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit and return the component labels of ``X``: ``(n_samples,)``."""
        return self.predict(self._fit(X, sample_weight))

    def _fit(self, X, sample_weight):
        """Fit on ``X`` and return it validated."""
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        X = X.astype(float_dtype(), copy=False)
        n, d = X.shape
        self._check_parameters(n, d)
        w = sample_weights(sample_weight, n, X.dtype)
        family = self._family()
        key = key_from(self.random_state)
        if self.warm_start and hasattr(self, "converged_"):
            n_init, init = 1, self._params()
        else:
            n_init, init = self.n_init, self._initial_params(family, key, X, w)
        result = fit(family, X, n_components=self.n_components, key=key, n_init=n_init,
                     weights=w, max_iter=self.max_iter, tol=self.tol, init=init,
                     chunk_size=self.chunk_size, devices=self.devices)
        result = to_numpy(result)
        params = result.params
        self.weights_, self.means_, self.precisions_cholesky_ = params
        self.covariances_ = np.asarray(family.covariances(params))
        self.precisions_ = np.asarray(family.precisions(params))
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_iter)
        self.lower_bounds_ = result.trace[: self.n_iter_].tolist()
        self.lower_bound_ = float(result.log_likelihood)
        self.restarts_ = result.restarts
        self.best_restart_ = int(result.best)
        if self.verbose:
            self._report(result)
        if not self.converged_:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
            )
        return X

    def _family(self):
        return gaussian(self.covariance_type, self.reg_covar)

    def _params(self) -> GaussianParams:
        return GaussianParams(self.weights_, self.means_, self.precisions_cholesky_)

    def _check_parameters(self, n, d):
        for name in ("n_components", "n_init", "max_iter"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if self.tol < 0 or self.reg_covar < 0:
            raise ValueError("tol and reg_covar must be non-negative.")
        if self.init_params not in INIT_METHODS:
            raise ValueError(f"Invalid init_params {self.init_params!r}: use one of "
                             f"{', '.join(INIT_METHODS)}.")
        if n < self.n_components:
            raise ValueError(f"Expected n_samples >= n_components but got "
                             f"n_components = {self.n_components}, n_samples = {n}.")
        self._family()  # raises on an unknown covariance_type
        k = self.n_components
        shapes = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}
        for name, shape in (("weights_init", (k,)), ("means_init", (k, d)),
                            ("precisions_init", shapes[self.covariance_type])):
            value = getattr(self, name)
            if value is not None and np.shape(value) != shape:
                raise ValueError(f"The parameter '{name}' should have the shape {shape} for "
                                 f"covariance_type={self.covariance_type!r}, but got "
                                 f"{np.shape(value)}.")
        if self.weights_init is not None:
            wi = np.asarray(self.weights_init)
            if np.any(wi < 0) or not np.isclose(wi.sum(), 1.0):
                raise ValueError("The parameter 'weights_init' should be non-negative and "
                                 f"sum to 1, but got {wi}.")

    def _initial_params(self, family, key, X, w):
        """The init method's name, or parameters when some ``*_init`` are given.

        As scikit-learn: parameters not given come from ``init_params``.
        """
        given = {name: getattr(self, f"{name}_init") for name in ("weights", "means", "precisions")}
        if all(v is None for v in given.values()):
            return self.init_params
        dtype = X.dtype
        params = initial_params(family, X, n_components=self.n_components, key=key,
                                n_init=self.n_init, weights=w, init=self.init_params)
        if given["weights"] is not None:
            params = params._replace(weights=_tile(given["weights"], self.n_init, dtype))
        if given["means"] is not None:
            params = params._replace(means=_tile(given["means"], self.n_init, dtype))
        if given["precisions"] is not None:
            chol = family.precisions_cholesky_from(precisions=jnp.asarray(given["precisions"], dtype))
            params = params._replace(precisions_cholesky=_tile(chol, self.n_init, dtype))
        return params

    def _report(self, result):
        restarts = result.restarts
        for i in range(len(restarts.n_iter)):
            trace = restarts.trace[i][: restarts.n_iter[i]]
            shown = ", ".join(f"{t:.5f}" for t in trace[:: max(self.verbose_interval, 1)])
            print(f"Initialization {i}: n_iter={restarts.n_iter[i]} "
                  f"converged={bool(restarts.converged[i])} failed={bool(restarts.failed[i])} "
                  f"lower bound={restarts.log_likelihood[i]:.5f}"
                  + (f"  trace: {shown}" if self.verbose > 1 else ""))

    # -- inference ----------------------------------------------------------------------
    def _posterior(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        resp, ll = posterior(self._family(), self._params(), X.astype(self.means_.dtype),
                             self.chunk_size)
        return np.asarray(resp), np.asarray(ll)

    def predict_proba(self, X):
        """Responsibilities ``(n_samples, n_components)``."""
        return self._posterior(X)[0]

    def predict(self, X):
        """The most probable component of each row: ``(n_samples,)``."""
        return self.predict_proba(X).argmax(axis=1)

    def score_samples(self, X):
        """Per-sample log-likelihood ``log p(x)``: ``(n_samples,)``."""
        return self._posterior(X)[1]

    def score(self, X, y=None):
        """Mean per-sample log-likelihood."""
        return float(self.score_samples(X).mean())

    def sample(self, n_samples=1):
        """Draw ``(X (n_samples, n_features), y (n_samples,))``, grouped by component."""
        check_is_fitted(self)
        if n_samples < 1:
            raise ValueError(f"Invalid value for 'n_samples': {n_samples}. The sampling "
                             "requires at least one sample.")
        x, z = self._family().sample(key_from(self.random_state), self._params(), int(n_samples))
        order = np.argsort(np.asarray(z), kind="stable")
        return np.asarray(x)[order], np.asarray(z)[order]

    def _n_parameters(self):
        return self._family().n_free_parameters(*self.means_.shape)

    def bic(self, X):
        """Bayesian information criterion on ``X`` (lower is better)."""
        n = np.shape(X)[0]
        return -2 * self.score(X) * n + self._n_parameters() * np.log(n)

    def aic(self, X):
        """Akaike information criterion on ``X`` (lower is better)."""
        return -2 * self.score(X) * np.shape(X)[0] + 2 * self._n_parameters()


def _tile(a, n_init, dtype):
    a = jnp.asarray(a, dtype)
    return jnp.broadcast_to(a, (n_init,) + a.shape)
