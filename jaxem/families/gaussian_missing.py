"""Exact EM for Gaussian mixtures on rows with missing entries (NaN).

A row's likelihood under component ``k`` is the marginal density of its observed
features; the M-step takes the expected complete-data statistics: for the missing
features, the conditional mean ``mu_m + S_mo S_oo^-1 (x_o - mu_o)`` and the conditional
covariance ``S_mm - S_mo S_oo^-1 S_om`` given the observed ones (Little & Rubin,
*Statistical Analysis with Missing Data*, ch. 8 and 11). Every row goes through the same
compiled computation with masks, never a loop over missing patterns:

* ``diag``/``spherical``: features are independent given the component, so a missing
  feature drops out of the density, and its expected square is ``(mu - mu)^2 + var``.
* ``full``/``tied``: each row factorises one block per component, gathered to ``m``
  slots (see :func:`_conditional`): the precision ``Lam = S^-1`` of its missing features
  (``Lam_mm``) when it misses at most half of them, else the covariance ``S_oo`` of its
  observed ones, so no block is larger than ``D // 2``. ``m`` is the chunk's most gaps
  (at most ``D // 2``) rounded up to a bucket. Rows sorted by their number of missing
  entries (as :func:`jaxem.fit` sorts them) make most chunks' blocks small.

Work is ``(K, D, rows)`` GEMM-shaped, plus for full/tied an ``m x m`` Cholesky, solve
and inverse per row and component as elementwise work on ``(K, rows)`` arrays, and a
scatter of each row's block inverse into ``(K, D, D)``; bounded by the engine's chunks.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxem import rows

_HIGHEST = jax.lax.Precision.HIGHEST


# Each row's block is factorised by Cholesky written with jnp, unrolled over its
# (static, small) size or in loops (:data:`_UNROLL`): XLA's CPU LAPACK kernels for a batch of (n, K) matrices
# deadlocked inside EM's while_loop on a 2-thread pool (jaxlib 0.10.2), and batched tiny
# matmuls run far below elementwise speed there. The block is gathered to ``m`` slots,
# the chunk's most gaps (at most D // 2) rounded up to a bucket (:func:`_buckets`), so
# its cost is O(m^3) per row and component, not O(D^3).
def _buckets(d: int) -> tuple[int, ...]:
    """Sizes a chunk's blocks are padded to: 0, 1, 2, 3, 4, 6, 8, 12, ... and ``d`` (at
    most a third of a block padding)."""
    sizes, m = [0, 1], 2
    while m < d:
        sizes += [m, m + m // 2]
        m *= 2
    return tuple(sorted({s for s in sizes if s < d} | {d}))


def _by_bucket(fn, x):
    """``fn(m, mixed, x)`` for a chunk ``x (n, D)``: ``m`` is the smallest bucket that
    holds every row's block (see :func:`_conditional`), ``mixed`` whether its rows may
    take the covariance form. One compiled branch per bucket, chosen at run time (rows
    sorted by their number of missing entries make most chunks small); the largest,
    ``D // 2``, is always mixed: a chunk with more gaps needs it, and one with fewer
    compiles no second branch of that size for it (the largest unrolled, ~2 s)."""
    half = x.shape[-1] // 2
    sizes = _buckets(half)
    small = sizes[:-1] or sizes  # the precision form's; D = 1: the complete rows' 0
    most = _most_missing(x)
    index = jnp.where(most > small[-1], len(small), jnp.searchsorted(jnp.asarray(small), most))
    return jax.lax.switch(index, [lambda x, m=m: fn(m, False, x) for m in small]
                          + [lambda x: fn(max(half, 1), True, x)], x)


@jax.custom_batching.custom_vmap
def _most_missing(x):
    """The most missing entries in a row of ``x (n, D)``."""
    return jnp.max(jnp.sum(jnp.isnan(x), axis=-1), initial=0)


@_most_missing.def_vmap
def _most_missing_vmap(axis_size, in_batched, x):
    # Over a batch of data sets, the most of them all, unbatched: the switch above then
    # stays one branch for the batch, where a batched index would run every branch.
    del axis_size, in_batched
    return _most_missing(x.reshape((-1,) + x.shape[-1:])), False


# Blocks up to this size are factorised unrolled, entry by entry; larger ones (chunks
# with many gaps in data with more than 33 features) in loops over the columns,
# whose compile time does not grow with m^3 but which run ~10x slower (N=1024 rows,
# K=8: an unrolled 16 x 16 block took 9 s to compile and 9 ms to run, in loops 0.8 s
# and 113 ms; an unrolled 8 x 8 block 2.3 s and 2.5 ms).
_UNROLL = 16


def _spd(entry, b):
    """For the SPD matrix ``a`` with entries ``entry(i, j)`` (``j <= i``) and ``b`` (a list
    of ``m`` entries), each an array of one shape: ``(log det a, a^-1 b as a list, the
    upper triangle of a^-1 stacked (m (m + 1) / 2, ...) in row order)``."""
    m = len(b)
    if m > _UNROLL:
        low = _cholesky_rolled(jnp.stack([jnp.stack([entry(max(i, j), min(i, j))
                                                      for j in range(m)]) for i in range(m)]))
        z, inv = _solve_rolled(low, jnp.stack(b)), _inverse_rolled(low)
        diag = jnp.diagonal(low, axis1=0, axis2=1)
        return 2.0 * jnp.sum(jnp.log(diag), axis=-1), list(z), inv[_upper(m)]
    low = _cholesky([[entry(i, j) if j <= i else None for j in range(m)] for i in range(m)])
    z, inv = _solve(low, b), _inverse(low)
    return (2.0 * sum(jnp.log(low[j][j]) for j in range(m)), z,
            jnp.stack([inv[i][j] for i, j in zip(*_upper(m))]))


def _upper(m):
    """The upper triangle's ``(rows, columns)`` of an ``m x m`` matrix, in row order."""
    return tuple(np.triu_indices(m))


def _cholesky(a):
    """Lower Cholesky factor of the SPD matrix given by its entries ``a[i][j]`` (each an
    array, e.g. ``(K, n)``): the entries ``L[i][j]``, ``j <= i``."""
    m = len(a)
    low = [[None] * m for _ in range(m)]
    for j in range(m):
        low[j][j] = jnp.sqrt(a[j][j] - sum(low[j][i] ** 2 for i in range(j)))
        for i in range(j + 1, m):
            low[i][j] = (a[i][j] - sum(low[i][l] * low[j][l] for l in range(j))) / low[j][j]
    return low


def _solve(low, b):
    """``(L L^T)^-1 b`` for ``b`` given by its entries."""
    m = len(b)
    u = []
    for j in range(m):
        u.append((b[j] - sum(low[j][i] * u[i] for i in range(j))) / low[j][j])
    z = [None] * m
    for j in reversed(range(m)):
        z[j] = (u[j] - sum(low[i][j] * z[i] for i in range(j + 1, m))) / low[j][j]
    return z


def _inverse(low):
    """The upper triangle's entries of ``(L L^T)^-1 = L^-T L^-1``."""
    m = len(low)
    inv = [[None] * m for _ in range(m)]  # L^-1, lower
    for c in range(m):
        inv[c][c] = 1.0 / low[c][c]
        for i in range(c + 1, m):
            inv[i][c] = -sum(low[i][l] * inv[l][c] for l in range(c, i)) / low[i][i]
    return [[sum(inv[l][i] * inv[l][j] for l in range(j, m)) if j >= i else None
             for j in range(m)] for i in range(m)]


def _cholesky_rolled(a):
    """:func:`_cholesky` of ``a (m, m, ...)`` as a loop over its columns (right-looking:
    each column's outer product leaves the trailing block): ``L (m, m, ...)``."""
    m = a.shape[0]
    ix = jnp.arange(m).reshape((m,) + (1,) * (a.ndim - 2))

    def column(j, carry):
        a, low = carry
        col = a[:, j] / jnp.sqrt(a[j, j])
        col = jnp.where(ix >= j, col, 0.0)
        return a - col[:, None] * col[None], low.at[:, j].set(col)

    return jax.lax.fori_loop(0, m, column, (a, jnp.zeros_like(a)))[1]


def _solve_rolled(low, b):
    """:func:`_solve` with ``L (m, m, ...)`` and ``b (m, ...)`` in loops."""
    m = b.shape[0]

    def forward(j, u):  # u's entries from j on are still 0
        return u.at[j].set((b[j] - jnp.sum(low[j] * u, axis=0)) / low[j, j])

    def back(i, z):
        j = m - 1 - i
        return z.at[j].set((u[j] - jnp.sum(low[:, j] * z, axis=0)) / low[j, j])

    u = jax.lax.fori_loop(0, m, forward, jnp.zeros_like(b))
    return jax.lax.fori_loop(0, m, back, jnp.zeros_like(b))


def _inverse_rolled(low):
    """``(L L^T)^-1 = L^-T L^-1`` from ``L (m, m, ...)``, its rows of ``L^-1`` in a loop."""
    m = low.shape[0]
    eye = jnp.eye(m, dtype=low.dtype).reshape((m, m) + (1,) * (low.ndim - 2))

    def row(j, inv):  # rows from j on are still 0
        return inv.at[j].set((eye[j] - jnp.sum(low[j][:, None] * inv, axis=0)) / low[j, j])

    inv = jax.lax.fori_loop(0, m, row, jnp.zeros_like(low))
    return jnp.einsum("li...,lj...->ij...", inv, inv, precision=_HIGHEST)


def _mask(x):
    """``(observed (n, D) 0/1, x with 0 where missing)``."""
    observed = ~jnp.isnan(x)
    return observed.astype(x.dtype), jnp.where(observed, x, 0.0)


def fill_means(x, weights):
    """``x (n, D)`` with each missing entry replaced by its feature's mean over the rows
    where it is observed, weighted by ``weights (n,)`` (0 for a feature never observed):
    complete rows for a starting point (an HMM emission's ``init``), not for EM."""
    o, x0 = _mask(x)
    total = jnp.matmul(weights, o * x0, precision=_HIGHEST)
    count = jnp.matmul(weights, o, precision=_HIGHEST)
    return jnp.where(o > 0, x0, total / jnp.maximum(count, jnp.finfo(x.dtype).tiny))


def _conditional(family, params, x, m=None, mixed=False):
    """Per component and row, rows last: ``delta (K, D, n)`` = expected ``x - mu_k``
    (observed differences, conditional means of the missing), the conditional
    covariance of the missing features as ``(K, D, n)`` variances (diag, spherical) or
    ``(inv, flat, cov_rows, S)`` (full, tied: see below), the Mahalanobis distance over
    the observed features and ``log det`` of their covariance (both ``(K, n)``).

    Full and tied factorise one block per row and component, gathered to ``m`` slots.
    A row with at most ``D // 2`` gaps (every row unless ``mixed``) takes the precision
    form, with ``Lam = S^-1`` and its missing features in the slots: the conditional
    covariance is ``Lam_mm^-1``, the conditional mean offset ``-Lam_mm^-1 Lam_mo d_o``
    and ``log det S_oo = log det S + log det Lam_mm``. A row with more gaps
    (``cov_rows``) takes the covariance form, with its observed features in the slots:
    ``S_oo`` is factorised, the conditional mean offset is ``S_mo S_oo^-1 d_o`` and the
    conditional covariance ``S - S E_o S_oo^-1 E_o^T S`` (``E_o`` the observed columns of
    the identity; zero on the observed rows and columns). So no block has more than
    ``D // 2`` slots. Either way the observed Mahalanobis distance is the full one at the
    conditional mean (its minimum over the missing entries: a sum of squares, whose
    error is second order in the solve's). ``inv (m (m + 1) / 2, K, n)`` is the upper
    triangle of the block's inverse (0 in unused slots), ``flat (m (m + 1) / 2, n)``
    each entry's index into ``(D, D)``; ``cov_rows (n,)`` 0/1 and ``S (K, D, D)`` are
    None unless ``mixed``.

    Rows last, so the GEMMs are ``(D, D) x (D, n)`` per component, each entry of the
    unrolled ``m x m`` algebra is a whole ``(K, n)`` array (elementwise work XLA fuses),
    and the gathers by index run along a major axis (one-hot contractions, and slices
    of a minor ``m`` axis, ran several times slower on XLA's CPU backend than all the
    rest)."""
    ot, x0 = _mask(x.T)  # (D, n): the masks and slots too are rows last, not transposed
    # inside the (K, D, n) fusions (where their strided reads took as long as a GEMM)
    mu = params.means
    diff = ot * (x0 - mu[:, :, None])  # (K, D, n)
    ct = family.covariance_type
    if ct in ("diag", "spherical"):
        p = params.precisions_cholesky
        p = (p if ct == "diag" else jnp.broadcast_to(p[:, None], mu.shape))[:, :, None]
        maha = jnp.sum((diff * p) ** 2, axis=1)
        log_det = -2.0 * jnp.matmul(jnp.log(p[:, :, 0]), ot, precision=_HIGHEST)  # of S_oo
        return diff, (1.0 - ot) / (p * p), maha, log_det
    k, d = mu.shape
    n = x.shape[0]
    p = jnp.broadcast_to(params.precisions_cholesky, (k, d, d))  # tied: each k
    log_det = -2.0 * jnp.sum(jnp.log(jnp.diagonal(p, axis1=-2, axis2=-1)), axis=-1)  # S
    pt = jnp.swapaxes(p, 1, 2)
    if not m:  # complete rows
        y = jnp.matmul(pt, diff, precision=_HIGHEST)
        return diff, (jnp.zeros((0, k, n), x.dtype), jnp.zeros((0, n), jnp.int32), None, None), \
            jnp.sum(y * y, axis=1), jnp.broadcast_to(log_det[:, None], (k, n))
    lam = jnp.matmul(p, pt, precision=_HIGHEST)
    lam_d = jnp.matmul(lam, diff, precision=_HIGHEST)  # Lam d_o (K, D, n)
    table, source, in_slots, cov_rows, s = lam.reshape(k, d * d), lam_d, 1.0 - ot, None, None
    if mixed:  # the covariance form's rows gather from S and d_o, at offsets d * d and d
        cov_rows = (jnp.sum(ot, axis=0) < d - d // 2).astype(x.dtype)
        s = jnp.broadcast_to(family.covariances(params), (k, d, d))
        table = jnp.concatenate([table, s.reshape(k, d * d)], axis=1)
        source = jnp.concatenate([lam_d, diff], axis=1)
        in_slots = jnp.where(cov_rows > 0, ot, in_slots)
    it, vt = _slots(in_slots, m)  # the features in the row's slots, in order, (m, n)
    shift = 0 if cov_rows is None else cov_rows.astype(jnp.int32)
    b = [vt[j] * jnp.take_along_axis(source, (it[j] + d * shift)[None, None], axis=1)[:, 0]
         for j in range(m)]  # Lam_mo d_o, or d_o
    rows, cols = _upper(m)
    flat = jnp.stack([it[i] * d + it[j] for i, j in zip(rows, cols)])  # (P, n)
    block = jnp.take(table, flat + d * d * shift, axis=1)  # the upper triangle (K, P, n)
    pair = {ij: q for q, ij in enumerate(zip(rows, cols))}

    def entry(i, j):  # unused slots: the identity
        used = vt[i] * vt[j]
        return used * block[:, pair[j, i]] + (1.0 - used if i == j else 0.0)

    log_det_mm, z, inv = _spd(entry, b)  # z = Lam_mm^-1 Lam_mo d_o, or S_oo^-1 d_o
    e = vt[:, None] * jax.nn.one_hot(it, d, dtype=x.dtype, axis=1)  # (m, D, n)
    z = sum(z[j][:, None] * e[j] for j in range(m))  # in the slots' features (K, D, n)
    if cov_rows is None:
        delta, log_det = diff - z, log_det[:, None] + log_det_mm
    else:
        delta = (diff - (1.0 - cov_rows) * z
                 + cov_rows * (1.0 - ot) * jnp.matmul(s, z, precision=_HIGHEST))
        log_det = jnp.where(cov_rows > 0, log_det_mm, log_det[:, None] + log_det_mm)
    y = jnp.matmul(pt, delta, precision=_HIGHEST)
    log_det = jnp.where(jnp.sum(ot, axis=0) > 0, log_det, 0.0)
    inv = inv * jnp.stack([vt[i] * vt[j] for i, j in zip(rows, cols)])[:, None]
    return delta, (inv, flat, cov_rows, s), jnp.sum(y * y, axis=1), log_det


def _slots(flags, m):
    """``(idx (m, n) int32, valid (m, n) 0/1)``: the indices of the first ``m`` features
    flagged 1 in each column of ``flags (D, n)`` 0/1, in order, and which slots hold one.
    The ``j``-th flagged feature is preceded by ``j`` of them: its index counts the
    features with at most ``j`` flagged up to and including them (a compare and a sum;
    XLA's CPU backend runs ``argsort`` and ``top_k`` inside a larger program as a full
    sort, ~10x slower, and ``cumsum`` as a reduce-window, ~5x slower than this matmul)."""
    d = flags.shape[0]
    upto = jnp.tril(jnp.ones((d, d), flags.dtype))  # a cumulative sum as a (small) GEMM:
    seen = jnp.matmul(upto, flags, precision=_HIGHEST)  # exact
    before = seen <= jnp.arange(m, dtype=flags.dtype)[:, None, None]  # (m, D, n)
    idx = jnp.minimum(jnp.sum(before, axis=1, dtype=jnp.int32), d - 1)
    return idx, (jnp.arange(m)[:, None] < seen[-1:]).astype(flags.dtype)


def _blocked(family, params, x, fn):
    """``fn(*_conditional(...))``, full and tied in chunks' buckets of missing entries."""
    if family.covariance_type in ("diag", "spherical"):
        return fn(*_conditional(family, params, x))
    return _by_bucket(lambda m, mixed, x: fn(*_conditional(family, params, x, m, mixed)), x)


def _log_joint(params, x, maha, log_det):
    """``log p(x_o, z = k)`` ``(K, n)`` from the observed Mahalanobis distances and
    log-dets."""
    n_obs = jnp.sum(~jnp.isnan(x), axis=1).astype(x.dtype)
    log_gauss = -0.5 * (n_obs * math.log(2 * math.pi) + maha + log_det)
    return jnp.log(params.weights)[:, None] + log_gauss


def _sums(resp, delta, cond_cov):
    """``(sum_n r delta, sum_n r (delta delta^T + conditional covariance))`` per
    component from ``resp (K, n)`` and :func:`_conditional`'s, the second moment in its
    covariance type's per-component shape."""
    sum_delta = jnp.einsum("kn,kdn->kd", resp, delta, precision=_HIGHEST)
    if not isinstance(cond_cov, tuple):  # diag, spherical: conditional variances
        return sum_delta, jnp.einsum("kn,kdn->kd", resp, delta * delta + cond_cov,
                                     precision=_HIGHEST)
    # full, tied: each row's block inverse added where its slots' features pair up: a
    # scatter of m (m + 1) / 2 numbers per row and component (the upper triangle; the
    # slots are in feature order, so it lands in the upper triangle of (D, D)), not an
    # (m, D, D) contraction; the covariance form's rows into a second (D, D)
    inv, flat, cov_rows, s = cond_cov
    k, d = delta.shape[:2]
    parts = 1
    if cov_rows is not None:
        flat, parts = flat + d * d * cov_rows.astype(flat.dtype), 2
    upper = jax.ops.segment_sum(jnp.swapaxes(resp * inv, 1, 2).reshape(-1, k),
                                flat.reshape(-1), num_segments=parts * d * d)
    blocks = _symmetric(upper.T.reshape(k, parts, d, d))
    second = jnp.matmul(delta * resp[:, None], jnp.swapaxes(delta, 1, 2), precision=_HIGHEST)
    second = second + blocks[:, 0]
    if cov_rows is not None:  # sum_n r (S - S E_o S_oo^-1 E_o^T S)
        weight = jnp.matmul(resp, cov_rows, precision=_HIGHEST)
        second = second + weight[:, None, None] * s - jnp.matmul(
            jnp.matmul(s, blocks[:, 1], precision=_HIGHEST), s, precision=_HIGHEST)
    return sum_delta, second


def _symmetric(upper):
    """The symmetric matrices ``(..., D, D)`` whose upper triangles ``upper`` holds."""
    return upper + jnp.swapaxes(jnp.triu(upper, 1), -1, -2)


def _scattered(cond_cov, d):
    """Each row's conditional covariance ``(n, K, D, D)`` (0 where a feature is observed)
    from a full/tied ``(inv, flat, cov_rows, S)`` (see :func:`_conditional`)."""
    inv, flat, cov_rows, s = cond_cov
    upper = jax.nn.one_hot(flat, d * d, dtype=inv.dtype)  # (P, n, D * D)
    upper = jnp.einsum("pkn,pne->nke", inv, upper, precision=_HIGHEST).reshape(
        (inv.shape[2], inv.shape[1], d, d))
    blocks = _symmetric(upper)
    if cov_rows is None:
        return blocks
    schur = s - jnp.matmul(jnp.matmul(s, blocks, precision=_HIGHEST), s, precision=_HIGHEST)
    return jnp.where(cov_rows[:, None, None, None] > 0, schur, blocks)


def _stats_from(family, params, resp, sums):
    """``GaussianStats`` (second moments about the current means, as
    :meth:`Gaussian.stats` takes them) from :func:`_sums` and ``resp (K, n)``."""
    from jaxem.families.gaussian import GaussianStats

    sum_delta, sum_xx = sums
    counts = jnp.sum(resp, axis=1)
    sum_x = sum_delta + counts[:, None] * params.means
    if family.covariance_type == "spherical":
        sum_xx = jnp.sum(sum_xx, axis=1)
    elif family.covariance_type == "tied":
        sum_xx = jnp.sum(sum_xx, axis=0)
    return GaussianStats(counts, sum_x, sum_xx)


def log_joint(family, params, x):
    """``log p(x_o, z = k)`` over each row's observed features: ``(n, K)``."""
    maha, log_det = _blocked(family, params, x, lambda d, c, maha, log_det: (maha, log_det))
    return _log_joint(params, x, maha, log_det).T


def stats(family, x, resp, params):
    """Expected complete-data statistics (``GaussianStats``, second moments about the
    current means as :meth:`Gaussian.stats` takes them)."""
    resp = resp.T
    sums = _blocked(family, params, x, lambda delta, cond_cov, *_: _sums(resp, delta, cond_cov))
    return _stats_from(family, params, resp, sums)


def log_joint_and_stats(family, params, x, weigh):
    """The E-step over a block of rows with each row's conditionals computed once:
    ``weigh(log_joint (K, n), axis=0) -> (weighted resp (K, n), aux)``; returns
    ``(GaussianStats, aux)`` (see :class:`jaxem.families.base.Family`'s ``fused_rows``)."""
    def both(delta, cond_cov, maha, log_det):
        resp, aux = weigh(_log_joint(params, x, maha, log_det), axis=0)
        return resp, aux, _sums(resp, delta, cond_cov)

    resp, aux, sums = _blocked(family, params, x, both)
    return _stats_from(family, params, resp, sums), aux


def impute(family, params, x, resp, chunk_size: int | None = None):
    """``x (n, D)`` with each missing entry replaced by its conditional expectation
    ``sum_k resp_nk E[x | x_o, z = k]``; observed entries are returned unchanged.
    Rows go in chunks of ``chunk_size`` (sorted by their gaps, returned in order), so
    the per-row conditionals ``(chunk, K, D)`` stay bounded."""
    def fill(chunk):
        xc, rc = chunk
        delta = _blocked(family, params, xc, lambda delta, *_: delta)
        expected = jnp.einsum("nk,kdn->nd", rc, delta + params.means[:, :, None],
                              precision=_HIGHEST)
        return jnp.where(jnp.isnan(xc), expected, xc)

    return rows.map_missing_rows(fill, (x, resp), chunk_size)


def impute_draws(family, params, x, resp, key, n_imputations: int,
                 chunk_size: int | None = None):
    """``(n_imputations, n, D)`` draws from the posterior predictive of the missing
    entries of ``x (n, D)``: per draw and row, a component ``k ~ resp`` (the row's
    posterior ``(n, K)``), then the missing entries from ``N(E[x_m | x_o, k],
    Cov[x_m | x_o, k])``; observed entries are returned unchanged in every draw.

    The conditional covariance is factored by ``eigh`` (negative rounding clipped to 0),
    which never fails where a Cholesky factor of a nearly singular one would. Rows go
    in chunks of ``chunk_size``, so the ``(chunk, K, D, D)`` covariances stay bounded;
    each row's draws are keyed on ``key`` and the row's index, whatever the chunks."""
    def covariance(delta, cond_cov, *_):  # rows first: (n, K, D), (n, K, D[, D])
        return jnp.transpose(delta, (2, 0, 1)), (
            _scattered(cond_cov, delta.shape[1]) if isinstance(cond_cov, tuple)
            else jnp.transpose(cond_cov, (2, 0, 1)))

    def draw(chunk):
        xc, rc, index = chunk
        delta, cond_cov = _blocked(family, params, xc, covariance)
        mean = delta + params.means[None]  # (n, K, D)
        if cond_cov.ndim == 3:  # diag, spherical: independent given the component
            factor = jnp.sqrt(jnp.maximum(cond_cov, 0.0))
        else:
            vals, vecs = jnp.linalg.eigh(cond_cov)
            factor = vecs * jnp.sqrt(jnp.maximum(vals, 0.0))[..., None, :]  # F F^T = cov

        def row(i, x_n, log_r, mean_n, factor_n):  # (n_imputations, D)
            def one(key_j):
                key_z, key_e = jax.random.split(key_j)
                z = jax.random.categorical(key_z, log_r)
                eps = jax.random.normal(key_e, x_n.shape, x_n.dtype)
                f = factor_n[z]
                noise = f * eps if f.ndim == 1 else jnp.matmul(f, eps, precision=_HIGHEST)
                return jnp.where(jnp.isnan(x_n), mean_n[z] + noise, x_n)

            return jax.vmap(one)(jax.random.split(jax.random.fold_in(key, i), n_imputations))

        return jax.vmap(row)(index, xc, jnp.log(rc), mean, factor)

    index = jnp.arange(x.shape[0], dtype=jnp.int32)
    return jnp.swapaxes(rows.map_missing_rows(draw, (x, resp, index), chunk_size), 0, 1)
