"""``MixtureClassifier``: a Bayes classifier from one Gaussian mixture per class, that
says when it is unsure (seed 000: flag ambiguous and anomalous points)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from jaxem import persist, rows
from jaxem.batch import auto_chunk_size, fit, has_nan
from jaxem.estimators._base import float_dtype, key_from, sample_weights, to_numpy
from jaxem.families.gaussian import COVARIANCE_TYPES, GaussianParams, gaussian


class MixtureClassifier(persist.Saveable, ClassifierMixin, BaseEstimator):
    """Bayes classifier whose class densities are Gaussian mixtures.

    ``fit(X, y)`` fits one ``n_components`` mixture per class **in one batched call** (the
    classes are the data sets of :func:`jaxem.fit`, padded to the largest class with
    weight 0), and the class priors from the (weighted) class frequencies. Then
    ``p(c | x) ∝ prior_c p(x | c)``; ``is_ambiguous(X)`` flags rows whose top class
    posterior is below ``ambiguity_threshold``, ``is_anomalous(X)`` rows whose density is
    below every class's ``anomaly_quantile`` quantile of its training rows' densities.

    Fitted attributes: ``classes_ (C,)``, ``class_prior_ (C,)``, ``weights_ (C, K)``,
    ``means_ (C, K, D)``, ``precisions_cholesky_`` (per class, in
    :class:`~jaxem.GaussianMixture`'s shapes), ``converged_ (C,)``, ``n_iter_ (C,)``,
    ``anomaly_thresholds_ (C,)`` (log-densities), ``n_features_in_``.

    NaN entries of ``X`` are missing values in ``fit`` and every prediction, as in
    :class:`~jaxem.GaussianMixture`: each class's mixture is fitted by exact EM over the
    observed entries, and ``p(x | c)`` is the marginal density of the observed features.
    A row with every value missing is refused, and in ``fit`` a feature missing in every
    row of a class. Without NaN, the computation is the
    complete-data one.

    >>> import numpy as np
    >>> from jaxem import MixtureClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(0, 1, (100, 2)), rng.normal(5, 1, (100, 2))])
    >>> y = np.repeat(["a", "b"], 100)
    >>> clf = MixtureClassifier(n_components=2, random_state=0).fit(X, y)
    >>> clf.predict([[0.0, 0.0], [5.0, 5.0]]).tolist()
    ['a', 'b']
    >>> clf.is_ambiguous([[2.5, 2.5], [0.0, 0.0]]).tolist(), clf.is_anomalous([[40.0, 40.0]]).tolist()
    ([True, False], [True])
    """

    def __init__(self, n_components=1, *, covariance_type="full", reg_covar=1e-6, tol=1e-3,
                 max_iter=100, n_init=1, init_params="kmeans", priors=None,
                 ambiguity_threshold=0.9, anomaly_quantile=0.01, random_state=None):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.priors = priors
        self.ambiguity_threshold = ambiguity_threshold
        self.anomaly_quantile = anomaly_quantile
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None):
        """Fit the class mixtures: ``X (n, D)``, labels ``y (n,)``, ``sample_weight (n,)``."""
        self._check_parameters()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32],
                             ensure_all_finite="allow-nan")
        check_classification_targets(y)
        X = _refuse_empty_rows(X.astype(float_dtype(), copy=False))
        w = sample_weights(sample_weight, X.shape[0], X.dtype)
        w = np.ones(X.shape[0], X.dtype) if w is None else w
        self.classes_, codes = np.unique(y, return_inverse=True)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(f"y has {n_classes} class; a classifier needs at least 2.")
        counts = np.bincount(codes, weights=w, minlength=n_classes)
        rows_per_class = np.bincount(codes[w > 0], minlength=n_classes)
        small = self.classes_[rows_per_class < self.n_components]
        if len(small):
            raise ValueError(f"class(es) {small.tolist()} have fewer rows than "
                             f"n_components={self.n_components}.")
        # Classes as data sets: (C, n_max, D), padded rows get weight 0.
        n_max = int(np.max(np.bincount(codes, minlength=n_classes)))
        xs = np.zeros((n_classes, n_max, X.shape[1]), X.dtype)
        ws = np.zeros((n_classes, n_max), X.dtype)
        for c in range(n_classes):
            idx = np.flatnonzero(codes == c)
            xs[c, :len(idx)], ws[c, :len(idx)] = X[idx], w[idx]
            xs[c, len(idx):] = X[idx[0]]  # any real row: its weight is 0
        if has_nan(X):  # the engine refuses this too, naming a data set, not the class
            never = np.argwhere(np.all(np.isnan(xs) | (ws[..., None] <= 0), axis=1))  # (c, j)
            if len(never):
                c, j = never[0]
                raise ValueError(f"X feature {j} has every value missing (NaN) in class "
                                 f"{self.classes_[c].item()!r}: that class's mixture has "
                                 "nothing to fit it from; drop the feature.")
        family = self._family()
        result = to_numpy(fit(family, xs, n_components=self.n_components,
                              key=key_from(self.random_state), n_init=self.n_init, weights=ws,
                              max_iter=self.max_iter, tol=self.tol, init=self.init_params))
        self.weights_, self.means_, self.precisions_cholesky_ = result.params
        self.converged_, self.n_iter_ = result.converged, result.n_iter
        if self.priors is None:
            self.class_prior_ = counts / counts.sum()
        else:
            self.class_prior_ = np.asarray(self.priors, dtype=np.float64)
        log_dens = self._class_log_density(X)
        self.anomaly_thresholds_ = np.array([
            _weighted_quantile(log_dens[codes == c, c], w[codes == c], self.anomaly_quantile)
            for c in range(n_classes)])
        return self

    def _check_parameters(self):
        for name in ("n_components", "n_init", "max_iter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {', '.join(COVARIANCE_TYPES)}, "
                             f"got {self.covariance_type!r}.")
        if not 0 < self.ambiguity_threshold <= 1:
            raise ValueError(f"ambiguity_threshold must be in (0, 1], got "
                             f"{self.ambiguity_threshold!r}.")
        if not 0 <= self.anomaly_quantile < 1:
            raise ValueError(f"anomaly_quantile must be in [0, 1), got {self.anomaly_quantile!r}.")
        if self.priors is not None:
            p = np.asarray(self.priors, dtype=np.float64)
            if p.ndim != 1 or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
                raise ValueError("priors must be non-negative and sum to 1.")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # NaN marks a missing entry, fitted by exact EM
        return tags

    def _family(self, missing=False):
        return gaussian(self.covariance_type, self.reg_covar, missing)

    def _validate(self, X):
        check_is_fitted(self, "classes_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False,
                          ensure_all_finite="allow-nan")
        return _refuse_empty_rows(X.astype(float_dtype(), copy=False))

    def _class_log_density(self, X):
        """``log p(x | c)`` (of the observed features): ``(n, C)``."""
        params = GaussianParams(self.weights_, self.means_, self.precisions_cholesky_)
        family = self._family(missing=has_nan(X))
        chunk = auto_chunk_size((1,) + X.shape, len(self.classes_), self.n_components, family)
        return np.asarray(_log_density(family, params, jnp.asarray(X), chunk))

    def _joint(self, X):
        if len(self.class_prior_) != len(self.classes_):
            raise ValueError(f"priors has {len(self.class_prior_)} entries for "
                             f"{len(self.classes_)} classes.")
        with np.errstate(divide="ignore"):
            return self._class_log_density(X) + np.log(self.class_prior_)

    def predict_log_proba(self, X):
        """``log p(c | x)``: ``(n, C)``, columns in the order of ``classes_``."""
        joint = self._joint(self._validate(X))
        top = np.max(joint, axis=1, keepdims=True)
        return joint - (top + np.log(np.sum(np.exp(joint - top), axis=1, keepdims=True)))

    def predict_proba(self, X):
        """``p(c | x)``: ``(n, C)``."""
        return np.exp(self.predict_log_proba(X))

    def predict(self, X):
        """The most probable class of each row: ``(n,)``."""
        best = np.argmax(self._joint(self._validate(X)), axis=1)
        return self.classes_[best]

    def score_samples(self, X):
        """``log p(x) = log sum_c prior_c p(x | c)``: ``(n,)``."""
        joint = self._joint(self._validate(X))
        top = np.max(joint, axis=1)
        return top + np.log(np.sum(np.exp(joint - top[:, None]), axis=1))

    def is_ambiguous(self, X, threshold=None):
        """Rows whose most probable class has posterior below ``threshold`` (default
        ``ambiguity_threshold``): ``(n,)`` bool."""
        t = self.ambiguity_threshold if threshold is None else threshold
        return np.max(self.predict_proba(X), axis=1) < t

    def is_anomalous(self, X):
        """Rows whose density under every class is below that class's
        ``anomaly_quantile`` quantile of its training rows' densities: ``(n,)`` bool."""
        return np.all(self._class_log_density(self._validate(X)) < self.anomaly_thresholds_,
                      axis=1)


@functools.partial(jax.jit, static_argnames="chunk_size")
def _log_density(family, params, x, chunk_size):
    """``log p(x | c)`` for classes stacked on the leading axis of ``params``: ``(n, C)``,
    about the components' mean location (float32 accuracy far from the origin)."""
    shift = jnp.mean(params.means, axis=(0, 1))
    params = params._replace(means=params.means - shift)

    pass_rows = rows.map_rows_of(family)

    def per_class(p):
        return pass_rows(lambda xc: family.posterior(family.log_joint(p, xc - shift))[1],
                             x, chunk_size)

    return jax.vmap(per_class, out_axes=1)(params)


def _refuse_empty_rows(X):
    """``X``, or a ValueError naming a row with every value missing (NaN)."""
    empty = np.flatnonzero(np.all(np.isnan(X), axis=1)) if has_nan(X) else []
    if len(empty):
        raise ValueError(f"X row {int(empty[0])} has every value missing (NaN): it has no "
                         "likelihood to classify by; drop it.")
    return X


def _weighted_quantile(values, weights, q):
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, q * cum[-1], side="left")])
