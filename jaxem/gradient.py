"""Gradient ascent on the marginal log-likelihood with optax: the baseline EM is compared with.

The objective is the exact mean per-sample log-likelihood of the data,
``sum_n w_n logsumexp_k log_joint(params, x)[n, k] / sum_n w_n``, differentiated by
``jax.grad``. Constraints are removed by the family's reparameterisation
(``family.to_unconstrained`` / ``family.from_unconstrained``: softmax logits for the
mixing weights, log-diagonal Cholesky factors or log variances for the covariances), so
any ``optax.GradientTransformation`` applies: sgd with or without momentum, adam,
lbfgs (whose line search gets ``value_fn``) ...

:func:`run` is one instance, the analogue of :func:`jaxem.em.run`, and returns the same
:class:`jaxem.em.EMResult`. :func:`fit_gradient` batches it exactly as :func:`jaxem.fit`
batches EM (restarts and data sets vmapped in one jit, the same data checks, inits and
best-restart selection), and adds a vmapped axis for a learning-rate sweep.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import threading
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxem import batch
from jaxem.em import EMResult
from jaxem.families.base import all_finite, log_prior, tree_where

Array = jax.Array
PyTree = Any


# A line search stops after this many trials whatever its own state says (see
# bounded_linesearch): above optax's own defaults, 20 (lbfgs) and 30 (backtracking).
MAX_LINESEARCH_STEPS = 32
_LINESEARCH_MODULE = "optax._src.linesearch"
_patch_lock = threading.RLock()


@contextlib.contextmanager
def bounded_linesearch(max_steps: int):
    """While tracing inside this block, every ``lax.while_loop`` of optax's line searches
    also stops after ``max_steps`` iterations.

    Why: vmapped over restarts, optax's zoom line search (``optax.lbfgs``) can loop for
    ever on one member. Seen on 2,000 points in four blobs, 4 restarts, once every
    restart sat at the optimum (float32, gradient ~1e-7): one member's search bisected
    its step to 1e-30 and on, past ``max_linesearch_steps`` (count 8,600) with its
    ``failed`` flag never raised, and a vmapped ``while_loop`` runs until its slowest
    member stops, so the whole batch hung. The same starts one at a time, or one step
    per jitted call, stop at 20 (optax's code raises the flag there: the fused, nested
    vmapped loop is probably miscompiled by XLA:CPU; it depends on key and max_iter). An extra counter in the loop's own condition bounds
    every member, whatever the line search's state; a member cut off this way keeps
    the last step it tried, which :func:`run` checks for finiteness as any other.
    Only optax's line-search module is affected, and only while this block traces.
    """
    module = sys.modules.get(_LINESEARCH_MODULE)
    if module is None or not hasattr(module, "jax"):
        yield
        return

    def while_loop(cond_fun, body_fun, init_val):
        def cond(carry):
            return cond_fun(carry[0]) & (carry[1] < max_steps)

        def body(carry):
            return body_fun(carry[0]), carry[1] + 1

        return jax.lax.while_loop(cond, body, (init_val, jnp.zeros((), jnp.int32)))[0]

    shim = _Shim(jax, lax=_Shim(jax.lax, while_loop=while_loop))
    with _patch_lock:
        original = module.jax
        module.jax = shim
        try:
            yield
        finally:
            module.jax = original


class _Shim:
    """A module's attributes, with some replaced."""

    def __init__(self, module, **replaced):
        self.__dict__.update(replaced, _module=module)

    def __getattr__(self, name):
        return getattr(self._module, name)


def mean_log_likelihood(family, params: PyTree, x: Array, weights: Array) -> Array:
    """``sum_n w_n log p(x_n) / sum_n w_n`` with ``log p(x_n)`` the log-sum-exp of
    ``family.log_joint(params, x)`` (``x (n, D)``, ``weights (n,)``): differentiable."""
    ll_rows = jax.nn.logsumexp(family.log_joint(params, x), axis=-1)
    return jnp.sum(jnp.where(weights > 0, weights * ll_rows, 0.0)) / jnp.sum(weights)


def check_differentiable(family) -> None:
    """Raise ``TypeError`` unless ``family`` has the unconstrained round trip that
    gradient ascent optimises over."""
    if not (hasattr(family, "to_unconstrained") and hasattr(family, "from_unconstrained")):
        name = type(family).__name__
        hint = (" k-means is hard EM: its objective (minus the distance to the nearest "
                "centre) is piecewise and has no marginal likelihood to climb; fit it "
                "with jaxem.fit, or use jaxem.gaussian('spherical') for a soft version."
                if name == "KMeans" else "")
        raise TypeError(f"Gradient ascent needs a family with to_unconstrained and "
                        f"from_unconstrained methods; {name} has none.{hint}")


def run(family, params: PyTree, x: Array, weights: Array | None = None,
        key: Array | None = None, *, optimizer: optax.GradientTransformation,
        max_iter: int = 1000, tol: float | Array = 0.0,
        batch_size: int | None = None,
        max_linesearch_steps: int = MAX_LINESEARCH_STEPS) -> EMResult:
    """Gradient ascent from ``params`` on one data set (pure; jit and vmap it freely).

    One iteration evaluates EM's objective on the full data at the current parameters
    (recorded in ``trace``: the mean log-likelihood, plus ``log_prior`` over the sum of
    weights for a family with a prior) and takes one optimiser step, so, as in :func:`jaxem.em.run`,
    the returned ``params`` are one step past ``log_likelihood``.

    Args:
      family: a family with ``log_joint`` and ``to_/from_unconstrained``.
      params: starting parameters.
      x: ``(n_samples, n_features)``; weights: ``(n_samples,)``, 0 for padding.
      key: for mini-batches (unused when ``batch_size`` is None).
      optimizer: any optax transformation (minimising minus the mean log-likelihood).
      max_iter: steps (static: the length of ``trace``).
      tol: if ``> 0``, stop when the mean log-likelihood changed by at most ``tol``
        (EM's rule); ``0`` runs exactly ``max_iter`` steps.
      batch_size: rows per step drawn (with replacement, with probability proportional to
        ``weights``) for stochastic gradients; ``None`` is full batch. The trace is
        still the full-data log-likelihood (one extra forward pass per step).
      max_linesearch_steps: a hard bound on the iterations of any optax line search
        inside ``optimizer`` (see :func:`bounded_linesearch`).

    ``failed`` is set when the parameters, the gradient or the log-likelihood become
    non-finite (divergence); the last parameters with a finite log-likelihood are kept.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}.")
    check_differentiable(family)
    n = x.shape[0]
    if weights is None:
        weights = jnp.ones(n, x.dtype)
    optimizer = optax.with_extra_args_support(optimizer)
    dtype = jnp.result_type(*jax.tree.leaves(params))

    w_total = jnp.sum(weights)

    def loss(u, xb, wb):  # minus EM's objective: MAP for a family with a prior
        params = family.from_unconstrained(u)
        return -(mean_log_likelihood(family, params, xb, wb)
                 + log_prior(family, params) / w_total)

    u0 = family.to_unconstrained(params)
    init = (u0, optimizer.init(u0), params, jnp.zeros((), jnp.uint32) if key is None else key,
            EMResult(params=params, log_likelihood=jnp.array(-jnp.inf, dtype),
                     trace=jnp.full((max_iter,), jnp.nan, dtype),
                     n_iter=jnp.array(0, jnp.int32), converged=jnp.array(False),
                     failed=jnp.array(False)))

    def cond(state):
        res = state[-1]
        return (res.n_iter < max_iter) & ~res.converged & ~res.failed

    def body(state):
        u, opt_state, prev_params, key, res = state
        if batch_size is None:
            xb, wb = x, weights
            value, grad = jax.value_and_grad(loss)(u, xb, wb)
            objective = -value
        else:
            key, sub = jax.random.split(key)
            idx = jax.random.choice(sub, n, (batch_size,), p=weights / jnp.sum(weights))
            xb, wb = x[idx], jnp.ones(batch_size, x.dtype)
            value, grad = jax.value_and_grad(loss)(u, xb, wb)
            objective = -loss(u, x, weights)
        ll = objective - log_prior(family, family.from_unconstrained(u)) / w_total
        with bounded_linesearch(max_linesearch_steps):
            updates, new_opt_state = optimizer.update(
                grad, opt_state, u, value=value, grad=grad,
                value_fn=lambda v: loss(v, xb, wb))
        new_u = optax.apply_updates(u, updates)
        new_params = family.from_unconstrained(new_u)
        ll_ok = jnp.isfinite(ll) & jnp.isfinite(value) & all_finite(grad)
        previous = jnp.where(res.n_iter > 0, res.trace[jnp.maximum(res.n_iter - 1, 0)],
                             -jnp.inf)
        ok = ll_ok & all_finite(new_u) & all_finite(new_params)
        # current params: finite log-likelihood; new params: only finite so far.
        current = res.params
        kept = tree_where(ok, new_params, tree_where(ll_ok, current, prev_params))
        return (new_u, new_opt_state, current, key, EMResult(
            params=kept,
            log_likelihood=jnp.where(ll_ok, ll, res.log_likelihood),
            trace=res.trace.at[res.n_iter].set(objective),
            n_iter=res.n_iter + 1,
            converged=ok & (tol > 0) & (jnp.abs(objective - previous) <= tol),
            failed=~ok,
        ))

    return jax.lax.while_loop(cond, body, init)[-1]


def fit_gradient(family, x, *, n_components: int, key: Array,
                 optimizer: optax.GradientTransformation | Callable[..., Any],
                 learning_rate=None, n_init: int = 1, weights=None, max_iter: int = 1000,
                 tol: float = 0.0, init: str | PyTree = "kmeans",
                 batch_size: int | None = None,
                 max_linesearch_steps: int = MAX_LINESEARCH_STEPS) -> batch.FitResult:
    """Fit ``family`` by gradient ascent, batched as :func:`jaxem.fit` batches EM.

    Args:
      family: e.g. ``jaxem.gaussian("full")`` (not k-means: see the error it raises).
      x: ``(n_samples, n_features)`` or ``(n_datasets, n_samples, n_features)``.
      n_components, key, n_init, weights, init: as in :func:`jaxem.fit` (the same
        checks, the same starting points for the same ``key``).
      optimizer: an ``optax.GradientTransformation`` (``optax.adam(0.05)``,
        ``optax.lbfgs()`` ...), used as is; or an optax optimiser *factory* whose first
        argument is the learning rate (``optax.adam``, ``functools.partial(optax.sgd,
        momentum=0.9)`` -- define it once: the factory is a compile-time constant),
        built inside the jit with ``optax.inject_hyperparams`` so that
      learning_rate: (factory only) a float, or a 1-D array for a sweep, is traced data:
        new values never recompile, and a sweep is one vmapped program whose results
        gain a leading ``(n_learning_rates,)`` axis.
      max_iter, tol, batch_size, max_linesearch_steps: see :func:`run` (``tol=0``:
        exactly ``max_iter`` steps).

    Compilation is cached on what the optimiser computes, not on its identity: a fresh
    ``optax.lbfgs()`` with the same settings reuses the compiled program.

    Returns a :class:`jaxem.FitResult` (``restarts`` holds every restart). It does not
    raise when restarts diverge: ``failed`` flags them (per restart in ``restarts``;
    at the top level only when every restart failed), and they never win the best-of
    selection.

    >>> import jax, optax, jaxem
    >>> x = jaxem.datasets.load_faithful()
    >>> res = jaxem.fit_gradient(jaxem.gaussian("full"), x, n_components=2, n_init=3,
    ...                          key=jax.random.key(0), optimizer=optax.adam,
    ...                          learning_rate=[0.01, 0.1], max_iter=50, init="random")
    >>> res.log_likelihood.shape, res.restarts.trace.shape
    ((2,), (2, 3, 50))
    """
    check_differentiable(family)
    optimizer, learning_rate = _check_optimizer(optimizer, learning_rate)
    max_iter, tol = batch.check_int("max_iter", max_iter), batch.check_tol(tol)
    max_linesearch_steps = batch.check_int("max_linesearch_steps", max_linesearch_steps)
    if batch_size is not None:
        batch_size = batch.check_int("batch_size", batch_size)
    x = batch.as_data(x)
    single = x.ndim == 2
    x, weights, keys, method, params0 = batch.prepare(family, x, weights, key, n_init,
                                                       n_components, init)
    if learning_rate is not None:
        learning_rate = jnp.asarray(learning_rate, x.dtype)
    result = _fit_gradient(family, x, weights, keys, params0, tol, learning_rate,
                           optimizer=ByValue(optimizer), n_components=n_components,
                           method=method, max_iter=max_iter, batch_size=batch_size,
                           max_linesearch_steps=max_linesearch_steps)
    if single:  # drop the data-set axis, which follows the sweep axis if any
        axis = 1 if learning_rate is not None and learning_rate.ndim == 1 else 0
        result = jax.tree.map(lambda a: jnp.take(a, 0, axis=axis), result)
    return result


def _check_optimizer(optimizer, learning_rate):
    """``(optimizer, learning_rate as a NumPy array or None)``, or a clear error for a
    factory without a learning rate, a learning rate that is not positive, or an object
    that is not optax's."""
    if isinstance(optimizer, optax.GradientTransformation):
        if learning_rate is not None:
            raise ValueError("learning_rate is for an optimiser factory such as optax.adam; "
                             "a built GradientTransformation already has its own.")
        if _climbs(optimizer):
            raise ValueError("optimizer moves uphill on a test problem: its learning rate "
                             "is negative. Give a positive learning rate.")
        return optimizer, None
    if isinstance(optimizer, type) or not callable(optimizer):
        raise TypeError(f"optimizer must be an optax.GradientTransformation such as "
                        f"optax.adam(0.05), or a factory such as optax.adam with "
                        f"learning_rate=..., got {optimizer!r}.")
    name = getattr(optimizer, "__name__", repr(optimizer))
    if learning_rate is None:
        raise ValueError(f"optimizer={name} is an optimiser factory, not a transformation: "
                         f"call it (optimizer={name}(...), e.g. optax.lbfgs() or "
                         "optax.adam(0.05)), or keep the factory and give learning_rate.")
    lr = np.asarray(learning_rate)
    if lr.dtype.kind not in "iuf" or lr.ndim > 1 or lr.size == 0:
        raise ValueError("learning_rate must be a positive number or a 1-D array of them "
                         f"(a sweep), got {learning_rate!r}.")
    if not np.all(np.isfinite(lr) & (lr > 0)):
        raise ValueError(f"learning_rate must be positive and finite, got {lr.tolist()}: "
                         "a negative rate descends the log-likelihood, 0 never moves.")
    try:
        built = optimizer(float(lr.flat[0]))
    except Exception as e:  # not a factory of the learning rate
        raise TypeError(f"optimizer={name} is not an optax factory of the learning rate: "
                        f"{name}({float(lr.flat[0])}) raised {e!r}.") from None
    if not isinstance(built, optax.GradientTransformation):
        raise TypeError(f"optimizer={name}(learning_rate) must return an "
                        f"optax.GradientTransformation, got {type(built).__name__}.")
    return optimizer, lr


_CLIMBS: dict = {}  # ByValue(optimizer) -> the probe's answer


def _climbs(optimizer) -> bool:
    """Whether ``optimizer``'s first step on ``f(u) = u**2 / 2`` at ``u = 1`` goes uphill
    (a negative learning rate); False when the probe does not apply to it. Run op by op
    (compiling a line search's loops would take seconds) and cached per setting."""
    key = ByValue(optimizer)
    if key not in _CLIMBS:
        u = jnp.ones((), jnp.float32)
        try:
            with jax.disable_jit():
                opt = optax.with_extra_args_support(optimizer)
                updates, _ = opt.update(u, opt.init(u), u, value=0.5 * u * u, grad=u,
                                        value_fn=lambda v: 0.5 * v * v)
            _CLIMBS[key] = bool(updates > 0)
        except Exception:  # e.g. a transformation that needs the parameters' structure
            _CLIMBS[key] = False
    return _CLIMBS[key]


class ByValue:
    """A static argument of ``jit`` compared by what it computes, not by identity.

    ``optax.lbfgs()`` builds new closures at every call, so as a static argument it
    would recompile every fit. Two objects with equal :func:`fingerprint` (the same code,
    and equal constants in their closures, recursively) compile once.
    """

    def __init__(self, value):
        self.value = value
        self._key = fingerprint(value)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, ByValue) and self._key == other._key


def fingerprint(obj, _seen=None):
    """A hashable value equal for two Python objects that compute the same thing:
    functions by code, defaults and closure contents; tuples, lists, dicts and
    ``functools.partial`` by their parts; arrays by dtype, shape and bytes; anything else
    hashable by itself, and the rest by identity (never equal to another object)."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return ("cycle",)
    if obj is None or isinstance(obj, (bool, int, str, bytes, type, types.ModuleType)):
        return obj
    if isinstance(obj, float):
        return ("float", obj.hex())
    seen = seen | {id(obj)}
    rec = functools.partial(fingerprint, _seen=seen)
    if isinstance(obj, types.FunctionType):
        cells = tuple(rec(c.cell_contents) if _filled(c) else ("empty",)
                      for c in obj.__closure__ or ())
        return ("fn", obj.__code__, id(obj.__globals__), rec(obj.__defaults__),
                rec(obj.__kwdefaults__), cells)
    if isinstance(obj, types.MethodType):
        return ("method", rec(obj.__func__), rec(obj.__self__))
    if isinstance(obj, functools.partial):
        return ("partial", rec(obj.func), rec(obj.args), rec(obj.keywords))
    if isinstance(obj, (tuple, list)):
        return (type(obj), tuple(rec(a) for a in obj))
    if isinstance(obj, dict):
        return (dict, tuple(sorted(((repr(k), rec(v)) for k, v in obj.items()),
                                   key=lambda kv: kv[0])))
    if isinstance(obj, (np.ndarray, np.generic, jax.Array)) and not isinstance(
            obj, jax.core.Tracer):
        a = np.asarray(obj)
        if a.dtype.kind in "biufc":
            return ("array", a.dtype.str, a.shape, a.tobytes())
    try:
        hash(obj)
        return ("object", type(obj), obj)
    except TypeError:
        return ("id", id(obj), obj.__class__)


def _filled(cell) -> bool:
    try:
        cell.cell_contents
        return True
    except ValueError:  # a closure cell not yet assigned
        return False


@functools.partial(jax.jit, static_argnames=("optimizer", "n_components", "method",
                                             "max_iter", "batch_size", "max_linesearch_steps"))
def _fit_gradient(family, x, weights, keys, params0, tol, learning_rate, *, optimizer,
                  n_components, method, max_iter, batch_size, max_linesearch_steps):
    """As :func:`jaxem.batch.fit`, with an optional leading learning-rate axis;
    ``optimizer`` is a :class:`ByValue`."""
    optimizer = optimizer.value

    def fit_at(lr):
        opt = optimizer if lr is None else optax.inject_hyperparams(optimizer)(learning_rate=lr)

        def driver(params, x, w, key, axis_name):
            del axis_name  # never sharded
            return run(family, params, x, w, key, optimizer=opt, max_iter=max_iter, tol=tol,
                       batch_size=batch_size, max_linesearch_steps=max_linesearch_steps)

        return batch.run_restarts(family, driver, x, weights, keys, params0, n_components, method)

    if learning_rate is not None and learning_rate.ndim == 1:
        return jax.vmap(fit_at)(learning_rate)
    return fit_at(learning_rate)
