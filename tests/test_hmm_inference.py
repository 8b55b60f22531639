"""Forward-backward, Viterbi and posterior sampling against brute-force enumeration."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxem import hmm_inference as hi


def _model(seed, k, t):
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(k))
    a = rng.dirichlet(np.ones(k), size=k)
    ll = rng.normal(size=(t, k)) * 3
    return pi, a, ll


def _enumerate(pi, a, ll):
    """All K^T paths: (log Z, smoothed (T, K), expected transitions (K, K), log p(x, z))."""
    t, k = ll.shape
    paths = np.array(list(itertools.product(range(k), repeat=t)))
    with np.errstate(divide="ignore"):  # log 0 = -inf for forbidden paths
        log_pi, log_a = np.log(pi), np.log(a)
    lp = log_pi[paths[:, 0]] + ll[0, paths[:, 0]]
    for s in range(1, t):
        lp = lp + log_a[paths[:, s - 1], paths[:, s]] + ll[s, paths[:, s]]
    log_z = np.logaddexp.reduce(lp)
    w = np.exp(lp - log_z)
    smoothed = np.stack([np.bincount(paths[:, s], w, k) for s in range(t)])
    xi = np.zeros((k, k))
    for s in range(t - 1):
        np.add.at(xi, (paths[:, s], paths[:, s + 1]), w)
    return log_z, smoothed, xi, paths, lp


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10**6), k=st.integers(1, 3), t=st.integers(1, 4),
       pad=st.integers(0, 2))
def test_forward_backward_and_viterbi_equal_enumeration(seed, k, t, pad):
    pi, a, ll = _model(seed, k, t)
    log_z, smoothed, xi, paths, lp = _enumerate(pi, a, ll)
    # Trailing padding holds garbage that must be ignored.
    ll_pad = np.concatenate([ll, np.random.default_rng(seed).normal(size=(pad, k)) * 50])
    mask = np.arange(t + pad) < t
    with jax.enable_x64(True):
        for fb in (hi.forward_backward, hi.parallel_forward_backward):
            post = fb(pi, a, ll_pad, mask)
            np.testing.assert_allclose(post.log_normalizer, log_z, rtol=1e-10)
            np.testing.assert_allclose(post.smoothed[:t], smoothed, atol=1e-10)
            np.testing.assert_allclose(post.trans_counts, xi, atol=1e-10)
            # filtered at the last real step equals smoothed there
            np.testing.assert_allclose(post.filtered[t - 1], smoothed[-1], atol=1e-10)
        best = paths[np.argmax(lp)]
        for vit in (hi.viterbi, hi.parallel_viterbi):
            states, score = vit(pi, a, ll_pad, mask)
            np.testing.assert_array_equal(states[:t], best)
            np.testing.assert_allclose(score, lp.max(), rtol=1e-10)


def test_parallel_equals_sequential_on_a_long_sequence_float32():
    """T = 500 in float32 with extreme emission log-likelihoods: finite, and both
    variants agree with a float64 reference."""
    k, t = 4, 500
    pi, a, ll = _model(0, k, t)
    ll = ll * 100.0  # per-step differences of hundreds of nats
    with jax.enable_x64(True):
        ref = hi.forward_backward(pi, a, ll)
        ref_states = hi.viterbi(pi, a, ll)[0]
    for fb in (hi.forward_backward, hi.parallel_forward_backward):
        post = fb(*(jnp.asarray(v, jnp.float32) for v in (pi, a, ll)))
        assert post.smoothed.dtype == jnp.float32
        np.testing.assert_allclose(post.log_normalizer, ref.log_normalizer, rtol=1e-5)
        np.testing.assert_allclose(post.smoothed, ref.smoothed, atol=1e-4)
        np.testing.assert_allclose(post.trans_counts, ref.trans_counts, rtol=1e-3, atol=1e-2)
    for vit in (hi.viterbi, hi.parallel_viterbi):
        states, _ = vit(*(jnp.asarray(v, jnp.float32) for v in (pi, a, ll)))
        np.testing.assert_array_equal(states, ref_states)


def test_posterior_samples_follow_the_enumerated_posterior():
    k, t, n = 2, 3, 20000
    pi, a, ll = _model(3, k, t)
    _, _, _, paths, lp = _enumerate(pi, a, ll)
    probs = np.exp(lp - np.logaddexp.reduce(lp))
    keys = jax.random.split(jax.random.key(0), n)
    ll_pad = np.concatenate([ll, np.full((2, k), 7.0)])  # two padded steps, ignored
    mask = np.arange(t + 2) < t
    draws = jax.vmap(hi.sample_posterior, (0, None, None, None, None))(keys, pi, a, ll_pad, mask)
    draws = np.asarray(draws)[:, :t]
    index = (draws * k ** np.arange(t - 1, -1, -1)).sum(axis=1)  # path -> row of `paths`
    freq = np.bincount(index, minlength=k ** t) / n
    # 5 binomial standard deviations per path
    np.testing.assert_array_less(np.abs(freq - probs), 5 * np.sqrt(probs * (1 - probs) / n) + 1e-3)


def test_zero_start_probability_and_forbidden_transitions():
    """Zeros in pi and A (a left-right model) stay exact: no NaN, zero posterior mass."""
    pi = np.array([1.0, 0.0, 0.0])
    a = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    ll = np.random.default_rng(1).normal(size=(5, 3))
    log_z, smoothed, xi, paths, lp = _enumerate(pi, a, ll)
    with jax.enable_x64(True):
        for fb in (hi.forward_backward, hi.parallel_forward_backward):
            post = fb(pi, a, ll)
            np.testing.assert_allclose(post.log_normalizer, log_z, rtol=1e-10)
            np.testing.assert_allclose(post.trans_counts, xi, atol=1e-10)
        for vit in (hi.viterbi, hi.parallel_viterbi):
            np.testing.assert_array_equal(vit(pi, a, ll)[0], paths[np.argmax(lp)])


def test_vmap_over_padded_sequences_equals_separate_calls():
    fb = hi.forward_backward
    pi, a, ll = _model(5, 3, 9)
    lengths = [9, 4, 1]
    masks = np.arange(9)[None, :] < np.array(lengths)[:, None]
    batch = jax.vmap(fb, (None, None, 0, 0))(pi, a, np.stack([ll, ll, ll]), masks)
    for i, n in enumerate(lengths):
        one = fb(pi, a, ll[:n])
        np.testing.assert_allclose(batch.log_normalizer[i], one.log_normalizer, rtol=1e-5)
        np.testing.assert_allclose(batch.smoothed[i, :n], one.smoothed, atol=1e-5)
        np.testing.assert_allclose(batch.trans_counts[i], one.trans_counts, atol=1e-5)
