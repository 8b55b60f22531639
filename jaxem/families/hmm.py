"""Hidden Markov models fitted by Baum-Welch on the same EM engine as the mixtures.

The E-step is forward-backward (:mod:`jaxem.hmm_inference`) ``vmap``-ped over padded
sequences; it returns additive expected counts (initial state, transitions, emission
statistics), so :func:`jaxem.em.run`, restarts and data-set batching
(:func:`jaxem.fit`) apply unchanged.

**Data layout.** ``x`` is ``(n_sequences * seq_len, n_features)``: sequences padded to a
common ``seq_len`` (a static field) and stacked, with ``weights (n_sequences * seq_len,)``
that are 0 on the trailing padding of each sequence and otherwise the sequence's weight
(1 by default, constant within a sequence). A flat layout keeps the engine's ``(n, D)``
contract, so :func:`jaxem.fit` batches data sets ``(B, n, D)`` as for mixtures.
:func:`pad_sequences` builds it from hmmlearn's concatenated ``X`` plus ``lengths``.

**Normalisation.** The E-step returns ``(stats, sum_s w_s log p(x_s), sum of step weights)``,
so the engine's mean log-likelihood is **per time step**; multiply by the number of steps
to get hmmlearn's ``score`` (the total over sequences).

>>> import jax, jax.numpy as jnp, numpy as np, jaxem
>>> from jaxem.families.hmm import hmm, pad_sequences
>>> x = np.random.default_rng(0).normal(size=(30, 2))
>>> xp, w = pad_sequences(x, [10, 20])
>>> xp.shape, w.shape
((40, 2), (40,))
>>> fam = hmm("gaussian", covariance_type="diag", seq_len=20)
>>> result = jaxem.fit(fam, xp, weights=w, n_components=2, key=jax.random.key(0))
>>> result.params.transmat.shape
(2, 2)
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem import hmm_inference
from jaxem.families.base import Family, MixtureFamily, capability, family, log_prior
from jaxem.families.gmm_emission import GMMEmission
from jaxem.families.emissions import (CategoricalEmission, GaussianEmission, MixtureEmission,
                                     PoissonEmission)

Array = jax.Array
PyTree = Any


class HMMParams(NamedTuple):
    startprob: Array  # (K,)
    transmat: Array  # (K, K), rows sum to 1
    emission: PyTree  # the emission model's parameters


class HMMStats(NamedTuple):
    """Expected counts, additive over sequences."""

    start: Array  # (K,) sum_s w_s p(z_s1 = k | x_s)
    trans: Array  # (K, K) expected transitions
    emission: PyTree  # the emission model's statistics


@family(static=("seq_len", "update", "parallel"))
class HMM(Family):
    """A hidden Markov model family.

    Args:
      emission: an emission model (:mod:`jaxem.families.emissions`), a pytree whose
        priors are traced.
      seq_len: the padded length of every sequence (static).
      update: letters of the parameters the M-step updates, hmmlearn's ``params``:
        ``s`` start probabilities, ``t`` transitions, and the emission's letters
        (``mc`` Gaussian, ``e`` categorical, ``l`` Poisson).
      startprob_prior, transmat_prior: Dirichlet concentrations (MAP when > 1), hmmlearn's.
      parallel: use the ``associative_scan`` forward-backward (depth ``O(log T)``).

    **Missing values.** With an emission that supports them (Gaussian, Gaussian-mixture,
    a wrapped :func:`jaxem.gaussian`), NaN entries of ``x`` are missing values, fitted by
    exact EM (:func:`jaxem.fit` turns the emission's ``missing`` switch on when ``x`` has
    NaN): a step's emission log-density is the marginal over its observed features, and
    a step with every feature missing has log-density 0 in every state (uninformative:
    the chain passes through it).
    """

    emission: Any
    seq_len: int
    update: str = "stmcel"
    startprob_prior: float | Array = 1.0
    transmat_prior: float | Array = 1.0
    parallel: bool = False

    has_e_step = True  # declared capabilities (see jaxem.families.base.Family)
    has_init = True

    @property
    def supports_missing(self) -> bool:
        """The emission's capability (see the class docstring)."""
        return capability(self.emission, "supports_missing")

    @property
    def missing(self) -> bool:
        """The emission's static ``missing`` switch."""
        return capability(self.emission, "missing")

    def with_missing(self, missing: bool = True) -> "HMM":
        return dataclasses.replace(self, emission=self.emission.with_missing(missing))

    # -- layout ---------------------------------------------------------------------------
    def sequences(self, x: Array, weights: Array | None = None) -> tuple[Array, Array]:
        """``x (S * seq_len, D)`` -> ``(S, seq_len, D)`` and weights ``(S, seq_len)``."""
        if weights is None:
            weights = jnp.ones(x.shape[0], x.dtype)
        return (x.reshape(-1, self.seq_len, x.shape[-1]), weights.reshape(-1, self.seq_len))

    def log_likelihoods(self, params: HMMParams, x: Array) -> Array:
        """Per-step, per-state emission log-likelihoods ``(S, seq_len, K)``."""
        ll = self.emission.log_likelihoods(params.emission, x)
        return ll.reshape(-1, self.seq_len, ll.shape[-1])

    def forward_backward(self, params: HMMParams, x: Array, weights: Array | None = None):
        """Forward-backward on every sequence: an :class:`HMMPosterior` with axis ``S``."""
        _, w = self.sequences(x, weights)
        fb = (hmm_inference.parallel_forward_backward if self.parallel
              else hmm_inference.forward_backward)
        run = jax.vmap(fb, (None, None, 0, 0))
        return run(params.startprob, params.transmat, self.log_likelihoods(params, x), w > 0)

    # -- EM -------------------------------------------------------------------------------
    def e_step(self, params: HMMParams, x: Array, weights: Array | None = None):
        """``(HMMStats, sum_s w_s log p(x_s), sum of step weights)``."""
        if weights is None:
            weights = jnp.ones(x.shape[0], x.dtype)
        _, w = self.sequences(x, weights)
        post = self.forward_backward(params, x, weights)
        w_seq = w[:, 0]
        # A padded step's smoothed marginal is not zero: the weight masks it.
        resp = (post.smoothed * w[..., None]).reshape(x.shape[0], -1)
        stats = HMMStats(
            start=w_seq @ post.smoothed[:, 0],
            trans=jnp.einsum("s,sij->ij", w_seq, post.trans_counts),
            emission=self.emission.stats(x, resp, params.emission),
        )
        ll = jnp.sum(jnp.where(w_seq > 0, w_seq * post.log_normalizer, 0.0))
        return stats, ll, jnp.sum(weights)

    def m_step(self, stats: HMMStats, params: HMMParams) -> HMMParams:
        """hmmlearn's M-step: Dirichlet MAP; a zero probability stays zero."""
        startprob, transmat = params.startprob, params.transmat
        if "s" in self.update:
            p = jnp.maximum(self.startprob_prior - 1 + stats.start, 0)
            startprob = _normalise(jnp.where(params.startprob == 0, 0, p))
        if "t" in self.update:
            p = jnp.maximum(self.transmat_prior - 1 + stats.trans, 0)
            transmat = _normalise(jnp.where(params.transmat == 0, 0, p))
        emission = self.emission.m_step(stats.emission, params.emission, self.update)
        return HMMParams(startprob, transmat, emission)

    def log_prior(self, params: HMMParams) -> Array:
        """The emission's log-prior (e.g. a wrapped family's pseudo-counts). The start
        and transition Dirichlet priors and hmmlearn's emission priors shape the M-step
        (MAP) but, as hmmlearn's monitor, are not added to the recorded objective."""
        return log_prior(self.emission, params.emission)

    def init(self, key, x, weights, n_components, method="kmeans") -> HMMParams:
        """Dirichlet(1) start and transition rows; the emission's own start."""
        k_s, k_t, k_e = jax.random.split(key, 3)
        # Dirichlet(1) = normalised Exp(1) draws (jax.random.dirichlet's gamma sampler is
        # slow to compile).
        startprob = _normalise(jax.random.exponential(k_s, (n_components,), x.dtype))
        transmat = _normalise(jax.random.exponential(k_t, (n_components,) * 2, x.dtype))
        if weights is None:
            weights = jnp.ones(x.shape[0], x.dtype)
        emission = self.emission.init(k_e, x, weights, n_components, method)
        return HMMParams(startprob, transmat, emission)

    # -- decoding and sampling ------------------------------------------------------------
    def viterbi(self, params: HMMParams, x: Array, weights: Array | None = None):
        """``(states (S, seq_len), log p(x_s, z*_s) (S,))`` per sequence."""
        _, w = self.sequences(x, weights)
        fn = hmm_inference.parallel_viterbi if self.parallel else hmm_inference.viterbi
        return jax.vmap(fn, (None, None, 0, 0))(
            params.startprob, params.transmat, self.log_likelihoods(params, x), w > 0)

    def sample(self, key, params: HMMParams, n_steps: int) -> tuple[Array, Array]:
        """One sequence: ``(x (n_steps, D), states (n_steps,))``."""
        k_0, k_z, k_x = jax.random.split(key, 3)
        z0 = jax.random.categorical(k_0, jnp.log(params.startprob))
        log_a = jnp.log(params.transmat)

        def step(z, key):
            z = jax.random.categorical(key, log_a[z])
            return z, z

        _, zs = jax.lax.scan(step, z0, jax.random.split(k_z, n_steps - 1))
        states = jnp.concatenate([z0[None], zs]).astype(jnp.int32)
        return self.emission.sample(k_x, params.emission, states), states


def _normalise(p):
    s = jnp.sum(p, axis=-1, keepdims=True)
    return p / jnp.where(s == 0, 1, s)


EMISSIONS = {"gaussian": GaussianEmission, "categorical": CategoricalEmission,
             "poisson": PoissonEmission, "gmm": GMMEmission}


def hmm(emission="gaussian", *, seq_len: int, update: str | None = None,
        startprob_prior=1.0, transmat_prior=1.0, parallel: bool = False,
        **emission_kwargs) -> HMM:
    """An :class:`HMM` family with ``"gaussian"``, ``"categorical"``, ``"poisson"`` or
    ``"gmm"`` (a Gaussian mixture per state) emissions (hmmlearn's), or a mixture family's density (``jaxem.bernoulli()``,
    ``jaxem.categorical(...)``, ...: see :class:`MixtureEmission`).

    ``emission_kwargs`` go to the emission model (``covariance_type``, ``n_symbols``, priors).
    """
    if isinstance(emission, MixtureFamily):
        if emission_kwargs:
            raise TypeError(f"emission options {sorted(emission_kwargs)} are for the named "
                            "emissions; a family carries its own.")
        em = MixtureEmission(emission)
    elif emission not in EMISSIONS:
        raise ValueError(f"Unknown emission {emission!r}: use one of {', '.join(EMISSIONS)} "
                         "or a mixture family such as jaxem.bernoulli().")
    else:
        em = EMISSIONS[emission](**emission_kwargs)
    if update is None:
        update = "st" + em.letters
    return HMM(em, int(seq_len), update, startprob_prior, transmat_prior, parallel)


def pad_sequences(x, lengths=None, seq_len: int | None = None, fill=0):
    """hmmlearn's layout (concatenated ``x (sum(lengths), D)`` + ``lengths``) -> padded flat.

    Returns ``(x (S * seq_len, D), weights (S * seq_len,))`` as NumPy arrays, with
    ``seq_len = max(lengths)`` unless given, weights 1 on real steps and 0 on padding.
    """
    x = np.asarray(x)
    lengths = np.asarray([x.shape[0]] if lengths is None else lengths, dtype=int)
    if lengths.ndim != 1 or np.any(lengths < 1):
        raise ValueError(f"lengths must be positive integers (empty sequences are not "
                         f"allowed), got {lengths.tolist()}.")
    if lengths.sum() != x.shape[0]:
        raise ValueError(f"lengths sum to {lengths.sum()} but X has {x.shape[0]} rows; "
                         "they must be equal.")
    seq_len = int(lengths.max()) if seq_len is None else int(seq_len)
    if lengths.max() > seq_len:
        raise ValueError(f"seq_len={seq_len} is shorter than the longest sequence "
                         f"({lengths.max()}).")
    s = lengths.shape[0]
    out = np.full((s, seq_len) + x.shape[1:], fill, dtype=x.dtype)
    weights = np.zeros((s, seq_len), dtype=np.float64 if x.dtype == np.float64 else np.float32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for i, (a, n) in enumerate(zip(starts, lengths)):
        out[i, :n] = x[a:a + n]
        weights[i, :n] = 1
    return out.reshape((s * seq_len,) + x.shape[1:]), weights.reshape(-1)


def unpad(values, lengths, seq_len: int):
    """Padded per-step values ``(S * seq_len, ...)`` -> concatenated ``(sum(lengths), ...)``."""
    values = np.asarray(values).reshape((len(lengths), seq_len) + np.shape(values)[1:])
    return np.concatenate([values[i, :n] for i, n in enumerate(lengths)])
