"""EM on data larger than memory: exact batch EM by passes over row blocks, and online EM.

Both read ``source``, one of

* a NumPy array or ``np.memmap`` ``(n_samples, n_features)``;
* a path to a ``.npy`` file (opened with ``np.load(mmap_mode="r")``);
* a path to a Parquet file (``.parquet``/``.pq``; needs ``pyarrow``; every column must
  be numeric and becomes a feature; read by record batches);
* a zero-argument callable returning a fresh iterator of ``(rows, n_features)`` blocks
  of any sizes (called again for every pass);
* for :func:`fit_online` with one epoch only, a one-shot iterator of such blocks.

Blocks are re-cut into ``block_size`` rows on the host (the last one padded with
weight-0 rows, so one compiled function serves every block) and double-buffered onto
the device: block ``i + 1`` is read and ``device_put`` while block ``i`` is computed,
and at most two blocks are in flight, so memory is bounded by about two blocks plus
the E-step's chunk temporaries, not by ``n_samples``. Pages of a memory-mapped source
are released (``madvise(MADV_DONTNEED)``) once a block has been copied out of them, so
the process's resident memory does not grow with the file either.

:func:`fit_stream` is exact batch EM (the same iterates as :func:`jaxem.fit` from the
same starting point, up to rounding): one iteration is one pass adding up the E-step's
sums (see DESIGN.md, "The E-step returns sums"). :func:`fit_online` is stepwise EM
(Cappé & Moulines 2009; Liang & Klein 2009): one M-step per mini-batch on running
averages of the sufficient statistics.
"""
from __future__ import annotations

import functools
import mmap
import os
from collections.abc import Iterator
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxem import batch, em, rows
from jaxem.families.base import all_finite, capability, tree_where

PyTree = Any


# -- reading the source on the host ---------------------------------------------------
def _open(source, block_size: int, *, hint: str):
    """``(open_pass, one_shot)``: ``open_pass()`` iterates over the source's row pieces."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path.endswith(".npy"):
            source = np.load(path, mmap_mode="r")
        elif path.endswith((".parquet", ".pq")):
            return (lambda: _parquet_pieces(path, block_size)), False
        else:
            raise ValueError(f"Unsupported file {path!r}: give a .npy or .parquet file.")
    if type(source).__module__.startswith("scipy.sparse"):
        batch.as_data(source)  # its TypeError: densify it yourself
    if isinstance(source, Iterator):
        return (lambda: source), True
    if callable(source):
        return source, False
    if isinstance(source, (list, tuple)) or hasattr(source, "__array__"):
        x = source if isinstance(source, np.ndarray) else np.asarray(source)
        if x.ndim != 2:
            hint = " (one feature: x.reshape(-1, 1))" if x.ndim == 1 else ""
            raise ValueError(f"x must have shape (n_samples, n_features), got "
                             f"{x.shape}{hint}.")
        return (lambda: _array_pieces(x, block_size)), False
    raise TypeError(f"Cannot stream from {type(source).__name__}: {hint}")


def _array_pieces(x: np.ndarray, block_size: int):
    for a in range(0, x.shape[0], block_size):
        yield x[a:a + block_size]
        _release(x, a, a + block_size)  # the consumer has copied the piece by now


def _release(x: np.ndarray, start: int, stop: int) -> None:
    """Drop the pages of rows ``[start, stop)`` of an mmap-backed array from this
    process's resident set (the OS keeps them cached); a no-op for other arrays."""
    base = x
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is None or not hasattr(base, "madvise"):
        return
    try:
        origin = np.frombuffer(base, np.uint8).ctypes.data
        begin = x[start:stop].ctypes.data - origin
        length = x[start:stop].nbytes
        page = begin - begin % mmap.PAGESIZE
        base.madvise(mmap.MADV_DONTNEED, page, begin + length - page)
    except (AttributeError, OSError, ValueError):
        pass


def _parquet_pieces(path: str, block_size: int):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("Reading Parquet needs pyarrow: pip install pyarrow "
                          "(or convert the data to a .npy file).") from e
    file = pq.ParquetFile(path)
    bad = [f.name for f in file.schema_arrow
           if not (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))]
    if bad:
        raise ValueError(f"Parquet columns {bad} are not numeric: write a file with "
                         "the numeric features only.")
    for record_batch in file.iter_batches(batch_size=block_size):
        yield np.column_stack([c.to_numpy(zero_copy_only=False)
                               for c in record_batch.columns]).astype(np.float64, copy=False)


def _pieces(open_pass, weights, n_components=None, n_rows=None):
    """Validated ``(x, w)`` row pieces of one pass. At the end, check that ``weights``
    fit, that at least ``n_components`` rows have positive weight, and that the pass
    had ``n_rows`` rows (a callable source must give the same data on every pass)."""
    n, n_pos, d = 0, 0, None
    for x in open_pass():
        x = np.asarray(x)
        batch.check_dtype(x.dtype)
        if x.ndim != 2 or (d is not None and x.shape[1] != d):
            raise ValueError(f"Every block must have shape (rows, n_features"
                             f"{'' if d is None else '=' + str(d)}), got {x.shape}.")
        d = x.shape[1]
        w = None if weights is None else np.asarray(weights[n:n + len(x)])
        if w is not None and (len(w) != len(x) or not np.all(np.isfinite(w) & (w >= 0))):
            raise ValueError("weights must be finite, non-negative and have one entry per "
                             "row of the data.")
        if not np.all(np.isfinite(x if w is None else x[w > 0])):
            raise ValueError("x contains NaN or infinity; remove or impute those rows "
                             "(or give them weight 0).")
        n += len(x)
        n_pos += len(x) if w is None else int(np.sum(w > 0))
        yield x, w
    if weights is not None and len(weights) != n:
        raise ValueError(f"weights has {len(weights)} entries for {n} rows of data.")
    if n_components is not None and n_pos < n_components:
        raise ValueError(f"Expected at least n_components={n_components} samples with "
                         f"positive weight, got {n_pos}.")
    if n_rows is not None and n != n_rows:
        raise ValueError(f"The source gave {n} rows on this pass but {n_rows} on the "
                         "first: it must give the same data on every pass.")


def _blocks(pieces, block_size: int, dtype):
    """Re-cut ``(x, w)`` pieces into fresh ``(block_size, D)`` blocks and weights, the
    last padded with zero rows of weight 0. Fresh buffers: a device may alias them."""
    bx = bw = None
    for x, w in pieces:
        a = 0
        while a < len(x):
            if bx is None:
                bx, bw = np.zeros((block_size, x.shape[1]), dtype), np.zeros(block_size, dtype)
                fill = 0
            take = min(block_size - fill, len(x) - a)
            bx[fill:fill + take] = x[a:a + take]
            bw[fill:fill + take] = 1.0 if w is None else w[a:a + take]
            fill, a = fill + take, a + take
            if fill == block_size:
                yield bx, bw
                bx = None
    if bx is not None:
        yield bx, bw


def _for_each_block(blocks, fn: Callable, carry):
    """``carry = fn(carry, x, w)`` over device blocks, double-buffered: block ``i + 1`` is
    read and ``device_put`` before waiting for block ``i``'s result."""
    it = iter(blocks)
    host = next(it, None)
    current = None if host is None else jax.device_put(host)
    while current is not None:
        carry = fn(carry, *current)  # dispatched asynchronously
        host = next(it, None)
        upcoming = None if host is None else jax.device_put(host)
        jax.block_until_ready(carry)  # at most blocks i and i + 1 are alive
        current = upcoming
    return carry


def _dtype(x: np.ndarray):
    kind = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    return jax.dtypes.canonicalize_dtype(kind)


def _sample_pass(pieces, size: int, seed):
    """One pass: a uniform sample without replacement of ``size`` rows of positive
    weight (bottom-``size`` of i.i.d. uniform keys, returned in row order, so the whole
    data in order when it has at most ``size`` rows) with their weights, and the
    weighted mean of all rows (in float64). Returns ``(x_sample, w_sample, mean, n)``."""
    rng = np.random.default_rng(seed)
    keys, idx = np.empty(0), np.empty(0, np.int64)
    total, w_total, n = 0.0, 0.0, 0
    sample_x = sample_w = None
    for x, w in pieces:
        w = np.ones(len(x)) if w is None else w.astype(np.float64)
        total = total + w @ np.where(w[:, None] > 0, x, 0.0)  # float64; 0 * NaN rows
        w_total += w.sum()
        u = np.where(w > 0, rng.random(len(x)), np.inf)  # weight 0: never sampled
        keep = u < (keys.max() if len(keys) == size else np.inf)
        keys = np.concatenate([keys, u[keep]])
        idx = np.concatenate([idx, n + np.flatnonzero(keep)])
        sample_x = x[keep] if sample_x is None else np.concatenate([sample_x, x[keep]])
        sample_w = np.concatenate([sample_w if sample_w is not None else [], w[keep]])
        if len(keys) > size:
            top = np.argpartition(keys, size - 1)[:size]
            keys, idx, sample_x, sample_w = keys[top], idx[top], sample_x[top], sample_w[top]
        n += len(x)
    order = np.argsort(idx)
    return sample_x[order], sample_w[order], total / w_total, n


def _head(pieces, size: int):
    """The first ``size`` rows (with weights) and an iterator over all pieces again."""
    head, n = [], 0
    for x, w in pieces:
        head.append((x, w))
        n += len(x)
        if n >= size:
            break
    x = np.concatenate([p[0] for p in head])[:size]
    w = np.concatenate([np.ones(len(p[0])) if p[1] is None else p[1] for p in head])[:size]
    rest = iter(pieces)
    return x, w, (p for group in (head, rest) for p in group)


def _start(family, x, w, *, n_components, key, n_init, init, dtype):
    """Starting params ``(n_init, ...)`` from an in-memory sample ``x (m, D)``, ``w (m,)``."""
    if w.sum() <= 0 or np.sum(w > 0) < n_components:
        raise ValueError(f"The initialisation sample has {int(np.sum(w > 0))} rows of "
                         f"positive weight; need at least n_components={n_components}.")
    x, w = jnp.asarray(x, dtype), jnp.asarray(w, dtype)
    return batch.initial_params(family, x, n_components=n_components, key=key,
                                n_init=n_init, weights=w, init=init)


def _seed(key) -> np.ndarray:
    return np.asarray(jax.random.bits(jax.random.fold_in(key, 0x5EED), (4,), jnp.uint32))


def _centre(x, w, shift):
    """Zero weight-0 rows (they may hold anything), then subtract the shift ``(D,)``."""
    return jnp.where(w[:, None] > 0, x, 0.0) - shift


def _chunk(family, chunk_size, rows_, n_init, n_components, d):
    """The E-step chunk for blocks of ``rows_`` rows: ``chunk_size`` or jaxem.fit's default."""
    if chunk_size is not None:
        return chunk_size
    return batch.auto_chunk_size((1, rows_, d), n_init, n_components, family)


def _best(family, restarts: em.EMResult, shift, what: str, sample=None) -> batch.FitResult:
    """Translate back, pick the best restart (failed ones never win), raise if all failed
    (with advice from the in-memory ``sample = (x, w)`` of the data)."""
    if capability(family, "centres_data"):
        restarts = restarts._replace(
            params=jax.vmap(family.translate, (0, None))(restarts.params, shift))
    result = batch.best_of(jax.tree.map(lambda a: a[None], restarts))  # one data set
    data = None if sample is None else tuple(jnp.asarray(a)[None] for a in sample)
    return batch.finish(result, True, True, what, family, data)


def _check_args(family, key, *, tol=None, chunk_size=None, **counts) -> None:
    """The host-side argument checks of :func:`jaxem.fit`, for the streaming fits."""
    batch.check_family(family)
    batch.check_key(key)
    for name, value in counts.items():
        batch.check_int(name, value)
    if chunk_size is not None:
        batch.check_int("chunk_size", chunk_size)
    if tol is not None:
        batch.check_tol(tol)


# -- exact batch EM over passes ---------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _accumulate(family, totals, params, x, w, shift, *, chunk_size):
    """Add one block's E-step sums, for every restart's ``params (R, ...)``."""
    x = _centre(x, w, shift)
    sums = jax.vmap(lambda p: em.e_step(family, p, x, w, chunk_size))(params)
    return jax.tree.map(jnp.add, totals, sums)


@jax.jit
def _iterate(family, state, totals, tol):
    """The M-step after a pass and the driver's bookkeeping (frozen when finished)."""
    return jax.vmap(functools.partial(em.step, family), (0, 0, None))(state, totals, tol)


def fit_stream(family, source, *, n_components: int, key: jax.Array, n_init: int = 1,
               weights=None, max_iter: int = 100, tol: float = 1e-3,
               init: str | PyTree = "kmeans", init_size: int = 100_000,
               block_size: int = 65_536, chunk_size: int | None = None) -> batch.FitResult:
    """Batch EM, one pass over ``source`` per iteration, with ``n_init`` restarts.

    The iterates are :func:`jaxem.fit`'s from the same starting parameters (up to
    floating-point summation order); only about two ``block_size``-row blocks are in
    memory at a time. Before EM, one pass validates the data (2-D blocks of one width,
    finite values), computes its weighted mean (the data are fitted centred about it,
    as :func:`jaxem.fit` does) and draws a uniform sample of ``init_size`` rows
    (without replacement, by reservoir-style bottom-k random keys from a NumPy
    generator seeded by ``key``; the whole data when it has at most ``init_size``
    rows), on which :func:`jaxem.batch.initial_params` draws the starting points.

    Args:
      family: a mixture family (row-wise E-step), e.g. ``jaxem.gaussian("diag")``.
      source: see the module docstring; a one-shot iterator is refused (EM reads the
        data once per iteration): pass a callable returning a fresh iterator.
      n_components, key, n_init, max_iter, tol: as :func:`jaxem.fit`.
      weights: ``(n_samples,)`` sample weights aligned with the rows (may be a memmap).
      init: an init method of :func:`jaxem.fit`, or explicit starting parameters
        (one instance's, or with a leading ``(n_init,)`` axis).
      init_size: rows of the initialisation sample.
      block_size: rows per device block (the unit of I/O and of memory).
      chunk_size: rows per E-step chunk within a block (``None``: a bounded default).

    Returns:
      a :class:`jaxem.batch.FitResult` without a data-set axis: ``trace (max_iter,)``,
      ``restarts`` with a leading ``(n_init,)`` axis.

    >>> import jax, numpy as np, jaxem
    >>> x = np.asarray(jaxem.datasets.load_faithful())  # or a path to a .npy file
    >>> result = fit_stream(jaxem.gaussian("full"), x, n_components=2, n_init=2,
    ...                     key=jax.random.key(0), block_size=100)
    >>> bool(result.converged), result.trace.shape, result.restarts.trace.shape
    (True, (100,), (2, 100))
    """
    _check_args(family, key, n_components=n_components, n_init=n_init, max_iter=max_iter,
                init_size=init_size, block_size=block_size, chunk_size=chunk_size, tol=tol)
    if capability(family, "has_e_step"):
        raise ValueError("fit_stream streams rows: it needs a mixture family with a "
                         "row-wise E-step, not a sequence model.")
    open_pass, one_shot = _open(source, block_size, hint="use an array, a file path "
                                "or a callable returning an iterator of blocks.")
    if one_shot:
        raise ValueError("fit_stream reads the data once per EM iteration, but a one-shot "
                         "iterator can be read only once: pass a zero-argument callable "
                         "returning a fresh iterator of blocks, or use fit_online.")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}.")
    sample_x, sample_w, mean, n_rows = _sample_pass(
        _pieces(open_pass, weights, n_components), init_size, _seed(key))
    dtype = _dtype(sample_x)
    params0 = _start(family, sample_x, sample_w, n_components=n_components, key=key,
                     n_init=n_init, init=init, dtype=dtype)
    shift = jnp.asarray(mean if capability(family, "centres_data") else 0 * mean, dtype)
    if capability(family, "centres_data"):
        params0 = jax.vmap(family.translate, (0, None))(params0, -shift)
    chunk = _chunk(family, chunk_size, block_size, n_init, n_components, sample_x.shape[1])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
        lambda p: jax.vmap(lambda q: em.e_step(family, q, jnp.zeros((1, len(mean)), dtype)))(p),
        params0))
    state = jax.vmap(lambda p: em.start(p, max_iter))(params0)
    while bool(jnp.any(jax.vmap(em.running)(state))):
        step = lambda totals, x, w: _accumulate(family, totals, state.params, x, w, shift,
                                                chunk_size=chunk)
        blocks = _blocks(_pieces(open_pass, weights, n_rows=n_rows), block_size, dtype)
        totals = _for_each_block(blocks, step, zeros)
        state = _iterate(family, state, totals, tol)
    return _best(family, state, shift, "EM", (sample_x, sample_w))


# -- online (stepwise) EM -----------------------------------------------------------------
def _power_schedule(t, t0, kappa):
    return (t + t0) ** (-kappa)


def _raw_sums(family, params, x, w, chunk_size):
    """``(stats about 0, sum of weighted log-likelihoods)`` of rows ``x`` at ``params``:
    statistics about a fixed point, so that averages over steps are meaningful."""
    def block(xc, wc, _):
        resp, ll = family.posterior(family.log_joint(params, xc))
        return (family.stats(xc, resp * wc[:, None], None),
                jnp.sum(jnp.where(wc > 0, wc * ll, 0.0)))
    return rows.sum_rows(block, x, w, chunk_size)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _average_stats(family, params, x, w, shift, *, chunk_size):
    """Per-sample statistics ``(R, ...)`` of an in-memory sample, the initial ``s``."""
    x = _centre(x, w, shift)
    stats = jax.vmap(lambda p: _raw_sums(family, p, x, w, chunk_size)[0])(params)
    return jax.tree.map(lambda a: a / jnp.sum(w), stats)


@functools.partial(jax.jit, static_argnames=("batch_size", "schedule", "chunk_size"))
def _online_block(family, carry, x, w, shift, t0, kappa, *, batch_size, schedule, chunk_size):
    """Stepwise EM over the mini-batches of one block. ``carry``: params ``(R, ...)``,
    averaged stats about 0 ``(R, ...)``, failed ``(R,)``, the step count ``t``.
    Returns the carry and per step ``(ll_sum (steps, R), w_sum (steps,))``."""
    x = _centre(x, w, shift).reshape(-1, batch_size, x.shape[-1])
    w = w.reshape(-1, batch_size)

    def step(carry, batch_):
        params, s, failed, t = carry
        xb, wb = batch_
        w_sum = jnp.sum(wb)
        active = w_sum > 0  # a mini-batch of padding only: no step
        t = t + active
        rho = _power_schedule(t, t0, kappa) if schedule is None else schedule(t)
        stats, ll_sum = jax.vmap(lambda p: _raw_sums(family, p, xb, wb, chunk_size))(params)
        s_new = jax.tree.map(lambda a, b: (1 - rho) * a + rho * b / jnp.maximum(w_sum, 1e-30),
                             s, stats)
        new = jax.vmap(lambda q: family.m_step(q, None))(s_new)
        finite = jax.vmap(all_finite)(new)
        ok = active & ~failed & finite
        params = jax.vmap(tree_where)(ok, new, params)
        s = jax.vmap(tree_where)(ok, s_new, s)
        return (params, s, failed | (active & ~finite), t), (ll_sum, w_sum)

    return jax.lax.scan(step, carry, (x, w))


def fit_online(family, source, *, n_components: int, key: jax.Array, n_init: int = 1,
               weights=None, batch_size: int = 1024, n_epochs: int = 1,
               step_size: tuple[float, float] | Callable = (2.0, 0.6),
               init: str | PyTree = "kmeans", init_size: int = 10_000,
               block_size: int = 65_536, chunk_size: int | None = None) -> batch.FitResult:
    """Stepwise (online) EM over mini-batches of ``batch_size`` rows.

    It keeps running averages ``s`` of the sufficient statistics per sample and, for
    mini-batch ``t = 1, 2, ...``, sets ``s <- (1 - rho_t) s + rho_t * stats_t / sum(w_t)``
    and ``params <- m_step(s)``. The statistics are taken about the origin of the
    centred data (``family.stats(x, resp, None)``), so that averages over steps with
    different parameters are meaningful. ``batch_size=1`` is online EM, ``batch_size``
    = the data size with ``rho = 1`` is batch EM; the mini-batches of a block are a
    ``lax.scan``, so small batches are cheap. The first ``init_size`` rows (shuffle the
    data, or pass explicit ``init``) give the starting points, the centre (their
    weighted mean) and ``s_0``, their statistics per sample at the starting points
    (so that early steps on a few rows do not collapse a component).

    Args:
      family, source, n_components, key, n_init, weights, init, block_size,
        chunk_size: as :func:`fit_stream`; ``source`` may be a one-shot iterator when
        ``n_epochs == 1``.
      batch_size: rows per step (``block_size`` is rounded up to a multiple of it).
      n_epochs: passes over the data.
      step_size: ``(t0, kappa)`` for ``rho_t = (t + t0) ** -kappa`` (``0.5 < kappa <= 1``
        for convergence; ``t0 = 0`` gives ``rho_1 = 1``, which discards ``s_0``), or a
        callable ``t -> rho`` written with ``jax.numpy`` (it is traced, and a new
        callable compiles anew; ``t`` counts steps from 1).

    Returns:
      a :class:`jaxem.batch.FitResult`. ``trace (n_steps,)`` is, per step, the mean
      log-likelihood of that mini-batch at the parameters *before* its update (an
      out-of-sample estimate, noisy for small batches; the last, partial batch of an
      epoch may be smaller); ``log_likelihood`` is its weighted mean over the last
      epoch, which also picks the best restart. ``n_iter`` is the number of steps and
      ``converged`` is False: online EM has no stopping rule. The full-data
      log-likelihood is not computed: use :func:`jaxem.log_likelihood`.
    """
    _check_args(family, key, n_components=n_components, n_init=n_init,
                batch_size=batch_size, n_epochs=n_epochs, init_size=init_size,
                block_size=block_size, chunk_size=chunk_size)
    if capability(family, "has_e_step"):
        raise ValueError("fit_online needs a mixture family with a row-wise E-step.")
    open_pass, one_shot = _open(source, block_size, hint="use an array, a file path, "
                                "a callable or an iterator of blocks.")
    if one_shot and n_epochs > 1:
        raise ValueError("A one-shot iterator can be read only once: use n_epochs=1 or "
                         "pass a callable returning a fresh iterator of blocks.")
    block_size = -(-block_size // batch_size) * batch_size
    pieces = _pieces(open_pass, weights)
    x0, w0, pieces = _head(pieces, init_size)
    dtype = _dtype(x0)
    params = _start(family, x0, w0, n_components=n_components, key=key, n_init=n_init,
                    init=init, dtype=dtype)
    centre = capability(family, "centres_data")
    mean = w0 @ np.where(w0[:, None] > 0, x0, 0.0) / w0.sum()
    shift = jnp.asarray(mean if centre else 0 * mean, dtype)
    if centre:
        params = jax.vmap(family.translate, (0, None))(params, -shift)
    chunk = _chunk(family, chunk_size, batch_size, n_init, n_components, x0.shape[1])
    s = _average_stats(family, params, jnp.asarray(x0, dtype), jnp.asarray(w0, dtype),
                       shift, chunk_size=_chunk(family, chunk_size, len(x0), n_init,
                                                n_components, x0.shape[1]))
    if callable(step_size):
        schedule, t0, kappa = step_size, 0.0, 1.0
    else:
        schedule, (t0, kappa) = None, step_size
    carry = (params, s, jnp.zeros(n_init, bool), jnp.zeros((), jnp.int32))
    lls, ws, last_epoch = [], [], 0
    for epoch in range(n_epochs):
        if epoch > 0:
            pieces = _pieces(open_pass, weights)
        last_epoch = len(lls)

        def step(c, x, w):
            c, per_step = _online_block(family, c[0], x, w, shift, t0, kappa,
                                        batch_size=batch_size, schedule=schedule,
                                        chunk_size=chunk)
            lls.append(per_step[0]), ws.append(per_step[1])
            return c, None

        carry = _for_each_block(_blocks(pieces, block_size, dtype), step, (carry, None))[0]
    ll, w = np.concatenate(lls), np.concatenate(ws)
    keep = w > 0
    trace = (ll[keep] / w[keep, None]).T  # (R, n_steps)
    tail = slice(int(np.sum(np.concatenate(ws[:last_epoch] or [np.zeros(0)]) > 0)), None)
    score = ll[keep][tail].sum(0) / w[keep][tail].sum()
    params, _, failed, t = carry
    restarts = em.EMResult(params, jnp.asarray(score, dtype), jnp.asarray(trace, dtype),
                           jnp.full(n_init, int(t)), jnp.zeros(n_init, bool), failed)
    return _best(family, restarts, shift, "Online EM", (x0, w0))
