"""What every mixture family shares: the soft E-step and the pytree registration.

A family is a frozen dataclass registered as a pytree whose *meta* fields (e.g.
``covariance_type``) are static, so ``jit`` compiles once per family, and whose
*data* fields (e.g. ``reg_covar``) are traced, so changing them never recompiles.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any


def family(cls=None, *, static: tuple[str, ...] = ()):
    """Class decorator: a frozen dataclass that is a pytree, fields in ``static`` static."""

    def wrap(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
        fields = [f.name for f in dataclasses.fields(cls)]
        return jax.tree_util.register_dataclass(
            cls,
            data_fields=[f for f in fields if f not in static],
            meta_fields=[f for f in fields if f in static],
        )

    return wrap if cls is None else wrap(cls)


class Mixture:
    """Defaults of a mixture family: soft posterior over the rows of ``log_joint``.

    Subclasses provide ``log_joint(params, x) -> (n, K)``, ``stats(x, resp, params)``
    (additive over rows; ``resp`` already carries the sample weights) and
    ``m_step(stats, params) -> params``. ``params`` is the current value (or ``None``):
    a family may centre its statistics about it (Gaussian second moments) or keep some
    parameters fixed (empty k-means clusters).
    """

    def posterior(self, log_joint: Array) -> tuple[Array, Array]:
        """``log_joint: (n, K)`` -> ``(resp (n, K), log_likelihood (n,))``."""
        log_norm = jax.nn.logsumexp(log_joint, axis=-1)
        return jnp.exp(log_joint - log_norm[:, None]), log_norm


def tree_where(pred: Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """``jnp.where`` over two pytrees of the same structure with a scalar predicate."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def all_finite(tree: PyTree) -> Array:
    """Scalar bool: every leaf of ``tree`` is finite."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
