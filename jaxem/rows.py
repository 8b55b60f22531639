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


def scan_rows(fn: Callable, carry: PyTree, x: Array, weights: Array,
              chunk_size: int | None = None, axis_name: str | None = None) -> PyTree:
    """Fold ``carry = fn(carry, x_chunk, w_chunk, rows)`` over chunks of this device's rows.

    ``rows`` are the chunk's global row indices ``(chunk,)``. The last chunk is padded
    with weight-0 rows (``x`` 0), which ``fn`` must treat as absent.
    """
    n = x.shape[0]
    offset = row_offset(n, axis_name)
    if chunk_size is None or chunk_size >= n:
        return fn(carry, x, weights, offset + jnp.arange(n, dtype=jnp.int32))
    n_chunks = -(-n // chunk_size)
    pad = n_chunks * chunk_size - n
    xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    xs = xs.reshape((n_chunks, chunk_size) + x.shape[1:])
    ws = jnp.pad(weights, (0, pad)).reshape(n_chunks, chunk_size)
    starts = offset + chunk_size * jnp.arange(n_chunks, dtype=jnp.int32)

    def body(carry, chunk):
        xc, wc, start = chunk
        return fn(carry, xc, wc, start + jnp.arange(chunk_size, dtype=jnp.int32)), None

    return jax.lax.scan(body, carry, (xs, ws, starts))[0]


def sum_rows(fn: Callable, x: Array, weights: Array, chunk_size: int | None = None,
             axis_name: str | None = None) -> PyTree:
    """``sum over chunks of fn(x_chunk, w_chunk, rows)``, summed over devices too."""
    zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype),
        jax.eval_shape(fn, x[:1], weights[:1], jnp.zeros(1, jnp.int32)))
    add = lambda total, xc, wc, rows: jax.tree.map(jnp.add, total, fn(xc, wc, rows))
    total = scan_rows(add, zeros, x, weights, chunk_size, axis_name)
    return psum(total, axis_name)


def psum(tree: PyTree, axis_name: str | None) -> PyTree:
    """``lax.psum`` over ``axis_name``, or ``tree`` itself without one."""
    return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def map_rows(fn: Callable, x: Array, chunk_size: int | None = None) -> Array:
    """``fn(x_chunk)`` row by row in chunks (``lax.map``), concatenated: for per-row
    outputs (responsibilities, log-likelihoods, labels) without ``(n, K, D)`` temporaries."""
    n = x.shape[0]
    if chunk_size is None or chunk_size >= n:
        return fn(x)
    n_chunks = -(-n // chunk_size)
    pad = n_chunks * chunk_size - n
    xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    out = jax.lax.map(fn, xs.reshape((n_chunks, chunk_size) + x.shape[1:]))
    return jax.tree.map(lambda a: a.reshape((n_chunks * chunk_size,) + a.shape[2:])[:n], out)
