"""``fit``: EM over random restarts and data sets in one batched, jitted call.

It is built from the restart layer that :func:`jaxem.fit_gradient`, the streaming fits
and the estimators share, each step public and pure apart from the host checks:
:func:`prepare` (check the data, draw one key per restart, broadcast given starts),
:func:`spread` (place rows or restarts on devices), :func:`run_restarts` (initialise,
centre, run any driver over the restarts, move back, pick the best with
:func:`best_of`) and :func:`finish` (raise when every restart of a data set failed).
"""
from __future__ import annotations

import collections
import concurrent.futures
import functools
import operator
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxem import em, rows
from jaxem.families.base import (MixtureFamily, SequenceFamily, capability,
                                 check_registered)
from jaxem.init import INIT_METHODS, initialize, seed_with_labels

PyTree = Any


class FitResult(NamedTuple):
    """The best restart per data set, and every restart.

    With ``x`` of shape ``(n_samples, n_features)`` the leading data-set axis is absent:
    ``log_likelihood`` has shape ``()``, ``trace`` ``(max_iter,)``, and ``restarts``
    (an :class:`jaxem.em.EMResult`) has a leading ``(n_init,)`` axis. With a batch
    ``(n_datasets, n_samples, n_features)`` every field gains a leading ``n_datasets``.
    """

    params: PyTree
    log_likelihood: jax.Array  # best restart's mean per-sample log-likelihood
    trace: jax.Array  # (..., max_iter) its per-iteration objective, NaN-padded
    n_iter: jax.Array
    converged: jax.Array
    failed: jax.Array  # True only when every restart failed
    best: jax.Array  # index of the best restart
    restarts: em.EMResult  # every restart, with an (n_init,) axis


class FitError(ValueError):
    """Every restart of a data set failed (non-finite parameters)."""


def fit(family, x, *, n_components: int, key: jax.Array, n_init: int = 1,
        weights=None, max_iter: int = 100, tol: float = 1e-3,
        init: str | PyTree = "kmeans", chunk_size: int | None = None,
        devices=None, shard: str = "rows", check: bool = True, labels=None,
        progress: bool | None = None, rescore: bool = False) -> FitResult:
    """Fit ``family`` by EM with ``n_init`` restarts run in parallel (``vmap``).

    Args:
      family: a model family, e.g. ``jaxem.gaussian("full")``.
      x: ``(n_samples, n_features)`` or a batch ``(n_datasets, n_samples, n_features)``.
      n_components: number of mixture components ``K``.
      key: a ``jax.random`` key; restarts and data sets get independent sub-keys.
      n_init: random restarts per data set.
      weights: ``(n_samples,)`` or ``(n_datasets, n_samples)`` non-negative sample
        weights. 0 marks padding, so data sets of different sizes batch together.
      max_iter, tol: the stopping rule of :func:`jaxem.em.run`.
      init: one of ``"kmeans"``, ``"k-means++"``, ``"random"``, ``"random_from_data"``,
        or explicit starting parameters (one instance's, broadcast, or with leading
        ``(n_init,)`` or ``(n_datasets, n_init)`` axes).
      chunk_size: rows per chunk of every pass over the rows (initialisation, E-step),
        which bounds memory. ``None``: chosen by :func:`auto_chunk_size` (all rows when
        the intermediates fit in cache).
      devices: a list of JAX devices (e.g. ``jax.devices()``) to run on, or ``None``
        for the default device. Rows are padded with weight 0 to a multiple of the
        number of devices. Across processes (``jax.distributed``), ``devices`` spans
        them and each process passes its own rows (see the README's recipe).
      shard: with ``devices``, what is split over them: ``"rows"`` (large data: each
        device holds ``n_samples / len(devices)`` rows and the E-step's sums are
        combined with one ``psum`` per iteration) or ``"restarts"`` (many restarts on
        small data: every device holds all rows and runs ``n_init / len(devices)``
        restarts; ``n_init`` is padded up to a multiple of the devices and the padding
        restarts are dropped). Results equal the single-device fit up to float rounding.
      check: raise :class:`FitError` if every restart of some data set failed.
      labels: partial labels (semi-supervised EM, mixture families): ``(n_samples,)`` or
        ``(n_datasets, n_samples)`` ints, ``k`` in ``0 .. n_components - 1`` clamps the
        row's responsibilities to component ``k``, ``-1`` leaves it unlabelled. EM then
        maximises ``sum_unlabelled log p(x) + sum_labelled log p(x, z = label)``, the
        value ``trace`` and ``log_likelihood`` hold. With an ``init`` method (not given
        parameters), the start agrees with the labels (see
        :func:`jaxem.init.seed_with_labels`).
      progress: show a progress bar (tqdm: ``pip install 'jaxem[progress]'``) with the
        iteration, the best objective so far and how many instances (restarts x data
        sets) have finished; the run is then split into compiled blocks of iterations
        (results identical, bit for bit). ``None``: off, unless inside
        ``with jaxem.progress.shown():``.
      rescore: make ``log_likelihood`` (every restart's, and the best's) the mean
        log-likelihood at the returned parameters, as scikit-learn's ``score(X)`` after
        ``fit``, by one more E-step run through the loop's own compiled program (no
        pass compiled for it). Without it, it is the last iteration's, taken one M-step
        before them (scikit-learn's ``lower_bound_``). ``params``, ``trace`` and the
        choice of the best restart are the same either way.

    Rows are padded with weight 0 up to a size of :func:`bucket_rows` (steps of at most
    1/8 octave), so fits on data of similar sizes share one compiled program; padding
    changes no result beyond float rounding.

    >>> import jax, jaxem
    >>> x = jaxem.datasets.load_faithful()
    >>> result = jaxem.fit(jaxem.gaussian("full"), x, n_components=2, n_init=4,
    ...                    key=jax.random.key(0))
    >>> result.log_likelihood.shape, result.restarts.log_likelihood.shape
    ((), (4,))
    >>> bool(result.converged)
    True
    """
    if shard not in ("rows", "restarts"):
        raise ValueError(f"shard must be 'rows' or 'restarts', got {shard!r}.")
    max_iter, tol = check_int("max_iter", max_iter), check_tol(tol)
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size)
    given = x  # the caller's array: a JAX array that reaches _fit as it is is not donated
    x, weights, labels, single = batched(family, x, weights, labels)
    family = with_missing(family, x)
    x, weights, keys, method, params0 = prepare(family, x, weights, key, n_init,
                                                 n_components, init)
    if labels is not None:
        labels = jnp.asarray(check_labels(labels, x.shape[int(single):2], n_components,
                                          family)).reshape(x.shape[:2])
    if _accepts_nan(family) and not capability(family, "has_e_step"):
        x, weights, labels = _sort_by_missing(x, weights, labels)
    mesh, n_keep = None, None
    if devices is not None:
        mesh, x, weights, keys, params0, n_keep = spread(devices, shard, x, weights, keys,
                                                          params0, key)
        if labels is not None and shard == "rows":
            labels = _spread_labels(mesh, labels, x.shape[1])
    if chunk_size is None:  # sized for what one device holds
        b, n, d = x.shape
        split = 1 if mesh is None else mesh.size
        row_split, restart_split = (split, 1) if shard == "rows" else (1, split)
        chunk_size = auto_chunk_size((b, n // row_split, d), keys.shape[1] // restart_split,
                                     n_components, family)
    from jaxem.progress import wanted  # the bar's module; it imports tqdm only to show one

    # The rows go in a list that _fit empties: once centred, the uncentred copy has no
    # reference left and is freed, so the EM loop holds the data once, not twice.
    rows_in, owned = [x], x is not given
    del x, given
    result, xc = _fit(family, rows_in, weights, keys, params0, tol,
                      n_components=n_components, method=method, max_iter=max_iter,
                      chunk_size=chunk_size, mesh=mesh, shard=shard, n_keep=n_keep,
                      labels=labels, progress=wanted(progress), owned=owned,
                      rescore=rescore)
    return finish(result, single, check, "EM", family, (xc, weights))


# Row-count buckets per octave that jaxem.fit pads the rows up to (a power of two; 0: no
# padding, every row count its own compiled program).
BUCKET_STEPS = 8
# Up to this many rows no padding: small fits compile quickly, and an unpadded program
# keeps them bit-for-bit comparable across restart counts (padding changed the last ulp
# of a 50-row fit between n_init=1 and n_init=10, which scikit-learn's tests compare).
BUCKET_FROM = 1024


def bucket_rows(n: int, unit: int = 1) -> int:
    """The number of rows :func:`fit` pads ``n`` rows to, in groups of ``unit`` rows (an
    HMM's ``seq_len``): ``m * 2**e`` groups with ``8 <= m <= 16``, so a step is at most
    1/8 octave (12.5% padding, about 5% on average) and data sets of similar sizes share
    one compiled program; up to :data:`BUCKET_FROM` rows, no padding.

    >>> [bucket_rows(n) for n in (10, 17, 272, 1000, 1024, 1025, 200_000)]
    [10, 17, 272, 1000, 1024, 1152, 212992]
    """
    groups = -(-n // unit)
    if BUCKET_STEPS and groups > 2 * BUCKET_STEPS and groups * unit > BUCKET_FROM:
        e = groups.bit_length() - BUCKET_STEPS.bit_length()
        groups = -(-groups >> e) << e
    return groups * unit


def batched(family, x, weights=None, labels=None):
    """:func:`fit`'s data preamble: ``(x (B, n, D) on the device, weights, labels,
    single)``, the rows padded to :func:`bucket_rows` (weights and labels padded to
    match, see :func:`_pad_rows`); ``single``: ``x`` was one data set ``(n, D)``, given
    a leading axis of 1 (its weights and labels keep their ``(n,)`` shape)."""
    x, weights, labels, n_rows = _pad_rows(family, x, weights, labels)
    x = checked_data(x)
    single = x.ndim == 2
    return to_device(x[None] if single else x, n_rows), weights, labels, single


def _pad_rows(family, x, weights, labels):
    """``(x, weights, labels, n_rows)``: ``x (n, D)`` or ``(B, n, D)`` with its rows
    padded to :func:`bucket_rows` rows of weight 0 (``weights`` made and padded with 0,
    ``labels`` with -1), before the checks on the device, so that their small programs
    are shared by the bucket too. NumPy ``x`` is returned as it is with ``n_rows``, the
    rows :func:`to_device` pads it to (no host copy); a JAX array is padded here. A
    family with its own E-step is padded in whole sequences (its ``seq_len``), or not at
    all if it declares none. Input that the checks will refuse is returned as it is, so
    their messages name the user's shapes."""
    unit = getattr(family, "seq_len", None) if capability(family, "has_e_step") else 1
    if not isinstance(unit, int) or unit < 1:
        return x, weights, labels, None
    xa = x
    if not isinstance(xa, (np.ndarray, jax.Array)):
        if isinstance(xa, (str, bytes)) or type(xa).__module__.startswith("scipy.sparse"):
            return x, weights, labels, None
        try:
            xa = np.asarray(xa)
        except ValueError:  # ragged: as_data says so
            return x, weights, labels, None
    if (xa.ndim not in (2, 3) or 0 in xa.shape or xa.dtype.kind not in "biuf"
            or xa.shape[-2] % unit):
        return x, weights, labels, None
    n, lead = xa.shape[-2], xa.shape[:-1]
    pad = bucket_rows(n, unit) - n
    if pad == 0 or any(a is not None and np.shape(a) != lead for a in (weights, labels)):
        return x, weights, labels, None
    if weights is None:  # made and padded on the host: no program compiled for it
        weights = np.ones(lead, xa.dtype if xa.dtype.kind == "f" else np.float32)

    def rows(a, axis, value):
        a = a if isinstance(a, (np.ndarray, jax.Array)) else np.asarray(a)
        width = [(0, 0)] * a.ndim
        width[axis] = (0, pad)
        return (jnp if isinstance(a, jax.Array) else np).pad(a, width, constant_values=value)

    if isinstance(xa, np.ndarray):  # padded on its way to the device (to_device)
        return (x, rows(weights, -1, 0), None if labels is None else rows(labels, -1, -1),
                n + pad)
    return (rows(xa, -2, 0), rows(weights, -1, 0),
            None if labels is None else rows(labels, -1, -1), None)


def _spread_labels(mesh, labels, n_rows):
    """``labels (B, n)`` padded with -1 (unlabelled) to the ``n_rows`` that
    :func:`spread` gave ``x`` (the global count: this process's share is its devices'
    fraction) and split over the mesh's rows as ``x`` is."""
    n_mine = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    local = n_rows * n_mine // mesh.size
    labels = jnp.pad(labels, ((0, 0), (0, local - labels.shape[1])), constant_values=-1)
    rows_split = NamedSharding(mesh, P(None, AXIS))
    if n_mine == mesh.size:
        return jax.device_put(labels, rows_split)
    return jax.make_array_from_process_local_data(rows_split, np.asarray(labels))


def spread(devices, shard, x, weights, keys, params0, key):
    """A one-axis mesh over ``devices`` and the inputs padded and placed on it:
    ``(mesh, x, weights, keys, params0, n_keep)``."""
    if isinstance(devices, (jax.Device, str)):
        raise ValueError("devices must be a list of JAX devices, e.g. jax.devices() or "
                         f"[jax.devices()[0]], got {devices!r}.")
    devices = list(devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise ValueError("devices must be a non-empty list of JAX devices, e.g. jax.devices().")
    if len(set(devices)) != len(devices):
        raise ValueError("devices lists a device more than once.")
    # Process by process, so each process's devices hold a contiguous block of rows.
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    mesh = jax.sharding.Mesh(np.array(devices), (AXIS,))
    n_dev, n_keep = len(devices), None
    if shard == "rows":  # weight-0 rows change nothing
        per = collections.Counter(d.process_index for d in devices)
        if len(per) != jax.process_count() or len(set(per.values())) > 1:
            raise ValueError("With rows split over processes, devices must hold the same "
                             f"number of devices of every process (got {dict(per)}); pass "
                             "jax.devices().")
        n_mine = per[jax.process_index()]
        n = x.shape[1]
        if n_mine < n_dev:  # several processes: each passes its own rows, padded to the largest
            n = int(np.max(multihost_utils.process_allgather(np.array(n))))
        pad = n + (-n) % n_mine - x.shape[1]
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
        weights = jnp.pad(weights, ((0, 0), (0, pad)))
        rows_split = NamedSharding(mesh, P(None, AXIS))
        if n_mine == n_dev:
            x, weights = jax.device_put((x, weights), rows_split)
        else:
            x, weights = (jax.make_array_from_process_local_data(rows_split, np.asarray(a))
                          for a in (x, weights))
    else:
        b, n_init = keys.shape
        pad = (-n_init) % n_dev
        if pad:
            n_keep = n_init
            extra = jax.random.split(jax.random.fold_in(key, 1), b * pad).reshape(b, pad)
            keys = jnp.concatenate([keys, extra], axis=1)
            if params0 is not None:
                params0 = jax.tree.map(
                    lambda a: jnp.concatenate([a, jnp.repeat(a[:, :1], pad, axis=1)], axis=1),
                    params0)
    return mesh, x, weights, keys, params0, n_keep


def with_missing(family, x):
    """The family that fits ``x``: when ``x`` has NaN, a family that declares
    ``supports_missing`` and has a static ``missing`` switch (the Gaussians, HMMs with
    Gaussian emissions) gets it turned on (exact EM over the observed entries); others
    are returned as they are."""
    if capability(family, "supports_missing") and not family.missing and has_nan(x):
        return family.with_missing(True)
    return family


def has_nan(x) -> bool:
    """Whether the float array ``x`` has a NaN, with no data-sized mask: NumPy's min
    propagates NaN; on a device, a fused sum of ``x * 0`` (XLA's CPU ``min`` may drop
    NaN)."""
    if x.size == 0:
        return False
    return bool(_any_nan(x) if isinstance(x, jax.Array) else np.isnan(np.min(x)))


@jax.jit
def _any_nan(x):
    # x * 0 is NaN exactly where x is NaN or infinite: one fused sum, no data-sized
    # temporary (jnp.any(jnp.isnan(x)) fills a mask of a quarter of the data's bytes;
    # XLA keeps a buffer for it below, but only data with NaN or inf writes to it).
    # Only when the sum finds one, tell NaN from infinity.
    return jax.lax.cond(jnp.isnan(jnp.sum(x * 0)), lambda: jnp.any(jnp.isnan(x)),
                        lambda: jnp.array(False))


def _complete(family):
    """``family`` for complete rows (its initialisation needs no missing-value EM)."""
    return family.with_missing(False) if getattr(family, "missing", False) else family


@jax.jit
def _sort_by_missing(x, weights, labels):
    """Each data set's rows (``x (B, n, D)``, ``weights (B, n)``, ``labels``) ordered by
    their number of missing entries: a mixture's sums do not depend on the order, and
    chunks of rows with few missing entries factorise small blocks
    (:func:`jaxem.rows.missing_order`)."""
    order = rows.missing_order(x)
    x = jnp.take_along_axis(x, order[..., None], axis=-2)
    weights = jnp.take_along_axis(weights, order, axis=-1)
    return x, weights, None if labels is None else jnp.take_along_axis(labels, order, axis=-1)


def _accepts_nan(family) -> bool:
    return bool(capability(family, "supports_missing") and family.missing)


def prepare(family, x, weights, key, n_init, n_components, init):
    """Host-side checks shared with :func:`jaxem.fit_gradient` and the streaming fits.

    Returns ``(x (B, n, D), weights (B, n), keys (B, n_init), method, params0)``.
    """
    check_family(family)
    n_components, n_init = check_int("n_components", n_components), check_int("n_init", n_init)
    key = check_key(key)
    # An HMM's step with nothing observed is uninformative (the chain passes through it);
    # a mixture's row with nothing observed is refused.
    x, weights = _check_data(as_data(x), weights, n_components, _accepts_nan(family),
                             allow_empty=capability(family, "has_e_step"))
    if isinstance(init, str):
        if init not in INIT_METHODS:
            raise ValueError(f"Unknown init {init!r}: use one of {', '.join(INIT_METHODS)} "
                             "or pass starting parameters.")
        method, params0 = init, None
    else:
        method, params0 = None, _broadcast_init(family, init, x, n_init, n_components)
    return x, weights, _split(key, x.shape[0], n_init), method, params0


@functools.partial(jax.jit, static_argnums=(1, 2))
def _split(key, n_datasets, n_init):
    """``(n_datasets, n_init)`` keys, one per instance (one program, not a split and an
    eager reshape)."""
    return jax.random.split(key, n_datasets * n_init).reshape(n_datasets, n_init)


def finish(result, single, check, what, family=None, data=None):
    """Raise if every restart of a data set failed; drop the data-set axis of one set.

    ``family`` and ``data`` (``(x (B, n, D), weights (B, n))``) make the message say
    what went wrong for that family and that input (see :func:`failure_advice`).
    """
    # the (B,) flags reduced on the host: no program compiled for it
    if check and (failed := np.asarray(result.failed)).any():
        bad = np.flatnonzero(failed).tolist()
        raise FitError(f"{what} failed on every restart of data set(s) {bad}: the "
                       f"parameters became non-finite. {failure_advice(family, data)}")
    return first_set(result) if single else result


@jax.jit
def first_set(tree: PyTree) -> PyTree:
    """The first data set of every leaf of ``tree``: one compiled program (as eager ``a[0]``
    per leaf, a fit's result compiled a dozen, 10-50 ms each, in a fresh process)."""
    return jax.tree.map(lambda a: a[0], tree)


def failure_advice(family, data=None) -> str:
    """What to change after a failed fit, for ``family`` and the data ``(x, weights)``.

    Data whose spread squared overflows the float type (float32: about 1e19) is the
    cause whatever the family; otherwise the advice names the family's own knobs.
    """
    if data is not None:
        x, w = data
        pos = w[..., None] > 0
        mean = jnp.sum(jnp.where(pos, x, 0.0), axis=-2, keepdims=True) / jnp.maximum(
            jnp.sum(pos, axis=-2, keepdims=True), 1)
        spread = float(jnp.max(jnp.where(pos, jnp.abs(x - mean), 0.0)))
        limit = float(np.sqrt(np.finfo(x.dtype).max / max(x.shape[-1], 1))) / 10
        if spread > limit:
            return (f"The data spread over about {spread:.1e}, so squared distances "
                    f"overflow {x.dtype}: rescale x (e.g. standardise each feature)"
                    + (" or use float64 (jax.config.update('jax_enable_x64', True) and "
                       "float64 data)." if x.dtype == jnp.float32 else "."))
    name = type(family).__name__
    if name == "KMeans":
        return ("k-means centres become non-finite only when the distances overflow or "
                "the starting centres are not finite: check init and the data's scale.")
    if hasattr(family, "reg_covar"):
        return (f"A covariance became singular (a component collapsed onto duplicated "
                f"points or a constant feature): increase reg_covar (now "
                f"{float(family.reg_covar):g}), use fewer components, or remove "
                "duplicated points and constant features.")
    emission = getattr(family, "emission", None)
    if emission is not None and hasattr(emission, "covars_prior"):
        return ("An emission covariance became singular (a state collapsed onto "
                "constant or duplicated observations): raise the emission's "
                "covars_prior/covars_weight, use fewer states, or remove constant features.")
    if emission is not None:
        return ("A probability became non-finite: raise the emission's prior (e.g. "
                "emissionprob_prior or lambdas_prior), use fewer states, or check the data.")
    return "Check the data's scale and the starting parameters, or use fewer components."


def auto_chunk_size(shape, n_init: int, n_components: int, family=None) -> int | None:
    """Rows per chunk of a pass when the caller gave none: ``shape`` is ``(B, n, D)``.

    Families whose E-step is ``(rows, K, D)`` elementwise work (full covariances, or
    ``family=None``): about 2**20 such numbers per chunk, so the intermediates stay in
    the CPU caches, unless that gives fewer than two chunks (then the scan only adds
    overhead); a single N=20000, D=K=8 full fit stays unchunked, its fastest. Families
    whose E-step is GEMMs (diag, spherical, tied Gaussians: ``gemm_rows``) are limited by
    the ``(rows, n_init * K)`` GEMM outputs instead: about 2**17 of them per chunk, at
    least 4096 rows (a chunk's fixed costs) unless that makes more than 2**20 outputs
    (many restarts: the outputs then leave the caches), at most 16384 rows. Measured
    on a 2-core Xeon, float32, N=10**6, D=K=16 diag: 0.069 s per iteration at 8192 rows
    (1 restart; 0.10 s at 4096, 0.155 s unchunked); 8 restarts 0.33 s at 4096 (0.44 s
    at 2048, 1.19 s unchunked). On a 2-core EPYC, N=20000, D=8 diag, 50 iterations of
    128 instances x 16 components (2048 outputs per row): 6.6 s at 512 rows, 10.4 s at
    4096; N=2*10**5, 64 restarts x 8 components: 10 iterations 1.9-2.0 s at 1024 or
    2048 rows, 3.0-3.4 s at 4096. On CPU the count is then evened out over the rows and
    kept off multiples of 32 (:func:`_unaligned`).
    """
    n_batch, n, d = shape
    # Missing-value Gaussians work on up to (rows, K, D, D) blocks: size chunks by those
    # (N=10**5, D=16, K=8 full, 20% missing, rows sorted by gaps, one process each:
    # 0.037-0.041 s per iteration from 1520 to 4080 rows off powers of two, 0.039-0.048 s
    # at 6128 and 8176; benchmarks/results/missing_cpu.md: 0.042 s at 2064).
    per_k = d * d if getattr(family, "missing", False) else d
    cpu = jax.default_backend() == "cpu"
    if not cpu:
        # An accelerator runs each chunk as its own kernels, so many small chunks cost
        # launches, not cache misses: chunk only to bound memory, at about 2**26 numbers
        # (256 MB float32) of E-step intermediates per chunk.
        per_row = n_batch * n_init * n_components * (1 if capability(family, "gemm_rows") else per_k)
        rows = max(4096, 2**26 // per_row)
    elif capability(family, "gemm_rows"):
        cols = n_batch * n_init * n_components
        rows = min(16384, max(2**17 // cols, min(4096, 2**20 // cols), 256))
    else:
        budget = 2**20 if per_k == d else 2**22  # numbers of E-step intermediates
        rows = max(256, budget // (n_batch * n_init * n_components * per_k))
    if 2 * rows > n:
        return None
    return _unaligned(rows, n) if cpu else int(rows)


def _unaligned(rows: int, n: int) -> int:
    """About ``rows`` rows per chunk for ``n`` rows: as many chunks as ``rows`` makes,
    evened out (fewest padded rows), rounded up to an odd multiple of 16.

    A row count that is a multiple of a large power of two puts the rows of the E-step's
    rows-last arrays (``(K, D, rows)``) a multiple of 4 KB apart, in the same CPU cache
    sets, more or less badly from one process to the next. On a 2-core EPYC, N=10**5,
    D=16, K=8 full, five fresh processes each (benchmarks/results/chunk_alignment_cpu.md):
    with 20% missing, 0.0410-0.0447 s per iteration at 2048 rows (median 0.0423) and
    0.0387-0.0414 s at 2064 (median 0.0395); with nothing missing, 0.0091-0.0103 s at
    8192 rows (median 0.0100) and 0.0088-0.0096 s at 7696 (median 0.0094). Diag (GEMMs
    over rows-first arrays): no difference (ad hoc, 8192 against 8176 rows)."""
    chunks = -(-n // rows)
    sixteens = -(-n // (16 * chunks))
    return 16 * (sixteens + 1 - sixteens % 2)


def _fit(family, rows_in, weights, keys, params0, tol, *, n_components, method, max_iter,
         chunk_size, mesh=None, shard="rows", n_keep=None, labels=None, progress=False,
         owned=False, rescore=False):
    """rows_in: ``[x (B, n, D)]``, emptied here so that ``x`` can be freed once centred
    (and, ``owned``, a copy the caller made, is centred in place: donated);
    weights: (B, n), keys: (B, R), params0: None or (B, R, ...), labels: None or (B, n)
    ints (-1 unlabelled). Returns ``(FitResult, the centred rows)``.

    Three compiled programs: init and centring (:func:`_fit_start`), the EM loop
    (:func:`_fit_block`, :func:`jaxem.em.resume`), the best-of (:func:`_fit_finish`).
    With ``progress`` the loop runs in blocks of iterations with a bar between them;
    without, in one block. The state between blocks is the ``while_loop``'s carry and
    both run the same programs, so results are identical, bit for bit (one program for
    all three would let XLA fuse differently, and round differently, than the blocks)."""
    start = _fit_start_owned if owned else _fit_start
    state, xc, shift = start(family, rows_in.pop(), weights, keys, params0,
                             n_components=n_components, method=method, max_iter=max_iter,
                             chunk_size=chunk_size, mesh=mesh, shard=shard, labels=labels)

    threads = cpu_threads(family, xc.shape[1], chunk_size, mesh)
    pool = concurrent.futures.ThreadPoolExecutor(threads) if threads > 1 else None

    def block(state, n_steps):
        if pool is not None:
            return _fit_threaded(family, state, xc, weights, tol, n_steps,
                                 chunk_size=chunk_size, labels=labels, pool=pool,
                                 count=threads)
        return _fit_block(family, state, xc, weights, tol, n_steps, chunk_size=chunk_size,
                          mesh=mesh, shard=shard, n_keep=n_keep, labels=labels)

    try:
        if progress:
            from jaxem import progress as bar

            state = bar.run_blocks(block, state, max_iter=max_iter,
                                   n_instances=keys.shape[0] * (n_keep or keys.shape[1]),
                                   n_datasets=keys.shape[0])
        else:
            state = block(state, max_iter)[0]
        if rescore:  # one more iteration of every instance; only its E-step's value is kept
            # Every instance running again at its trace's last entry, neither converged nor
            # failed: made on the host (a program for these few numbers took 50-80 ms to
            # compile), as the state's own dtypes so that the block's program is reused.
            off = np.zeros(state.n_iter.shape, bool)
            again = state._replace(n_iter=np.full(off.shape, max_iter - 1, state.n_iter.dtype),
                                   converged=off, failed=off)
            state = state._replace(log_likelihood=block(again, 1)[0].log_likelihood)
    finally:
        if pool is not None:
            pool.shutdown()
    return _fit_finish(family, state, shift, mesh=mesh, shard=shard, n_keep=n_keep), xc


def _fit_start(family, x, weights, keys, params0, *, n_components, method, max_iter,
               chunk_size, mesh=None, shard="rows", labels=None):
    """The driver's state before its first iteration, for every instance, as :func:`_fit`
    makes it: ``(EMResult (B, R), centred x, shift)`` (parameters about the centred x)."""

    def driver(params, x, w, key, axis_name, labels=None):
        del x, w, key, axis_name, labels
        return em.start(params, max_iter)

    return run_restarts(family, driver, x, weights, keys, params0, n_components, method,
                     chunk_size=chunk_size, mesh=mesh, shard=shard, labels=labels,
                     centred=True)


_START_STATIC = ("n_components", "method", "max_iter", "chunk_size", "mesh", "shard")
# The same program with ``x`` donated, for rows that fit copied (padded, converted or
# transferred): the centred rows take their buffer, so the data is held once, not twice.
_fit_start_owned = jax.jit(_fit_start, static_argnames=_START_STATIC, donate_argnames="x")
_fit_start = jax.jit(_fit_start, static_argnames=_START_STATIC)


@functools.partial(jax.jit, static_argnames=("chunk_size", "mesh", "shard", "n_keep"))
def _fit_block(family, state, x, weights, tol, n_steps, *, chunk_size, mesh=None,
               shard="rows", n_keep=None, labels=None):
    """Up to ``n_steps`` (traced) more iterations of every instance, batched and split
    over the mesh as :func:`run_restarts` runs the driver. Returns ``(state, (iterations
    run, instances finished, best objective so far: mean over data sets))``."""

    def run_all(state, x, w, labels, axis_name=None):
        def per_dataset(state, x, w, labels):
            given = {} if labels is None else {"labels": labels}
            return vmap(lambda s: em.resume(family, s, x, w, n_steps=n_steps, tol=tol,
                                            chunk_size=chunk_size, axis_name=axis_name,
                                            **given))(state)

        return vmap(per_dataset)(state, x, w, labels)

    if mesh is None:
        state = run_all(state, x, weights, labels)
    elif shard == "rows":
        state = jax.shard_map(
            functools.partial(run_all, axis_name=AXIS), mesh=mesh,
            in_specs=(P(), P(None, AXIS), P(None, AXIS), P(None, AXIS)), out_specs=P(),
            check_vma=False)(state, x, weights, labels)
    else:
        state = jax.shard_map(
            run_all, mesh=mesh, in_specs=(P(None, AXIS), P(), P(), P()),
            out_specs=P(None, AXIS), check_vma=False)(state, x, weights, labels)
    return state, _summary(state, n_keep)


def _summary(state, n_keep=None):
    """``(iterations run, instances finished, best objective so far: mean over data
    sets)`` of a ``(B, R)`` state, the first ``n_keep`` restarts of each data set."""
    kept = state if n_keep is None else jax.tree.map(lambda a: a[:, :n_keep], state)
    last = jnp.take_along_axis(kept.trace, jnp.maximum(kept.n_iter - 1, 0)[..., None],
                               axis=-1)[..., 0]
    score = jnp.where(kept.failed | (kept.n_iter == 0) | ~jnp.isfinite(last), -jnp.inf, last)
    return (jnp.max(kept.n_iter), jnp.sum(~em.running(kept)),
            jnp.mean(jnp.max(score, axis=1)))


def cpu_threads(family, n_rows: int, chunk_size: int | None, mesh=None) -> int:
    """How many CPU threads :func:`fit` runs the E-step on (1: the whole EM loop in one
    compiled program, :func:`_fit_block`).

    XLA's CPU runtime runs a program's kernels one after another, each on every core
    only when it is large (GEMMs, big elementwise passes): the many small kernels of a
    ``threaded_rows`` family (exact EM with missing values, full and tied) use one.
    Programs launched from separate threads do run at once, so for such a family on the
    CPU each iteration runs one E-step program per thread over its share of the chunks
    (every ``threads``-th one: chunks sorted by their gaps balance) and adds the sums
    (:func:`_fit_threaded`). One thread per core (``JAXEM_THREADS`` overrides it), at
    most one per two chunks; none with ``devices``.

    N=10**5, D=16, K=8, full, 20% missing, 2-core EPYC: 0.085 s per iteration in one
    program, 0.046 s on two threads; complete rows (GEMMs) 0.022 s, 0.025 s on two."""
    if (mesh is not None or chunk_size is None or not capability(family, "threaded_rows")
            or jax.default_backend() != "cpu"):
        return 1
    given = os.environ.get("JAXEM_THREADS", "").strip()
    if given:
        if not given.isdigit() or int(given) < 1:
            raise ValueError(f"JAXEM_THREADS must be a positive integer, got {given!r}.")
        cores = int(given)
    else:
        cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count() or 1)
    return max(1, min(cores, -(-n_rows // chunk_size) // 2))


@functools.partial(jax.jit, static_argnames=("count", "chunk_size"))
def _fit_share(family, params, x, weights, labels, index, *, count, chunk_size):
    """The E-step's sums ``(stats, sum w log p, sum w)`` of every data set and restart
    (``params (B, R, ...)``) over share ``index`` of ``count`` of the chunks."""
    def per_dataset(params, x, w, labels):
        given = {} if labels is None else {"labels": labels}
        return vmap(lambda p: em.e_step(family, p, x, w, chunk_size,
                                        share=(index, count), **given))(params)

    return vmap(per_dataset)(params, x, weights, labels)


@jax.jit
def _fit_step(family, state, shares, tol):
    """One iteration of every instance from its E-step's ``shares`` (added in order),
    :func:`jaxem.em.step`; returns ``(state, summary, whether every instance finished)``."""
    sums = jax.tree.map(lambda *a: functools.reduce(jnp.add, a), *shares)
    state = vmap(vmap(lambda s, t: em.step(family, s, t, tol)))(state, sums)
    return state, _summary(state), jnp.all(~em.running(state))


def _fit_threaded(family, state, x, weights, tol, n_steps, *, chunk_size, labels, pool,
                  count):
    """:func:`_fit_block` as a host loop: per iteration, the E-step in ``pool``'s threads
    (one share of the chunks each, :func:`_fit_share`), then :func:`_fit_step`. Running
    instances all have run as many iterations, so stopping after ``n_steps`` of them, or
    when none runs, is the while loop's rule; results equal it up to float rounding (the
    sums are added in another order). ``count``: the shares, one per thread of ``pool``."""

    # Compiled, and its arguments made arrays, in the caller's thread: JAX's
    # configuration (x64 under ``jax.enable_x64``, say) is per thread.
    data = jax.tree.map(jnp.asarray, (family, x, weights, labels))
    program = _fit_share.lower(data[0], state.params, *data[1:], np.int32(0), count=count,
                               chunk_size=chunk_size).compile()

    def share(params, i):  # waits in its thread: a thread's own program runs meanwhile
        return jax.block_until_ready(program(data[0], params, *data[1:], np.int32(i)))

    summary = None
    for _ in range(int(n_steps)):
        params = jax.tree.map(jnp.asarray, state.params)
        shares = list(pool.map(functools.partial(share, params), range(count)))
        state, summary, done = _fit_step(family, state, shares, tol)
        if bool(done):
            break
    return state, jax.jit(_summary)(state) if summary is None else summary


@functools.partial(jax.jit, static_argnames=("mesh", "shard", "n_keep"))
def _fit_finish(family, state, shift, *, mesh=None, shard="rows", n_keep=None):
    """Parameters moved back from the centred data, and the best-of, as :func:`run_restarts`
    ends."""
    if shift is not None:
        params = jax.vmap(jax.vmap(family.translate, (0, None)))(state.params, shift)
        state = state._replace(params=params)
    if mesh is not None and shard == "restarts":
        state = jax.lax.with_sharding_constraint(state, NamedSharding(mesh, P()))
    if n_keep is not None:
        state = jax.tree.map(lambda a: a[:, :n_keep], state)
    return best_of(state)


def vmap(fn):
    """``jax.vmap(fn)`` over the leading axis of every argument, except that a batch of
    one calls ``fn`` on the arguments without it: XLA's CPU code for a batch of one can
    be slower than for none (a missing-value fit, N=20480, D=16, K=8 full: 1.5x).
    The results agree to float rounding, not bit for bit."""

    def call(*args):
        sizes = {leaf.shape[0] for leaf in jax.tree.leaves(args)}
        if sizes != {1}:
            return jax.vmap(fn)(*args)
        out = fn(*jax.tree.map(lambda a: a[0], args))
        return jax.tree.map(lambda a: a[None], out)

    return call


AXIS = "jaxem"  # the mesh axis that rows or restarts are split over


def run_restarts(family, driver, x, weights, keys, params0, n_components, method, *,
                 chunk_size=None, mesh=None, shard="rows", n_keep=None, labels=None,
                 centred=False):
    """Init, run ``driver(params, x, w, key, axis_name) -> EMResult`` on centred data for
    every restart and data set (vmapped), and pick the best restart. Call inside ``jit``.

    With a ``mesh`` (one axis, :data:`AXIS`), ``shard="rows"`` splits the rows over its
    devices (``shard_map``; every pass over the rows ends in a ``psum`` over the axis,
    so all devices hold the same parameters), ``shard="restarts"`` the restarts (each
    device runs its restarts on all the rows, no communication until the best-of).

    ``labels`` (``(B, n)`` ints, -1 unlabelled; split as the rows are) are passed to the
    driver as ``labels=``, and an init method's start is made to agree with them.

    ``centred=True`` (the first block of a fit run in blocks, :func:`_fit_start`) returns
    ``(driver's outputs (B, R), centred x (B, n, D), shift (B, D) or None)`` instead:
    parameters left about the centred data, no best-of, every restart (padding ones too).
    """

    missing = getattr(family, "missing", False) is True

    def one(key, params, x, w, shift, axis_name, labels):
        seed = params is None and labels is not None
        if params is None:
            if capability(family, "has_init"):
                params = family.init(key, x, w, n_components, method)
            elif missing:  # start from the complete family on mean-imputed (0) centred rows
                params = initialize(_complete(family), key,
                                    jnp.where(jnp.isnan(x), 0.0, x), w, n_components, method,
                                    chunk_size=chunk_size, axis_name=axis_name)
            else:
                params = initialize(family, key, x, w, n_components, method,
                                    chunk_size=chunk_size, axis_name=axis_name)
        elif shift is not None:
            params = family.translate(params, -shift)
        if seed:
            params = seed_with_labels(family, params, x, w, labels, chunk_size, axis_name)
        # The init keeps ``key`` itself, so EM's starting points do not depend on the driver.
        given = {} if labels is None else {"labels": labels}
        out = driver(params, x, w, jax.random.fold_in(key, 1), axis_name, **given)
        if shift is not None and not centred:
            out = out._replace(params=family.translate(out.params, shift))
        return out

    def used(x, w):  # padding rows may hold anything, NaN included (0 * NaN is NaN)
        return jnp.where(w[:, None] > 0, x, 0.0)

    def per_dataset(keys, params, x, w, labels, axis_name):
        shift = None
        if capability(family, "centres_data"):
            # Fit centred data: float32 moments stay accurate far from the origin. The
            # padding is zeroed chunk by chunk and in the centring, never in a data-sized
            # temporary (with x donated, the centred rows then take x's buffer).
            if missing:  # each feature's mean over the rows where it is observed
                mass = rows.sum_rows(
                    lambda xc, wc, _: (wc @ jnp.where(jnp.isnan(xc), 0.0, used(xc, wc)),
                                       wc @ (~jnp.isnan(xc)).astype(xc.dtype)),
                    x, w, chunk_size, axis_name)
            else:
                mass = rows.sum_rows(lambda xc, wc, _: (wc @ used(xc, wc), jnp.sum(wc)), x,
                                     w, chunk_size, axis_name)
            shift = mass[0] / mass[1]
            x = used(x - shift, w)
        else:
            x = used(x, w)
        out = jax.vmap(one, (0, 0, None, None, None, None, None))(keys, params, x, w, shift,
                                                                   axis_name, labels)
        return (out, x, shift) if centred else out

    def run_all(keys, params0, x, weights, labels, axis_name=None):
        return jax.vmap(per_dataset, (0, 0, 0, 0, 0, None))(keys, params0, x, weights, labels,
                                                            axis_name)

    # With centred=True, also the centred rows (split as x is) and the shifts (replicated).
    if mesh is None:
        restarts = run_all(keys, params0, x, weights, labels)
    elif shard == "rows":
        restarts = jax.shard_map(
            functools.partial(run_all, axis_name=AXIS), mesh=mesh,
            in_specs=(P(), P(), P(None, AXIS), P(None, AXIS), P(None, AXIS)),
            out_specs=(P(), P(None, AXIS), P()) if centred else P(),
            check_vma=False)(keys, params0, x, weights, labels)
    else:
        restarts = jax.shard_map(
            run_all, mesh=mesh, in_specs=(P(None, AXIS), P(None, AXIS), P(), P(), P()),
            out_specs=(P(None, AXIS), P(), P()) if centred else P(None, AXIS),
            check_vma=False)(keys, params0, x, weights, labels)
    if centred:
        return restarts
        # Gather every restart to every device: readable from any process.
        restarts = jax.lax.with_sharding_constraint(restarts, NamedSharding(mesh, P()))
    if n_keep is not None:  # drop the restarts that only padded the device count
        restarts = jax.tree.map(lambda a: a[:, :n_keep], restarts)
    return best_of(restarts)


def best_of(restarts: em.EMResult) -> FitResult:
    """Each data set's best restart of ``restarts`` (leading ``(B, n_init)`` axes):
    the highest objective (the last entry of its trace: the log-likelihood, plus the
    log-prior for MAP); a failed restart never wins."""
    last = jnp.maximum(restarts.n_iter - 1, 0)[..., None]
    final = jnp.take_along_axis(restarts.trace, last, axis=-1)[..., 0]
    score = jnp.where(restarts.failed | ~jnp.isfinite(restarts.log_likelihood)
                      | ~jnp.isfinite(final), -jnp.inf, final)
    best = jnp.argmax(score, axis=1)
    pick = jax.vmap(lambda tree, i: jax.tree.map(lambda a: a[i], tree))
    top = pick(restarts, best)
    return FitResult(top.params, top.log_likelihood, top.trace, top.n_iter, top.converged,
                     top.failed, best, restarts)


def initial_params(family, x, *, n_components: int, key: jax.Array, n_init: int = 1,
                   weights=None, init: str | PyTree = "kmeans", labels=None) -> PyTree:
    """The starting points :func:`jaxem.fit` would use for ``key``: ``(n_init, ...)``,
    or ``(n_datasets, n_init, ...)`` for a batch ``x`` (with ``labels``, as ``fit``),
    from the rows padded as ``fit`` pads them (so the two share their programs)."""
    x, weights, labels, single = batched(family, x, weights, labels)
    x3, w3, keys, method, params0 = prepare(family, x, weights, key, n_init,
                                                   n_components, init)
    if labels is not None:
        labels = jnp.asarray(check_labels(labels, x3.shape[int(single):2],
                                          n_components, family)).reshape(x3.shape[:2])
    if method is None:
        params = params0
    else:
        params = _initial(family, x3, w3, keys, labels, n_components=n_components,
                          method=method)
    return first_set(params) if single else params


@functools.partial(jax.jit, static_argnames=("n_components", "method"))
def _initial(family, x, weights, keys, labels=None, *, n_components, method):
    def no_run(params, x, w, key, axis_name, labels=None):  # init and centring, no driver
        del x, w, key, axis_name, labels
        zero = jnp.zeros((), jnp.result_type(*jax.tree.leaves(params)))
        return em.EMResult(params, zero, zero[None], jnp.array(0), jnp.array(True),
                        jnp.array(False))

    out = run_restarts(family, no_run, x, weights, keys, None, n_components, method,
                    labels=labels)
    return out.restarts.params


# -- host-side checks, before anything is compiled --------------------------------------
def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an ``int``, or a ValueError naming ``name``: an integer >= ``minimum``
    (``2.5``, ``2.0`` and ``True`` are refused: a count is not a float or a flag)."""
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r} "
                         f"({type(value).__name__}).") from None
    if number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {number}.")
    return number


def check_tol(tol, name: str = "tol") -> float:
    """``tol`` as a float, or a ValueError for NaN or a non-number. A negative ``tol``
    (``-inf`` included) is allowed: the change is never that small, so the fit runs
    exactly ``max_iter`` iterations (hmmlearn's ``tol=-inf`` idiom; ``tol=0`` stops at an
    exactly repeated value)."""
    try:
        value = float(tol)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {tol!r}.") from None
    if np.isnan(value):
        raise ValueError(f"{name} must be a number, not NaN (a negative tol runs exactly "
                         "max_iter iterations).")
    return value


def check_key(key) -> jax.Array:
    """``key`` if it is one JAX PRNG key (typed, or a legacy ``uint32`` key), else a
    TypeError that says how to make one."""
    if isinstance(key, (jax.Array, np.ndarray)):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == np.uint32 and key.shape == (2,):  # jax.random.PRNGKey(0)
            return jax.random.wrap_key_data(jnp.asarray(key), impl="threefry2x32")
    what = (f"an array of shape {key.shape} and dtype {key.dtype}"
            if hasattr(key, "shape") and hasattr(key, "dtype") else repr(key))
    raise TypeError(f"key must be one JAX PRNG key, e.g. key=jax.random.key(0); got {what}.")


def check_family(family) -> None:
    """A TypeError unless ``family`` is a model family (a registered pytree following
    :class:`~jaxem.families.base.MixtureFamily` or ``SequenceFamily``); a ValueError for a negative or NaN ``reg_covar``."""
    if not isinstance(family, (MixtureFamily, SequenceFamily)):
        raise TypeError(f"family must be a jaxem model family such as "
                        f"jaxem.gaussian('full') or jaxem.kmeans() (see the protocols in "
                        f"jaxem.families.base), got {family!r}.")
    check_registered(family)
    reg = getattr(family, "reg_covar", None)
    if reg is not None and not isinstance(reg, jax.core.Tracer) and not float(reg) >= 0:
        raise ValueError(f"reg_covar must be a non-negative number, got {reg!r}.")


def as_data(x, name: str = "x", ndims: tuple[int, ...] = (2, 3)) -> jax.Array:
    """``x`` as a floating JAX array of ``ndims`` dimensions with no empty axis, or a
    clear error: scipy sparse (TypeError: densify it yourself, knowing the memory it
    takes), float16, complex, strings, objects, ragged lists (ValueError). Integers and
    booleans become the default float type."""
    return to_device(checked_data(x, name, ndims))


def to_device(x, n_rows: int | None = None) -> jax.Array:
    """A NumPy array on the default device; a JAX array as it is. ``jax.device_put``,
    not ``jnp.asarray``: the latter stages NumPy data through a second copy (peak twice
    the data; measured, 4*10**6 x 16 float32 on CPU).

    ``n_rows``: NumPy ``x (..., n, D)`` padded with zero rows to that many on the way,
    in blocks of :data:`PUT_ROWS` rows written into one zeroed device array, so that no
    padded copy is made on the host (it would be held beside the device's until the
    transfer ends: twice the data)."""
    if isinstance(x, jax.Array):
        return x
    n = x.shape[-2]
    if n_rows is None or n_rows == n:
        return jax.device_put(x)
    if n <= PUT_ROWS:  # small: one padded host copy costs nothing
        width = [(0, 0)] * x.ndim
        width[-2] = (0, n_rows - n)
        return jax.device_put(np.pad(x, width))
    out = jnp.zeros(x.shape[:-2] + (n_rows, x.shape[-1]),
                    jax.dtypes.canonicalize_dtype(x.dtype))
    # Whole blocks only (one compiled update), the last one ending at row n.
    for start in [*range(0, n - PUT_ROWS, PUT_ROWS), n - PUT_ROWS]:
        out = _put_rows(out, jax.device_put(x[..., start:start + PUT_ROWS, :]), start)
        out.block_until_ready()  # else every block's staging copy is alive at once
    return out


# Rows per transfer of to_device's padding path.
PUT_ROWS = 2**16


@functools.partial(jax.jit, donate_argnums=0)
def _put_rows(out, block, start):
    return jax.lax.dynamic_update_slice_in_dim(out, block, start, axis=-2)


def checked_data(x, name: str = "x", ndims: tuple[int, ...] = (2, 3)):
    """:func:`as_data`'s checks and conversions, on the host: a float NumPy array, or a
    JAX array as it is."""
    if type(x).__module__.startswith("scipy.sparse"):
        raise TypeError(f"{name} is a scipy sparse matrix, but jaxem fits dense arrays: "
                        f"pass {name}.toarray() (it needs n_samples * n_features floats "
                        "of memory).")
    if isinstance(x, (str, bytes)):
        raise ValueError(f"{name} must be a numeric array, got a string {x!r:.40}.")
    if not isinstance(x, jax.Array):
        try:
            x = np.asarray(x)
        except ValueError as e:  # ragged nested lists
            raise ValueError(f"{name} must be a rectangular numeric array: {e}") from None
    dtype = check_dtype(x.dtype, name)
    if x.ndim not in ndims:
        shapes = " or ".join({2: "(n_samples, n_features)",
                              3: "(n_datasets, n_samples, n_features)"}[d] for d in ndims)
        hint = f" (one feature: {name}.reshape(-1, 1))" if x.ndim == 1 else ""
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(x.shape)}{hint}.")
    if 0 in x.shape:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}; every axis needs at "
                         "least one entry.")
    if dtype.kind != "f":
        x = np.asarray(x, jax.dtypes.canonicalize_dtype(float))
    return x


def check_dtype(dtype, name: str = "x") -> np.dtype:
    """``dtype`` if it is boolean, integer, float32 or float64; else a ValueError."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise ValueError(f"{name} is complex ({dtype}); jaxem fits real data: pass its real "
                         "part, or real and imaginary parts as separate features.")
    if dtype.kind == "f" and dtype.itemsize < 4 or dtype == jnp.bfloat16:
        raise ValueError(f"{name} has dtype {dtype}, too imprecise for EM: convert it with "
                         f"{name}.astype(np.float32) (or float64).")
    if dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a numeric (integer or floating) array, got dtype "
                         f"{dtype}; convert it, e.g. np.asarray({name}, dtype=np.float32).")
    return dtype


@jax.jit
def _all_finite_used(x3, w3):
    """Whether every used row (weight > 0) is finite: one fused pass with no data-sized
    temporary (``x * 0`` is NaN where ``x`` is not finite), before the full
    :func:`_data_summary` that only data with NaN or inf need."""
    # In chunks of rows: over the whole array XLA's CPU backend materialised the masked
    # data (1x to 5x its bytes, measured), a chunk at a time it holds nothing.
    def nan_if_not(xc, wc, _):
        return jnp.sum(jnp.where(wc[:, None] > 0, xc * 0, 0.0))

    return jnp.isfinite(jnp.sum(jax.vmap(
        lambda x, w: rows.sum_rows(nan_if_not, x, w, PUT_ROWS, None))(x3, w3)))


@jax.jit
def _data_summary(x3, w3):
    """Reductions over the used rows (weight > 0): (any inf, any NaN, first row with every
    entry NaN, fewest used rows, first ``data set * D + feature`` NaN in every used row of
    its data set), -1 where there is none. In chunks of rows, so that no data-sized
    temporary is held: over the whole array, XLA's CPU backend materialised the masks
    (for 10**6 x 16 float32, 40 MB of temporaries before the feature count was added)."""
    n, d = x3.shape[1:]

    def fold(carry, xc, wc, rows_):
        inf, nan, first, seen = carry
        used = wc[:, None] > 0
        gaps = jnp.isnan(xc) & used
        empty = jnp.all(gaps, axis=1) & used[:, 0]
        return (inf | jnp.any(jnp.isinf(xc) & used), nan | jnp.any(gaps),
                jnp.minimum(first, jnp.min(jnp.where(empty, rows_, n))),
                seen + jnp.sum(used & ~gaps, axis=0, dtype=jnp.int32))

    start = (jnp.asarray(False), jnp.asarray(False), jnp.asarray(n, jnp.int32),
             jnp.zeros(d, jnp.int32))
    inf, nan, first, seen = jax.vmap(lambda x, w: rows.scan_rows(
        fold, start, x, w, PUT_ROWS))(x3, w3)
    first = jnp.min(first)
    never = ((seen == 0) & jnp.any(w3 > 0, axis=1)[:, None]).reshape(-1)  # (B * D,)
    return (jnp.any(inf), jnp.any(nan), jnp.where(first < n, first, -1),
            jnp.min(jnp.sum(w3 > 0, axis=1)), jnp.where(jnp.any(never), jnp.argmax(never), -1))


def _weights_summary(w3, xp=jnp):
    """``(all finite and >= 0, per data set: total <= 0, fewest rows of positive
    weight)``: with ``xp=np`` for weights on the host (nothing to compile), else
    :func:`_device_weights_summary`."""
    return (xp.all(xp.isfinite(w3) & (w3 >= 0)), xp.sum(w3, axis=1) <= 0,
            xp.min(xp.sum(w3 > 0, axis=1)))


# One compiled program for weights on the device (eager, each reduction compiled its own).
_device_weights_summary = jax.jit(_weights_summary)


def _check_data(x, weights, n_components, allow_nan=False, allow_empty=False):
    """Validate and bring to ``(B, n, D)`` data and ``(B, n)`` weights (``allow_nan``:
    NaN marks a missing entry, though not of every used row of a feature; ``allow_empty``:
    also every entry of a row)."""
    x3 = x if x.ndim == 3 else x[None]
    if weights is None:
        w3 = jnp.ones(x3.shape[:2], x.dtype)
    else:
        w = np.asarray(weights) if not isinstance(weights, jax.Array) else weights
        if np.dtype(w.dtype).kind not in "biuf":
            raise ValueError(f"weights must be real numbers, got dtype {w.dtype}.")
        host = isinstance(w, np.ndarray)  # summarised where it is: no copy, no compile
        with np.errstate(over="ignore"):  # too large for x's dtype: inf, refused below
            w = np.asarray(w, x.dtype) if host else jnp.asarray(w, x.dtype)
        w3 = w if w.ndim == 2 else w[None]
        if w3.shape != x3.shape[:2]:
            want = x3.shape[1:2] if x3.shape[0] == 1 else x3.shape[:2]  # one data set: (n,)
            raise ValueError(f"weights must have shape {want}, got {w.shape}.")
        summary = _weights_summary(w3, np) if host else _device_weights_summary(w3)
        ok, zero, fewest = (np.asarray(a) for a in summary)
        w3 = jnp.asarray(w3)
        if not ok:
            raise ValueError("weights must be finite and non-negative (no NaN, inf or "
                             "negative entries).")
        zero = np.flatnonzero(zero).tolist()
        if zero:
            raise ValueError(f"weights are all zero in data set(s) {zero}: at least "
                             f"n_components={n_components} rows need positive weight.")
    if bool(_all_finite_used(x3, w3)):  # one cheap pass in the common case
        bad_inf = bad_nan = False
        empty = never = -1
        n_rows = x3.shape[1] if weights is None else int(fewest)
    else:
        bad_inf, bad_nan, empty, n_rows, never = (
            np.asarray(a) for a in _data_summary(x3, w3))
    if allow_nan:  # missing entries are NaN; a row needs one observed value
        if bad_inf:
            raise ValueError("x contains infinity; remove those rows or give them weight 0.")
        if empty >= 0 and not allow_empty:
            raise ValueError(f"x has rows with every value missing (NaN), e.g. row "
                             f"{empty}: drop them or give them weight 0.")
        if never >= 0:  # its parameters would have nothing to be fitted from: NaN
            data_set, feature = divmod(int(never), x3.shape[2])
            where = f" in data set {data_set}" if x3.shape[0] > 1 else ""
            raise ValueError(f"x has a feature with every value missing (NaN){where}, "
                             f"e.g. feature {feature}: there is nothing to fit it from; "
                             "drop it.")
    elif bad_inf or bad_nan:
        raise ValueError("x contains NaN or infinity; remove or impute those rows (or give "
                         "them weight 0); Gaussian mixtures fit NaN as missing values.")
    if n_rows < n_components:
        raise ValueError(f"Expected at least n_components={n_components} samples with "
                         f"positive weight in every data set, got {n_rows}: lower "
                         "n_components or give more rows.")
    return x3, w3


def check_labels(labels, shape, n_components: int, family=None, name: str = "labels"):
    """Partial labels for rows of shape ``(n,)`` or ``(B, n)`` as int32 of that shape,
    or ``None``.

    A label is a component index ``0 .. n_components - 1`` or ``-1`` (unlabelled);
    integer-valued floats are accepted. A ValueError names what is wrong: a family with
    its own E-step, a shape other than the rows', a non-integer, an index out of range.
    """
    if labels is None:
        return None
    if family is not None and capability(family, "has_e_step"):
        raise ValueError(f"{name} (partial labels) are for mixture families, not "
                         f"{type(family).__name__}, which computes its own E-step.")
    what = "a component index, or -1 for unlabelled"
    try:
        y = np.asarray(labels)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular array of ints ({what}): {e}") from None
    shape = tuple(shape)
    if y.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (one per row of x, -1 for an "
                         f"unlabelled row), got {y.shape}.")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if np.any(bad):
            i = tuple(int(a) for a in np.argwhere(bad)[0])
            raise ValueError(f"{name} must be integers ({what}), got {y[i].item()!r} at "
                             f"index {i if len(i) > 1 else i[0]}.")
    elif y.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers ({what}), got dtype {y.dtype}.")
    bad = (y < -1) | (y >= n_components)
    if np.any(bad):
        i = tuple(int(a) for a in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be -1 (unlabelled) or a component index 0 .. "
                         f"{n_components - 1} (n_components={n_components}), got "
                         f"{y[i]:g} at index {i if len(i) > 1 else i[0]}.")
    return y.astype(np.int32)


def _param_shapes(family, shape, dtype, n_components):
    """The shapes and dtypes of one instance's parameters (a pytree of
    ``ShapeDtypeStruct``), from tracing the family's initialisation; memoised, since
    tracing the k-means code costs tens of milliseconds per call."""
    try:
        return _param_shapes_cached(family, shape, np.dtype(dtype), n_components)
    except TypeError:  # an unhashable family (an array in a field): trace each time
        return _param_shapes_cached.__wrapped__(family, shape, np.dtype(dtype), n_components)


@functools.lru_cache(maxsize=64)
def _param_shapes_cached(family, shape, dtype, n_components):
    init_fn = (family.init if capability(family, "has_init")
               else functools.partial(initialize, _complete(family)))
    x = jax.ShapeDtypeStruct(shape, dtype)
    return jax.eval_shape(lambda x: init_fn(jax.random.key(0), x, jnp.ones(shape[0], dtype),
                                            n_components, "random"), x)


def _broadcast_init(family, params, x, n_init, n_components):
    """Give explicit starting parameters the leading ``(B, n_init)`` axes."""
    reference = _param_shapes(family, x.shape[1:], x.dtype, n_components)
    batch = (x.shape[0], n_init)

    def expand(a, ref):  # the family's dtype for each leaf (ints stay ints)
        a = jnp.asarray(a, ref.dtype)
        lead = a.ndim - len(ref.shape)
        if a.shape[lead:] != ref.shape or lead > 2:
            raise ValueError(f"Starting parameters have shape {a.shape}; expected "
                             f"{ref.shape}, optionally with leading (n_init,) or "
                             f"(n_datasets, n_init) axes.")
        if lead == 1:
            a = a[None]
        return jnp.broadcast_to(a, batch + ref.shape)

    try:
        return jax.tree.map(expand, params, reference)
    except ValueError as e:
        if "Starting parameters" in str(e):
            raise
        raise ValueError("Starting parameters do not have the family's structure "
                         f"{jax.tree.structure(reference)}.") from e
