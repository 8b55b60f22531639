"""Host-side glue shared by the scikit-learn-style estimators."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.utils import check_random_state

from jaxem import rows
from jaxem.batch import auto_chunk_size


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
    if chunk_size is None:
        chunk_size = auto_chunk_size((1,) + x.shape, 1, family.locations(params).shape[0],
                                     family)
    return _posterior(family, params, x, chunk_size)


@functools.partial(jax.jit, static_argnames="chunk_size")
def _posterior(family, params, x, chunk_size):
    # Rows and parameters are first moved so that the component locations average to 0:
    # the GEMM-shaped distances then keep their float32 accuracy far from the origin.
    shift = jnp.mean(family.locations(params), axis=0)
    params = family.translate(params, -shift)
    return rows.map_rows(lambda xc: family.posterior(family.log_joint(params, xc - shift)),
                         x, chunk_size)
