"""Inference in hidden Markov models: arrays in, arrays out (no model objects).

Every routine takes one sequence; ``vmap`` it over a batch of padded sequences.

Shapes, ``T`` steps and ``K`` states:

* ``initial_probs (K,)``, ``transition_matrix (K, K)`` (rows sum to 1),
* ``log_likelihoods (T, K)``: ``log p(x_t | z_t = k)``,
* ``mask (T,)`` bool, optional: ``False`` marks *trailing* padding. A padded step has
  log-likelihood 0 (an unobserved step), so it changes neither the log-normaliser nor the
  marginals of the real steps, and its transitions are not counted; Viterbi gives it an
  identity transition so that it cannot sway the decoded real steps.

Two implementations of the forward-backward pass give the same numbers:

* :func:`forward_backward`: ``lax.scan`` over time with scaled (normalised)
  probabilities, one ``(K,) @ (K, K)`` product per step; float32-safe because each
  step's emission likelihoods are divided by their maximum and each message is
  normalised (Rabiner's scaling), and the log-normaliser is a sum of logs.
* :func:`parallel_forward_backward`: ``lax.associative_scan`` over normalised
  ``(K, K)`` matrix products, depth ``O(log T)``, for long sequences on accelerators.

Viterbi decoding likewise (:func:`viterbi`, :func:`parallel_viterbi`), and
:func:`sample_posterior` draws state paths from ``p(z_{1:T} | x_{1:T})``.

>>> import jax.numpy as jnp
>>> pi = jnp.array([0.6, 0.4]); A = jnp.array([[0.9, 0.1], [0.2, 0.8]])
>>> ll = jnp.log(jnp.array([[0.5, 0.1], [0.4, 0.3], [0.01, 0.9]]))
>>> post = forward_backward(pi, A, ll)
>>> post.smoothed.shape, post.trans_counts.shape
((3, 2), (2, 2))
>>> bool(jnp.allclose(parallel_forward_backward(pi, A, ll).log_normalizer,
...                   post.log_normalizer))
True
>>> viterbi(pi, A, ll)[0].tolist()
[0, 0, 1]
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class HMMPosterior(NamedTuple):
    """The output of forward-backward for one sequence."""

    log_normalizer: Array  # () log p(x_{1:T})
    filtered: Array  # (T, K) p(z_t | x_{1:t})
    smoothed: Array  # (T, K) p(z_t | x_{1:T})
    trans_counts: Array  # (K, K) sum_t p(z_t = i, z_{t+1} = j | x_{1:T}) over real steps


def _prepare(log_likelihoods, mask):
    """Emission likelihoods scaled per step: ``(b (T, K) with max 1, log shift (T,))``."""
    t = log_likelihoods.shape[0]
    mask = jnp.ones(t, bool) if mask is None else jnp.asarray(mask, bool)
    ll = jnp.where(mask[:, None], log_likelihoods, 0.0)
    shift = jnp.max(ll, axis=1)
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    return jnp.exp(ll - shift[:, None]), shift, mask


def _trans_counts(alpha, transition_matrix, v, mask):
    """``sum_t xi_t`` from normalised ``alpha_t`` and ``v_{t+1} = b_{t+1} * beta_{t+1}``.

    Each ``xi_t = alpha_t[:, None] * A * v_{t+1}[None, :]`` is normalised to sum 1; the
    sum over ``t`` is one ``(K, T) @ (T, K)`` product.
    """
    a, v = alpha[:-1], v[1:]
    norm = jnp.sum((a @ transition_matrix) * v, axis=1)
    scale = jnp.where(mask[1:] & (norm > 0), 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0)
    return transition_matrix * (a.T @ (v * scale[:, None]))


def _normalise(p, axis=-1):
    s = jnp.sum(p, axis=axis, keepdims=True)
    return p / jnp.where(s > 0, s, 1.0)


@functools.partial(jax.jit, static_argnames=("unroll",))
def forward_backward(initial_probs: Array, transition_matrix: Array,
                     log_likelihoods: Array, mask: Array | None = None,
                     unroll: int = 4) -> HMMPosterior:
    """Scaled forward-backward under ``lax.scan`` (see the module docstring for shapes).

    Trailing padding needs no special transition here: with emission likelihood 1 a
    padded step multiplies the forward message by ``A`` (a prediction, normaliser 1) and
    leaves the backward message at 1, so ``A`` is used on every step and ``vmap`` over
    sequences keeps each step one ``(S, K) @ (K, K)`` matrix product.
    """
    b, shift, mask = _prepare(log_likelihoods, mask)
    a = transition_matrix

    # The backward messages are normalised by their own sum (their scale cancels in the
    # smoothed marginals and in each xi_t), so they do not wait for the forward
    # normalisers and both passes share one scan: half the loop overhead.
    def both(carry, inp):
        alpha, beta = carry
        b_fwd, b_bwd = inp  # b_t for the forward pass, b_{T-t} for the backward pass
        alpha = (alpha @ a) * b_fwd
        c = jnp.sum(alpha)
        alpha = alpha / c
        beta = a @ (b_bwd * beta)
        beta = beta / jnp.sum(beta)
        return (alpha, beta), (alpha, c, beta)

    alpha0 = initial_probs * b[0]
    c0 = jnp.sum(alpha0)
    alpha0 = alpha0 / c0
    ones = jnp.ones_like(alpha0)
    _, (alphas, cs, betas) = jax.lax.scan(both, (alpha0, ones), (b[1:], b[:0:-1]),
                                          unroll=unroll)
    alphas = jnp.concatenate([alpha0[None], alphas])
    cs = jnp.concatenate([c0[None], cs])
    betas = jnp.concatenate([betas[::-1], ones[None]])
    smoothed = _normalise(alphas * betas)
    trans = _trans_counts(alphas, a, b * betas, mask)
    log_norm = jnp.sum(jnp.log(cs)) + jnp.sum(shift)
    return HMMPosterior(log_norm, alphas, smoothed, trans)


# -- parallel (associative scan) ------------------------------------------------------------
def _matmul_normalised(a, b):
    """Associative product of ``(matrix with max 1, log scale)`` pairs, batched."""
    (ma, ca), (mb, cb) = a, b
    p = ma @ mb
    n = jnp.max(p, axis=(-2, -1), keepdims=True)
    n = jnp.where(n > 0, n, 1.0)
    return p / n, ca + cb + jnp.log(n[..., 0, 0])


def _elements(initial_probs, transition_matrix, b, mask):
    """``M_0 = 1 (pi * b_0)^T`` (equal rows) and ``M_t = A_t diag(b_t)``, normalised."""
    del mask  # padded steps have b = 1: A alone is right there (see forward_backward)
    k = transition_matrix.shape[0]
    m = jnp.concatenate([jnp.broadcast_to(initial_probs * b[0], (1, k, k)),
                         transition_matrix * b[1:, None, :]])
    n = jnp.max(m, axis=(1, 2))
    n = jnp.where(n > 0, n, 1.0)
    return m / n[:, None, None], jnp.log(n)


@jax.jit
def parallel_forward_backward(initial_probs: Array, transition_matrix: Array,
                              log_likelihoods: Array, mask: Array | None = None) -> HMMPosterior:
    """Forward-backward by ``lax.associative_scan``: depth ``O(log T)``, work ``O(T K^3)``."""
    b, shift, mask = _prepare(log_likelihoods, mask)
    m, c = _elements(initial_probs, transition_matrix, b, mask)
    # Prefix products M_0 ... M_t: every row is proportional to alpha_t.
    fm, fc = jax.lax.associative_scan(_matmul_normalised, (m, c))
    alphas = _normalise(fm[:, 0, :])
    log_norm = fc[-1] + jnp.log(jnp.sum(fm[-1, 0])) + jnp.sum(shift)
    # Suffix products M_{t+1} ... M_{T-1}, applied to 1, are proportional to beta_t.
    rev = lambda x, y: _matmul_normalised(y, x)
    sm, _ = jax.lax.associative_scan(rev, (m[1:], c[1:]), reverse=True)
    betas = jnp.concatenate([_normalise(jnp.sum(sm, axis=-1)), jnp.ones_like(alphas[:1])])
    smoothed = _normalise(alphas * betas)
    trans = _trans_counts(alphas, transition_matrix, b * betas, mask)
    return HMMPosterior(log_norm, alphas, smoothed, trans)


# -- Viterbi --------------------------------------------------------------------------------
def _log_transitions(transition_matrix, mask):
    k = transition_matrix.shape[0]
    log_eye = jnp.log(jnp.eye(k, dtype=transition_matrix.dtype))
    return jnp.where(mask[1:, None, None], jnp.log(transition_matrix), log_eye)


@jax.jit
def viterbi(initial_probs: Array, transition_matrix: Array, log_likelihoods: Array,
            mask: Array | None = None) -> tuple[Array, Array]:
    """Most likely state path by max-product and backtracking under ``lax.scan``.

    Returns ``(states (T,) int32, log p(x, z*) ())``; padded steps repeat the last state.
    """
    t = log_likelihoods.shape[0]
    mask = jnp.ones(t, bool) if mask is None else jnp.asarray(mask, bool)
    ll = jnp.where(mask[:, None], log_likelihoods, 0.0)
    log_a = _log_transitions(transition_matrix, mask)

    def forward(delta, inp):
        log_a_t, ll_t = inp
        scores = delta[:, None] + log_a_t
        return jnp.max(scores, axis=0) + ll_t, jnp.argmax(scores, axis=0)

    delta0 = jnp.log(initial_probs) + ll[0]
    delta, back = jax.lax.scan(forward, delta0, (log_a, ll[1:]))
    last = jnp.argmax(delta).astype(jnp.int32)

    def backtrack(state, back_t):
        prev = back_t[state].astype(jnp.int32)
        return prev, prev

    _, states = jax.lax.scan(backtrack, last, back, reverse=True)
    return jnp.concatenate([states, last[None]]), jnp.max(delta)


def _maxplus(a, b):
    """Max-plus matrix product, batched: ``(..., K, K) x (..., K, K)``."""
    return jnp.max(a[..., :, :, None] + b[..., None, :, :], axis=-2)


@jax.jit
def parallel_viterbi(initial_probs: Array, transition_matrix: Array, log_likelihoods: Array,
                     mask: Array | None = None) -> tuple[Array, Array]:
    """Viterbi by two max-plus associative scans, depth ``O(log T)``, no backtracking.

    ``z*_t = argmax_k delta_t(k) + rho_t(k)`` with ``delta`` the best prefix score ending
    in ``k`` and ``rho`` the best continuation from ``k``: the MAP path when it is unique.
    """
    t = log_likelihoods.shape[0]
    k = transition_matrix.shape[0]
    mask = jnp.ones(t, bool) if mask is None else jnp.asarray(mask, bool)
    ll = jnp.where(mask[:, None], log_likelihoods, 0.0)
    e = jnp.concatenate([
        jnp.broadcast_to(jnp.log(initial_probs) + ll[0], (1, k, k)),
        _log_transitions(transition_matrix, mask) + ll[1:, None, :]])
    delta = jax.lax.associative_scan(_maxplus, e)[:, 0, :]
    suffix = jax.lax.associative_scan(lambda x, y: _maxplus(y, x), e[1:], reverse=True)
    rho = jnp.concatenate([jnp.max(suffix, axis=-1), jnp.zeros((1, k), ll.dtype)])
    states = jnp.argmax(delta + rho, axis=1).astype(jnp.int32)
    return states, jnp.max(delta[-1])


# -- posterior sampling ---------------------------------------------------------------------
@jax.jit
def sample_posterior(key: Array, initial_probs: Array, transition_matrix: Array,
                     log_likelihoods: Array, mask: Array | None = None) -> Array:
    """One state path ``(T,)`` from ``p(z_{1:T} | x_{1:T})`` (forward filter, backward sample)."""
    t = log_likelihoods.shape[0]
    # Padded steps are unobserved states of the same chain: sampling them with A keeps
    # the real steps' joint posterior exact.
    alphas = forward_backward(initial_probs, transition_matrix, log_likelihoods, mask).filtered
    keys = jax.random.split(key, t)
    last = jax.random.categorical(keys[-1], jnp.log(alphas[-1])).astype(jnp.int32)

    def step(state, inp):
        key_t, alpha_t = inp
        logits = jnp.log(alpha_t * transition_matrix[:, state])
        prev = jax.random.categorical(key_t, logits).astype(jnp.int32)
        return prev, prev

    _, states = jax.lax.scan(step, last, (keys[:-1], alphas[:-1]), reverse=True)
    return jnp.concatenate([states, last[None]])
