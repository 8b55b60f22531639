"""Host-side glue shared by the scikit-learn-style estimators."""
from __future__ import annotations

import functools
from numbers import Integral

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.utils import check_random_state

from jaxem import rows
from jaxem.batch import auto_chunk_size, check_labels


def float_dtype() -> type:
    """float64 when JAX's x64 mode is on, else float32 (what JAX computes in)."""
    return np.float64 if jax.config.jax_enable_x64 else np.float32


def key_from(random_state) -> jax.Array:
    """A ``jax.random`` key from scikit-learn's ``random_state`` (None, int, RandomState)."""
    seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
    return jax.random.key(seed)


def to_numpy(tree):
    """Device arrays to NumPy, for fitted attributes that pickle and print plainly."""
    return jax.tree.map(np.asarray, tree)


def sample_weights(sample_weight, n_samples: int, dtype) -> np.ndarray | None:
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=dtype)
    if w.shape != (n_samples,):
        raise ValueError(f"sample_weight must have shape ({n_samples},), got {w.shape}.")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("sample_weight must be finite and non-negative.")
    if not np.any(w > 0):
        raise ValueError("sample_weight must not be all zero: no row would be fitted.")
    return w


def posterior(family, params, x, chunk_size=None):
    """``(resp (n, K), per-row log-likelihood (n,))``, compiled once per shape.

    Rows are processed in chunks (``chunk_size``, or :func:`jaxem.batch.auto_chunk_size`),
    so no ``(n, K, D)`` temporary is ever live.
    """
    x = jnp.asarray(x)
    return _posterior(family, params, x, rows_per_chunk(family, params, x, chunk_size))


def rows_per_chunk(family, params, x, chunk_size=None) -> int | None:
    """``chunk_size``, or :func:`jaxem.batch.auto_chunk_size` for one fitted model on
    ``x (n, D)``: the rows per chunk of a pass after fitting."""
    if chunk_size is not None:
        return chunk_size
    return auto_chunk_size((1,) + x.shape, 1, family.locations(params).shape[0], family)


@functools.partial(jax.jit, static_argnames="chunk_size")
def _posterior(family, params, x, chunk_size):
    # Rows and parameters are first moved so that the component locations average to 0:
    # the GEMM-shaped distances then keep their float32 accuracy far from the origin.
    shift = jnp.mean(family.locations(params), axis=0)
    params = family.translate(params, -shift)
    pass_rows = rows.map_rows_of(family)
    return pass_rows(lambda xc: family.posterior(family.log_joint(params, xc - shift)),
                     x, chunk_size)


def partial_labels(y, n_samples: int, n_components: int) -> np.ndarray | None:
    """``fit``'s ``y`` as partial labels ``(n_samples,)`` int32, or ``None``.

    scikit-learn's semi-supervised convention: ``-1`` marks an unlabelled row; a label
    ``j`` names component ``j``, so it must be below ``n_components``. A ValueError says
    what is wrong (shape, a non-integer, a label out of range).
    """
    if y is None:
        return None
    if type(y).__module__.startswith("scipy.sparse"):
        raise ValueError("y must be a dense 1-D array of component labels (-1 for "
                         "unlabelled), not a scipy sparse matrix.")
    return check_labels(y, (n_samples,), n_components, name="y")


def check_n_samples(n_samples) -> int:
    """``sample``'s ``n_samples`` as an int >= 1, or scikit-learn's error."""
    if not isinstance(n_samples, Integral) or n_samples < 1:
        raise ValueError(f"Invalid value for 'n_samples': {n_samples!r}. The sampling "
                         "requires at least one sample (a positive integer).")
    return int(n_samples)


class MixtureMixin:
    """What every mixture estimator offers over its ``_fit`` and ``_posterior``.

    A subclass gives ``_fit(X, labels, sample_weight) -> X validated``,
    ``_posterior(X) -> (resp (n, K), log p(x) (n,))`` and ``_n_parameters()``; ``fit``
    takes scikit-learn's semi-supervised ``y`` (see :func:`partial_labels`).
    """

    def fit(self, X, y=None, sample_weight=None):
        """Fit by EM: ``X (n_samples, n_features)``, ``sample_weight (n_samples,)``.

        ``y (n_samples,)``: optional partial labels, scikit-learn's semi-supervised
        convention: ``-1`` for an unlabelled row, else the component (``0 ..
        n_components - 1``) the row belongs to. A labelled row's responsibilities are
        clamped to its component, so EM maximises ``sum_unlabelled log p(x) +
        sum_labelled log p(x, z = y)`` (what ``lower_bound_`` then holds), and the
        initialisation is made to agree with the labels
        (:func:`jaxem.init.seed_with_labels`). ``y=None`` (or all ``-1``): plain EM.
        """
        self._fit(X, y, sample_weight)
        return self

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit and return the component of each row of ``X``: ``(n_samples,)``; a row
        labelled in ``y`` keeps its label (its responsibilities were clamped to it)."""
        X, labels = self._fit(X, y, sample_weight)
        predicted = self.predict(X)
        return predicted if labels is None else np.where(labels >= 0, labels, predicted)

    def predict_proba(self, X):
        """Responsibilities ``p(z = k | observed entries of x)``: ``(n_samples,
        n_components)``."""
        return self._posterior(X)[0]

    def predict(self, X):
        """The most probable component of each row: ``(n_samples,)``."""
        return self.predict_proba(X).argmax(axis=1)

    def score_samples(self, X):
        """Per-row log-likelihood of the observed entries ``log p(x_obs)``:
        ``(n_samples,)``."""
        return self._posterior(X)[1]

    def score(self, X, y=None):
        """Mean per-row log-likelihood (``y`` is ignored)."""
        return float(self.score_samples(X).mean())

    def bic(self, X):
        """Bayesian information criterion on ``X`` (lower is better)."""
        n = np.shape(X)[0]
        return -2 * self.score(X) * n + self._n_parameters() * np.log(n)

    def aic(self, X):
        """Akaike information criterion on ``X`` (lower is better)."""
        return -2 * self.score(X) * np.shape(X)[0] + 2 * self._n_parameters()

    def _store_run(self, result) -> None:
        """The run's attributes from :func:`jaxem.fit`'s (NumPy) result: ``converged_``,
        ``n_iter_``, ``lower_bounds_``, ``lower_bound_``, ``restarts_``,
        ``best_restart_``."""
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_iter)
        self.lower_bounds_ = result.trace[: self.n_iter_].tolist()
        self.lower_bound_ = float(result.log_likelihood)
        self.restarts_ = result.restarts
        self.best_restart_ = int(result.best)
