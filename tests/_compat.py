"""Run a peer's own installed test file against jaxem's estimators.

A compatibility module calls :func:`load_peer_tests` at import time: the peer's test
file (shipped inside its wheel) is read, the import of the estimator under test is
replaced by jaxem's with exact, checked one-line replacements, and the result is
executed into the calling module's namespace, so pytest collects the peer's tests as
ours. Each remaining expected failure is listed in the module's ``COMPAT_XFAIL``
(test name or parametrized id -> one-line reason); ``conftest.py`` marks those
``xfail(strict=True)``, so a test that starts passing is reported too.
"""
import importlib.util

import jax
import numpy as np
import pytest


def load_peer_tests(module: str, replacements: dict[str, str], namespace: dict) -> str:
    """Execute the peer test module ``module`` (e.g.
    ``"sklearn.mixture.tests.test_gaussian_mixture"``) into ``namespace`` after the
    ``old -> new`` source ``replacements``; each ``old`` must occur exactly once.
    Returns the path of the peer's file."""
    path = importlib.util.find_spec(module).origin
    with open(path, encoding="utf-8") as f:
        source = f.read()
    for old, new in replacements.items():
        count = source.count(old)
        if count != 1:
            raise AssertionError(f"{path}: expected {old!r} once, found it {count} times")
        source = source.replace(old, new)
    namespace["__package__"] = module.rpartition(".")[0]  # relative imports work
    errstate = np.geterr()  # hmmlearn's tests/__init__.py sets np.seterr(all="warn")
    try:
        exec(compile(source, path, "exec"), namespace)
    finally:
        np.seterr(**errstate)
    return path


@pytest.fixture(autouse=True)
def float64():
    """The peers test in float64: JAX's x64 mode for each test, restored afterwards."""
    with jax.enable_x64(True):
        yield
