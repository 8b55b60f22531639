"""``GaussianMixture`` with scikit-learn's names; restarts run in one batched call."""
from __future__ import annotations

import functools
import time
import warnings
from numbers import Integral, Real

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_array
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from jaxem import progress
from jaxem.batch import FitError, first_set, fit, has_nan, initial_params
from jaxem.estimators._base import (MixtureMixin, check_n_samples, float_dtype, key_from,
                                    partial_labels, posterior, rows_per_chunk,
                                    sample_weights, to_numpy)
from jaxem.families import gaussian_missing
from jaxem.families.gaussian import COVARIANCE_TYPES, GaussianParams, gaussian
from jaxem.init import INIT_METHODS
from jaxem.persist import Saveable
from jaxem.select import select_n_components
from jaxem.trim import start as trim_start, trimmed

# scikit-learn's advice when a covariance is singular: the same words, so code that
# matches them keeps working.
_ILL_DEFINED = (
    "Fitting the mixture model failed because some components have ill-defined "
    "empirical covariance (for instance caused by singleton or collapsed samples). Try "
    "to decrease the number of components, increase reg_covar, or scale the input data."
)


class GaussianMixture(Saveable, MixtureMixin, DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM, a drop-in for ``sklearn.mixture.GaussianMixture``.

    Parameters, attributes, warnings and errors are scikit-learn's (``max_iter=0``
    returns the initialisation; ``warm_start`` continues from the last fit and compares
    its first lower bound with the last one, so repeated ``fit`` calls converge). In
    addition ``fit`` takes ``sample_weight``, the ``n_init`` restarts run in parallel in
    one compiled call, ``chunk_size`` bounds the memory of every pass over the rows,
    ``devices`` (a list of JAX devices) splits the rows over them (see
    :func:`jaxem.fit`), and ``restarts_`` holds every restart's parameters,
    log-likelihood, trace and flags. ``verbose`` prints scikit-learn's messages once the
    batched run has finished (time per iteration is the run's average), and shows a
    progress bar while it runs (where tqdm is installed: ``jaxem[progress]``). ``fit(X, y)``
    takes partial labels (``-1`` unlabelled, ``j`` for component ``j``: semi-supervised
    EM, see :meth:`fit`); NaN entries of ``X`` are missing values, fitted by exact EM
    and filled in by :meth:`impute`.

    Two options size the model while fitting:

    - ``n_components="bic"`` (or ``"aic"``): ``fit`` fits K = 1 … ``max_components``
      (at most ``n_samples``) × ``n_init`` restarts in one compiled program
      (:func:`jaxem.select_n_components`, with this estimator's ``covariance_type``,
      ``init_params``, ``n_init``, ``max_iter``, ``tol``, ``reg_covar``,
      ``random_state``, ``chunk_size``) and keeps the K with the lowest criterion: the
      fitted model is that K's fit, ``n_components_`` is K and ``selection_`` the
      :class:`jaxem.select.Selection` table (log-likelihood, BIC, AIC per K).
    - ``trim_threshold`` in ``(0, 1)``: a component whose mixing weight falls below it
      during EM is dropped (:func:`jaxem.trimmed`); the fitted attributes hold the
      ``n_components_`` survivors only, and ``trimmed_at_ (n_components,)`` the
      iteration whose M-step dropped each starting component (-1 for a survivor);
      ``restarts_.params`` keeps every restart's :class:`jaxem.trim.TrimmedParams`.

    Neither takes partial labels, nor (``"bic"``/``"aic"``) ``*_init`` parameters: they
    name components before their number is known. A warm start continues the fitted
    model (its ``n_components_``, no new selection). ``n_components_`` is set by every
    fit.

    >>> from jaxem import GaussianMixture
    >>> from jaxem.datasets import load_faithful
    >>> gm = GaussianMixture(n_components=2, n_init=8, random_state=0).fit(load_faithful())
    >>> gm.means_.shape, gm.converged_
    ((2, 2), True)
    >>> gm.restarts_.log_likelihood.shape
    (8,)
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left"),
                         StrOptions({"bic", "aic"})],
        "covariance_type": [StrOptions(set(COVARIANCE_TYPES))],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions(set(INIT_METHODS))],
        "weights_init": ["array-like", None],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(Integral, 1, None, closed="left")],
        "chunk_size": [Interval(Integral, 1, None, closed="left"), None],
        "devices": "no_validation",  # checked by jaxem.batch, with its own message
        "max_components": [Interval(Integral, 1, None, closed="left")],
        "trim_threshold": [Interval(Real, 0.0, 1.0, closed="neither"), None],
    }

    def __init__(self, n_components=1, *, covariance_type="full", tol=1e-3, reg_covar=1e-6,
                 max_iter=100, n_init=1, init_params="kmeans", weights_init=None,
                 means_init=None, precisions_init=None, random_state=None, warm_start=False,
                 verbose=0, verbose_interval=10, chunk_size=None, devices=None,
                 max_components=10, trim_threshold=None):
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
        self.max_components = max_components
        self.trim_threshold = trim_threshold

    # -- fitting (fit, fit_predict: MixtureMixin) ----------------------------------------
    def _fit(self, X, y, sample_weight):
        """Fit on ``X`` (partial labels ``y``); return ``(X validated, labels or None)``."""
        self._validate_params()  # before any compilation
        # NaN entries are missing values, fitted by exact EM (scikit-learn rejects them).
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2,
                          ensure_all_finite="allow-nan")
        X = X.astype(float_dtype(), copy=False)
        n, d = X.shape
        choose = isinstance(self.n_components, str)  # "bic" / "aic": K chosen below
        trim = self.trim_threshold is not None
        warm = self.warm_start and hasattr(self, "converged_")
        missing = has_nan(X)
        self._check_sizing(y, warm, missing)
        if not choose and n < self.n_components:
            raise ValueError(f"Expected n_samples >= n_components but got "
                             f"n_components = {self.n_components}, n_samples = {n}.")
        given = {} if choose else self._check_initial_parameters(d)
        labels = None if choose else partial_labels(y, n, self.n_components)
        w = sample_weights(sample_weight, n, X.dtype)
        family = self._family(missing=missing)
        key = key_from(self.random_state)
        selection = getattr(self, "selection_", None) if warm and choose else None
        if warm:
            n_init, init = 1, self._params()
        elif choose:
            # The fit is a refit of the chosen K from the sweep's own starts for K (the
            # first K components of each restart's start): a masked fit equals the plain
            # K-component fit from the same start (tests/test_select.py), so this is the
            # sweep's fit of K, with what the sweep does not keep (every restart's trace,
            # n_iter_, converged_) and the usual failure handling, for n_init K-component
            # fits more. With init_params "k-means++" or "random_from_data" these starts
            # are GaussianMixture(K)'s own, so the fit equals that estimator's.
            selection, init = self._select(family, X, w, key)
            n_init = self.n_init
        else:
            n_init, init = self.n_init, self._initial_params(family, key, X, w, given, labels)
        k = self.n_components if isinstance(init, str) else np.shape(init.weights)[-1]
        # Trimming: the same start, every component live; the fit keeps the survivors.
        run_family = trimmed(family, self.trim_threshold) if trim else family
        run_init = trim_start(init) if trim and not isinstance(init, str) else init
        if self.max_iter == 0:  # as scikit-learn: the initialisation, no EM step
            self._set_result(family, self._first(family, init, X, key, n_init, w, labels),
                             None, trimmed_at=np.full(k, -1, np.int32) if trim else None)
            return X, labels
        start = time.perf_counter()
        previous = self.lower_bound_ if warm else -np.inf
        result = self._run(run_family, X, key, n_init, w, run_init, self.max_iter, labels, k)
        if abs(result.trace[0] - previous) < self.tol:
            # scikit-learn compares a warm start's first lower bound with the last fit's
            # and stops after that one iteration (the engine starts from -inf): redo it.
            if self.max_iter > 1:
                result = self._run(run_family, X, key, n_init, w, run_init, 1, labels, k)
            result = result._replace(converged=np.bool_(True), restarts=result.restarts
                                     ._replace(converged=np.ones(1, bool)))
        params = run_family.survivors(result.params) if trim else result.params
        self._set_result(family, params, result, selection,
                         result.params.trimmed_at if trim else None)
        if self.verbose:
            self._report(result, previous, time.perf_counter() - start)
        if not self.converged_:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
            )
        return X, labels

    def _check_sizing(self, y, warm, missing):
        """What ``n_components="bic"``/``"aic"`` and ``trim_threshold`` rule out: anything
        that names components before their number is known, and missing values (their
        masked families have no missing-value E-step)."""
        choose, trim = isinstance(self.n_components, str), self.trim_threshold is not None
        if choose and trim:
            raise ValueError(f"n_components={self.n_components!r} chooses K from untrimmed "
                             "fits and trim_threshold trims one: use one or the other.")
        option = f"n_components={self.n_components!r}" if choose else "trim_threshold"
        if (choose or trim) and y is not None:
            raise ValueError(f"partial labels (y) name components, but {option} changes "
                             "their number: fit without y, or with an integer n_components.")
        if (choose or trim) and missing:
            raise ValueError(f"X has missing values (NaN), which {option} does not fit: "
                             "impute them first (GaussianMixture(k).fit(X).impute(X)) or "
                             "drop those rows.")
        if choose and not warm:
            given = [f"{name}_init" for name in ("weights", "means", "precisions")
                     if getattr(self, f"{name}_init") is not None]
            if given:
                raise ValueError(f"{', '.join(given)} fix(es) the number of components; "
                                 f"{option} chooses it: pass an integer n_components.")
            if self.max_iter == 0:
                raise ValueError(f"{option} compares fitted models: max_iter must be >= 1.")

    def _select(self, family, X, w, key):
        """K by BIC/AIC over K = 1 … ``max_components`` (:func:`jaxem.select_n_components`):
        ``(selection, starts)``, ``starts`` the sweep's ``(n_init, K, ...)`` starting
        parameters of the chosen K."""
        k_max = min(self.max_components, X.shape[0])
        starts = initial_params(family, X, n_components=k_max, key=key, n_init=self.n_init,
                                weights=w, init=self.init_params)
        try:
            selection = select_n_components(
                family, X, k_max=k_max, key=key, n_init=self.n_init,
                criterion=self.n_components, weights=w, max_iter=self.max_iter,
                tol=self.tol, init=starts, chunk_size=self.chunk_size)
        except FitError:
            raise FitError(_failure_message(X)) from None
        return selection, _first_components(starts, int(selection.best),
                                            self.covariance_type)

    def _run(self, family, X, key, n_init, w, init, max_iter, labels, n_components):
        """The engine's fit, as NumPy; a failure raises with its diagnosed cause."""
        try:
            result = fit(family, X, n_components=n_components, key=key, n_init=n_init,
                         weights=w, max_iter=max_iter, tol=self.tol, init=init,
                         chunk_size=self.chunk_size, devices=self.devices, labels=labels,
                         # verbose: a live bar too, where tqdm is installed
                         progress=bool(self.verbose) and progress.available() or None)
        except FitError:
            raise FitError(_failure_message(X)) from None
        return to_numpy(result)

    def _set_result(self, family, params, result, selection=None, trimmed_at=None):
        """Store the fitted attributes; ``result`` is ``None`` for ``max_iter=0``;
        ``selection_`` and ``trimmed_at_`` only where given (else removed)."""
        params = GaussianParams(*to_numpy(params))
        self.weights_, self.means_, self.precisions_cholesky_ = params
        self.covariances_ = np.asarray(family.covariances(params))
        self.precisions_ = np.asarray(family.precisions(params))
        self.n_components_ = self.weights_.shape[0]
        for name, value in (("selection_", selection), ("trimmed_at_", trimmed_at)):
            if value is None:
                self.__dict__.pop(name, None)
            else:
                setattr(self, name, to_numpy(value))
        if result is None:
            self.converged_, self.n_iter_ = False, 0
            self.lower_bound_, self.lower_bounds_ = -np.inf, []
            for stale in ("restarts_", "best_restart_"):  # no run: none from an earlier fit
                self.__dict__.pop(stale, None)
            return
        self._store_run(result)

    def _first(self, family, init, X, key, n_init, w, labels=None) -> GaussianParams:
        """The first restart's starting parameters (what ``max_iter=0`` returns)."""
        if isinstance(init, str):
            init = initial_params(family, X, n_components=self.n_components, key=key,
                                  n_init=n_init, weights=w, init=init, labels=labels)
        params = GaussianParams(*init)
        return params if params.means.ndim == 2 else first_set(params)

    def _family(self, missing=False):
        return gaussian(self.covariance_type, self.reg_covar, missing)

    def _params(self) -> GaussianParams:
        return GaussianParams(self.weights_, self.means_, self.precisions_cholesky_)

    def _check_initial_parameters(self, d) -> dict:
        """``weights_init``, ``means_init``, ``precisions_init`` checked as scikit-learn
        checks them (same messages, plus the argument's name): ``{name: array or None}``."""
        k, ct = self.n_components, self.covariance_type
        given = {}
        for name, shape in (("weights", (k,)), ("means", (k, d)),
                            ("precisions", _PRECISION_SHAPES[ct](k, d))):
            value = getattr(self, f"{name}_init")
            if value is not None:
                value = check_array(value, dtype=[np.float64, np.float32], ensure_2d=False,
                                    allow_nd=True, input_name=f"{name}_init")
                label = name if name != "precisions" else f"{ct} precision"
                if value.shape != shape:
                    raise ValueError(f"The parameter '{label}' should have the shape of "
                                     f"{shape}, but got {value.shape} ({name}_init).")
            given[name] = value
        wi = given["weights"]
        if wi is not None:
            if np.any(wi < 0) or np.any(wi > 1):
                raise ValueError("The parameter 'weights' should be in the range [0, 1], but "
                                 f"got max value {wi.max():.5f}, min value {wi.min():.5f} "
                                 "(weights_init).")
            atol = 1e-6 if wi.dtype == np.float32 else 1e-8
            if abs(1.0 - wi.sum()) > atol:
                raise ValueError("The parameter 'weights' should be normalized, but got "
                                 f"sum(weights) = {wi.sum():.5f} (weights_init must sum "
                                 "to 1).")
        p = given["precisions"]
        if p is not None:
            if ct in ("diag", "spherical"):
                if np.any(p <= 0):
                    raise ValueError(f"'{ct} precision' should be positive (precisions_init).")
            else:
                mats = p.reshape((-1, d, d))
                sym = np.allclose(mats, np.swapaxes(mats, -1, -2))
                if not sym or np.any(np.linalg.eigvalsh(mats) <= 0):
                    raise ValueError(f"'{ct} precision' should be symmetric, "
                                     "positive-definite (precisions_init).")
        return given

    def _initial_params(self, family, key, X, w, given, labels=None):
        """The init method's name, or parameters when some ``*_init`` are given.

        As scikit-learn: parameters not given come from ``init_params`` (made to agree
        with ``labels``); with all three given no initialisation runs.
        """
        if all(v is None for v in given.values()):
            return self.init_params
        dtype, n_init = X.dtype, self.n_init
        if any(v is None for v in given.values()):
            params = initial_params(family, X, n_components=self.n_components, key=key,
                                    n_init=n_init, weights=w, init=self.init_params,
                                    labels=labels)
        else:
            params = GaussianParams(None, None, None)
        if given["weights"] is not None:
            params = params._replace(weights=_tile(given["weights"], n_init, dtype))
        if given["means"] is not None:
            params = params._replace(means=_tile(given["means"], n_init, dtype))
        if given["precisions"] is not None:
            chol = _precisions_cholesky(given["precisions"], self.covariance_type)
            params = params._replace(precisions_cholesky=_tile(chol, n_init, dtype))
        return params

    def _report(self, result, previous, seconds):
        """scikit-learn's ``verbose`` messages, from every restart's trace."""
        restarts = result.restarts
        per_iter = seconds / max(int(np.sum(restarts.n_iter)), 1)
        for i in range(len(restarts.n_iter)):
            n_iter, trace = int(restarts.n_iter[i]), restarts.trace[i]
            print(f"Initialization {i}")
            for it in range(self.verbose_interval, n_iter + 1, self.verbose_interval):
                if self.verbose == 1:
                    print(f"  Iteration {it}")
                else:
                    change = trace[it - 1] - (trace[it - 2] if it > 1 else previous)
                    print(f"  Iteration {it}\t time lapse "
                          f"{per_iter * self.verbose_interval:.5f}s\t ll change {change:.5f}")
            status = "converged" if restarts.converged[i] else "did not converge"
            if self.verbose == 1:
                print(f"Initialization {status}.")
            else:
                print(f"Initialization {status}. time lapse {per_iter * n_iter:.5f}s\t "
                      f"lower bound {restarts.log_likelihood[i]:.5f}.")

    # -- scikit-learn's private hooks, for code written against them ----------------------
    def _get_parameters(self):
        return self.weights_, self.means_, self.covariances_, self.precisions_cholesky_

    def _set_parameters(self, params):
        """Set ``(weights, means, covariances, precisions_cholesky)`` and ``precisions_``."""
        self.weights_, self.means_, self.covariances_, self.precisions_cholesky_ = params
        self.precisions_ = np.asarray(self._family().precisions(self._params()))

    def _initialize(self, X, resp):
        """Parameters from responsibilities ``resp (n_samples, n_components)``, the
        given ``*_init`` taking precedence (scikit-learn's initial M-step)."""
        family = self._family()
        X = jnp.asarray(X, float_dtype())
        params = to_numpy(family.m_step(family.stats(X, jnp.asarray(resp, X.dtype))))
        # As scikit-learn's hook: the *_init are used as given (fit checks them first).
        weights = params.weights if self.weights_init is None else np.asarray(self.weights_init)
        means = params.means if self.means_init is None else np.asarray(self.means_init)
        chol = (params.precisions_cholesky if self.precisions_init is None else
                _precisions_cholesky(self.precisions_init, self.covariance_type))
        self._set_parameters((weights, means, None, chol))
        self.covariances_ = np.asarray(family.covariances(self._params()))

    # -- inference ----------------------------------------------------------------------
    def _posterior(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False,
                          ensure_all_finite="allow-nan")
        self._check_fitted_shapes()
        X = X.astype(self.means_.dtype)
        missing = np.isnan(X)
        if np.any(np.all(missing, axis=1)):
            raise ValueError(f"X row {int(np.argmax(np.all(missing, axis=1)))} has every "
                             "value missing (NaN): it has no likelihood to score.")
        family = self._family(missing=bool(missing.any()))
        resp, ll = posterior(family, self._params(), X, self.chunk_size)
        return np.asarray(resp), np.asarray(ll)

    def impute(self, X, n_imputations=None, random_state=None):
        """Fill in the missing (NaN) entries of ``X (n_samples, n_features)`` under the
        fitted mixture; observed entries are unchanged.

        ``n_imputations=None``: ``X`` with each missing entry replaced by its
        conditional expectation given the row's observed entries,
        ``sum_k p(k | x_obs) E[x_miss | x_obs, k]``: ``(n_samples, n_features)``.

        ``n_imputations=m``: multiple imputation, ``m`` draws from the posterior
        predictive ``p(x_miss | x_obs)``: ``(m, n_samples, n_features)``. Each draw takes
        a component from the row's posterior ``p(k | x_obs)``, then the missing entries
        from the Gaussian conditional on the observed ones, ``N(E[x_miss | x_obs, k],
        Cov[x_miss | x_obs, k])``. ``random_state`` (None, int or RandomState) seeds
        the draws.
        """
        if n_imputations is not None and (not isinstance(n_imputations, Integral)
                                          or isinstance(n_imputations, bool)
                                          or n_imputations < 1):
            raise ValueError(f"n_imputations must be None (the conditional expectation) "
                             f"or a positive integer (that many draws), got "
                             f"{n_imputations!r}.")
        resp, _ = self._posterior(X)
        X = np.asarray(X, dtype=self.means_.dtype)
        family, params = self._family(missing=True), self._params()
        x, resp = jnp.asarray(X), jnp.asarray(resp)
        chunk = rows_per_chunk(family, params, x, self.chunk_size)
        if n_imputations is None:
            return np.asarray(_impute(family, params, x, resp, chunk))
        return np.asarray(_impute_draws(family, params, x, resp, key_from(random_state),
                                        int(n_imputations), chunk))

    def _check_fitted_shapes(self):
        """Attributes set by hand must agree with each other (no silent broadcasting)."""
        k, d = np.shape(self.means_) if np.ndim(self.means_) == 2 else (-1, -1)
        expected = {"weights_": (k,), "means_": (k, d), "precisions_cholesky_":
                    _PRECISION_SHAPES[self.covariance_type](k, d)}
        if k < 1 or d != getattr(self, "n_features_in_", d):
            raise ValueError(f"means_ must have shape (n_components, n_features="
                             f"{getattr(self, 'n_features_in_', '?')}), got "
                             f"{np.shape(self.means_)}.")
        for name, shape in expected.items():
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"{name} has shape {np.shape(getattr(self, name))}, but "
                                 f"means_ {np.shape(self.means_)} and covariance_type="
                                 f"{self.covariance_type!r} need {shape}.")

    def sample(self, n_samples=1):
        """Draw ``(X (n_samples, n_features), y (n_samples,))``, grouped by component.

        Rows are drawn in blocks of a fixed size, so a new ``n_samples`` does not compile.
        """
        check_is_fitted(self)
        n_samples = check_n_samples(n_samples)
        self._check_fitted_shapes()
        params = GaussianParams(*(jnp.asarray(a) for a in self._params()))
        d = params.means.shape[1]
        # Full covariances draw with one (D, D) solve per row: bound that memory too.
        block = 4096 if self.covariance_type != "full" else max(64, min(4096, 2**22 // d**2))
        n_blocks = -(-int(n_samples) // block)
        keys = jax.random.split(key_from(self.random_state), n_blocks)
        draws = [_sample_block(self._family(), params, k, block) for k in keys]
        x = np.concatenate([np.asarray(a) for a, _ in draws])[:n_samples]
        z = np.concatenate([np.asarray(b) for _, b in draws])[:n_samples]
        order = np.argsort(z, kind="stable")
        return x[order], z[order]

    def _n_parameters(self):
        return self._family().n_free_parameters(*self.means_.shape)


_PRECISION_SHAPES = {"full": lambda k, d: (k, d, d), "tied": lambda k, d: (d, d),
                     "diag": lambda k, d: (k, d), "spherical": lambda k, d: (k,)}


@functools.partial(jax.jit, static_argnames="block")
def _sample_block(family, params, key, block):
    return family.sample(key, params, block)


_impute = jax.jit(gaussian_missing.impute, static_argnames="chunk_size")
_impute_draws = jax.jit(gaussian_missing.impute_draws,
                        static_argnames=("n_imputations", "chunk_size"))


def _precisions_cholesky(precisions, covariance_type):
    """scikit-learn's factor of given precisions: upper triangular ``U`` with
    ``U U^T = precisions`` for ``full``/``tied`` (a reversed Cholesky), the same factor
    the M-step stores; the square root for ``diag``/``spherical``."""
    p = np.asarray(precisions)
    if covariance_type in ("diag", "spherical"):
        return np.sqrt(p)
    flip = p[..., ::-1, ::-1]
    return np.linalg.cholesky(flip)[..., ::-1, ::-1]


def _failure_message(X) -> str:
    """Why EM failed on ``X (n, D)``: float overflow of the data's squares, else
    scikit-learn's singular-covariance advice."""
    x = np.asarray(X, np.float64)
    spread = float(np.max(np.abs(x - x.mean(axis=0))))
    finfo = np.finfo(X.dtype)
    if spread**2 * x.size >= float(finfo.max) / 16:
        hint = (" or pass float64 data with JAX's x64 mode on "
                "(jax.config.update('jax_enable_x64', True))" if X.dtype == np.float32 else "")
        return (f"Fitting the mixture model failed: the data lie up to {spread:.3g} from "
                f"their mean, so their second moments overflow {X.dtype}. Scale the input "
                f"data (e.g. sklearn.preprocessing.StandardScaler){hint}.")
    if X.dtype == np.float32:
        return (_ILL_DEFINED + " The numerical accuracy can also be improved by passing "
                "float64 data instead of float32 (with JAX's x64 mode on).")
    return _ILL_DEFINED


def _first_components(params, k, covariance_type) -> GaussianParams:
    """The first ``k`` components of starts ``(n_init, k_max, ...)``, weights
    renormalised: what :func:`jaxem.select_n_components` masks them to for K = ``k``."""
    w = params.weights[:, :k]
    chol = params.precisions_cholesky
    return GaussianParams(w / jnp.sum(w, axis=1, keepdims=True), params.means[:, :k],
                          chol if covariance_type == "tied" else chol[:, :k])


def _tile(a, n_init, dtype):
    a = jnp.asarray(a, dtype)
    return jnp.broadcast_to(a, (n_init,) + a.shape)
