"""The family contract, written in code, and what every family shares.

A family is a frozen dataclass registered as a pytree whose *meta* fields (e.g.
``covariance_type``) are static, so ``jit`` compiles once per family, and whose
*data* fields (e.g. ``reg_covar``, a prior's pseudo-counts) are traced, so changing them
never recompiles. What the engine calls is the protocol :class:`MixtureFamily` (per-row
latent class: mixtures, k-means) or :class:`SequenceFamily` (a family with its own
E-step: HMMs). What a family *can* do beyond it is declared with the class attributes of
:class:`Family`, never guessed from which methods exist; :func:`capability` reads them
(``False`` for a family that does not derive from :class:`Family`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol, runtime_checkable

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


@runtime_checkable
class MixtureFamily(Protocol):
    """A model whose latent variable is one class per row: what the EM driver calls.

    ``params`` is a pytree (a ``NamedTuple``) of arrays with the components on the
    leading axis; ``stats`` a pytree of sums over rows. ``x (n, D)``; ``resp (n, K)``.
    """

    def log_joint(self, params: PyTree, x: Array) -> Array:
        """``log p(x_n, z_n = k)``: ``(n, K)`` (mixing weight times component density)."""

    def posterior(self, log_joint: Array) -> tuple[Array, Array]:
        """``(resp (n, K), log p(x_n) (n,))`` from ``log_joint``; soft by default
        (:class:`Mixture`), hard for k-means."""

    def stats(self, x: Array, resp: Array, params: PyTree | None = None) -> PyTree:
        """Sufficient statistics, *additive over rows* (so chunks, devices and files of
        rows combine by summing). ``resp`` already carries the sample weights; ``params``
        is the current value, about which a family may centre its moments."""

    def m_step(self, stats: PyTree, params: PyTree | None = None) -> PyTree:
        """The closed-form maximiser of the expected complete-data log-likelihood plus
        :meth:`Family.log_prior`; ``params`` is the value ``stats`` were taken at."""


@runtime_checkable
class SequenceFamily(Protocol):
    """A model with its own E-step over structured rows (an HMM's sequences)."""

    def e_step(self, params: PyTree, x: Array, weights: Array) -> tuple[PyTree, Array, Array]:
        """``(stats, sum of weighted log-likelihoods, sum of weights)``, all additive."""

    def m_step(self, stats: PyTree, params: PyTree) -> PyTree:
        """As :meth:`MixtureFamily.m_step`."""

    def init(self, key: Array, x: Array, weights: Array, n_components: int,
             method: str | None) -> PyTree:
        """Starting parameters."""


class Family:
    """Declared capabilities and optional parts of the contract, with their defaults.

    Capabilities (class attributes, or properties where they depend on a static field):

    * ``centres_data``: the family has ``translate(params, shift) -> params`` (moving a
      fit on ``x - shift`` back to ``x``); the engine then fits centred data, which
      keeps float32 moments accurate far from the origin.
    * ``has_e_step``: the family is a :class:`SequenceFamily` (its own ``e_step``).
    * ``has_init``: the family has ``init(key, x, weights, n_components, method)``;
      otherwise :func:`jaxem.initialize` starts it from responsibilities.
    * ``supports_missing``: NaN entries are missing values; the family has a static
      ``missing`` switch, and :meth:`with_missing` sets it (the engine turns it on when
      the data have NaN; a family that wraps another, an HMM, passes it on).
    * ``gemm_rows``: the E-step is matrix multiplies over rows (chunks sized for that).
    * ``fused_rows``: the family has ``log_joint_and_stats(params, x, weigh) -> (stats,
      aux)``, one pass over a block of rows that hands its ``log_joint`` to the engine's
      ``weigh(log_joint, axis=-1) -> (weighted resp, aux)`` and takes the statistics from
      the same intermediates (rows with missing values factorise their blocks once, not
      twice; the Gaussian GEMM forms centre the rows once); the engine then calls it
      instead of ``log_joint`` and ``stats``. ``axis=0`` hands the log-joint
      components-first, ``(K, n)``, and gets ``resp`` back so; the family's ``posterior``
      must then take that ``axis``.
    * ``threaded_rows``: the E-step is many small kernels that use one CPU core each
      (exact EM with missing values: each row's own blocks); on the CPU the engine runs
      shares of its chunks in threads, one per core (:func:`jaxem.batch.cpu_threads`).

    Optional methods: :meth:`log_prior`; ``sample(key, params, n)``,
    ``n_free_parameters(K, D)``, ``to_unconstrained``/``from_unconstrained`` (the
    gradient baseline), ``locations(params) -> (K, D)`` (k-means++ seeding).
    """

    centres_data: ClassVar[bool] = False
    has_e_step: ClassVar[bool] = False
    has_init: ClassVar[bool] = False
    supports_missing: ClassVar[bool] = False
    gemm_rows: ClassVar[bool] = False
    fused_rows: ClassVar[bool] = False
    threaded_rows: ClassVar[bool] = False

    def log_prior(self, params: PyTree) -> Array:
        """``log p(params)`` up to a constant: the objective EM increases is the
        log-likelihood plus this (MAP). 0 for maximum likelihood."""
        return jnp.zeros((), jax.tree.leaves(params)[0].dtype)

    def with_missing(self, missing: bool = True):
        """This family with its static ``missing`` switch set (a family that declares
        ``supports_missing``)."""
        return dataclasses.replace(self, missing=missing)


def capability(fam, name: str):
    """A declared capability of ``fam`` (see :class:`Family`); ``False`` when a family
    not derived from :class:`Family` does not declare it."""
    return getattr(fam, name, False)


def log_prior(fam, params: PyTree) -> Array:
    """``fam.log_prior(params)``, or 0 for a family without a prior."""
    method = getattr(fam, "log_prior", None)
    return Family.log_prior(fam, params) if method is None else method(params)


def check_registered(fam) -> None:
    """A TypeError unless ``fam`` is a registered pytree (its fields flatten), so that
    ``jit`` can trace its data fields and key its static ones."""
    leaves, treedef = jax.tree.flatten(fam)
    if treedef.num_nodes == 1 and len(leaves) == 1 and leaves[0] is fam:
        raise TypeError(
            f"{type(fam).__name__} is not a registered pytree, so jit cannot trace it: "
            "declare the family class with @jaxem.families.base.family (a frozen "
            "dataclass whose static fields are named), or register it with "
            "jax.tree_util.register_dataclass.")


class Mixture(Family):
    """Defaults of a mixture family (:class:`MixtureFamily`): soft posterior over the
    rows of ``log_joint``."""

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
