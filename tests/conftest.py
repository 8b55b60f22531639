"""Shared fixtures: float64 mode (scoped, restored afterwards) and small synthetic data.

All tests share one process, so x64 is only ever switched on inside a context manager
(``with jax.enable_x64(True):``), never at import time.
"""
import os

# jaxem turns on JAX's persistent compilation cache in ~/.cache/jaxem when imported; the
# tests must not write there (nor read a developer's entries): off, before any import of
# jaxem. Tests of the cache itself run subprocesses with their own JAXEM_CACHE_DIR.
os.environ["JAXEM_NO_CACHE"] = "1"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def _mapped_regions() -> int:
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux: no such limit to watch
        return 0


_NUMPY_ERRSTATE = np.geterr()  # before any peer test package changes it


@pytest.fixture(autouse=True)
def _numpy_errstate():
    """Every test sees numpy's default floating-point error state: importing hmmlearn's
    test package calls ``np.seterr(all="warn")`` for the whole process, which would turn
    harmless underflows into warnings (errors under ``simplefilter("error")``)."""
    with np.errstate(**_NUMPY_ERRSTATE):
        yield


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """XLA's CPU backend maps memory for every compiled program (about 3-4 regions
    each) and keeps it while the program is cached; one test process compiles thousands,
    and past the kernel's ``vm.max_map_count`` (65530) the compiler crashes (SIGSEGV or
    abort). Drop the caches when the count gets high: tests only recompile."""
    yield
    if _mapped_regions() > 30_000:
        jax.clear_caches()


@pytest.fixture
def x64():
    """Run the test in JAX float64 mode; the previous mode is restored afterwards."""
    with jax.enable_x64(True):
        yield


def blobs(seed: int, n: int, d: int, k: int, separation: float = 4.0,
          spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float64 points in ``d`` dimensions around ``k`` random centres.

    Centres are standard normal times ``separation``; each blob gets a random linear
    shape so full and diagonal covariances differ. Returns ``(x (n, d), labels (n,))``.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * separation
    shapes = rng.normal(size=(k, d, d)) * 0.3 + np.eye(d)
    labels = rng.integers(0, k, size=n)
    labels[:k] = np.arange(k)[: min(k, n)]  # every blob has a point
    eps = rng.normal(size=(n, d)) * spread
    x = centres[labels] + np.einsum("nd,nde->ne", eps, shapes[labels])
    return x, labels


@pytest.fixture(scope="session")
def make_blobs():
    """The :func:`blobs` generator (a session fixture, so hypothesis tests can use it)."""
    return blobs


def pytest_collection_modifyitems(config, items):
    """Mark the peers' tests listed in a compatibility module's ``COMPAT_XFAIL`` (by
    test name or parametrized id) as strict expected failures, with their reason."""
    for item in items:
        listed = getattr(getattr(item, "module", None), "COMPAT_XFAIL", None)
        if listed:
            reason = listed.get(item.name, listed.get(getattr(item, "originalname", None)))
            if reason is not None:
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
