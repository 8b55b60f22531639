"""EM versus gradient ascent from identical starting points: ``jaxem.compare``.

Every method (EM and each optimiser) starts every restart from the same parameters, runs
batched over the restarts in one jitted program, and is timed after compilation (the
compile time is reported separately). Seconds are the batch's wall time per iteration
times the iteration: all ``n_init`` restarts run together, so a restart's time is the
time of the batched step, not of one restart alone.
"""
from __future__ import annotations

import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxem import batch
from jaxem.batch import initial_params  # noqa: F401  (also public here)
from jaxem.gradient import check_differentiable, fit_gradient

PyTree = Any


class MethodComparison(NamedTuple):
    """One method's restarts (``R = n_init``, ``T = max_iter``); numpy arrays."""

    trace: np.ndarray  # (R, T) mean log-likelihood per iteration, NaN after a stop
    seconds: np.ndarray  # (T,) wall-clock seconds at the end of each iteration
    iterations_to_best: np.ndarray  # (R,) iterations to within eps of the best; inf: never
    seconds_to_best: np.ndarray  # (R,) the same in seconds; inf: never
    reached: np.ndarray  # (R,) bool: got within eps of the best
    fraction_reached: float  # share of restarts that reached it
    final_log_likelihood: np.ndarray  # (R,)
    failed: np.ndarray  # (R,) bool: diverged (non-finite), never counted as reaching
    run_seconds: float  # the whole batched run, compiled
    compile_seconds: float  # first call minus a second, compiled, call
    result: batch.FitResult  # everything the fit returned


class Comparison(NamedTuple):
    methods: dict  # name -> MethodComparison; "EM" first
    best_log_likelihood: float  # the best mean log-likelihood any method found
    eps: float
    initial_params: PyTree  # (R, ...) the shared starting points


def _timed(fn, repeat):
    """``(output, best of repeat compiled runs, first call minus that)``."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return out, best, max(first - best, 0.0)


def compare(family, x, *, n_components: int, key: jax.Array, optimizers: dict,
            n_init: int = 8, max_iter: int = 200, eps: float = 1e-3, weights=None,
            init: str | PyTree = "kmeans", tol: float = 0.0,
            batch_size: int | None = None, repeat: int = 1) -> Comparison:
    """Run EM and each optimiser from identical starting points and compare them.

    Args:
      family: e.g. ``jaxem.gaussian("full")``; x: ``(n_samples, n_features)``.
      optimizers: name -> an ``optax.GradientTransformation`` or a pair
        ``(factory, learning_rate)`` as :func:`jaxem.fit_gradient` takes them.
      n_init: restarts, shared by every method; max_iter, tol: for every method
        (``tol=0``: fixed iterations, EM may still stop at an exact fixed point).
      eps: "reached the best" means a mean per-sample log-likelihood within ``eps`` of
        the best final value of any non-failed restart of any method.
      batch_size: mini-batch size for the gradient methods (EM is always full batch).
      repeat: timed runs per method after the compiling one; the fastest is kept.

    >>> import jax, optax, jaxem
    >>> x = jaxem.datasets.load_faithful()
    >>> cmp = jaxem.compare(jaxem.gaussian("diag"), x, n_components=2, n_init=2,
    ...                     key=jax.random.key(0), max_iter=30,
    ...                     init="random", optimizers={"adam": (optax.adam, 0.1)})
    >>> list(cmp.methods), cmp.methods["adam"].trace.shape
    (['EM', 'adam'], (2, 30))
    """
    check_differentiable(family)
    if jnp.ndim(x) != 2:
        raise ValueError("compare takes one data set, x of shape (n_samples, n_features).")
    params0 = initial_params(family, x, n_components=n_components, key=key, n_init=n_init,
                             weights=weights, init=init)
    common = dict(n_components=n_components, key=key, n_init=n_init, weights=weights,
                  max_iter=max_iter, tol=tol, init=params0)
    runs = {"EM": lambda: batch.fit(family, x, check=False, **common)}
    for name, spec in optimizers.items():
        # A GradientTransformation is a NamedTuple too: test for it first.
        plain = isinstance(spec, optax.GradientTransformation) or not isinstance(spec, tuple)
        opt, lr = (spec, None) if plain else spec
        runs[name] = (lambda opt=opt, lr=lr: fit_gradient(
            family, x, optimizer=opt, learning_rate=lr, batch_size=batch_size, **common))
    timed = {name: _timed(run, repeat) for name, run in runs.items()}

    finals = [np.where(np.asarray(r.restarts.failed), -np.inf,
                       np.asarray(r.restarts.log_likelihood)) for r, _, _ in timed.values()]
    best = float(np.max(np.stack(finals)))
    methods = {}
    for name, (res, run_s, compile_s) in timed.items():
        trace = np.asarray(res.restarts.trace, dtype=np.float64)
        failed = np.asarray(res.restarts.failed)
        steps = max(int(np.max(np.asarray(res.restarts.n_iter))), 1)
        seconds = np.arange(1, max_iter + 1) * (run_s / steps)
        hit = np.nan_to_num(trace, nan=-np.inf) >= best - eps
        hit &= ~failed[:, None]
        reached = hit.any(axis=1)
        first = np.argmax(hit, axis=1)
        iters = np.where(reached, first + 1.0, np.inf)
        secs = np.where(reached, seconds[first], np.inf)
        methods[name] = MethodComparison(
            trace, seconds, iters, secs, reached, float(np.mean(reached)),
            np.asarray(res.restarts.log_likelihood), failed, run_s, compile_s, res)
    return Comparison(methods, best, eps, params0)
