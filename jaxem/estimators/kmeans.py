"""``KMeans`` with scikit-learn's names: Lloyd's algorithm as hard EM on the engine."""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from jaxem.batch import fit
from jaxem.estimators._base import float_dtype, key_from, posterior, sample_weights, to_numpy
from jaxem.families.kmeans import KMeansParams, kmeans


class KMeans(ClusterMixin, TransformerMixin, BaseEstimator):
    """k-means clustering, a drop-in for ``sklearn.cluster.KMeans`` (Lloyd).

    ``init`` is ``"k-means++"``, ``"random"`` (rows drawn at random) or an array
    ``(n_clusters, n_features)``; the ``n_init`` restarts run in parallel. ``tol`` is
    scikit-learn's relative tolerance, applied to the change of the mean squared distance
    (scaled by the mean feature variance). An empty cluster keeps its centre, where
    scikit-learn moves it to a far point.

    >>> from jaxem import KMeans
    >>> from jaxem.datasets import load_faithful
    >>> km = KMeans(n_clusters=2, random_state=0).fit(load_faithful())
    >>> km.cluster_centers_.shape, km.labels_.shape
    ((2, 2), (272,))
    """

    def __init__(self, n_clusters=8, *, init="k-means++", n_init="auto", max_iter=300,
                 tol=1e-4, verbose=0, random_state=None, chunk_size=None,
                 devices=None):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state
        self.chunk_size = chunk_size
        self.devices = devices

    def fit(self, X, y=None, sample_weight=None):
        """Cluster ``X: (n_samples, n_features)``."""
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        X = X.astype(float_dtype(), copy=False)
        n, d = X.shape
        if n < self.n_clusters:
            raise ValueError(f"n_samples={n} should be >= n_clusters={self.n_clusters}.")
        w = sample_weights(sample_weight, n, X.dtype)
        init, n_init = self._init(d)
        result = fit(kmeans(), X, n_components=self.n_clusters, key=key_from(self.random_state),
                     n_init=n_init, weights=w, max_iter=self.max_iter,
                     tol=self.tol * float(np.mean(np.var(X, axis=0))), init=init,
                     chunk_size=self.chunk_size, devices=self.devices)
        result = to_numpy(result)
        self.cluster_centers_ = result.params.centers
        self.n_iter_ = int(result.n_iter)
        self.restarts_ = result.restarts
        self.labels_, self.inertia_ = self._labels_inertia(X, w)
        if self.verbose:
            print(f"KMeans: best of {n_init} restarts, n_iter={self.n_iter_}, "
                  f"inertia={self.inertia_:.6g}")
        return self

    def _init(self, n_features):
        """The engine's init (a method name or centres) and the number of restarts."""
        if isinstance(self.init, str):
            if self.init not in ("k-means++", "random"):
                raise ValueError(f"init must be 'k-means++', 'random' or an array of shape "
                                 f"(n_clusters, n_features), got {self.init!r}.")
            n_init = self.n_init
            if n_init == "auto":
                n_init = 1 if self.init == "k-means++" else 10
            method = "random_from_data" if self.init == "random" else "k-means++"
            return method, self._check_n_init(n_init)
        centers = np.asarray(self.init, dtype=float_dtype())
        if centers.shape != (self.n_clusters, n_features):
            raise ValueError(f"The shape of the initial centers {centers.shape} does not match "
                             f"the number of clusters {self.n_clusters} and features "
                             f"{n_features}.")
        if self.n_init not in ("auto", 1):
            warnings.warn("Explicit initial center position passed: performing only one "
                          f"init in KMeans instead of n_init={self.n_init}.", RuntimeWarning)
        return KMeansParams(centers), 1

    @staticmethod
    def _check_n_init(n_init):
        if not isinstance(n_init, (int, np.integer)) or n_init < 1:
            raise ValueError(f"n_init must be 'auto' or an integer >= 1, got {n_init!r}.")
        return int(n_init)

    def _labels_inertia(self, X, sample_weight=None):
        c = self.cluster_centers_
        labels = np.asarray(posterior(kmeans(), KMeansParams(c), X, self.chunk_size)[0]).argmax(axis=1)
        # The inertia by direct differences in float64, as scikit-learn sums it.
        sq = ((X.astype(np.float64) - c[labels]) ** 2).sum(axis=1)
        w = np.ones(len(X)) if sample_weight is None else sample_weight
        return labels.astype(np.int32), float(w @ sq)

    def _check(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return X.astype(self.cluster_centers_.dtype, copy=False)

    def predict(self, X):
        """Index of the nearest centre: ``(n_samples,)``."""
        return self._labels_inertia(self._check(X))[0]

    def transform(self, X):
        """Euclidean distances to the centres: ``(n_samples, n_clusters)``."""
        X = self._check(X)
        c = self.cluster_centers_
        sq = (X * X).sum(1)[:, None] - 2 * X @ c.T + (c * c).sum(1)[None]
        return np.sqrt(np.maximum(sq, 0))

    def score(self, X, y=None, sample_weight=None):
        """Minus the inertia of ``X`` with respect to the fitted centres."""
        X = self._check(X)
        return -self._labels_inertia(X, sample_weights(sample_weight, len(X), X.dtype))[1]
