"""hmmlearn-style estimators: ``GaussianHMM``, ``CategoricalHMM``, ``PoissonHMM``.

Thin host-side shells over :class:`jaxem.families.hmm.HMM` and :func:`jaxem.fit`: they
validate input, pad hmmlearn's concatenated ``X`` + ``lengths`` into sequences, turn
``random_state`` into a key, call the engine once (``n_init`` restarts run in parallel,
which hmmlearn lacks), raise or warn on the host and store hmmlearn's attributes.

Conventions as hmmlearn 0.3.3: ``score`` is the total log-likelihood of all sequences,
``monitor_.history`` holds it per iteration, ``tol`` is on its gain, the M-step uses the
same priors and defaults (so with the same starting parameters the fits agree).
Differences: convergence is ``|gain| <= tol`` (hmmlearn: ``gain < tol``); starting
transition rows are Dirichlet(1) draws (hmmlearn: Dirichlet(1/K)).

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
import warnings
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted

from jaxem.batch import fit as _engine_fit
from jaxem.families.emissions import (
    CategoricalEmissionParams,
    GaussianEmissionParams,
    PoissonEmissionParams,
)
from jaxem.families.hmm import HMMParams, hmm, pad_sequences, unpad

__all__ = ["ConvergenceMonitor", "GaussianHMM", "CategoricalHMM", "PoissonHMM"]


@dataclass
class ConvergenceMonitor:
    """hmmlearn's ``monitor_``: the total log-likelihood per iteration and the outcome."""

    tol: float
    n_iter: int
    history: list = field(default_factory=list)
    iter: int = 0
    converged: bool = False


def _float_dtype():
    return np.float64 if jax.config.jax_enable_x64 else np.float32


def _key(random_state):
    return jax.random.key(check_random_state(random_state).randint(np.iinfo(np.int32).max))


@jax.jit
def _posterior(family, params, x, w):
    post = family.forward_backward(params, x, w)
    return post.log_normalizer, post.smoothed


@jax.jit
def _viterbi(family, params, x, w):
    return family.viterbi(params, x, w)


@functools.partial(jax.jit, static_argnums=(4, 5))
def _init_many(family, keys, x, w, n_components, method):
    return jax.vmap(lambda k: family.init(k, x, w, n_components, method))(keys)


class _BaseHMM(BaseEstimator):
    _emission = ""
    _letters = ""

    # -- hooks of the concrete estimators -------------------------------------------------
    def _check_X(self, X, fitting):
        raise NotImplementedError

    def _emission_kwargs(self):
        return {}

    def _given_emission(self, dtype):
        """Emission parameters from the user's attributes (when not in ``init_params``)."""
        raise NotImplementedError

    def _store_emission(self, emission):
        raise NotImplementedError

    # -- shared host-side logic -----------------------------------------------------------
    def _family(self, seq_len, dtype):
        f = lambda v: jnp.asarray(v, dtype)
        kwargs = {k: f(v) for k, v in self._emission_kwargs().items()}
        kwargs.update(self._static_kwargs())
        return hmm(self._emission, seq_len=seq_len, update=self.params,
                   startprob_prior=f(self.startprob_prior),
                   transmat_prior=f(self.transmat_prior), parallel=self.parallel, **kwargs)

    def _static_kwargs(self):
        return {}

    def _prepare(self, X, lengths, fitting):
        X = self._check_X(X, fitting)
        x, w = pad_sequences(X, lengths)
        lengths = np.asarray([X.shape[0]] if lengths is None else lengths, int)
        return X, x, w, lengths

    def fit(self, X, lengths=None):
        """Fit by Baum-Welch. ``X (n_samples, n_features)``: sequences concatenated;
        ``lengths (n_sequences,)``: their lengths (default: one sequence)."""
        for name in ("n_components", "n_iter", "n_init"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        X, x, w, lengths = self._prepare(X, lengths, fitting=True)
        dtype = _float_dtype()
        self._shift = self._centre(X).astype(dtype)
        x = (x - self._shift).astype(dtype)
        w = w.astype(dtype)
        family = self._family(int(lengths.max()), dtype)
        k = self.n_components
        key = _key(self.random_state)
        keys = jax.random.split(key, self.n_init)
        needs = set(self._letters) - set(self.init_params)
        if not needs:
            init = "kmeans"
        elif needs == set(self._letters):  # every starting value is the user's
            init = self._params_for_inference(dtype, check=False)
        else:  # some starting values are the user's, the others random
            p = _init_many(family, keys, jnp.asarray(x), jnp.asarray(w), k, "kmeans")
            init = self._override(p, dtype)
        result = _engine_fit(family, x, weights=w, n_components=k, key=key,
                             n_init=self.n_init, max_iter=self.n_iter,
                             tol=self.tol / float(w.sum()), init=init, check=False)
        if bool(result.failed):
            raise ValueError(
                "Baum-Welch failed on every restart: the parameters became non-finite "
                "(e.g. a state that no data point visits, or a singular covariance). Use "
                "fewer components, more data, larger priors (covars_prior), or n_init > 1.")
        n_steps = float(w.sum())
        trace = np.asarray(result.trace, np.float64) * n_steps
        history = [v for v in trace.tolist() if np.isfinite(v)]
        self.monitor_ = ConvergenceMonitor(self.tol, self.n_iter, history, len(history),
                                           bool(result.converged))
        if np.any(np.diff(history) < -1e-6 * max(1.0, abs(history[-1]))):
            warnings.warn("The log-likelihood decreased during EM: the model is not "
                          "converging (check the data scale or use float64).", RuntimeWarning)
        params = jax.tree.map(np.asarray, result.params)
        self.startprob_ = params.startprob
        self.transmat_ = params.transmat
        self._store_emission(params.emission, family)
        self.n_features_in_ = X.shape[1]
        self.restarts_log_likelihood_ = np.asarray(result.restarts.log_likelihood) * n_steps
        if np.any(self.transmat_.sum(axis=1) == 0):
            warnings.warn("Some rows of transmat_ have zero sum because no transition from "
                          "the state was ever observed.", RuntimeWarning)
        return self

    def _override(self, p, dtype):
        """Replace random starting values with the user's for letters not in init_params."""
        bc = lambda a, like: jnp.broadcast_to(jnp.asarray(a, dtype), like.shape)
        start, trans, emis = p
        if "s" not in self.init_params:
            start = bc(self.startprob_, start)
        if "t" not in self.init_params:
            trans = bc(self.transmat_, trans)
        given = self._given_emission(dtype)
        emis = type(emis)(*[
            bc(g, e) if g is not None else e for g, e in zip(given, emis)])
        return HMMParams(start, trans, emis)

    def _centre(self, X):
        return np.zeros(X.shape[1])

    def _params_for_inference(self, dtype, check=True):
        if check:
            check_is_fitted(self, "startprob_")
        missing = [a for a in ("startprob_", "transmat_") if not hasattr(self, a)]
        if missing:
            raise ValueError(f"init_params={self.init_params!r} leaves {missing} to you: set "
                             "them before fit, or add their letters to init_params.")
        emission = self._given_emission(dtype, all_letters=True)
        if any(v is None for v in emission):
            raise ValueError(f"init_params={self.init_params!r} leaves the emission parameters "
                             "to you: set them before fit, or add their letters to init_params.")
        return HMMParams(jnp.asarray(self.startprob_, dtype), jnp.asarray(self.transmat_, dtype),
                         emission)

    def _run(self, fn, X, lengths):
        X, x, w, lengths = self._prepare(X, lengths, fitting=False)
        dtype = _float_dtype()
        shift = getattr(self, "_shift", np.zeros(X.shape[1]))
        x = (x - shift).astype(dtype)
        family = self._family(int(lengths.max()), dtype)
        out = fn(family, self._params_for_inference(dtype), jnp.asarray(x),
                 jnp.asarray(w, dtype))
        return jax.tree.map(np.asarray, out), lengths, int(lengths.max())

    def score_samples(self, X, lengths=None):
        """``(total log-likelihood, posteriors (n_samples, n_components))``."""
        (log_norm, smoothed), lengths, t = self._run(_posterior, X, lengths)
        return float(np.sum(log_norm)), unpad(smoothed.reshape(-1, self.n_components),
                                              lengths, t)

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
            (states, log_prob), lengths, t = self._run(_viterbi, X, lengths)
            return float(np.sum(log_prob)), unpad(states.reshape(-1), lengths, t)
        if algorithm == "map":
            log_prob, post = self.score_samples(X, lengths)
            return log_prob, np.argmax(post, axis=1)
        raise ValueError(f"Unknown decoder {algorithm!r}: use 'viterbi' or 'map'.")

    def predict(self, X, lengths=None):
        """Most likely states ``(n_samples,)``."""
        return self.decode(X, lengths)[1]

    def sample(self, n_samples=1, random_state=None):
        """One sequence ``(X (n_samples, n_features), states (n_samples,))``."""
        dtype = _float_dtype()
        family = self._family(1, dtype)
        params = self._params_for_inference(dtype)
        key = _key(self.random_state if random_state is None else random_state)
        x, z = jax.jit(family.sample, static_argnums=2)(key, params, int(n_samples))
        x = np.asarray(x) + self._shift_out()
        return self._sample_out(x), np.asarray(z)

    def _shift_out(self):
        return getattr(self, "_shift", 0.0)

    def _sample_out(self, x):
        return x


def _check_finite_float(X, name):
    X = check_array(X, dtype=[np.float64, np.float32], ensure_min_samples=1)
    if X.shape[0] == 0:
        raise ValueError(f"{name}: X is empty.")
    return X


class GaussianHMM(_BaseHMM):
    """Hidden Markov model with Gaussian emissions (hmmlearn's ``GaussianHMM``)."""

    _emission = "gaussian"
    _letters = "stmc"

    def __init__(self, n_components=1, covariance_type="diag", min_covar=1e-3,
                 startprob_prior=1.0, transmat_prior=1.0, means_prior=0, means_weight=0,
                 covars_prior=1e-2, covars_weight=1, algorithm="viterbi", random_state=None,
                 n_iter=10, tol=1e-2, verbose=False, params="stmc", init_params="stmc",
                 n_init=1, parallel=False):
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
        self.n_init = n_init
        self.parallel = parallel

    def _check_X(self, X, fitting):
        return _check_finite_float(X, "GaussianHMM")

    def _centre(self, X):
        # Fit centred data (float32 accuracy far from the origin); the means prior moves too.
        return X.mean(axis=0)

    def _emission_kwargs(self):
        shift = getattr(self, "_shift", 0.0)
        return dict(means_prior=np.asarray(self.means_prior) - shift,
                    means_weight=self.means_weight, covars_prior=self.covars_prior,
                    covars_weight=self.covars_weight, min_covar=self.min_covar)

    def _static_kwargs(self):
        return dict(covariance_type=self.covariance_type)

    def _given_emission(self, dtype, all_letters=False):
        fam = self._family(1, dtype).emission
        shift = getattr(self, "_shift", 0.0)
        use = lambda c, name: (all_letters or c not in self.init_params) and hasattr(self, name)
        means = jnp.asarray(self.means_ - shift, dtype) if use("m", "means_") else None
        if use("c", "_covars_"):
            prec = fam.from_covariances(jnp.zeros(1), jnp.asarray(self._covars_, dtype))[1]
        else:
            prec = None
        return GaussianEmissionParams(means, prec)

    def _store_emission(self, emission, family):
        self.means_ = np.asarray(emission.means) + self._shift
        self._covars_ = np.asarray(family.emission.covariances(emission))

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
        d = self.means_.shape[1]
        return np.stack([np.eye(d) * v for v in c])

    @covars_.setter
    def covars_(self, covars):
        covars = np.asarray(covars, dtype=float).copy()
        if self.covariance_type == "spherical" and covars.ndim == 2:
            covars = covars[:, 0]  # hmmlearn also accepts (K, D) spherical variances
        self._covars_ = covars


class CategoricalHMM(_BaseHMM):
    """Hidden Markov model with categorical emissions (hmmlearn's ``CategoricalHMM``).

    ``X (n_samples, 1)`` holds integer symbols ``0 .. n_features - 1``.
    """

    _emission = "categorical"
    _letters = "ste"

    def __init__(self, n_components=1, startprob_prior=1.0, transmat_prior=1.0,
                 emissionprob_prior=1.0, n_features=None, algorithm="viterbi",
                 random_state=None, n_iter=10, tol=1e-2, verbose=False, params="ste",
                 init_params="ste", n_init=1, parallel=False):
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
        self.n_init = n_init
        self.parallel = parallel

    def _check_X(self, X, fitting):
        X = check_array(X, dtype=None, ensure_min_samples=1)
        if X.shape[1] != 1:
            raise ValueError(f"CategoricalHMM expects one column of symbols, got "
                             f"{X.shape[1]} columns.")
        if not np.all(np.isfinite(X)) or not np.all(X == np.round(X)) or X.min() < 0:
            raise ValueError("Symbols must be non-negative integers.")
        X = X.astype(np.int64)
        n = self.n_features if self.n_features is not None else getattr(self, "n_features_", None)
        if n is None and fitting:
            n = int(X.max()) + 1
        if X.max() >= n:
            raise ValueError(f"Largest symbol is {X.max()} but the model only emits symbols "
                             f"up to {n - 1}.")
        if fitting:
            self.n_features_ = n
        return X

    def _emission_kwargs(self):
        return dict(emissionprob_prior=self.emissionprob_prior)

    def _static_kwargs(self):
        return dict(n_symbols=int(self.n_features_))

    def _given_emission(self, dtype, all_letters=False):
        if (all_letters or "e" not in self.init_params) and hasattr(self, "emissionprob_"):
            return CategoricalEmissionParams(jnp.asarray(self.emissionprob_, dtype))
        return CategoricalEmissionParams(None)

    def _store_emission(self, emission, family):
        self.emissionprob_ = np.asarray(emission.emissionprob)

    def _sample_out(self, x):
        return x.astype(np.int64)


class PoissonHMM(_BaseHMM):
    """Hidden Markov model with Poisson emissions (hmmlearn's ``PoissonHMM``)."""

    _emission = "poisson"
    _letters = "stl"

    def __init__(self, n_components=1, startprob_prior=1.0, transmat_prior=1.0,
                 lambdas_prior=0.0, lambdas_weight=0.0, algorithm="viterbi",
                 random_state=None, n_iter=10, tol=1e-2, verbose=False, params="stl",
                 init_params="stl", n_init=1, parallel=False):
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
        self.n_init = n_init
        self.parallel = parallel

    def _check_X(self, X, fitting):
        X = _check_finite_float(X, "PoissonHMM")
        if np.any(X < 0) or not np.all(X == np.round(X)):
            raise ValueError("PoissonHMM expects non-negative integer counts.")
        return X

    def _emission_kwargs(self):
        return dict(lambdas_prior=self.lambdas_prior, lambdas_weight=self.lambdas_weight)

    def _given_emission(self, dtype, all_letters=False):
        if (all_letters or "l" not in self.init_params) and hasattr(self, "lambdas_"):
            return PoissonEmissionParams(jnp.asarray(self.lambdas_, dtype))
        return PoissonEmissionParams(None)

    def _store_emission(self, emission, family):
        self.lambdas_ = np.asarray(emission.lambdas)

    def _sample_out(self, x):
        return x.astype(np.int64)
