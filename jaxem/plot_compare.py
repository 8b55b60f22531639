"""Draw a :func:`jaxem.compare` result: log-likelihood against iterations or seconds."""
from __future__ import annotations

import numpy as np


def plot_comparison(result, ax=None, *, x: str = "iterations", restarts: bool = True):
    """Plot each method's per-restart traces (thin) and their median (bold).

    Args:
      result: a :class:`jaxem.compare.Comparison`.
      ax: a matplotlib ``Axes`` (a new figure if None); matplotlib is imported here only.
      x: ``"iterations"`` or ``"seconds"`` (the batched run's wall clock).
      restarts: draw every restart as well as the median.

    Returns the ``Axes``.
    """
    if x not in ("iterations", "seconds"):
        raise ValueError(f"x must be 'iterations' or 'seconds', got {x!r}.")
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4))
    lows = []
    for i, (name, m) in enumerate(result.methods.items()):
        colour = f"C{i}"
        trace = np.where(m.failed[:, None], np.nan, m.trace)
        t = m.seconds if x == "seconds" else np.arange(1, trace.shape[1] + 1)
        if restarts:
            ax.plot(t, trace.T, color=colour, alpha=0.2, lw=0.7)
        with np.errstate(all="ignore"):
            filled = _forward_fill(trace)
            median = np.nanmedian(filled, axis=0) if np.isfinite(filled).any() else filled[0]
        label = f"{name} ({100 * m.fraction_reached:.0f}% reach best)"
        ax.plot(t, median, color=colour, lw=2, label=label)
        if np.isfinite(median).any():
            lows.append(np.nanpercentile(filled[:, 0], 25))
    best = result.best_log_likelihood
    ax.axhline(best, color="k", ls=":", lw=1)
    if lows:
        low = min(lows)
        ax.set_ylim(low, best + 0.05 * (best - low) + result.eps)
    ax.set_xscale("log")
    ax.set_xlabel("iteration" if x == "iterations" else "seconds (all restarts, batched)")
    ax.set_ylabel("mean log-likelihood per sample")
    ax.legend(fontsize="small", loc="lower right")
    return ax


def _forward_fill(trace):
    """A restart that stopped keeps its last value (the trace is NaN-padded)."""
    out = trace.copy()
    for j in range(1, out.shape[1]):
        gap = np.isnan(out[:, j])
        out[gap, j] = out[gap, j - 1]
    return out
