"""Gaussian mixtures with ``full``, ``tied``, ``diag`` or ``spherical`` covariances.

Parameters are stored as scikit-learn stores them: mixing weights, means and the
Cholesky factor of the precision, so the full and tied E-step is a matrix multiply.

Shapes, ``K`` components and ``D`` features:

=============  ==========================  ==========================
type           ``precisions_cholesky``     ``GaussianStats.sum_xx``
=============  ==========================  ==========================
``full``       ``(K, D, D)``               ``(K, D, D)``
``tied``       ``(D, D)``                  ``(D, D)``
``diag``       ``(K, D)``                  ``(K, D)``
``spherical``  ``(K,)``                    ``(K,)``
=============  ==========================  ==========================
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap
from jax.scipy.linalg import solve_triangular

from jaxem.families import gaussian_missing
from jaxem.families.base import Mixture, family

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
# The second moments are differences of large numbers: never let a GPU use TF32 there.
_HIGHEST = jax.lax.Precision.HIGHEST
# sum_n r_nk (x_n - c_k)(x_n - c_k)^T reduced to each covariance type's shape.
_SUM_XX = {"full": "knd,kne->kde", "tied": "knd,kne->de", "diag": "knd,knd->kd",
           "spherical": "knd,knd->k"}
# Up to this many rows, stats() takes direct differences for every covariance type:
# exact, cheap, and nothing of the fast forms to compile (an initialisation's K seeds).
_FEW_ROWS = 64
# The fast (GEMM) forms expand squares about a per-chunk reference point c, e.g.
# sum_d a_kd (x_nd - mu_kd)^2 = A - 2 B + C with A = sum_d a_kd (x_nd - c_d)^2. Their
# rounding error is about _GAMMA * (A + C) (measured: <= 3.8 eps for D <= 64), which
# is large against the result when a tight component sits far from c (the terms
# cancel). A chunk whose estimated error exceeds _RTOL relative to the result (see
# _log_joint_gemm and _stats_fast) is recomputed with the exact differences instead (the
# statistics of diag and spherical components: only the components concerned).
_GAMMA = 4.0
_RTOL = 1e-4


class GaussianParams(NamedTuple):
    weights: jax.Array  # (K,)
    means: jax.Array  # (K, D)
    precisions_cholesky: jax.Array  # see the module table


class GaussianStats(NamedTuple):
    """Expected sufficient statistics, additive over rows."""

    counts: jax.Array  # (K,) sum_n r_nk
    sum_x: jax.Array  # (K, D) sum_n r_nk x_n
    sum_xx: jax.Array  # second moments, see the module table


@family(static=("covariance_type", "missing"))
class Gaussian(Mixture):
    """A Gaussian mixture family.

    Args:
      covariance_type: one of ``full``, ``tied``, ``diag``, ``spherical`` (static).
      reg_covar: added to the diagonal of every covariance (traced: no recompilation).
      missing: rows may have missing entries (NaN), handled by exact EM (see
        :mod:`jaxem.families.gaussian_missing`); static. The engine sets it when the
        data have NaN.

    >>> import jax.numpy as jnp
    >>> fam = Gaussian("diag")
    >>> x = jnp.array([[0.0, 0.0], [1.0, 1.0], [10.0, 10.0]])
    >>> resp = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> params = fam.m_step(fam.stats(x, resp))  # stats about 0: no current params
    >>> params.means.round(3).tolist()
    [[0.5, 0.5], [10.0, 10.0]]
    >>> fam.log_joint(params, x).shape
    (3, 2)
    """

    covariance_type: str = "full"
    reg_covar: float = 1e-6
    missing: bool = False

    supports_missing = True  # declared capabilities (see jaxem.families.base.Family)
    centres_data = True

    @property
    def gemm_rows(self) -> bool:
        """The E-step is GEMMs over rows (not ``(rows, K, D)`` elementwise work): a
        declared capability :func:`jaxem.batch.auto_chunk_size` sizes chunks by. With
        missing values no type is: each row factorises its own ``(K, D, D)`` blocks."""
        return self.covariance_type != "full" and not self.missing

    @property
    def fused_rows(self) -> bool:
        """The E-step's log-joint and statistics share their intermediates
        (:meth:`log_joint_and_stats`): with missing values each row's conditionals, for
        the GEMM forms the centred rows ``[x - c, (x - c)^2]``."""
        return self.missing or self.covariance_type != "full"

    @property
    def threaded_rows(self) -> bool:
        """The E-step's kernels use one core each: with missing values, full and tied
        covariances factorise small blocks per row (diag and spherical, like complete
        rows, are GEMMs and large elementwise passes that use every core already)."""
        return self.missing and self.covariance_type in ("full", "tied")

    def log_joint_and_stats(self, params: GaussianParams, x: jax.Array, weigh):
        """The ``fused_rows`` E-step over a block of rows (see
        :class:`jaxem.families.base.Family`)."""
        if self.missing:
            return gaussian_missing.log_joint_and_stats(self, params, x, weigh)
        # Components first, (K, n): under vmap over restarts the GEMM's output and the
        # statistics' GEMM input then keep the restarts beside the components, with no
        # transposed copy of either (1.2x faster for 8 restarts, N = 1e6, CPU).
        params, x, c, z = self._centred(params, x)
        resp_t, aux = weigh(self._log_joint_fast(params, x, c, z), axis=0)
        return self._stats_about_means(x, resp_t, params, c, z), aux

    def __post_init__(self):
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"Invalid covariance_type {self.covariance_type!r}: "
                f"use one of {', '.join(COVARIANCE_TYPES)}."
            )

    # -- E-step ---------------------------------------------------------------------
    def log_joint(self, params: GaussianParams, x: jax.Array) -> jax.Array:
        """``log p(x_n, z_n = k)``: ``x (n, D)`` -> ``(n, K)``.

        ``diag``, ``spherical`` and ``tied`` use matrix multiplies (see
        :meth:`_log_joint_gemm`), falling back to direct differences for a block of rows
        where those would lose float32 accuracy; ``full`` is one GEMM and differences.
        """
        if self.missing:
            return gaussian_missing.log_joint(self, params, x)
        if self.covariance_type == "full":
            p, mu = params.precisions_cholesky, params.means
            k, d_ = mu.shape
            # One GEMM (n, D) @ (D, K*D) for all components.
            xp = (x @ jnp.moveaxis(p, 0, 1).reshape(d_, k * d_)).reshape(-1, k, d_)
            y = xp - jnp.einsum("kd,kde->ke", mu, p)
            return self._log_joint_from(params, jnp.sum(y * y, axis=-1).T).T
        return self._log_joint_fast(params, *self._centred(params, x)[1:]).T

    def _log_joint_from(self, params, maha):
        """``log w_k + log N(x | k)`` ``(K, n)`` from the squared Mahalanobis distances
        ``(K, n)``."""
        return self._log_norm(params)[:, None] - 0.5 * maha

    def _log_norm(self, params):
        """``log w_k - log det(2 pi Sigma_k) / 2`` ``(K,)``: the log-joint at the mean."""
        p = params.precisions_cholesky
        d = params.means.shape[-1]
        ct = self.covariance_type
        if ct in ("full", "tied"):
            log_det = jnp.sum(jnp.log(jnp.diagonal(p, axis1=-2, axis2=-1)), axis=-1)
        elif ct == "diag":
            log_det = jnp.sum(jnp.log(p), axis=1)
        else:
            log_det = d * jnp.log(p)
        return jnp.log(params.weights) + log_det - 0.5 * d * math.log(2 * math.pi)

    def _log_joint_fast(self, params, x, c, z):
        """:meth:`log_joint` ``(K, n)`` of ``diag``, ``spherical`` and ``tied`` from
        the rows centred by :meth:`_centred`: GEMMs, or direct differences where those
        may lose float32 accuracy (see :meth:`_maha_risky`)."""
        return jax.lax.cond(_any_in_batch(self._maha_risky(params, c)),
                            lambda: self._log_joint_from(params, self._maha_exact(params, x)),
                            lambda: self._log_joint_gemm(params, c, z))

    def posterior(self, log_joint: jax.Array, axis: int = -1) -> tuple[jax.Array, jax.Array]:
        """``log_joint: (n, K)`` -> ``(resp (n, K), log_likelihood (n,))``, with one
        ``exp`` per entry (``logsumexp`` and then ``exp(log_joint - lse)`` take two).
        ``axis``: the components' axis (0 for ``(K, n)``)."""
        top = jax.lax.stop_gradient(jnp.max(log_joint, axis=axis, keepdims=True))
        top = jnp.where(jnp.isfinite(top), top, 0.0)
        e = jnp.exp(log_joint - top)
        total = jnp.sum(e, axis=axis, keepdims=True)
        return e / total, jnp.squeeze(top + jnp.log(total), axis)

    def _centred(self, params, x):
        """``(params, x, c, z)``: the rows' mean ``c (D,)`` and the rows about it that
        the GEMM forms read, ``z = [x - c, (x - c)^2]`` ``(n, 2D)`` (``diag``),
        ``[x - c, |x - c|^2]`` ``(n, D + 1)`` (``spherical``) or ``x - c`` (``tied``).

        ``c`` is data only, so vmapped restarts share ``z`` and their GEMMs fold into
        one; the E-step builds ``z`` once for both of its GEMMs (one pass over the rows
        fewer than building it for each).
        """
        params, x = _materialise(params, x)
        c = jnp.mean(x, axis=0)
        xc = x - c
        if self.covariance_type == "tied":
            return params, x, c, xc
        if self.covariance_type == "spherical":
            return params, x, c, jnp.concatenate([xc, jnp.sum(xc * xc, 1, keepdims=True)], 1)
        # [xc, xc^2] as a select over xc tiled twice: XLA's CPU backend vectorises it
        # where it runs a concatenate element by element (1.2x faster, 8192 x 16 rows).
        t = jnp.tile(xc, (1, 2))
        return params, x, c, jnp.where(jnp.arange(t.shape[1]) < x.shape[1], t, t * t)

    def _log_joint_gemm(self, params, c, z):
        """:meth:`log_joint` ``(K, n)`` by GEMMs of the rows ``z`` about ``c`` (see
        :meth:`_centred`), the fast form.

        With ``m_k = mu_k - c`` and ``a = P P^T``:
        ``(x-mu)^T a (x-mu) = A - 2 B + C``, ``A = (x-c)^T a (x-c)``,
        ``B = (x-c)^T a m``, ``C = m^T a m``; ``A - 2 B`` is ``z`` times a ``(2D, K)``
        matrix (``diag``). See :meth:`_maha_risky` for its accuracy. For ``diag`` and
        ``spherical``, ``-1/2`` and the constants are folded into that one GEMM: no pass
        over ``(K, n)`` after it (128 restarts x 16 diag components, N = 20480: 43 -> 35
        ms per iteration). Unclamped: a distance that rounds below 0 moves the
        log-joint by less than the error :meth:`_maha_risky` accepts.
        """
        p = params.precisions_cholesky
        m = params.means - c
        ct = self.covariance_type
        if ct == "tied":
            xp = _dot(z, p)
            mp = _dot(m, p)
            maha = (jnp.sum(xp * xp, axis=1) - 2.0 * _dot(mp, xp.T)
                    + jnp.sum(mp * mp, axis=1)[:, None])
            return self._log_joint_from(params, jnp.maximum(maha, 0.0))
        if ct == "diag":
            a = p * p
            w, sq = jnp.concatenate([-2.0 * a * m, a], axis=1), jnp.sum(a * m * m, axis=1)
        else:  # spherical
            s = p * p
            w = jnp.concatenate([-2.0 * m, jnp.ones_like(m[:, :1])], axis=1) * s[:, None]
            sq = jnp.sum(m * m, axis=1) * s
        return _dot(-0.5 * w, z.T) + (self._log_norm(params) - 0.5 * sq)[:, None]

    def _maha_risky(self, params, c):
        """Whether :meth:`_log_joint_gemm` about ``c`` may miss ``_RTOL`` (a scalar bool).

        Its rounding error is about ``_GAMMA eps (A + C)``. As ``A <= 3 C + 2 result``
        (triangle inequality), it is within ``_RTOL (D + result)`` for every row when
        ``3 _GAMMA eps max_k C_k <= _RTOL D``: ``C_k`` is the squared distance of ``c``
        from component ``k`` in its own metric, large for a tight component far away.
        """
        p = params.precisions_cholesky
        m = params.means - c
        ct = self.covariance_type
        if ct == "diag":
            cc = jnp.sum(p * p * m * m, axis=1)
        elif ct == "spherical":
            cc = jnp.sum(m * m, axis=1) * (p * p)
        else:
            mp = _dot(m, p)
            cc = jnp.sum(mp * mp, axis=1)
        eps = jnp.finfo(c.dtype).eps
        return jnp.any(3.0 * _GAMMA * eps * cc > _RTOL * c.shape[-1])

    def _maha_exact(self, params, x):
        """Squared Mahalanobis distances ``(K, n)`` from direct differences: no
        cancellation, but ``(K, n, D)`` elementwise work."""
        mu, p = params.means, params.precisions_cholesky
        ct = self.covariance_type
        if ct == "tied":  # differences first: x @ P - mu @ P cancels for a tight P
            y = jnp.einsum("knd,de->kne", x[None] - mu[:, None], p, precision=_HIGHEST)
            return jnp.sum(y * y, axis=-1)
        # (K, D, n), bounded by the chunk: rows on the minor axis, so the sum over
        # features adds whole vectors (1.3x faster on CPU than (n, K, D) with D minor).
        diff = x.T[None] - mu[:, :, None]
        if ct == "diag":
            y = diff * p[:, :, None]
            return jnp.sum(y * y, axis=1)
        return jnp.sum(diff * diff, axis=1) * (p * p)[:, None]

    def stats(self, x: jax.Array, resp: jax.Array,
              params: GaussianParams | None = None) -> GaussianStats:
        """``x (n, D)``, weighted ``resp (n, K)`` -> sums over the rows.

        ``sum_xx`` is taken about the current means (``params.means``, or 0 without
        ``params``): the M-step's covariance is then a small correction of it, not a
        difference of large numbers, so float32 stays accurate for tight components far
        from the origin. ``diag``, ``spherical`` and ``tied`` use GEMMs about the rows'
        mean (see :meth:`_stats_fast`); a ``diag`` or ``spherical`` component whose
        GEMM form would lose float32 accuracy is recomputed from direct differences
        (:meth:`_refine`), a ``tied`` block of rows entirely; ``full`` uses direct
        differences.
        """
        if self.missing:
            if params is None:
                raise ValueError("statistics of rows with missing entries need the current "
                                 "parameters (their conditional expectations).")
            return gaussian_missing.stats(self, x, resp, params)
        if params is None:  # about 0: plain GEMMs over the rows (e.g. HMM emissions)
            return GaussianStats(jnp.sum(resp, axis=0), _dot(resp.T, x),
                                 self._raw_moments(x, resp))
        if self.covariance_type == "full" or x.shape[0] <= _FEW_ROWS:
            return self._stats_exact(x, resp, params, jnp.sum(resp, axis=0))
        params, x, c, z = self._centred(params, x)
        return self._stats_about_means(x, resp.T, params, c, z)

    def _stats_about_means(self, x, resp_t, params, c, z):
        """``diag``/``spherical``/``tied`` statistics about the means from the rows
        ``z`` about ``c`` (:meth:`_centred`) and the responsibilities ``resp_t (K, n)``:
        GEMMs (:meth:`_stats_fast`), with the components whose GEMM form may lose
        float32 accuracy recomputed from direct differences (:meth:`_refine`;
        ``tied``: all or none)."""
        counts = jnp.sum(resp_t, axis=1)
        fast, risky = self._stats_fast(z, c, resp_t, params, counts)
        if self.covariance_type == "tied":  # one pooled matrix: all components or none
            return jax.lax.cond(_any_in_batch(risky),
                                lambda: self._stats_exact(x, resp_t.T, params, counts),
                                lambda: fast)
        return self._refine(x, resp_t, params, fast, risky)

    def _stats_exact(self, x, resp, params, counts):
        """Second moments from direct differences ``x_n - mu_k``: ``(K, n, D)`` work."""
        # z_kn = sqrt(r_nk) (x_n - mu_k), component-major so that sum_n z z^T is a
        # batched GEMM over k.
        z = jnp.sqrt(resp.T)[:, :, None] * (x[None] - params.means[:, None])
        sum_xx = jnp.einsum(_SUM_XX[self.covariance_type], z, z, precision=_HIGHEST)
        return GaussianStats(counts, _dot(resp.T, x), sum_xx)

    def _refine(self, x, resp_t, params, stats, todo):
        """``stats`` with ``sum_xx`` of the components flagged in ``todo (K,)``
        recomputed from direct differences, one component at a time.

        ``(n, D)`` work per flagged component: far less than all ``K`` when only the
        tight components far from the rows' mean need it (1 or 2 of 16 per chunk on
        well-separated data, where redoing every component doubled the statistics'
        time). Under ``vmap`` the loop runs as often as the restart with most flags,
        each restart changing only its own flagged rows of ``sum_xx``.
        """
        means, x_t = jnp.asarray(params.means), x.T
        # Rows on the minor axis, (D, n) @ (n,): under vmap a batched matrix-vector
        # product about 2x faster on CPU than (n,) @ (n, D) (128 restarts x 16 diag
        # components, 512-row chunks: the loop's share of an iteration 11 -> 5.5 ms).

        def fix(carry):
            sum_xx, todo = carry
            k = jnp.argmax(todo)
            diff = x_t - means[k][:, None]
            exact = _dot(diff * diff, resp_t[k])  # (D,): a sum of positive terms
            if self.covariance_type == "spherical":
                exact = jnp.sum(exact)
            return sum_xx.at[k].set(exact), todo.at[k].set(False)

        sum_xx, _ = jax.lax.while_loop(lambda c: jnp.any(c[1]), fix, (stats.sum_xx, todo))
        return stats._replace(sum_xx=sum_xx)

    def _stats_fast(self, z, c, resp_t, params, counts):
        """:class:`GaussianStats` about the current means as GEMMs of the rows ``z``
        about ``c`` (:meth:`_centred`) with ``resp_t (K, n)``, and which of them may
        be inaccurate: ``(K,)`` bools (``diag``, ``spherical``) or one (``tied``).

        With ``m_k = mu_k - c``, ``s_k = sum_n r_nk (x_n - c)`` and ``q_k`` the second
        moment about ``c``: ``sum_n r_nk (x_n - mu_k)^2 = q_k - 2 m_k s_k + counts_k m_k^2``.
        Rounding leaves about ``_GAMMA eps (q_k + counts_k m_k^2)``; ``risky`` when
        that exceeds ``_RTOL`` times the result plus ``reg_covar * counts_k`` (the
        M-step adds ``reg_covar`` to the variance).
        """
        m = params.means - c
        d = c.shape[-1]
        ct = self.covariance_type
        if ct == "tied":
            s = _dot(resp_t, z)  # (K, D)
        else:  # s and q in one GEMM: 1.3x faster than two (8192 rows, D=K=16, CPU)
            both = _dot(resp_t, z)
            s, q = both[:, :d], both[:, d:]
        sum_x = s + counts[:, None] * c
        if ct == "diag":
            sum_xx = q - m * (2.0 * s - counts[:, None] * m)
            big = q + counts[:, None] * m * m
            scale = jnp.maximum(sum_xx, 0.0) + self.reg_covar * counts[:, None]
        elif ct == "spherical":
            q = q[:, 0]
            sum_xx = q - jnp.sum(m * (2.0 * s - counts[:, None] * m), axis=1)
            big = q + counts * jnp.sum(m * m, axis=1)
            scale = jnp.maximum(sum_xx, 0.0) + self.reg_covar * d * counts
        else:  # tied: sum_k sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T
            q = _dot((z * jnp.sum(resp_t, axis=0)[:, None]).T, z)
            ms = jnp.einsum("kd,ke->de", m, s, precision=_HIGHEST)
            mm = jnp.einsum("k,kd,ke->de", counts, m, m, precision=_HIGHEST)
            sum_xx = q - ms - ms.T + mm
            big = jnp.diagonal(q) + jnp.diagonal(mm)
            scale = (jnp.maximum(jnp.diagonal(sum_xx), 0.0)
                     + self.reg_covar * jnp.sum(counts))
        risky = (_GAMMA * jnp.finfo(z.dtype).eps) * big > _RTOL * scale
        if ct == "diag":  # a flag per component
            risky = jnp.any(risky, axis=1)
        elif ct == "tied":  # one for the pooled matrix
            risky = jnp.any(risky)
        return GaussianStats(counts, sum_x, sum_xx), risky

    def _raw_moments(self, x, resp):
        """``sum_xx`` about 0, each a single GEMM."""
        ct = self.covariance_type
        if ct == "full":
            n, d = x.shape
            xx = (x[:, :, None] * x[:, None, :]).reshape(n, d * d)
            return jnp.matmul(resp.T, xx, precision=_HIGHEST).reshape(-1, d, d)
        if ct == "tied":
            return jnp.matmul((x * jnp.sum(resp, axis=1)[:, None]).T, x, precision=_HIGHEST)
        if ct == "diag":
            return jnp.matmul(resp.T, x * x, precision=_HIGHEST)
        return jnp.matmul(resp.T, jnp.sum(x * x, axis=1), precision=_HIGHEST)

    @staticmethod
    def _shift(params, x):
        """Where ``sum_xx`` is centred: the means ``(K, D)``, or 0."""
        return jnp.zeros((1, x.shape[-1]), x.dtype) if params is None else params.means

    # -- M-step ---------------------------------------------------------------------
    def m_step(self, stats: GaussianStats, params: GaussianParams | None = None) -> GaussianParams:
        """Closed-form maximiser; ``params`` must be the value ``stats`` was taken at."""
        sum_x = stats.sum_x
        # As scikit-learn: a tiny count keeps empty components finite.
        nk = stats.counts + 10 * jnp.finfo(sum_x.dtype).eps
        means = sum_x / nk[:, None]
        shift = self._shift(params, sum_x)
        delta = means - shift  # new means about the shift
        # sum_n r_nk (x_n - m_k)(x_n - m_k)^T = sum_xx - s delta^T - delta s^T
        # + counts delta delta^T with s = sum_n r_nk (x_n - shift_k), exactly, also for an
        # (almost) empty component, where counts << nk: "sum_xx - nk delta delta^T" gave
        # -shift shift^T there, a negative covariance, and the fit failed.
        s_c = sum_x - stats.counts[:, None] * shift
        corr = stats.counts[:, None] * delta - 2.0 * s_c  # (K, D)
        d = sum_x.shape[-1]
        eye = jnp.eye(d, dtype=sum_x.dtype)
        ct = self.covariance_type
        if ct == "full":
            outer = (stats.counts[:, None, None] * jnp.einsum("kd,ke->kde", delta, delta)
                     - jnp.einsum("kd,ke->kde", s_c, delta)
                     - jnp.einsum("kd,ke->kde", delta, s_c))
            cov = (stats.sum_xx + outer) / nk[:, None, None]
            prec_chol = _precision_cholesky(cov + self.reg_covar * eye)
        elif ct == "tied":
            outer = (jnp.einsum("k,kd,ke->de", stats.counts, delta, delta, precision=_HIGHEST)
                     - jnp.einsum("kd,ke->de", s_c, delta, precision=_HIGHEST)
                     - jnp.einsum("kd,ke->de", delta, s_c, precision=_HIGHEST))
            cov = (stats.sum_xx + outer) / jnp.sum(nk)
            prec_chol = _precision_cholesky(cov + self.reg_covar * eye)
        elif ct == "diag":
            # Rounding can leave a tiny negative number where the variance is 0: clip.
            var = jnp.maximum((stats.sum_xx + corr * delta) / nk[:, None], 0.0)
            prec_chol = jax.lax.rsqrt(var + self.reg_covar)
        else:
            var = jnp.maximum((stats.sum_xx + jnp.sum(corr * delta, axis=1)) / nk, 0.0) / d
            prec_chol = jax.lax.rsqrt(var + self.reg_covar)
        return GaussianParams(nk / jnp.sum(nk), means, prec_chol)

    # -- helpers used by the engine and the estimators ---------------------------------
    def translate(self, params: GaussianParams, shift: jax.Array) -> GaussianParams:
        """The same mixture moved by ``shift (D,)``: the engine fits centred data."""
        return params._replace(means=params.means + shift)

    def locations(self, params: GaussianParams) -> jax.Array:
        """Where the components sit, ``(K, D)``: what :meth:`translate` moves."""
        return params.means

    def covariances(self, params: GaussianParams) -> jax.Array:
        """Covariances in the shape of ``precisions_cholesky``."""
        p = params.precisions_cholesky
        if self.covariance_type in ("full", "tied"):
            p_inv = jnp.linalg.inv(p)  # any triangular factor, or none
            return jnp.swapaxes(p_inv, -1, -2) @ p_inv
        return 1.0 / (p * p)

    def precisions(self, params: GaussianParams) -> jax.Array:
        p = params.precisions_cholesky
        if self.covariance_type in ("full", "tied"):
            return p @ jnp.swapaxes(p, -1, -2)
        return p * p

    def precisions_cholesky_from(self, *, covariances=None, precisions=None) -> jax.Array:
        """``precisions_cholesky`` from given covariances or precisions (one of them)."""
        if self.covariance_type in ("diag", "spherical"):
            return jax.lax.rsqrt(covariances) if precisions is None else jnp.sqrt(precisions)
        if precisions is None:
            return _precision_cholesky(covariances)
        return jnp.linalg.cholesky(precisions)  # lower triangular: also P P^T = precisions

    def n_free_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters, for BIC and AIC."""
        k, d = n_components, n_features
        cov = {"full": k * d * (d + 1) // 2, "tied": d * (d + 1) // 2,
               "diag": k * d, "spherical": k}[self.covariance_type]
        return cov + k * d + k - 1

    def sample(self, key: jax.Array, params: GaussianParams, n: int) -> tuple[jax.Array, jax.Array]:
        """Draw ``n`` points: ``(x (n, D), component labels (n,))``."""
        key_z, key_x = jax.random.split(key)
        z = jax.random.categorical(key_z, jnp.log(params.weights), shape=(n,))
        mu = params.means
        eps = jax.random.normal(key_x, (n, mu.shape[-1]), dtype=mu.dtype)
        p = params.precisions_cholesky
        if self.covariance_type == "full":
            p = p[z]
        if self.covariance_type in ("full", "tied"):
            # x = mu + P^{-T} eps has covariance (P P^T)^{-1}.
            pt = jnp.broadcast_to(jnp.swapaxes(p, -1, -2), (n,) + p.shape[-2:])
            step = jnp.linalg.solve(pt, eps[..., None])[..., 0]
        elif self.covariance_type == "diag":
            step = eps / p[z]
        else:
            step = eps / p[z][:, None]
        return mu[z] + step, z

    # -- reparameterisation for the gradient baseline (jaxem.gradient) ----------------
    def to_unconstrained(self, params: GaussianParams) -> dict:
        """Map ``params`` to unconstrained coordinates (a dict of arrays).

        ``logits (K,)``: ``log weights`` (the weights are their softmax); ``means``;
        ``precisions_cholesky``: for ``full``/``tied`` the upper-triangular factor ``A``
        with ``A A^T = precision`` and positive diagonal, packed row by row
        (``(K, D(D+1)/2)`` or ``(D(D+1)/2,)``) with its diagonal stored as logs; for
        ``diag``/``spherical`` the log variances. :meth:`from_unconstrained` inverts it.
        """
        p = params.precisions_cholesky
        if self.covariance_type in ("full", "tied"):
            d = p.shape[-1]
            rev = jnp.arange(d)[::-1]
            # Any P with P P^T = precision is the same model; take the upper-triangular
            # one with positive diagonal by an RQ decomposition (P = U Q), which does not
            # square the condition number as re-factorising P P^T would.
            _, r = jnp.linalg.qr(jnp.swapaxes(p[..., rev, :], -1, -2))
            u = jnp.swapaxes(r, -1, -2)[..., rev, :][..., :, rev]
            diag = jnp.diagonal(u, axis1=-2, axis2=-1)
            u = u * jnp.sign(diag)[..., None, :]  # flip columns: positive diagonal
            eye = jnp.eye(d, dtype=bool)
            u = jnp.where(eye, jnp.log(jnp.where(eye, u, 1.0)), u)
            rows, cols = jnp.triu_indices(d)
            scale = u[..., rows, cols]
        else:
            scale = -2.0 * jnp.log(p)  # log variances
        return {"logits": jnp.log(params.weights), "means": params.means,
                "precisions_cholesky": scale}

    def from_unconstrained(self, u: dict) -> GaussianParams:
        """Valid parameters from any finite unconstrained ``u`` (see :meth:`to_unconstrained`)."""
        scale = u["precisions_cholesky"]
        if self.covariance_type in ("full", "tied"):
            d = u["means"].shape[-1]
            rows, cols = jnp.triu_indices(d)
            a = jnp.zeros(scale.shape[:-1] + (d, d), scale.dtype).at[..., rows, cols].set(scale)
            eye = jnp.eye(d, dtype=bool)
            # exp only where it is used, so no inf * 0 = NaN in the gradient.
            prec_chol = jnp.where(eye, jnp.exp(jnp.where(eye, a, 0.0)), a)
        else:
            prec_chol = jnp.exp(-0.5 * scale)
        return GaussianParams(jax.nn.softmax(u["logits"]), u["means"], prec_chol)


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` at full precision (no TF32 on a GPU): the fast forms cancel terms."""
    return jnp.matmul(a, b, precision=_HIGHEST)


def _materialise(params, x):
    """``(params, x)`` computed once before the fast forms use them.

    The terms of a fast form are separate fusions; were ``x`` or the means recomputed
    in each (XLA does so with the engine's centring ``x - shift``, rounding ``shift``
    differently per fusion: 1/16 apart at 1e6 in float32), their cancellation would
    not be exact. The direct differences are one fusion and need no barrier.
    """
    return jax.lax.optimization_barrier((params, x))


@custom_vmap
def _any_in_batch(pred: jax.Array) -> jax.Array:
    """``pred`` (a scalar bool); under ``vmap`` it is True for every member when it is
    for any, so a ``lax.cond`` on it stays a branch instead of computing both sides
    (vmapped restarts then all take the exact path when one of them needs it)."""
    return pred


@_any_in_batch.def_vmap
def _any_in_batch_vmap(axis_size, in_batched, pred):
    # Through _any_in_batch again, so that an enclosing vmap (restarts inside data
    # sets) collapses its axis as well: plain jnp.any would leave the predicate batched
    # there, and the cond a select that computes both sides.
    del axis_size
    return _any_in_batch(jnp.any(pred, axis=0) if in_batched[0] else pred), False


def _precision_cholesky(cov: jax.Array) -> jax.Array:
    """Upper-triangular ``P`` with ``P P^T = cov^{-1}`` (scikit-learn's convention).

    A covariance that is not positive definite gives NaN, which the driver flags.
    """
    chol = jnp.linalg.cholesky(cov)
    eye = jnp.broadcast_to(jnp.eye(cov.shape[-1], dtype=cov.dtype), cov.shape)
    return jnp.swapaxes(solve_triangular(chol, eye, lower=True), -1, -2)


def gaussian(covariance_type: str = "full", reg_covar: float = 1e-6,
             missing: bool = False) -> Gaussian:
    """The Gaussian mixture family of the given covariance type (``missing``: rows may
    have NaN entries, fitted by exact EM)."""
    return Gaussian(covariance_type, reg_covar, missing)
