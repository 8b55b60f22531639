"""Starting parameters, as scikit-learn's ``init_params`` methods.

Every method yields starting responsibilities; the starting parameters are the family's
M-step on them, ``family.m_step(family.stats(x, w * resp))`` (twice, the second time
about the first's means). As in scikit-learn, ``k-means++`` and ``random_from_data`` put
one unit of responsibility (times the row's weight) on each chosen row (so Gaussian
components start at those rows with covariance ``reg_covar``), ``random`` draws uniform
responsibilities, and ``kmeans`` uses the labels of a k-means fit (jaxem's own,
:mod:`jaxem.families.kmeans`).

Every method is a few passes over the rows in chunks (:mod:`jaxem.rows`), so its memory
is bounded by the chunk, not by ``n_samples`` (times restarts, under ``vmap``), and works
on rows split over devices. Rows are drawn by inverse-CDF search along the *global* row
order and per-row noise is keyed on the global row index, so the starting point does not
depend on the chunk size or on the number of devices (up to float rounding).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxem import em, rows
from jaxem.families.base import tree_where
from jaxem.families.kmeans import KMeans, KMeansParams

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")


def _sq_dist(centers, x):
    """Squared distances ``(n, m)`` from rows ``x (n, D)`` to ``centers (m, D)``."""
    return -KMeans().log_joint(KMeansParams(centers), x)


def _closest(centers, n_chosen, x):
    """Squared distance of each row to the nearest of the first ``n_chosen`` centres."""
    chosen = jnp.arange(centers.shape[0]) < n_chosen
    return jnp.min(jnp.where(chosen, _sq_dist(centers, x), jnp.inf), axis=1)


def _draw(p_fn, targets, local_total, x, weights, chunk_size, axis_name):
    """Rows where the global running sum of ``p_fn(x, w, rows) (chunk,)`` crosses each
    of ``targets (T,)``: ``(x rows (T, D), global indices (T,), weights (T,))``.

    ``local_total`` is this device's sum of ``p``, which places its rows in the global
    order. A target that rounding puts past the end falls back to the last row with
    ``p > 0``.
    """
    n_t, d = targets.shape[0], x.shape[1]
    if axis_name is None:
        before = jnp.zeros((), local_total.dtype)
    else:
        totals = jax.lax.all_gather(local_total, axis_name)
        before = jnp.sum(jnp.where(jnp.arange(totals.shape[0])
                                   < jax.lax.axis_index(axis_name), totals, 0))
    empty = (jnp.zeros((n_t, d), x.dtype), jnp.full((n_t,), -1, jnp.int32),
             jnp.zeros((n_t,), x.dtype))

    def chunk(carry, xc, wc, idx):
        start, (fx, fi, fw), (lx, li, lw) = carry
        p = p_fn(xc, wc, idx)
        cs = start + jnp.cumsum(p)
        j = jnp.searchsorted(cs, targets, side="right")  # first row with cs > t
        hit = (j < xc.shape[0]) & (targets >= start)
        j = jnp.minimum(j, xc.shape[0] - 1)
        found = (jnp.where(hit[:, None], xc[j], fx), jnp.where(hit, idx[j], fi),
                 jnp.where(hit, wc[j], fw))
        last = jnp.max(jnp.where(p > 0, jnp.arange(xc.shape[0]), -1))
        has = last >= 0
        last_row = (jnp.where(has, xc[last], lx), jnp.where(has, idx[last], li),
                    jnp.where(has, wc[last], lw))
        return cs[-1], found, last_row

    _, found, last = rows.scan_rows(chunk, (before, empty, jax.tree.map(lambda a: a[0], empty)),
                                    x, weights, chunk_size, axis_name)
    if axis_name is not None:  # one device found each target; the last device with p > 0
        found, last = jax.lax.all_gather((found, last), axis_name)
        device = jnp.argmax(found[1] >= 0, axis=0)  # (T,)
        found = jax.tree.map(lambda a: a[device, jnp.arange(n_t)], found)
        last_dev = jnp.argmax(jnp.where(last[1] >= 0, jnp.arange(last[1].shape[0]), -1))
        last = jax.tree.map(lambda a: a[last_dev], last)
    ok = found[1] >= 0
    return tuple(jnp.where(ok.reshape(ok.shape + (1,) * (f.ndim - 1)), f, l)
                 for f, l in zip(found, last))


def _masses(x, weights, chunk_size, axis_name):
    """``(this device's sum of weights, the global sum)``."""
    local = rows.sum_rows(lambda _, wc, __: jnp.sum(wc), x, weights, chunk_size)
    return local, rows.psum(local, axis_name)


def kmeans_plusplus(key: jax.Array, x: jax.Array, weights: jax.Array, n_components: int,
                    chunk_size: int | None = None, axis_name: str | None = None
                    ) -> tuple[jax.Array, jax.Array]:
    """Greedy k-means++ seeding (as scikit-learn's): ``(centers (K, D), indices (K,))``.

    The first centre is drawn with probability proportional to the weights, each next
    one as the best of ``2 + log K`` candidates drawn proportional to
    ``weight * squared distance to the nearest centre``. Rows of weight 0 are never
    chosen. Two chunked passes per centre; ``indices`` are global row indices.

    >>> import jax, jax.numpy as jnp
    >>> x = jnp.array([[0.0], [0.1], [10.0], [10.1]])
    >>> centers, idx = kmeans_plusplus(jax.random.key(0), x, jnp.ones(4), 2)
    >>> sorted(jnp.round(centers[:, 0]).tolist())
    [0.0, 10.0]
    """
    x = jnp.asarray(x)  # NumPy input too (rows are gathered at traced indices)
    weights = jnp.asarray(weights, x.dtype)
    return _seeds(key, x, weights, n_components, chunk_size, axis_name)[:2]


def _seeds(key, x, weights, k, chunk_size, axis_name):
    """k-means++: ``(centers (K, D), indices (K,), their weights (K,))``."""
    n_trials = 2 + int(math.log(k))
    w_local, w_total = _masses(x, weights, chunk_size, axis_name)

    def step(carry, inputs):
        centers, idx, cw, local, total = carry
        c, key = inputs
        # The first centre, or all rows on the centres already: draw by weight alone.
        by_weight = (c == 0) | (total <= 0)
        local, total = jnp.where(by_weight, w_local, local), jnp.where(by_weight, w_total, total)
        p_fn = lambda xc, wc, _: jnp.where(by_weight, wc, wc * _closest(centers, c, xc))
        targets = jax.random.uniform(key, (n_trials,), x.dtype) * total
        cand, cand_idx, cand_w = _draw(p_fn, targets, local, x, weights, chunk_size, axis_name)

        def potential(xc, wc, _):  # (T,) sum of w * min(closest, d(candidate))
            d2 = jnp.minimum(_closest(centers, c, xc)[:, None], _sq_dist(cand, xc))
            return wc @ d2

        local_pot = rows.sum_rows(potential, x, weights, chunk_size)
        pot = rows.psum(local_pot, axis_name)
        best = jnp.where(c == 0, 0, jnp.argmin(pot))
        # Cast to the buffers' dtypes: JAX warns (an error to come) on a scatter that
        # narrows, e.g. int64 indices or float64 weights into int32 / float32 in x64 mode.
        carry = (centers.at[c].set(cand[best].astype(centers.dtype)),
                 idx.at[c].set(cand_idx[best].astype(idx.dtype)),
                 cw.at[c].set(cand_w[best].astype(cw.dtype)), local_pot[best], pot[best])
        return carry, None

    init = (jnp.zeros((k, x.shape[1]), x.dtype), jnp.zeros(k, jnp.int32),
            jnp.zeros(k, x.dtype), w_local, w_total)
    (centers, idx, cw, _, _), _ = jax.lax.scan(
        step, init, (jnp.arange(k), jax.random.split(key, k)))
    return centers, idx, cw


def _random_rows(key, x, weights, k, chunk_size, axis_name):
    """``k`` distinct rows drawn proportional to their weights, without replacement:
    ``(rows (K, D), indices (K,), their weights (K,))``; one chunked pass per row."""
    w_local, w_total = _masses(x, weights, chunk_size, axis_name)
    first = rows.row_offset(x.shape[0], axis_name)

    def step(carry, inputs):
        picked, idx, pw = carry
        c, key = inputs
        taken = jnp.arange(k) < c
        mine = taken & (idx >= first) & (idx < first + x.shape[0])
        local = w_local - jnp.sum(jnp.where(mine, pw, 0))
        total = w_total - jnp.sum(jnp.where(taken, pw, 0))
        p_fn = lambda xc, wc, r: jnp.where(jnp.any((r[:, None] == idx) & taken, axis=1), 0, wc)
        target = jax.random.uniform(key, (1,), x.dtype) * total
        row, i, w = _draw(p_fn, target, local, x, weights, chunk_size, axis_name)
        return (picked.at[c].set(row[0].astype(picked.dtype)),
                idx.at[c].set(i[0].astype(idx.dtype)), pw.at[c].set(w[0].astype(pw.dtype))), None

    init = (jnp.zeros((k, x.shape[1]), x.dtype), jnp.full(k, -1, jnp.int32),
            jnp.zeros(k, x.dtype))
    out, _ = jax.lax.scan(step, init, (jnp.arange(k), jax.random.split(key, k)))
    return out


def _random_resp(key, rows_idx, k, dtype):
    """Uniform random responsibilities ``(chunk, K)``, keyed on the global row index."""
    r = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (k,), dtype))(rows_idx)
    return r / jnp.sum(r, axis=1, keepdims=True)


def _lloyd(key, x, weights, k, chunk_size, axis_name):
    """k-means centres ``(K, D)`` from k-means++ seeds, scikit-learn's defaults."""
    centers = _seeds(key, x, weights, k, chunk_size, axis_name)[0]
    # scikit-learn's KMeans defaults: 300 iterations, tol 1e-4 of the mean variance.
    mean_fn = lambda xc, wc, _: (wc @ xc, wc @ (xc * xc), jnp.sum(wc))
    s1, s2, w = rows.sum_rows(mean_fn, x, weights, chunk_size, axis_name)
    tol = 1e-4 * jnp.mean(s2 / w - (s1 / w) ** 2)
    fitted = em.run(KMeans(), KMeansParams(centers), x, weights, max_iter=300, tol=tol,
                    chunk_size=chunk_size, axis_name=axis_name)
    return fitted.params.centers


def initial_resp(key: jax.Array, x: jax.Array, weights: jax.Array, n_components: int,
                 method: str = "kmeans") -> jax.Array:
    """Starting responsibilities ``(n, K)`` by ``method`` (one of :data:`INIT_METHODS`),
    for data that fits in memory (e.g. an HMM emission's start)."""
    k = n_components
    if method == "random":
        return _random_resp(key, jnp.arange(x.shape[0]), k, x.dtype)
    if method == "kmeans":
        centers = _lloyd(key, x, weights, k, None, None)
        return jax.nn.one_hot(jnp.argmin(_sq_dist(centers, x), axis=1), k, dtype=x.dtype)
    draw = {"k-means++": _seeds, "random_from_data": _random_rows}.get(method)
    if draw is None:
        raise ValueError(f"Unknown init method {method!r}: use one of {', '.join(INIT_METHODS)}.")
    idx = draw(key, x, weights, k, None, None)[1]
    return jnp.zeros((x.shape[0], k), x.dtype).at[idx, jnp.arange(k, dtype=idx.dtype)].set(1.0)


def initialize(family, key: jax.Array, x: jax.Array, weights: jax.Array,
               n_components: int, method: str = "kmeans", chunk_size: int | None = None,
               axis_name: str | None = None):
    """Starting parameters of ``family`` for ``x (n, D)`` by ``method``.

    ``chunk_size`` bounds the memory of every pass over the rows; inside ``shard_map``
    over rows, ``axis_name`` names the mesh axis (this device's rows are ``x``).
    """
    k = n_components
    if method in ("k-means++", "random_from_data"):
        draw = _seeds if method == "k-means++" else _random_rows
        seeds, _, seed_w = draw(key, x, weights, k, chunk_size, axis_name)
        stats_of = lambda params: family.stats(seeds, jnp.diag(seed_w), params)
    else:
        if method == "kmeans":
            centers = _lloyd(key, x, weights, k, chunk_size, axis_name)
            resp_fn = lambda xc, r: jax.nn.one_hot(jnp.argmin(_sq_dist(centers, xc), axis=1),
                                                   k, dtype=x.dtype)
        elif method == "random":
            resp_fn = lambda xc, r: _random_resp(key, r, k, x.dtype)
        else:
            raise ValueError(f"Unknown init method {method!r}: use one of "
                             f"{', '.join(INIT_METHODS)}.")
        stats_of = lambda params: rows.sum_rows(
            lambda xc, wc, r: family.stats(xc, resp_fn(xc, r) * wc[:, None], params),
            x, weights, chunk_size, axis_name)
    # Two passes, so that second moments are taken about the first pass's means.
    first = family.m_step(stats_of(None), None)
    return family.m_step(stats_of(first), first)


def _match(overlap: jax.Array) -> jax.Array:
    """Greedy one-to-one matching of labels to components: ``perm (K,)``, ``perm[j]`` the
    component given to label ``j``, taking the largest remaining entry of ``overlap
    (K labels, K components)`` first (ties: the lowest indices, so labels absent from
    the data keep the components' order)."""
    k = overlap.shape[0]

    def step(_, carry):
        left, perm = carry
        j, c = jnp.divmod(jnp.argmax(left), k)
        left = left.at[j].set(-jnp.inf).at[:, c].set(-jnp.inf)
        return left, perm.at[j].set(c.astype(perm.dtype))

    return jax.lax.fori_loop(0, k, step, (overlap, jnp.zeros(k, jnp.int32)))[1]


def seed_with_labels(family, params, x: jax.Array, weights: jax.Array, labels: jax.Array,
                     chunk_size: int | None = None, axis_name: str | None = None):
    """Starting parameters that agree with partial ``labels (n,)`` (-1: unlabelled).

    An init method numbers its components arbitrarily, while label ``j`` names component
    ``j``. So: the components of ``params`` (the method's start) are renumbered to agree
    with the labels (greedy matching on the labelled rows' responsibility mass), the
    starting responsibilities are the method's for the unlabelled rows and one-hot on
    the label for the labelled rows, and the starting parameters are the family's M-step
    on them (twice, as :func:`initialize`). A labelled class thus seeds its component
    (its rows' means, and so on) together with the unlabelled rows the method put there;
    with every row labelled the start is the closed-form per-class estimate, with none
    it is ``params``.
    """
    def resp_of(xc, perm=None):  # the method's responsibilities, columns renumbered
        resp = family.posterior(family.log_joint(params, xc))[0]
        return resp if perm is None else resp[:, perm]

    def onehot(lc, k, dtype):
        return jax.nn.one_hot(lc, k, dtype=dtype)  # all 0 for -1

    def overlap(xl, wc, _):  # (K labels, K components) responsibility mass
        resp = resp_of(xl[0])
        labelled = onehot(xl[1], resp.shape[-1], resp.dtype) * wc[:, None]
        return jnp.matmul(labelled.T, resp, precision=jax.lax.Precision.HIGHEST)

    mass = rows.sum_rows(overlap, (x, labels), weights, chunk_size, axis_name)
    perm = _match(mass)

    def stats_of(current):
        def one(xl, wc, _):
            xc, lc = xl
            resp = resp_of(xc, perm)
            resp = jnp.where(lc[:, None] >= 0, onehot(lc, resp.shape[-1], resp.dtype), resp)
            return family.stats(xc, resp * wc[:, None], current)
        return rows.sum_rows(one, (x, labels), weights, chunk_size, axis_name)

    first = family.m_step(stats_of(params), params)
    seeded = family.m_step(stats_of(first), first)
    # No labelled row (of positive weight): the method's start, as without labels.
    return tree_where(jnp.sum(mass) > 0, seeded, params)
