"""hmmlearn-style estimators: ``GaussianHMM``, ``CategoricalHMM``, ``PoissonHMM``.

Thin host-side shells over :class:`jaxem.families.hmm.HMM` and :func:`jaxem.fit`: they
validate parameters and attributes, pad hmmlearn's concatenated ``X`` + ``lengths`` into
sequences, turn ``random_state`` into a key, call the engine once (``n_init`` restarts run
in parallel, which hmmlearn lacks), log and raise on the host and store hmmlearn's
attributes.

A drop-in for hmmlearn 0.3.3 (its own test files run against these classes, see
``tests/test_compat_hmmlearn.py``): the same parameters, attributes and methods
(``score``, ``score_samples``, ``decode``, ``predict``, ``predict_proba``,
``sample(currstate=)``, ``aic``, ``bic``, ``get_stationary_distribution``), a model
built by hand (attributes set, no ``fit``) that scores, decodes and samples, hmmlearn's
``init_params`` rules (unset attributes are initialised, set ones kept unless their
letter is listed, with hmmlearn's logged notice), its ``monitor_`` and its logged
messages. With the same starting parameters the fits agree. Differences, all
deliberate: the EM loop stops when the gain is at most ``tol`` in absolute value
(hmmlearn also stops when the log-likelihood *decreases*); starting transition rows
are Dirichlet(1) draws; ``implementation`` accepts ``"log"`` and ``"scaling"`` but
both run one scaled forward-backward that never underflows; a singular full or tied
covariance in the M-step gets ``min_covar`` on its diagonal (hmmlearn adds it only
when evaluating the density); unknown letters in ``params``/``init_params`` raise.

>>> import numpy as np
>>> from jaxem.estimators.hmm import GaussianHMM
>>> rng = np.random.default_rng(0)
>>> X = np.concatenate([rng.normal(0, 1, (50, 1)), rng.normal(5, 1, (50, 1))])
>>> model = GaussianHMM(n_components=2, n_iter=20, random_state=0)
>>> model = model.fit(X, lengths=[60, 40])
>>> sorted(np.round(model.means_[:, 0]).tolist())
[0.0, 5.0]
>>> model.predict(X).shape
(100,)
"""
from __future__ import annotations

import functools
import logging
import sys
from collections import deque
from numbers import Integral, Real

import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted

from jaxem.batch import fit as _engine_fit
from jaxem.batch import first_set, has_nan, with_missing
from jaxem.estimators._base import float_dtype, key_from
from jaxem.families.emissions import (
    CategoricalEmissionParams,
    GaussianEmissionParams,
    PoissonEmissionParams,
)
from jaxem.families.hmm import HMMParams, hmm, pad_sequences, unpad
from jaxem.persist import Saveable

__all__ = ["ConvergenceMonitor", "GaussianHMM", "CategoricalHMM", "PoissonHMM"]

_log = logging.getLogger(__name__)


class ConvergenceMonitor:
    """hmmlearn's ``monitor_``: the total log-likelihood per iteration (``history``),
    the iterations run (``iter``) and ``converged``, with hmmlearn's rule and report."""

    _template = "{iter:>10d} {log_prob:>16.8f} {delta:>+16.8f}"

    def __init__(self, tol, n_iter, verbose=False):
        self.tol = tol
        self.n_iter = n_iter
        self.verbose = verbose
        self.history = deque()
        self.iter = 0

    def __repr__(self):
        params = sorted(dict(vars(self), history=list(self.history)).items())
        return f"{type(self).__name__}(\n" + "".join(f"    {k}={v},\n" for k, v in params) + ")"

    def _reset(self):
        self.iter = 0
        self.history.clear()

    def report(self, log_prob):
        """Record one iteration's ``log_prob``; print it to stderr when ``verbose``; log
        when it decreased (beyond float64 rounding)."""
        delta = log_prob - self.history[-1] if self.history else np.nan
        if self.verbose:
            print(self._template.format(iter=self.iter + 1, log_prob=log_prob, delta=delta),
                  file=sys.stderr)
        if self.history and delta < -np.finfo(float).eps ** 0.5:
            _log.warning(f"Model is not converging.  Current: {log_prob} is not greater "
                         f"than {self.history[-1]}. Delta is {delta}")
        self.history.append(log_prob)
        self.iter += 1

    @property
    def converged(self):
        """Stopped at ``n_iter``, or the last gain was below ``tol`` (hmmlearn's rule)."""
        return (self.iter == self.n_iter
                or (len(self.history) >= 2 and self.history[-1] - self.history[-2] < self.tol))


# -- compiled inference, once per family and shapes ---------------------------------------
@jax.jit
def _posterior(family, params, x, w):
    post = family.forward_backward(params, x, w)
    return post.log_normalizer, post.smoothed


@jax.jit
def _viterbi(family, params, x, w):
    return family.viterbi(params, x, w)


@functools.partial(jax.jit, static_argnums=(4,))
def _init_many(family, keys, x, w, n_components):
    return jax.vmap(lambda k: family.init(k, x, w, n_components, "kmeans"))(keys)


@functools.partial(jax.jit, static_argnums=(2,))
def _sample(family, params, n_steps, key):
    return family.sample(key, params, n_steps)


# -- host-side checks of attributes ----------------------------------------------------------
def _array(value, name, ndim=None):
    """``value`` as a float64 array, or a ValueError that names the attribute."""
    try:
        a = np.array(value, dtype=np.float64)  # a copy: later edits by the user don't leak
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of real numbers: {err}") from None
    if np.iscomplexobj(value):
        raise ValueError(f"{name} must be real, got complex values.")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d array, got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinity.")
    return a


def _probabilities(value, name, shape):
    """A (row-)stochastic array of ``shape``: hmmlearn's ``_check`` plus non-negativity."""
    a = _array(value, name)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}.")
    if np.any(a < 0):
        raise ValueError(f"{name} must be non-negative.")
    s = a.sum(axis=-1)
    if not np.allclose(s, 1):
        raise ValueError(f"{name} must sum to 1 (got {s:.4f})" if s.ndim == 0
                         else f"{name} rows must sum to 1 (got row sums of {s})")
    return a


class _BaseHMM(Saveable, BaseEstimator):
    _emission = ""
    _attributes = {"s": "startprob_", "t": "transmat_"}  # letter -> attribute

    _parameter_constraints = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "startprob_prior": [Real, "array-like"],
        "transmat_prior": [Real, "array-like"],
        "algorithm": [StrOptions({"viterbi", "map"})],
        "random_state": ["random_state"],
        "n_iter": [Interval(Integral, 0, None, closed="left")],
        "tol": [Real],
        "verbose": ["verbose"],
        "params": [str],
        "init_params": [str],
        "implementation": [StrOptions({"log", "scaling"})],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "parallel": ["boolean"],
    }

    # -- hooks of the concrete estimators -------------------------------------------------
    def _check_X(self, X, n_features):
        """Validated ``X (n_samples, n_features)``; ``n_features=None`` when fitting."""
        raise NotImplementedError

    def _emission_kwargs(self):
        return {}

    def _static_kwargs(self):
        return {}

    def _check_emission(self, letter, n_features):
        """The user's emission attribute of ``letter``, validated (NumPy, float64)."""
        raise NotImplementedError

    def _emission_params(self, given, dtype):
        """Family emission parameters from validated attributes ``{letter: array}``."""
        raise NotImplementedError

    def _store_emission(self, emission, family):
        raise NotImplementedError

    def _n_emission_scalars(self):
        raise NotImplementedError

    # -- parameters and attributes ----------------------------------------------------------
    def _check_letters(self):
        letters = "".join(self._attributes)
        for name in ("params", "init_params"):
            bad = sorted(set(getattr(self, name)) - set(letters))
            if bad:
                raise ValueError(f"{name}={getattr(self, name)!r} contains {bad}: "
                                 f"{type(self).__name__} has the letters {letters!r}.")

    def _n_features_of_attributes(self):
        raise NotImplementedError

    def _check(self):
        """hmmlearn's ``_check``: validate the hyper-parameters and every attribute
        (shapes, probabilities that sum to 1, positive covariances); set ``n_features``."""
        self._validate_params()
        self._check_letters()
        check_is_fitted(self, list(self._attributes.values()))
        self.n_features = self._n_features_of_attributes()
        return self._given("".join(self._attributes), self.n_features)

    def _given(self, letters, n_features):
        """The user's attributes for ``letters``, validated: ``{letter: array}``."""
        k = self.n_components
        out = {}
        for letter in letters:
            if letter == "s":
                out[letter] = _probabilities(self.startprob_, "startprob_", (k,))
            elif letter == "t":
                out[letter] = _probabilities(self.transmat_, "transmat_", (k, k))
            else:
                out[letter] = self._check_emission(letter, n_features)
        return out

    def _needs_init(self, code, name):
        """hmmlearn's rule: initialise when listed in ``init_params`` (logging that a
        value the user set is overwritten) or when the attribute is not set."""
        if code in self.init_params:
            if hasattr(self, name):
                _log.warning("Even though the %r attribute is set, it will be overwritten "
                             "during initialization because 'init_params' contains %r",
                             name, code)
            return True
        return not hasattr(self, name)

    def _get_n_fit_scalars_per_param(self):
        """Free scalars per letter (hmmlearn's), for ``aic``/``bic`` and the degenerate-fit
        notice."""
        k = self.n_components
        return {"s": k - 1, "t": k * (k - 1), **self._n_emission_scalars()}

    # -- data ---------------------------------------------------------------------------------
    def _family(self, seq_len, dtype):
        f = lambda v: jnp.asarray(v, dtype)
        kwargs = {k: f(v) for k, v in self._emission_kwargs().items()}
        kwargs.update(self._static_kwargs())
        return hmm(self._emission, seq_len=seq_len, update=self.params,
                   startprob_prior=f(self.startprob_prior),
                   transmat_prior=f(self.transmat_prior), parallel=self.parallel, **kwargs)

    def _centre(self, X):
        return np.zeros(X.shape[1])

    def _padded(self, X, lengths, dtype):
        """``(x (S * seq_len, D), weights, lengths)``, shifted by ``_shift``, in ``dtype``."""
        n = X.shape[0]
        if lengths is None:
            lengths = [n]
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or lengths.dtype.kind not in "iuf" or np.any(
                lengths != np.round(lengths)):
            raise ValueError(f"lengths must be a 1-d sequence of integers, got {lengths!r}.")
        x, w = pad_sequences(X, lengths.astype(int))  # checks sum and positivity
        if self._emission in ("gaussian", "gmm"):  # symbols and counts are not moved
            x = x - getattr(self, "_shift", 0.0)
        return x.astype(dtype), w.astype(dtype), lengths.astype(int)

    # -- fitting ------------------------------------------------------------------------------
    def _starts(self, family, x, w, key, n_init, n_data, dtype):
        """Starting parameters with a leading ``(n_init,)`` axis: hmmlearn's ``_init``
        for the letters that need it (random, one draw per restart), the user's
        validated attributes for the others."""
        needs = {c: self._needs_init(c, a) for c, a in self._attributes.items()}
        given = self._given([c for c, need in needs.items() if not need], self.n_features)
        n_fit = sum(self._get_n_fit_scalars_per_param()[c] for c in self.params)
        if n_data < n_fit:
            _log.warning("Fitting a model with %d free scalar parameters with only %d data "
                         "points will result in a degenerate solution.", n_fit, n_data)
        known = self._known_params(given, dtype)
        if any(needs.values()):
            keys = jax.random.split(key, n_init)
            rand = _init_many(family, keys, jnp.asarray(x), jnp.asarray(w), self.n_components)
        else:
            rand = HMMParams(None, None, known["emission"])
        pick = lambda g, r: r if g is None else jnp.broadcast_to(
            jnp.asarray(g, dtype), (n_init,) + jnp.shape(g))
        emission = type(rand.emission)(*map(pick, known["emission"], rand.emission))
        return HMMParams(pick(known["s"], rand.startprob), pick(known["t"], rand.transmat),
                         emission)

    def _known_params(self, given, dtype):
        """Validated attributes as family parameters (``None`` where not given)."""
        return {"s": given.get("s"), "t": given.get("t"),
                "emission": self._emission_params(given, dtype)}

    def _fit_inputs(self, X, lengths):
        self._validate_params()
        self._check_letters()
        X = self._check_X(X, None)
        self.n_features = self._n_features_for_fit(X)
        self.n_features_in_ = X.shape[1]
        dtype = float_dtype()
        self._shift = self._centre(X).astype(dtype)
        x, w, lengths = self._padded(X, lengths, dtype)
        return x, w, X.size, with_missing(self._family(int(lengths.max()), dtype), x), dtype

    def _n_features_for_fit(self, X):
        return X.shape[1]

    def _init(self, X, lengths=None):
        """hmmlearn's ``_init``: set ``n_features`` and the attributes that ``init_params``
        (or their absence) asks for, from ``random_state``. ``lengths`` is not needed."""
        x, w, n_data, family, dtype = self._fit_inputs(X, None)
        start = self._starts(family, x, w, key_from(self.random_state), 1, n_data, dtype)
        self._store(first_set(start), family)

    def fit(self, X, lengths=None):
        """Fit by Baum-Welch. ``X (n_samples, n_features)``: sequences concatenated;
        ``lengths (n_sequences,)``: their lengths (default: one sequence)."""
        x, w, n_data, family, dtype = self._fit_inputs(X, lengths)
        key = key_from(self.random_state)
        starts = self._starts(family, x, w, key, self.n_init, n_data, dtype)
        self.monitor_ = ConvergenceMonitor(self.tol, self.n_iter, self.verbose)
        if self.n_iter == 0:  # hmmlearn: initialise only
            self._store(first_set(starts), family)
            return self
        n_steps = float(w.sum())
        # The engine's tol is on the per-step mean and stops at |gain| <= tol; a negative
        # tol (hmmlearn's -inf idiom) runs n_iter iterations.
        result = _engine_fit(family, x, weights=w, n_components=self.n_components, key=key,
                             n_init=self.n_init, max_iter=self.n_iter,
                             tol=self.tol / n_steps, init=starts, check=False)
        if bool(result.failed):
            raise ValueError(
                "Baum-Welch failed on every restart: the parameters became non-finite (a "
                "state that no data point visits, or data too far apart for float32). Use "
                "fewer components, float64 (jax.config.update('jax_enable_x64', True)), "
                "larger priors, or n_init > 1.")
        for v in np.asarray(result.trace, np.float64) * n_steps:
            if np.isfinite(v):
                self.monitor_.report(float(v))  # hmmlearn's verbose lines and notices
        self._store(jax.tree.map(np.asarray, result.params), family)
        self.restarts_log_likelihood_ = np.asarray(result.restarts.log_likelihood) * n_steps
        if np.any(self.transmat_.sum(axis=1) == 0):
            _log.warning("Some rows of transmat_ have zero sum because no transition from "
                         "the state was ever observed.")
        return self

    def _store(self, params, family):
        self.startprob_ = np.asarray(params.startprob)
        self.transmat_ = np.asarray(params.transmat)
        self._store_emission(params.emission, family)

    # -- inference ----------------------------------------------------------------------------
    def _inference_inputs(self, X, lengths):
        given = self._check()
        X = self._check_X(X, self.n_features)
        dtype = float_dtype()
        x, w, lengths = self._padded(X, lengths, dtype)
        family = with_missing(self._family(int(lengths.max()), dtype), x)
        params = self._params_from(given, dtype)
        return family, params, jnp.asarray(x), jnp.asarray(w), lengths

    def _params_from(self, given, dtype):
        known = self._known_params(given, dtype)
        return HMMParams(jnp.asarray(known["s"], dtype), jnp.asarray(known["t"], dtype),
                         known["emission"])

    def score_samples(self, X, lengths=None):
        """``(total log-likelihood, posteriors (n_samples, n_components))``."""
        family, params, x, w, lengths = self._inference_inputs(X, lengths)
        log_norm, smoothed = _posterior(family, params, x, w)
        post = unpad(np.asarray(smoothed).reshape(-1, self.n_components), lengths,
                     int(lengths.max()))
        return float(np.sum(np.asarray(log_norm, np.float64))), post

    def score(self, X, lengths=None):
        """Total log-likelihood ``log p(X)`` over all sequences (hmmlearn's convention)."""
        return self.score_samples(X, lengths)[0]

    def predict_proba(self, X, lengths=None):
        """Posterior state probabilities ``(n_samples, n_components)``."""
        return self.score_samples(X, lengths)[1]

    def decode(self, X, lengths=None, algorithm=None):
        """``(log-probability, states (n_samples,))`` by ``"viterbi"`` or ``"map"``."""
        algorithm = algorithm or self.algorithm
        if algorithm == "viterbi":
            family, params, x, w, lengths = self._inference_inputs(X, lengths)
            states, log_prob = _viterbi(family, params, x, w)
            states = unpad(np.asarray(states).reshape(-1), lengths, int(lengths.max()))
            return float(np.sum(np.asarray(log_prob, np.float64))), states
        if algorithm == "map":
            log_prob, post = self.score_samples(X, lengths)
            return log_prob, np.argmax(post, axis=1)
        raise ValueError(f"Unknown decoder {algorithm!r}: use 'viterbi' or 'map'.")

    def predict(self, X, lengths=None):
        """Most likely states ``(n_samples,)``."""
        return self.decode(X, lengths)[1]

    def aic(self, X, lengths=None):
        """Akaike information criterion ``-2 log p(X) + 2 n_free_parameters``."""
        return -2 * self.score(X, lengths) + 2 * sum(self._get_n_fit_scalars_per_param().values())

    def bic(self, X, lengths=None):
        """Bayesian information criterion ``-2 log p(X) + n_free_parameters log n_samples``."""
        n_params = sum(self._get_n_fit_scalars_per_param().values())
        return -2 * self.score(X, lengths) + n_params * np.log(len(X))

    def get_stationary_distribution(self):
        """The stationary distribution ``(n_components,)`` of ``transmat_``: its left
        eigenvector of the largest eigenvalue (1)."""
        check_is_fitted(self, "transmat_")
        k = self.n_components
        eigvals, eigvecs = linalg.eig(_probabilities(self.transmat_, "transmat_", (k, k)).T)
        v = np.real_if_close(eigvecs[:, np.argmax(eigvals)])
        return v / v.sum()

    def sample(self, n_samples=1, random_state=None, currstate=None):
        """One sequence ``(X (n_samples, n_features), states (n_samples,))``, starting from
        state ``currstate`` when given (to continue a previous sample)."""
        given = self._check()
        if not isinstance(n_samples, Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        dtype = float_dtype()
        params = self._params_from(given, dtype)
        if currstate is not None:
            if not isinstance(currstate, Integral) or not 0 <= currstate < self.n_components:
                raise ValueError(f"currstate must be a state in 0..{self.n_components - 1}, "
                                 f"got {currstate!r}.")
            params = params._replace(startprob=jax.nn.one_hot(currstate, self.n_components,
                                                              dtype=dtype))
        # A chain's first n steps are a chain of length n: draw a power of two and cut,
        # so each new n_samples does not compile again.
        n_pad = 1 << (int(n_samples) - 1).bit_length()
        key = key_from(self.random_state if random_state is None else random_state)
        x, z = _sample(self._family(1, dtype), params, n_pad, key)
        x = np.asarray(x)[:n_samples]
        if self._emission in ("gaussian", "gmm"):
            x = x + getattr(self, "_shift", 0.0)
        return self._sample_out(x), np.asarray(z[:n_samples], dtype=int)

    def _sample_out(self, x):
        return x


def _check_float_X(X, name, n_features, allow_nan=False):
    """``X`` as a float array (``allow_nan``: NaN marks a missing entry; never inf)."""
    try:
        X = check_array(X, dtype=[np.float64, np.float32], input_name="X", estimator=name,
                        ensure_all_finite="allow-nan" if allow_nan else True)
    except ValueError as err:
        if "could not convert" not in str(err):
            raise
        raise ValueError(f"{name}: X must hold numbers ({err}).") from None
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} features, but {name} is expecting "
                         f"{n_features} features as input.")
    return X


def _observed_mean(X):
    """The mean of each feature over the rows where it is observed (not NaN): ``(D,)``."""
    if not has_nan(X):
        return X.mean(axis=0)
    empty = np.flatnonzero(np.all(np.isnan(X), axis=0))
    if empty.size:
        raise ValueError(f"X column(s) {empty.tolist()} have every value missing (NaN): "
                         "there is nothing to fit them from; drop them.")
    return np.nanmean(X, axis=0)


class _GaussianRows:
    """Rows for Gaussian emissions (:class:`GaussianHMM`, ``GMMHMM``): floats, NaN a
    missing value, fitted centred."""

    def _check_X(self, X, n_features):
        return _check_float_X(X, type(self).__name__, n_features, allow_nan=True)

    def _centre(self, X):
        # Fit centred data (float32 accuracy far from the origin); the means prior moves too.
        return _observed_mean(X)


class GaussianHMM(_GaussianRows, _BaseHMM):
    """Hidden Markov model with Gaussian emissions (hmmlearn's ``GaussianHMM``).

    NaN entries of ``X`` are missing values (hmmlearn rejects them), in ``fit``,
    ``score``, ``score_samples``, ``predict``, ``predict_proba`` and ``decode``, for every
    ``covariance_type``: a step's emission log-density is the marginal density of its
    observed features, and the M-step uses their expected sufficient statistics (the
    conditional mean and covariance of the missing features given the observed ones,
    weighted by the state posteriors), exact EM as :class:`~jaxem.GaussianMixture`'s. A
    step with every value missing has emission log-density 0: it is uninformative and
    the chain passes through it. Without NaN, the computation is the complete-data one.
    """

    _emission = "gaussian"
    _attributes = {"s": "startprob_", "t": "transmat_", "m": "means_", "c": "covars_"}
    _parameter_constraints = {
        **_BaseHMM._parameter_constraints,
        "covariance_type": [StrOptions({"spherical", "diag", "full", "tied"})],
        "min_covar": [Interval(Real, 0, None, closed="left")],
        "means_prior": [Real, "array-like"],
        "means_weight": [Real, "array-like"],
        "covars_prior": [Real, "array-like"],
        "covars_weight": [Real, "array-like"],
    }

    def __init__(self, n_components=1, covariance_type="diag", min_covar=1e-3,
                 startprob_prior=1.0, transmat_prior=1.0, means_prior=0, means_weight=0,
                 covars_prior=1e-2, covars_weight=1, algorithm="viterbi", random_state=None,
                 n_iter=10, tol=1e-2, verbose=False, params="stmc", init_params="stmc",
                 implementation="log", n_init=1, parallel=False):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.min_covar = min_covar
        self.startprob_prior = startprob_prior
        self.transmat_prior = transmat_prior
        self.means_prior = means_prior
        self.means_weight = means_weight
        self.covars_prior = covars_prior
        self.covars_weight = covars_weight
        self.algorithm = algorithm
        self.random_state = random_state
        self.n_iter = n_iter
        self.tol = tol
        self.verbose = verbose
        self.params = params
        self.init_params = init_params
        self.implementation = implementation
        self.n_init = n_init
        self.parallel = parallel

    def _emission_kwargs(self):
        shift = getattr(self, "_shift", 0.0)
        return dict(means_prior=np.asarray(self.means_prior) - shift,
                    means_weight=self.means_weight, covars_prior=self.covars_prior,
                    covars_weight=self.covars_weight, min_covar=self.min_covar)

    def _static_kwargs(self):
        return dict(covariance_type=self.covariance_type)

    def _n_features_of_attributes(self):
        return _array(self.means_, "means_", ndim=2).shape[1]

    def _n_emission_scalars(self):
        k, d = self.n_components, self.n_features
        cov = {"spherical": k, "diag": k * d, "full": k * d * (d + 1) // 2,
               "tied": d * (d + 1) // 2}[self.covariance_type]
        return {"m": k * d, "c": cov}

    def _check_emission(self, letter, n_features):
        k, d, ct = self.n_components, n_features, self.covariance_type
        if letter == "m":
            means = _array(self.means_, "means_", ndim=2)
            if means.shape != (k, d):
                raise ValueError(f"means_ must have shape (n_components, n_features) = "
                                 f"{(k, d)}, got {means.shape}.")
            return means
        c = _array(self._covars_, "covars_")
        shape = {"spherical": (k,), "diag": (k, d), "full": (k, d, d), "tied": (d, d)}[ct]
        if c.shape != shape:
            raise ValueError(f"{ct!r} covars_ must have shape {shape}, got {c.shape}.")
        if ct in ("spherical", "diag"):
            if np.any(c <= 0):
                raise ValueError(f"{ct!r} covars_ must be positive.")
            return c
        for i, m in enumerate(c.reshape(-1, d, d)):
            if not np.allclose(m, m.T) or np.any(linalg.eigvalsh(m) <= 0):
                which = "" if ct == "tied" else f" of state {i}"
                raise ValueError(f"{ct!r} covars_{which} must be symmetric, positive-definite.")
        return c

    def _emission_params(self, given, dtype):
        shift = getattr(self, "_shift", 0.0)
        fam = self._family(1, dtype).emission
        means = given["m"] - shift if "m" in given else None
        prec = None
        if "c" in given:
            prec = fam.from_covariances(None, jnp.asarray(given["c"], dtype)).precisions_cholesky
        return GaussianEmissionParams(None if means is None else jnp.asarray(means, dtype), prec)

    def _store_emission(self, emission, family):
        self.means_ = np.asarray(emission.means) + self._shift
        self._covars_ = np.array(family.emission.covariances(emission))

    @property
    def covars_(self):
        """Covariances as full matrices ``(n_components, n_features, n_features)``."""
        c = np.asarray(self._covars_)
        k = self.n_components
        if self.covariance_type == "full":
            return c
        if self.covariance_type == "tied":
            return np.broadcast_to(c, (k,) + c.shape).copy()
        if self.covariance_type == "diag":
            return np.stack([np.diag(v) for v in c])
        d = np.shape(self.means_)[1] if hasattr(self, "means_") else self.n_features
        return np.stack([np.eye(d) * v for v in c])

    @covars_.setter
    def covars_(self, covars):
        covars = np.array(covars, dtype=float)
        if self.covariance_type == "spherical" and covars.ndim > 1 and len(covars):
            flat = covars.reshape(len(covars), -1)
            if np.all(flat == flat[:, :1]):  # hmmlearn also takes (K, D) or (K, 1, 1) forms
                covars = flat[:, 0]
        self._covars_ = covars


class CategoricalHMM(_BaseHMM):
    """Hidden Markov model with categorical emissions (hmmlearn's ``CategoricalHMM``).

    ``X (n_samples, 1)`` holds integer symbols ``0 .. n_features - 1``; ``fit`` sets
    ``n_features`` (when None) to the largest symbol + 1, as hmmlearn.
    """

    _emission = "categorical"
    _attributes = {"s": "startprob_", "t": "transmat_", "e": "emissionprob_"}
    _parameter_constraints = {
        **_BaseHMM._parameter_constraints,
        "emissionprob_prior": [Real, "array-like"],
        "n_features": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, n_components=1, startprob_prior=1.0, transmat_prior=1.0,
                 emissionprob_prior=1.0, n_features=None, algorithm="viterbi",
                 random_state=None, n_iter=10, tol=1e-2, verbose=False, params="ste",
                 init_params="ste", implementation="log", n_init=1, parallel=False):
        self.n_components = n_components
        self.startprob_prior = startprob_prior
        self.transmat_prior = transmat_prior
        self.emissionprob_prior = emissionprob_prior
        self.n_features = n_features
        self.algorithm = algorithm
        self.random_state = random_state
        self.n_iter = n_iter
        self.tol = tol
        self.verbose = verbose
        self.params = params
        self.init_params = init_params
        self.implementation = implementation
        self.n_init = n_init
        self.parallel = parallel

    def _check_X(self, X, n_features):
        X = self._check_and_set_n_features(X, n_features, set_it=False)
        if X.shape[1] != 1:
            raise ValueError(f"CategoricalHMM expects X of shape (n_samples, 1), one symbol "
                             f"per row, got {X.shape[1]} columns.")
        return X

    def _check_and_set_n_features(self, X, n_features=None, set_it=True):
        """Integer symbols ``X (n_samples, 1)`` below ``n_features`` (hmmlearn's check);
        with ``set_it``, ``n_features`` becomes the largest symbol + 1 when unset."""
        X = check_array(X, dtype=None, input_name="X", estimator="CategoricalHMM")
        if not np.issubdtype(X.dtype, np.integer):
            raise ValueError(f"CategoricalHMM expects integer symbols in X, got dtype "
                             f"{X.dtype}: Symbols should be integers (X.astype(int)).")
        if X.min() < 0:
            raise ValueError("Symbols in X must be non-negative integers, got "
                             f"{X.min()}.")
        n = n_features if n_features is not None else self.n_features
        if n is not None and X.max() >= n:
            raise ValueError(f"Largest symbol is {X.max()} but the model only emits symbols "
                             f"up to {n - 1}.")
        if set_it and self.n_features is None:
            self.n_features = int(X.max()) + 1
        return X

    def _n_features_for_fit(self, X):
        if self.n_features is not None:
            return self.n_features
        if "e" not in self.init_params and hasattr(self, "emissionprob_"):
            return max(np.shape(self.emissionprob_)[-1], int(X.max()) + 1)  # the kept one's
        return int(X.max()) + 1

    def _n_features_of_attributes(self):
        return _array(self.emissionprob_, "emissionprob_", ndim=2).shape[1] \
            if self.n_features is None else self.n_features

    def _n_emission_scalars(self):
        return {"e": self.n_components * (self.n_features - 1)}

    def _emission_kwargs(self):
        return dict(emissionprob_prior=self.emissionprob_prior)

    def _static_kwargs(self):
        return dict(n_symbols=int(self.n_features))

    def _check_emission(self, letter, n_features):
        return _probabilities(self.emissionprob_, "emissionprob_",
                              (self.n_components, n_features))

    def _emission_params(self, given, dtype):
        e = given.get("e")
        return CategoricalEmissionParams(None if e is None else jnp.asarray(e, dtype))

    def _store_emission(self, emission, family):
        self.emissionprob_ = np.asarray(emission.emissionprob)

    def _sample_out(self, x):
        return x.astype(np.int64)


class PoissonHMM(_BaseHMM):
    """Hidden Markov model with Poisson emissions (hmmlearn's ``PoissonHMM``)."""

    _emission = "poisson"
    _attributes = {"s": "startprob_", "t": "transmat_", "l": "lambdas_"}
    _parameter_constraints = {
        **_BaseHMM._parameter_constraints,
        "lambdas_prior": [Real, "array-like"],
        "lambdas_weight": [Real, "array-like"],
    }

    def __init__(self, n_components=1, startprob_prior=1.0, transmat_prior=1.0,
                 lambdas_prior=0.0, lambdas_weight=0.0, algorithm="viterbi",
                 random_state=None, n_iter=10, tol=1e-2, verbose=False, params="stl",
                 init_params="stl", implementation="log", n_init=1, parallel=False):
        self.n_components = n_components
        self.startprob_prior = startprob_prior
        self.transmat_prior = transmat_prior
        self.lambdas_prior = lambdas_prior
        self.lambdas_weight = lambdas_weight
        self.algorithm = algorithm
        self.random_state = random_state
        self.n_iter = n_iter
        self.tol = tol
        self.verbose = verbose
        self.params = params
        self.init_params = init_params
        self.implementation = implementation
        self.n_init = n_init
        self.parallel = parallel

    def _check_X(self, X, n_features):
        X = _check_float_X(X, "PoissonHMM", n_features)
        if np.any(X < 0) or not np.all(X == np.round(X)):
            raise ValueError("PoissonHMM expects non-negative integer counts in X.")
        return X

    def _n_features_of_attributes(self):
        return _array(self.lambdas_, "lambdas_", ndim=2).shape[1]

    def _n_emission_scalars(self):
        return {"l": self.n_components * self.n_features}

    def _emission_kwargs(self):
        return dict(lambdas_prior=self.lambdas_prior, lambdas_weight=self.lambdas_weight)

    def _check_emission(self, letter, n_features):
        lam = _array(self.lambdas_, "lambdas_")
        if lam.shape != (self.n_components, n_features):
            raise ValueError(f"lambdas_ must have shape (n_components, n_features) = "
                             f"{(self.n_components, n_features)}, got {lam.shape}.")
        if np.any(lam < 0):
            raise ValueError("lambdas_ must be non-negative.")
        return lam

    def _emission_params(self, given, dtype):
        lam = given.get("l")
        return PoissonEmissionParams(None if lam is None else jnp.asarray(lam, dtype))

    def _store_emission(self, emission, family):
        self.lambdas_ = np.asarray(emission.lambdas)

    def _sample_out(self, x):
        return x.astype(np.int64)
