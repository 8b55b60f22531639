"""Passes over the rows of a data set: in chunks, and split over devices.

Every statistic jaxem takes of the data (the E-step's sums, the log-likelihood, the
initialisations' searches) is a pass over the rows. Here a pass is a ``lax.scan`` over
chunks of ``chunk_size`` rows, so the largest live array is ``(chunk_size, ...)``
whatever ``n_samples`` is, and, inside ``shard_map`` over a row axis ``axis_name``, the
per-device results are combined with one ``psum``. Each chunk is told the *global*
index of its rows, so anything random per row (keyed on that index) is the same on one
device or many.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any


def row_offset(n_local: int, axis_name: str | None) -> Array:
    """Global index of this device's first row (0 without ``axis_name``)."""
    if axis_name is None:
        return jnp.zeros((), jnp.int32)
    return (jax.lax.axis_index(axis_name) * n_local).astype(jnp.int32)


def scan_rows(fn: Callable, carry: PyTree, x: PyTree, weights: Array,
              chunk_size: int | None = None, axis_name: str | None = None,
              skip_tail: bool = False, share: tuple[Array, int] | None = None) -> PyTree:
    """Fold ``carry = fn(carry, x_chunk, w_chunk, rows)`` over chunks of this device's rows.

    ``x`` is an array or a pytree of arrays with the rows on their leading axis (e.g.
    the data and per-row labels). ``rows`` are the chunk's global row indices
    ``(chunk,)``. Chunks are read in place
    (no padded copy of ``x``); when ``chunk_size`` does not divide ``n_samples``, the
    last chunk is the last ``chunk_size`` rows with the weights of the rows already seen
    set to 0, which ``fn`` must treat as absent (as it treats padding). ``skip_tail``:
    chunks after the last row of positive weight are not visited at all (``fn`` must
    then leave ``carry`` unchanged on a chunk of weight 0, as a sum does): the padding
    :func:`jaxem.fit` adds to bucket the row count (up to 12.5%) costs no work.
    ``share = (i, count)``: only chunks ``i, i + count, i + 2 count, ...`` (``i`` may be
    traced), so ``count`` calls with ``i = 0 .. count - 1`` visit every chunk once
    between them (:func:`jaxem.batch` runs them on as many CPU threads).
    """
    n = weights.shape[0]
    offset = row_offset(n, axis_name)
    if chunk_size is None or chunk_size >= n:
        if share is not None:  # one chunk, visited by share 0 only
            weights = jnp.where(share[0] == 0, weights, 0)
        return fn(carry, x, weights, offset + jnp.arange(n, dtype=jnp.int32))
    local = jnp.arange(chunk_size, dtype=jnp.int32)
    n_full = n // chunk_size

    def at(c, carry):  # chunk c; the one past the full ones is the last chunk_size rows
        start = jnp.where(c < n_full, c * chunk_size, n - chunk_size)
        seen = jnp.where(c < n_full, 0, n_full * chunk_size)
        xc = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, chunk_size), x)
        wc = jax.lax.dynamic_slice_in_dim(weights, start, chunk_size)
        return fn(carry, xc, jnp.where(start + local < seen, 0, wc), offset + start + local)

    n_chunks = -(-n // chunk_size)
    if skip_tail:  # up to the one holding the last row of positive weight
        used = jnp.max(jnp.where(weights > 0, jnp.arange(1, n + 1, dtype=jnp.int32), 0))
        n_chunks = (used + chunk_size - 1) // chunk_size
    first, step = (0, 1) if share is None else share
    count = (n_chunks - first + step - 1) // step  # static when all three are
    if not isinstance(count, int):
        count = jnp.maximum(count, 0)
    return jax.lax.fori_loop(0, count, lambda j, c: at(first + j * step, c), carry)


def sum_rows(fn: Callable, x: PyTree, weights: Array, chunk_size: int | None = None,
             axis_name: str | None = None, share: tuple[Array, int] | None = None) -> PyTree:
    """``sum over chunks of fn(x_chunk, w_chunk, rows)``, summed over devices too;
    ``share``: only some of the chunks (see :func:`scan_rows`)."""
    n = weights.shape[0]
    if (chunk_size is None or chunk_size >= n) and share is None:  # one chunk, no carry
        return psum(fn(x, weights, row_offset(n, axis_name) + jnp.arange(n, dtype=jnp.int32)),
                    axis_name)
    zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype),
        jax.eval_shape(fn, jax.tree.map(lambda a: a[:1], x), weights[:1],
                       jnp.zeros(1, jnp.int32)))
    add = lambda total, xc, wc, rows: jax.tree.map(jnp.add, total, fn(xc, wc, rows))
    total = scan_rows(add, zeros, x, weights, chunk_size, axis_name, skip_tail=True,
                      share=share)
    return psum(total, axis_name)


def psum(tree: PyTree, axis_name: str | None) -> PyTree:
    """``lax.psum`` over ``axis_name``, or ``tree`` itself without one."""
    return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def map_rows(fn: Callable, x: PyTree, chunk_size: int | None = None) -> PyTree:
    """``fn(x_chunk)`` in chunks, outputs concatenated over the rows: per-row results
    (responsibilities, log-likelihoods) without ``(n, K, D)`` temporaries. ``x`` is an
    array or a pytree of arrays with the rows on their leading axis."""
    n = jax.tree.leaves(x)[0].shape[0]
    if chunk_size is None or chunk_size >= n:
        return fn(x)
    n_full = n // chunk_size
    out = jax.lax.map(fn, jax.tree.map(
        lambda a: a[: n_full * chunk_size].reshape((n_full, chunk_size) + a.shape[1:]), x))
    out = jax.tree.map(lambda a: a.reshape((n_full * chunk_size,) + a.shape[2:]), out)
    if n % chunk_size:  # the last chunk_size rows, of which the unseen ones are kept
        tail = fn(jax.tree.map(lambda a: a[n - chunk_size:], x))
        out = jax.tree.map(lambda a, b: jnp.concatenate([a, b[n_full * chunk_size - n:]]),
                           out, tail)
    return out


def missing_order(x: Array) -> Array:
    """The order of ``x``'s rows (axis -2) by their number of missing (NaN) entries,
    stable: chunks of rows with as many gaps factorise blocks of one small size
    (:mod:`jaxem.families.gaussian_missing`)."""
    return jnp.argsort(jnp.sum(jnp.isnan(x), axis=-1), axis=-1, stable=True)


def map_missing_rows(fn: Callable, x: PyTree, chunk_size: int | None = None) -> PyTree:
    """:func:`map_rows` over the rows taken in the :func:`missing_order` of the first
    array of ``x`` (the data), the results returned in the rows' own order."""
    order = missing_order(jax.tree.leaves(x)[0])
    out = map_rows(fn, jax.tree.map(lambda a: a[order], x), chunk_size)
    back = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
    return jax.tree.map(lambda a: a[back], out)


def map_rows_of(family) -> Callable:
    """:func:`map_missing_rows` for a family fitting missing values (its ``missing``
    switch on), :func:`map_rows` otherwise."""
    return map_missing_rows if getattr(family, "missing", False) else map_rows
