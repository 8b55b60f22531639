"""``BernoulliMixture``, ``CategoricalMixture``, ``PoissonMixture``: scikit-learn's names.

Thin shells over :func:`jaxem.fit` with the families of :mod:`jaxem.families.bernoulli`,
:mod:`~jaxem.families.categorical` and :mod:`~jaxem.families.poisson`: they validate the
input, mark missing entries (NaN, and ``-1`` for category codes) for the engine (as
``-1``, which its data check accepts), run the ``n_init`` restarts in one batched call
and store the fitted ``*_`` attributes. A missing entry is marginalised exactly; a row
with every entry missing carries no information and is rejected.

Fitted attributes a scikit-learn user looks for:

====================  ==================================================================
``weights_``          ``(n_components,)`` mixing weights
``probabilities_``    Bernoulli: ``(n_components, n_features)`` ``p(x_d = 1 | k)``;
                      categorical: list of ``(n_components, n_categories_[j])`` arrays
``feature_log_prob_`` their logs (the name of scikit-learn's naive Bayes classifiers)
``rates_``            Poisson: ``(n_components, n_features)`` means
``n_categories_``     categorical: ``(n_features,)`` values per attribute
``lower_bound_``      mean per-row log-likelihood at the last E-step; ``lower_bounds_``
                      its trace; ``n_iter_``, ``converged_``, ``restarts_`` (every restart)
====================  ==================================================================

``fit(X, y)`` takes partial labels as :class:`jaxem.GaussianMixture` does (``-1``
unlabelled, ``j`` clamps the row to component ``j``).
"""
from __future__ import annotations

import functools
import warnings
from numbers import Integral, Real

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from jaxem import rows
from jaxem.batch import FitError, auto_chunk_size, fit
from jaxem.estimators._base import (MixtureMixin, check_n_samples, float_dtype, key_from,
                                    partial_labels, sample_weights, to_numpy)
from jaxem.families.bernoulli import BernoulliParams, bernoulli
from jaxem.families.categorical import CategoricalParams, categorical
from jaxem.families.poisson import PoissonParams, poisson
from jaxem.init import INIT_METHODS
from jaxem.persist import Saveable


class _DiscreteMixture(Saveable, MixtureMixin, DensityMixin, BaseEstimator):
    """What the three estimators share: fit, validation, inference, sampling (and, from
    :class:`~jaxem.estimators._base.MixtureMixin`, predict, score, BIC/AIC).

    A subclass gives ``_check_values(X, fitting) -> X`` (float, NaN where missing),
    ``_family()``, ``_params()`` and ``_store(params)``, and its ``__init__`` stores its
    arguments with :meth:`_set_params_from`.
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "alpha": [Interval(Real, 0.0, None, closed="left")],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions(set(INIT_METHODS))],
        "random_state": ["random_state"],
        "chunk_size": [Interval(Integral, 1, None, closed="left"), None],
    }

    def _set_params_from(self, arguments: dict) -> None:
        """``__init__``'s body: store every argument unchanged, under its own name
        (scikit-learn's rule for estimator parameters)."""
        for name, value in arguments.items():
            if name != "self":
                setattr(self, name, value)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # NaN marks a missing entry, marginalised exactly
        return tags

    # -- fitting (fit, fit_predict: MixtureMixin) ----------------------------------------
    def _fit(self, X, y, sample_weight):
        """Fit on ``X`` (partial labels ``y``); return ``(X validated, labels or None)``."""
        self._validate_params()
        X = self._validate(X, reset=True)
        n = X.shape[0]
        if n < self.n_components:
            raise ValueError(f"Expected n_samples >= n_components but got "
                             f"n_components = {self.n_components}, n_samples = {n}.")
        labels = partial_labels(y, n, self.n_components)
        w = sample_weights(sample_weight, n, X.dtype)
        family = self._family()
        try:
            result = fit(family, np.where(np.isnan(X), -1.0, X), n_components=self.n_components,
                         key=key_from(self.random_state), n_init=self.n_init, weights=w,
                         max_iter=self.max_iter, tol=self.tol, init=self.init_params,
                         chunk_size=self.chunk_size, labels=labels)
        except FitError:
            raise FitError("Fitting the mixture failed on every restart: the parameters "
                           "became non-finite. Increase alpha (e.g. alpha=1.0) or use fewer "
                           "components.") from None
        result = to_numpy(result)
        self._store(result.params)
        self._store_run(result)
        if not self.converged_:
            warnings.warn("Best performing initialization did not converge. Try different "
                          "init parameters, or increase max_iter or tol.", ConvergenceWarning)
        return X, labels

    def _validate(self, X, reset: bool) -> np.ndarray:
        """``X`` as a float array with NaN at the missing entries, checked."""
        X = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32],
                          ensure_all_finite="allow-nan", ensure_min_samples=1)
        X = self._check_values(X.astype(float_dtype()), fitting=reset)
        empty = np.flatnonzero(np.all(np.isnan(X), axis=1))
        if empty.size:
            raise ValueError(f"X has {empty.size} row(s) with every entry missing (rows "
                             f"{empty[:5].tolist()}{' ...' if empty.size > 5 else ''}): such "
                             "a row carries no information; drop it before calling "
                             f"{type(self).__name__}.")
        return X

    # -- inference --------------------------------------------------------------------
    def _posterior(self, X):
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        family, params = self._family(), jax.tree.map(jnp.asarray, self._params())
        x = jnp.asarray(np.where(np.isnan(X), -1.0, X))
        chunk = self.chunk_size or auto_chunk_size((1,) + x.shape, 1, self.n_components, family)
        resp, ll = _posterior(family, params, x, chunk)
        return np.asarray(resp), np.asarray(ll)

    def sample(self, n_samples=1):
        """Draw ``(X (n_samples, n_features) of ints, y (n_samples,))``, grouped by component."""
        check_is_fitted(self)
        n_samples = check_n_samples(n_samples)
        params = jax.tree.map(jnp.asarray, self._params())
        x, z = _sample(self._family(), params, key_from(self.random_state), n_samples)
        x, z = np.asarray(x).astype(np.int64), np.asarray(z)
        order = np.argsort(z, kind="stable")
        return x[order], z[order]

    def _n_parameters(self) -> int:
        return self._family().n_free_parameters(self.n_components, self.n_features_in_)


@functools.partial(jax.jit, static_argnames="chunk_size")
def _posterior(family, params, x, chunk_size):
    return rows.map_rows(lambda xc: family.posterior(family.log_joint(params, xc)), x,
                         chunk_size)


@functools.partial(jax.jit, static_argnames="n")
def _sample(family, params, key, n):
    return family.sample(key, params, n)


def _bad(X, mask, what: str, estimator: str) -> None:
    """Raise naming the first entry of ``X`` where ``mask`` holds (scikit-learn's
    "Negative values in data" first, when that entry is negative)."""
    if np.any(mask):
        i, j = np.argwhere(mask)[0]
        negative = "Negative values in data: " if X[i, j] < 0 else ""
        raise ValueError(f"{negative}X must hold {what} for {estimator} (NaN marks a missing "
                         f"entry); got X[{i}, {j}] = {X[i, j].item()!r}.")


def _check_non_negative_integers(X, what: str, estimator: str) -> None:
    """Raise unless every observed (non-NaN) entry of ``X`` is an integer >= 0 (a
    negative entry is named first)."""
    _bad(X, X < 0, what, estimator)
    _bad(X, ~np.isnan(X) & (X != np.floor(X)), what, estimator)


def _integer_input_tags(tags):
    """Tags of an estimator whose observed entries are integers >= 0 (counts, codes):
    ``positive_only``, and ``categorical``, which is also what makes scikit-learn's
    estimator checks pass such data (non-negative integers) rather than real numbers."""
    tags.input_tags.positive_only = True
    tags.input_tags.categorical = True
    return tags


class BernoulliMixture(_DiscreteMixture):
    """A mixture of independent Bernoulli features (binary data), fitted by EM.

    Args:
      n_components: number of components.
      alpha: pseudo-count added to every expected count (scikit-learn's naive-Bayes
        meaning): a Dirichlet prior on the weights and a Beta prior on each probability,
        so EM finds the MAP estimate; ``alpha=0`` is maximum likelihood.
      binarize: threshold for mapping real ``X`` to 0/1 (``x > binarize`` is 1), as in
        ``sklearn.naive_bayes.BernoulliNB``, in ``fit`` and in every later method;
        ``None`` (the default): ``X`` must already hold 0/1.
      n_init, max_iter, tol, init_params, random_state, chunk_size: as
        :class:`jaxem.GaussianMixture` (the restarts run in one batched call).

    ``X`` holds 0/1 values, NaN for a missing entry (marginalised exactly). Fitted:
    ``weights_ (K,)``, ``probabilities_ (K, D)`` (``p(x_d = 1 | k)``),
    ``feature_log_prob_ (K, D)`` (their logs), and the run's ``lower_bound_``,
    ``n_iter_``, ``converged_``.

    >>> import numpy as np
    >>> from jaxem import BernoulliMixture
    >>> X = np.array([[1, 1, 0], [1, 1, np.nan], [0, 0, 1], [0, np.nan, 1]] * 5)
    >>> bm = BernoulliMixture(2, random_state=0).fit(X)
    >>> bm.probabilities_.shape, bm.predict(X[:4]).tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])
    ((2, 3), True)
    """

    _parameter_constraints: dict = {**_DiscreteMixture._parameter_constraints,
                                    "binarize": [Real, None]}

    def __init__(self, n_components=1, *, alpha=1.0, binarize=None, tol=1e-3, max_iter=100,
                 n_init=1, init_params="kmeans", random_state=None, chunk_size=None):
        self._set_params_from(locals())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = self.binarize is None  # then 0/1 only
        return tags

    def _check_values(self, X, fitting):
        if self.binarize is not None:  # NaN stays missing
            X = np.where(np.isnan(X), np.nan, X > self.binarize).astype(X.dtype)
        _bad(X, ~np.isnan(X) & (X != 0) & (X != 1), "binary values (0 or 1; or set "
             "binarize, a threshold)", "BernoulliMixture")
        return X

    def _family(self):
        return bernoulli(self.alpha)

    def _params(self):
        return BernoulliParams(self.weights_, self.probabilities_)

    def _store(self, params):
        self.weights_, self.probabilities_ = params
        with np.errstate(divide="ignore"):
            self.feature_log_prob_ = np.log(self.probabilities_)


class PoissonMixture(_DiscreteMixture):
    """A mixture of independent Poisson counts, fitted by EM.

    Args:
      n_components: number of components.
      alpha: pseudo-count added to every expected count: a Dirichlet prior on the
        weights and ``alpha`` pseudo-events per rate; ``beta``: pseudo-observations per
        rate. The rates' prior is Gamma(alpha + 1, beta) and EM finds the MAP estimate;
        ``alpha = beta = 0`` (the default) is maximum likelihood.
      n_init, max_iter, tol, init_params, random_state, chunk_size: as
        :class:`jaxem.GaussianMixture`.

    ``X`` holds non-negative integer counts, NaN for a missing entry (marginalised
    exactly). Fitted: ``weights_ (K,)``, ``rates_ (K, D)``, ``lower_bound_``, ``n_iter_``,
    ``converged_``.
    """

    _parameter_constraints: dict = {**_DiscreteMixture._parameter_constraints,
                                    "beta": [Interval(Real, 0.0, None, closed="left")]}

    def __init__(self, n_components=1, *, alpha=0.0, beta=0.0, tol=1e-3, max_iter=100,
                 n_init=1, init_params="kmeans", random_state=None, chunk_size=None):
        self._set_params_from(locals())

    def __sklearn_tags__(self):
        return _integer_input_tags(super().__sklearn_tags__())

    def _check_values(self, X, fitting):
        _check_non_negative_integers(X, "non-negative integer counts", "PoissonMixture")
        return X

    def _family(self):
        return poisson(self.alpha, self.beta)

    def _params(self):
        return PoissonParams(self.weights_, self.rates_)

    def _store(self, params):
        self.weights_, self.rates_ = params


class CategoricalMixture(_DiscreteMixture):
    """Naive Bayes with a hidden class: a mixture of independent categorical attributes.

    Args:
      n_components: number of components (hidden classes).
      n_categories: values per attribute: ``None`` (the largest code seen in ``fit``,
        plus one), an int for every attribute, or one int per attribute.
      alpha: pseudo-count added to every expected count (Laplace smoothing at 1): a
        Dirichlet prior on the weights and on each attribute's probabilities, so EM finds
        the MAP estimate; ``alpha=0`` is maximum likelihood.
      n_init, max_iter, tol, random_state, chunk_size: as :class:`jaxem.GaussianMixture`.
      init_params: the starting responsibilities; the default ``"random_from_data"``
        starts each component at one row (smoothed by ``alpha``), since k-means on codes
        depends on how the values are numbered.

    ``X`` holds one column per attribute of integer codes ``0 .. n_categories_[j] - 1``;
    ``-1`` or NaN marks a missing entry, marginalised exactly. Fitted: ``weights_ (K,)``,
    ``probabilities_`` (one ``(K, n_categories_[j])`` array per attribute),
    ``feature_log_prob_`` (their logs), ``n_categories_``, ``lower_bound_``, ``n_iter_``,
    ``converged_``.

    >>> import numpy as np
    >>> from jaxem import CategoricalMixture
    >>> X = np.array([[0, 2], [0, 2], [1, 0], [1, -1]] * 5)
    >>> cm = CategoricalMixture(2, random_state=0).fit(X)
    >>> [p.shape for p in cm.probabilities_], cm.n_categories_.tolist()
    ([(2, 2), (2, 3)], [2, 3])
    """

    _parameter_constraints: dict = {**_DiscreteMixture._parameter_constraints,
                                    "n_categories": ["array-like", Interval(Integral, 1, None,
                                                                            closed="left"), None]}

    def __init__(self, n_components=1, *, n_categories=None, alpha=1.0, tol=1e-3,
                 max_iter=100, n_init=1, init_params="random_from_data", random_state=None,
                 chunk_size=None):
        self._set_params_from(locals())

    def __sklearn_tags__(self):
        return _integer_input_tags(super().__sklearn_tags__())

    def _check_values(self, X, fitting):
        X = np.where(X == -1, np.nan, X)
        _check_non_negative_integers(X, "integer category codes (>= 0, or -1 for missing)",
                                     "CategoricalMixture")
        codes = np.where(np.isnan(X), -1, X)
        if fitting:
            d = X.shape[1]
            if self.n_categories is None:
                n_cat = np.maximum(codes.max(axis=0, initial=-1) + 1, 1).astype(np.int64)
            else:
                n_cat = np.asarray(self.n_categories)
                n_cat = np.full(d, n_cat) if n_cat.ndim == 0 else n_cat
                if (n_cat.shape != (d,) or np.any(n_cat < 1)
                        or np.any(n_cat != np.floor(n_cat))):
                    raise ValueError(f"n_categories must be a positive int or one positive "
                                     f"int per feature ({d}), got {self.n_categories!r}.")
                n_cat = n_cat.astype(np.int64)
            over = codes >= n_cat
            if np.any(over):
                i, j = np.argwhere(over)[0]
                raise ValueError(f"X[{i}, {j}] = {X[i, j]:g} is not a code below "
                                 f"n_categories[{j}] = {n_cat[j]}; raise n_categories or "
                                 "recode the column as 0 .. n_categories - 1.")
            self.n_categories_ = n_cat
        else:
            over = codes >= self.n_categories_
            if np.any(over):
                i, j = np.argwhere(over)[0]
                raise ValueError(f"X[{i}, {j}] = {X[i, j]:g} is a code the mixture was not "
                                 f"fitted for: n_categories_[{j}] = {self.n_categories_[j]} "
                                 f"(codes 0 .. {self.n_categories_[j] - 1}). Pass "
                                 "n_categories to fit to allow unseen codes.")
        return X

    def _family(self):
        return categorical(self.n_categories_, self.alpha)

    def _params(self):
        k, v = self.n_components, int(np.max(self.n_categories_))
        padded = np.zeros((k, len(self.n_categories_), v), self.weights_.dtype)
        for j, p in enumerate(self.probabilities_):
            padded[:, j, : p.shape[1]] = p
        return CategoricalParams(self.weights_, padded)

    def _store(self, params):
        self.weights_ = params.weights
        self.probabilities_ = [params.probabilities[:, j, :v]
                               for j, v in enumerate(self.n_categories_)]
        with np.errstate(divide="ignore"):
            self.feature_log_prob_ = [np.log(p) for p in self.probabilities_]
