"""A progress bar for long fits: ``jaxem.fit(..., progress=True)``.

A compiled ``while_loop`` cannot report while it runs, so a fit with progress runs in
compiled blocks of iterations (:func:`jaxem.em.resume`), carrying the driver's state
from block to block, and the bar advances between blocks. The block boundary changes
no result: an instance that stopped is frozen, the others continue from the same carry.
Blocks are sized to take about :data:`BLOCK_SECONDS` each (after a first block of one
iteration, which also compiles), so the few hundred microseconds of one boundary cost
well under 1% of the run.

The bar is tqdm's: a small pure-Python package with no dependencies of its own (rich
would pull in pygments and markdown-it for a single bar), imported only when a bar is
shown; it is the optional extra ``jaxem[progress]``.

>>> import jax, jaxem
>>> with jaxem.progress.shown(False):  # what fit(progress=None) does here: no bar
...     jaxem.progress.wanted(None)
False
"""
from __future__ import annotations

import contextlib
import contextvars
import sys
import time

import jax
import numpy as np

BLOCK_SECONDS = 0.25  # aim of each block's duration: a few bar updates a second
_GROWTH = 8  # a block is at most this many times the last one (the first times a compile)

_shown = contextvars.ContextVar("jaxem_progress_shown", default=False)


@contextlib.contextmanager
def shown(enabled: bool = True):
    """Within this block, :func:`jaxem.fit` calls that leave ``progress=None`` (the
    default; the estimators built on it too) show a progress bar, or not."""
    token = _shown.set(bool(enabled))
    try:
        yield
    finally:
        _shown.reset(token)


def wanted(progress: bool | None) -> bool:
    """``progress`` as given, or the :func:`shown` setting for ``None``; raises a clear
    ImportError if a bar is wanted and tqdm is missing."""
    want = _shown.get() if progress is None else bool(progress)
    if want:
        _tqdm()
    return want


def available() -> bool:
    """Whether a bar can be shown (tqdm is installed)."""
    try:
        _tqdm()
    except ImportError:
        return False
    return True


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install 'jaxem[progress]' (or "
                          "pip install tqdm), or pass progress=False.") from None
    return tqdm


def make_bar(total: int, desc: str = "EM"):
    """The bar: iterations out of ``total``, written to standard error."""
    return _tqdm()(total=total, desc=desc, unit="it", file=sys.stderr, dynamic_ncols=True,
                   leave=True)


def run_blocks(block, state, *, max_iter: int, n_instances: int, n_datasets: int = 1,
               desc: str = "EM"):
    """Run ``block(state, n_steps) -> (state, (iterations, finished, best))`` until every
    instance has finished, updating a bar; returns the last state.

    ``iterations`` is the most iterations any instance has run, ``finished`` how many of
    the ``n_instances`` have stopped, ``best`` the best objective so far (the mean over
    the ``n_datasets`` data sets of each one's best restart).
    """
    bar = make_bar(max_iter, desc)
    best_name = "best" if n_datasets == 1 else f"best (mean of {n_datasets} sets)"
    done, n_steps = 0, 1
    try:
        while True:
            start = time.perf_counter()
            state, summary = block(state, n_steps)
            iterations, finished, best = (np.asarray(a) for a in jax.device_get(summary))
            seconds = time.perf_counter() - start
            advanced, done = int(iterations) - done, int(iterations)
            bar.set_postfix_str(f"{best_name} {float(best):.6g}, finished "
                                f"{int(finished)}/{n_instances}", refresh=False)
            bar.update(advanced)
            if int(finished) >= n_instances or done >= max_iter or advanced <= 0:
                break
            per_step = seconds / advanced
            n_steps = int(min(max(BLOCK_SECONDS / per_step, 1), _GROWTH * n_steps, max_iter))
    finally:
        bar.close()
    return state
