"""Pictures of fits: covariance ellipses, log-likelihood traces, BIC/AIC against K, and
the number of live components of a trimmed fit.

Every function draws on a matplotlib ``Axes`` it is given and returns it. matplotlib is
an optional dependency (``pip install 'jaxem[plot]'``), imported only when a function
draws, so ``import jaxem`` never imports it.

>>> import matplotlib; matplotlib.use("Agg")
>>> import matplotlib.pyplot as plt
>>> import jax, jaxem
>>> x = jaxem.datasets.load_faithful()
>>> result = jaxem.fit(jaxem.gaussian("full"), x, n_components=2, n_init=4,
...                    key=jax.random.key(0))
>>> fig, (left, right) = plt.subplots(1, 2)
>>> _ = jaxem.plot.ellipses(left, result, x=x)
>>> len(left.patches), len(right.lines)          # one ellipse per component
(2, 0)
>>> _ = jaxem.plot.traces(right, result)
>>> len(right.lines)                             # one trace per restart
4
>>> plt.close(fig)
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jaxem.batch import FitResult
from jaxem.em import EMResult
from jaxem.families.gaussian import COVARIANCE_TYPES

_INSTALL = "jaxem.plot needs matplotlib: pip install 'jaxem[plot]' (or pip install matplotlib)."


def _matplotlib():
    """``matplotlib.patches`` on first use, or an ImportError that says what to install."""
    try:
        import matplotlib.patches as patches
    except ImportError as e:
        raise ImportError(_INSTALL) from e
    return patches


def _check_axes(ax) -> None:
    _matplotlib()
    from matplotlib.axes import Axes

    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes (e.g. fig, ax = plt.subplots()), "
                        f"got {type(ax).__name__}.")


# -- ellipses -------------------------------------------------------------------------
def _gaussian_parts(model, covariance_type):
    """``(weights (K,), means (K, 2), covariances (K, 2, 2), live (K,) bool)`` of one
    Gaussian mixture given as an estimator, a result or parameters."""
    from jaxem.families.gaussian import Gaussian
    from jaxem.trim import TrimmedParams
    from jaxem.select import MaskedParams

    active = None
    if hasattr(model, "means_") and hasattr(model, "covariances_"):  # a fitted estimator
        w, mu = np.asarray(model.weights_), np.asarray(model.means_)
        cov, ct = np.asarray(model.covariances_), model.covariance_type
    else:
        if isinstance(model, (FitResult, EMResult)):
            model = model.params
        if isinstance(model, (TrimmedParams, MaskedParams)):
            active = np.asarray(model.active) > 0
            model = model.params
        if not all(hasattr(model, f) for f in ("weights", "means", "precisions_cholesky")):
            raise TypeError("ellipses draws a Gaussian mixture: a fitted GaussianMixture, a "
                            "jaxem.fit result, or GaussianParams (optionally trimmed), got "
                            f"{type(model).__name__}.")
        w, mu = np.asarray(model.weights), np.asarray(model.means)
        prec = np.asarray(model.precisions_cholesky)
        if mu.ndim != 2:
            raise ValueError(f"ellipses draws one fit, but the means have shape {mu.shape}: "
                             "pick one restart or data set first (e.g. result.params, or "
                             "jax.tree.map(lambda a: a[i], result.restarts.params)).")
        ct = covariance_type or _infer_covariance_type(prec, *mu.shape)
        if ct not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {', '.join(COVARIANCE_TYPES)}, "
                             f"got {ct!r}.")
        cov = np.asarray(Gaussian(ct).covariances(model), dtype=np.float64)
    if mu.ndim != 2 or mu.shape[1] != 2:
        raise ValueError(f"ellipses draws 2-D fits (means of shape (K, 2)), got means of "
                         f"shape {mu.shape}: project the data and the fit onto 2 features.")
    k = mu.shape[0]
    full = {"full": lambda: cov, "tied": lambda: np.broadcast_to(cov, (k, 2, 2)),
            "diag": lambda: np.stack([np.diag(c) for c in cov]),
            "spherical": lambda: cov[:, None, None] * np.eye(2)}[ct]()
    live = (w > 0) if active is None else active & (w > 0)
    return w, mu, full, live


def _infer_covariance_type(prec, k, d) -> str:
    """The covariance type of a ``precisions_cholesky`` array. A ``(D, D)`` array of
    ``D == K`` components is a tied factor when it has a zero or negative entry (the
    M-step's factor is triangular) and diag factors (all positive) otherwise."""
    if prec.ndim == 3:
        return "full"
    if prec.ndim == 1:
        return "spherical"
    if prec.shape == (d, d) and (k != d or np.any(prec <= 0)):
        return "tied"
    if prec.shape == (k, d) and (k != d or np.all(prec > 0)):
        return "diag"
    raise ValueError(f"precisions_cholesky of shape {prec.shape} does not fit {k} "
                     f"components in {d} dimensions as any covariance type: pass "
                     "covariance_type=.")


def ellipses(ax, model_or_params: Any, *, x=None, covariance_type: str | None = None,
             n_std: float | tuple[float, ...] = 2.0, color=None, means: bool = True,
             alpha_by_weight: bool = False, **kwargs):
    """Draw a 2-D Gaussian mixture: one covariance ellipse per live component and
    ``n_std`` (e.g. ``(1, 2)`` draws two per component), the means as ``+``, and the
    data ``x (n, 2)`` as points underneath if given.

    Args:
      ax: a matplotlib ``Axes``.
      model_or_params: a fitted :class:`jaxem.GaussianMixture` (or scikit-learn's), a
        :func:`jaxem.fit` result or :class:`~jaxem.em.EMResult` of one data set, or
        ``GaussianParams`` of one fit; a trimmed or masked fit draws its live
        components only (weight-0 components are never drawn).
      covariance_type: the parameters' covariance type (e.g. ``family.covariance_type``);
        by default read from the shape of ``precisions_cholesky`` (with 2 components, a
        ``(2, 2)`` factor is ``tied`` when triangular, else ``diag``).
      color: one colour for every ellipse; ``None`` cycles ``C0``, ``C1``, …
      alpha_by_weight: make an ellipse's opacity follow its component's weight.
      kwargs: passed to :class:`matplotlib.patches.Ellipse` (e.g. ``lw``, ``ls``).

    Returns ``ax``.
    """
    _check_axes(ax)
    patches = _matplotlib()
    w, mu, cov, live = _gaussian_parts(model_or_params, covariance_type)
    levels = np.atleast_1d(np.asarray(n_std, dtype=float))
    if levels.ndim != 1 or not np.all(np.isfinite(levels) & (levels > 0)):
        raise ValueError(f"n_std must be a positive number or a sequence of them, got {n_std!r}.")
    if x is not None:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"x must have shape (n_samples, 2), got {x.shape}.")
        ax.scatter(x[:, 0], x[:, 1], s=4, color="0.6", zorder=1)
    top = np.max(w[live]) if live.any() else 1.0
    for i, k in enumerate(np.flatnonzero(live)):
        vals, vecs = np.linalg.eigh(cov[k])  # ascending: the last is the long axis
        angle = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))
        c = color if color is not None else f"C{i % 10}"
        opts = {"fill": False, "lw": 1.2, "color": c, "zorder": 2, **kwargs}
        if alpha_by_weight:
            opts["alpha"] = float(0.25 + 0.75 * w[k] / top)
        for level in levels:
            width, height = 2 * level * np.sqrt(np.maximum(vals[::-1], 0.0))
            ax.add_patch(patches.Ellipse(mu[k], width, height, angle=angle, **opts))
    if means and live.any():
        ax.plot(mu[live, 0], mu[live, 1], "+", color=color or "k", ms=8, zorder=3)
    if live.any():
        ax.update_datalim(mu[live])
    ax.autoscale_view()
    return ax


# -- traces ---------------------------------------------------------------------------
def traces(ax, result, *, dataset: int | None = None, best: bool = True):
    """The per-iteration mean log-likelihood of every restart (one line each; the best
    restart bold and black when ``best``), from a :func:`jaxem.fit` result or an
    :class:`~jaxem.em.EMResult` (one instance or a batch of restarts).

    ``dataset``: with a batch of data sets, the one to draw. Returns ``ax``.
    """
    _check_axes(ax)
    best_index = None
    if isinstance(result, FitResult):
        trace = np.asarray(result.restarts.trace)
        best_index = np.asarray(result.best)
        failed = np.asarray(result.restarts.failed)
    elif isinstance(result, EMResult):
        trace = np.asarray(result.trace)
        failed = np.asarray(result.failed)
    else:
        raise TypeError(f"traces draws a jaxem.fit result or an EMResult, got "
                        f"{type(result).__name__}.")
    if dataset is not None:
        trace, failed = trace[dataset], failed[dataset]
        best_index = None if best_index is None else best_index[dataset]
    if trace.ndim == 1:
        trace, failed = trace[None], np.atleast_1d(failed)
        best_index = 0 if best_index is None else best_index
    if trace.ndim != 2:
        raise ValueError(f"traces has shape {trace.shape}: a batch of data sets; pass "
                         "dataset= to pick one.")
    if best_index is None:  # an EMResult of restarts: the highest final value
        last = np.array([t[np.isfinite(t)][-1] if np.isfinite(t).any() else -np.inf
                         for t in trace])
        best_index = int(np.argmax(np.where(failed, -np.inf, last)))
    best_index = int(best_index)
    it = np.arange(1, trace.shape[1] + 1)
    for r, t in enumerate(trace):
        if best and r == best_index:
            continue
        ax.plot(it, t, color="C0", alpha=0.35, lw=0.8, ls="--" if failed[r] else "-")
    if best:
        ax.plot(it, trace[best_index], color="k", lw=2, label=f"best restart ({best_index})")
        ax.legend(fontsize="small", loc="lower right")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean log-likelihood per sample")
    return ax


# -- model selection ------------------------------------------------------------------
def criterion_curve(ax, selection, *, criterion: str = "bic", dataset: int | None = None):
    """BIC and/or AIC against the number of components from
    :func:`jaxem.select_n_components`, the minimum of each curve marked (for the
    criterion the selection used, that is ``selection.best``).

    Args:
      criterion: ``"bic"``, ``"aic"`` or ``"both"``.
      dataset: with a batch of data sets, the one to draw.

    Returns ``ax``.
    """
    _check_axes(ax)
    if criterion not in ("bic", "aic", "both"):
        raise ValueError(f"criterion must be 'bic', 'aic' or 'both', got {criterion!r}.")
    if not all(hasattr(selection, f) for f in ("n_components", "bic", "aic")):
        raise TypeError(f"criterion_curve draws a jaxem.select_n_components result, got "
                        f"{type(selection).__name__}.")
    ks = np.asarray(selection.n_components)
    names = ("bic", "aic") if criterion == "both" else (criterion,)
    for i, name in enumerate(names):
        values = np.asarray(getattr(selection, name), dtype=float)
        if dataset is not None:
            values = values[dataset]
        if values.shape != ks.shape:
            raise ValueError(f"selection.{name} has shape {values.shape}: a batch of data "
                             "sets; pass dataset= to pick one.")
        colour = f"C{i}"
        ax.plot(ks, values, "o-", color=colour, label=name.upper())
        j = int(np.argmin(np.where(np.isfinite(values), values, np.inf)))
        ax.plot(ks[j], values[j], "*", color=colour, ms=16, mec="k",
                label=f"chosen K = {ks[j]} ({name.upper()})")
    ax.set_xticks(ks)
    ax.set_xlabel("number of components K")
    ax.set_ylabel(" / ".join(n.upper() for n in names) + " (lower is better)")
    ax.legend(fontsize="small")
    return ax


# -- trimming -------------------------------------------------------------------------
def trimming_history(ax, result, *, dataset: int | None = None, restarts: bool = False):
    """Live components after each iteration of a trimmed fit (:func:`jaxem.trimmed`),
    a step line from iteration 0 (every component) to the last; from a :func:`jaxem.fit`
    result, an :class:`~jaxem.em.EMResult` or ``TrimmedParams`` of one instance.

    Args:
      dataset: with a batch of data sets, the one to draw.
      restarts: also draw every restart of a :func:`jaxem.fit` result (thin, behind the
        best one, which is bold).

    Returns ``ax``.
    """
    _check_axes(ax)
    from jaxem.trim import TrimmedParams, history

    params = result.params if isinstance(result, (FitResult, EMResult)) else result
    if not isinstance(params, TrimmedParams):
        raise TypeError("trimming_history draws a fit of a jaxem.trimmed(...) family "
                        f"(TrimmedParams), got {type(params).__name__}.")
    others = result.restarts.params if restarts and isinstance(result, FitResult) else None
    if dataset is not None:
        params = _tree_index(params, dataset)
        others = None if others is None else _tree_index(others, dataset)
    if np.ndim(params.active) != 1:
        raise ValueError(f"active has shape {np.shape(params.active)}: one instance is "
                         "drawn; pass dataset= for a batch of data sets, or one restart's "
                         "parameters.")
    runs = [] if others is None else [_tree_index(others, r)
                                      for r in range(np.shape(others.active)[0])]
    for p in runs + [params]:
        live = history(p)
        bold = p is params
        ax.step(np.arange(live.shape[0]), live, where="post", color="k" if bold else "C0",
                lw=2 if bold else 0.8, alpha=1.0 if bold else 0.35)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel("live components")
    return ax


def _tree_index(tree, i):
    """Index the leading axis of every leaf."""
    import jax

    return jax.tree.map(lambda a: np.asarray(a)[i], tree)
