"""``KMeans`` with scikit-learn's names and behaviour, on jaxem's batched engine."""
from __future__ import annotations

import functools
import warnings
from numbers import Integral, Real

import jax
import numpy as np
import scipy.sparse as sp
from sklearn.base import (BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin,
                          TransformerMixin)
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_array, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from jaxem import batch, rows
from jaxem.estimators._base import posterior, to_numpy
from jaxem.families.kmeans import KMeansParams, kmeans, lloyd, sq_distances
from jaxem.persist import Saveable


class KMeans(Saveable, ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin,
             BaseEstimator):
    """k-means clustering, a drop-in for ``sklearn.cluster.KMeans``.

    The same parameters, attributes, warnings and errors, and scikit-learn's Lloyd
    iteration exactly (empty clusters relocated to the farthest rows, convergence on
    the centres' move ``<= tol * mean feature variance``, ``n_iter_``), so from the same
    initial centres both give the same centres, labels and inertia. ``algorithm`` is
    accepted for compatibility: ``"elkan"`` gives the same result as ``"lloyd"``, which
    is what runs. The ``n_init`` restarts run in parallel (``vmap``); ``chunk_size`` bounds
    the memory of each pass over the rows and ``devices`` splits the rows over devices.

    Sparse ``X`` (e.g. TF-IDF) is densified: memory ``n_samples * n_features``. The data
    are computed on in their dtype when JAX's x64 mode is on, else in float32 (JAX's
    default); integer data become float64 (x64) or float32. Random starts use JAX's
    generator, so a seed gives other starts than scikit-learn's; rows of weight 0 are
    never chosen as a relocated centre.

    >>> from jaxem import KMeans
    >>> from jaxem.datasets import load_faithful
    >>> km = KMeans(n_clusters=2, random_state=0).fit(load_faithful())
    >>> km.cluster_centers_.shape, km.labels_.shape, km.get_feature_names_out().tolist()
    ((2, 2), (272,), ['kmeans0', 'kmeans1'])
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "init": [StrOptions({"k-means++", "random"}), callable, "array-like"],
        "n_init": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
        "copy_x": ["boolean"],
        "algorithm": [StrOptions({"lloyd", "elkan"})],
        "chunk_size": [Interval(Integral, 1, None, closed="left"), None],
        "devices": "no_validation",  # checked by jaxem.batch, with its own message
    }

    def __init__(self, n_clusters=8, *, init="k-means++", n_init="auto", max_iter=300,
                 tol=1e-4, verbose=0, random_state=None, copy_x=True, algorithm="lloyd",
                 chunk_size=None, devices=None):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state
        self.copy_x = copy_x  # X is never modified: accepted for compatibility
        self.algorithm = algorithm
        self.chunk_size = chunk_size
        self.devices = devices

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        # transform keeps the data's dtype where JAX computes in it.
        tags.transformer_tags.preserves_dtype = (
            ["float64", "float32"] if jax.config.jax_enable_x64 else ["float32"])
        return tags

    def fit(self, X, y=None, sample_weight=None):
        """Cluster ``X: (n_samples, n_features)`` (dense or sparse), rows weighted by
        ``sample_weight: (n_samples,)``."""
        self._validate_params()
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32],
                          order="C", accept_large_sparse=False)
        n, d = X.shape
        k = int(self.n_clusters)
        if n < k:
            raise ValueError(f"n_samples={n} should be >= n_clusters={k}.")
        self._check_params_vs_input(X)
        random_state = check_random_state(self.random_state)
        dtype = _compute_dtype(X.dtype)
        w = _check_sample_weight(sample_weight, X, dtype=dtype, ensure_non_negative=True)
        if np.count_nonzero(w) < k:
            raise ValueError(f"n_clusters={k} needs at least as many samples of positive "
                             f"sample_weight, got {np.count_nonzero(w)}.")
        init, method = self._initial_centers(X, random_state, dtype)
        dense = _dense(X, dtype)
        self._tol = _tolerance(dense, self.tol)

        key = jax.random.key(random_state.randint(np.iinfo(np.int32).max))
        fam = kmeans()
        x3, w3, keys, method, params0 = batch.prepare(fam, dense, w, key, self._n_init, k,
                                                        method if init is None else init)
        mesh, n_keep = None, None
        if self.devices is not None:
            mesh, x3, w3, keys, params0, n_keep = batch.spread(
                self.devices, "rows", x3, w3, keys, params0, key)
        chunk = self.chunk_size
        if chunk is None:
            n_dev = 1 if mesh is None else mesh.size
            chunk = batch.auto_chunk_size((1, x3.shape[1] // n_dev, d), self._n_init, k, fam)
        # max_iter is traced: one compilation serves every max_iter up to the trace length.
        length = 300 if self.max_iter <= 300 else 1 << (self.max_iter - 1).bit_length()
        result = _fit(x3, w3, keys, params0, self._tol, int(self.max_iter), n_clusters=k,
                      method=method, trace_length=length, chunk_size=chunk, mesh=mesh,
                      n_keep=n_keep)
        result = to_numpy(batch.first_set(result))  # the one data set
        trace = lambda r: r._replace(trace=r.trace[..., :self.max_iter])
        result = trace(result)._replace(restarts=trace(result.restarts))
        if result.failed:
            raise batch.FitError(
                "KMeans failed on every restart: a squared distance overflowed "
                f"{np.dtype(dtype).name} (the data span about {np.ptp(dense):.3g}). "
                "Rescale X (e.g. sklearn.preprocessing.StandardScaler)"
                + ("." if dtype == np.float64 else " or enable JAX's float64 mode."))
        self.restarts_ = result.restarts
        self.cluster_centers_ = result.params.centers.astype(dtype, copy=True)
        self._n_features_out = k
        self.n_iter_ = int(result.n_iter)
        if self.verbose:
            self._print_progress(result.restarts, float(np.sum(w)))
        self.labels_ = self._predict_dense(dense)
        self.inertia_ = _inertia(dense, w, self.cluster_centers_, self.labels_)
        distinct = len(np.unique(self.labels_))
        if distinct < k:
            warnings.warn(f"Number of distinct clusters ({distinct}) found smaller than "
                          f"n_clusters ({k}). Possibly due to duplicate points in X.",
                          ConvergenceWarning, stacklevel=2)
        return self

    def _check_params_vs_input(self, X):
        """scikit-learn's ``_n_init`` and ``_algorithm`` (and their warnings)."""
        if self.n_init != "auto":
            self._n_init = self.n_init
        elif isinstance(self.init, str) and self.init == "k-means++":
            self._n_init = 1
        else:  # 10 for "random" and a callable, 1 for an array
            self._n_init = 10 if isinstance(self.init, str) or callable(self.init) else 1
        if _is_array(self.init) and self._n_init != 1:
            warnings.warn("Explicit initial center position passed: performing only one "
                          f"init in KMeans instead of n_init={self._n_init}.",
                          RuntimeWarning, stacklevel=3)
            self._n_init = 1
        self._algorithm = self.algorithm
        if self.algorithm == "elkan" and self.n_clusters == 1:
            warnings.warn("algorithm='elkan' doesn't make sense for a single cluster. "
                          "Using 'lloyd' instead.", RuntimeWarning, stacklevel=3)
            self._algorithm = "lloyd"

    def _initial_centers(self, X, random_state, dtype):
        """``(centers (n_init, K, D) or None, engine init method or None)``."""
        if isinstance(self.init, str):
            return None, "random_from_data" if self.init == "random" else "k-means++"
        if callable(self.init):  # called once per restart, as scikit-learn does
            centers = [self._check_centers(self.init(X, self.n_clusters,
                                                     random_state=random_state), X, dtype)
                       for _ in range(self._n_init)]
            return KMeansParams(np.stack(centers)), None
        return KMeansParams(self._check_centers(self.init, X, dtype)[None]), None

    def _check_centers(self, centers, X, dtype):
        centers = check_array(centers, accept_sparse="csr", dtype=[np.float64, np.float32],
                              copy=True, order="C", input_name="init")
        if sp.issparse(centers):
            centers = centers.toarray()
        if centers.shape[0] != self.n_clusters:
            raise ValueError(f"The shape of the initial centers {centers.shape} does not "
                             f"match the number of clusters {self.n_clusters}.")
        if centers.shape[1] != X.shape[1]:
            raise ValueError(f"The shape of the initial centers {centers.shape} does not "
                             f"match the number of features of the data {X.shape[1]}.")
        return centers.astype(dtype, copy=False)

    def _print_progress(self, restarts, weight_sum):
        """scikit-learn's verbose messages, from every restart's trace."""
        for r in range(len(restarts.n_iter)):
            print("Initialization complete")
            n_iter = int(restarts.n_iter[r])
            for i in range(n_iter):
                print(f"Iteration {i}, inertia {-restarts.trace[r, i] * weight_sum}.")
            if restarts.strict[r]:
                print(f"Converged at iteration {n_iter - 1}: strict convergence.")
            elif restarts.converged[r]:
                print(f"Converged at iteration {n_iter - 1}: center shift "
                      f"{restarts.center_shift[r]} "
                      f"within tolerance {self._tol}.")

    def _check_test_data(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32],
                          order="C", accept_large_sparse=False, reset=False)
        return _dense(X, self.cluster_centers_.dtype)

    def _predict_dense(self, X):
        c = np.asarray(self.cluster_centers_)
        resp = posterior(kmeans(), KMeansParams(c), X, self.chunk_size)[0]
        return np.asarray(resp.argmax(axis=1)).astype(np.int32)

    def predict(self, X):
        """Index of the nearest centre: ``(n_samples,)`` int32."""
        return self._predict_dense(self._check_test_data(X))

    def fit_predict(self, X, y=None, sample_weight=None):
        """``fit(X, sample_weight=sample_weight).labels_``."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def transform(self, X):
        """Euclidean distances to the centres: ``(n_samples, n_clusters)``, by direct
        differences (exact far from the origin, where the expanded form is not)."""
        X = self._check_test_data(X)
        c = np.asarray(self.cluster_centers_)
        chunk = max(1, 2**20 // (c.shape[0] * c.shape[1]))
        return np.sqrt(np.asarray(_sq_distances(c, X, None if chunk >= len(X) else chunk)))

    def fit_transform(self, X, y=None, sample_weight=None):
        """``fit(X, sample_weight=sample_weight).transform(X)``."""
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def score(self, X, y=None, sample_weight=None):
        """Minus the (weighted) inertia of ``X`` with respect to the fitted centres."""
        X = self._check_test_data(X)
        w = _check_sample_weight(sample_weight, X, dtype=X.dtype, ensure_non_negative=True,
                                 allow_all_zero_weights=True)
        return -_inertia(X, w, self.cluster_centers_, self._predict_dense(X))


def _compute_dtype(dtype) -> type:
    """The data's float dtype when JAX computes in it (x64 mode), else float32."""
    return np.dtype(dtype).type if jax.config.jax_enable_x64 else np.float32


def _dense(X, dtype) -> np.ndarray:
    return (X.toarray() if sp.issparse(X) else X).astype(dtype, copy=False)


def _is_array(init) -> bool:
    return not isinstance(init, str) and not callable(init)


def _tolerance(X, tol) -> float:
    """scikit-learn's absolute tolerance: ``tol`` times the mean feature variance."""
    return 0.0 if tol == 0 else float(np.mean(np.var(X, axis=0, dtype=np.float64)) * tol)


def _inertia(X, sample_weight, centers, labels) -> float:
    """Weighted squared distances to the assigned centres, by direct differences,
    summed in float64 as scikit-learn sums them."""
    sq = ((X - centers[labels]).astype(np.float64) ** 2).sum(axis=1)
    return float(np.asarray(sample_weight, np.float64) @ sq)


@functools.partial(jax.jit, static_argnames="chunk_size")
def _sq_distances(centers, x, chunk_size):
    return rows.map_rows(lambda xc: sq_distances(centers, xc), x, chunk_size)


@functools.partial(jax.jit, static_argnames=("n_clusters", "method", "trace_length",
                                             "chunk_size", "mesh", "n_keep"))
def _fit(x, weights, keys, params0, tol, max_iter, *, n_clusters, method, trace_length,
         chunk_size, mesh, n_keep):
    """:func:`jaxem.families.kmeans.lloyd` on every restart and data set, as
    :func:`jaxem.batch.fit` runs EM: x (B, n, D), weights (B, n), keys (B, R)."""

    def driver(params, x, w, key, axis_name):
        del key
        return lloyd(params, x, w, max_iter=max_iter, tol=tol, chunk_size=chunk_size,
                     axis_name=axis_name, trace_length=trace_length)

    return batch.run_restarts(kmeans(), driver, x, weights, keys, params0, n_clusters, method,
                           chunk_size=chunk_size, mesh=mesh, shard="rows", n_keep=n_keep)
