"""JAX's persistent compilation cache, on by default in a user cache folder.

A fit compiles once per shape and static setting; with the cache, a fresh Python
process reads the compiled program from disk instead of compiling it again (seconds on
a CPU, more for large programs on a GPU). :func:`setup` runs when jaxem is imported: it
only sets two JAX options (no folder is read, no backend started) and does nothing when

- the user chose a cache folder already (``jax.config`` / ``JAX_COMPILATION_CACHE_DIR``),
- ``JAXEM_NO_CACHE`` is set to anything but ``0``/``false``/``no``/empty, or
- the folder cannot be created or written.

The folder is ``$JAXEM_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxem``, else
``~/.cache/jaxem``. Every program is cached however fast it compiled
(:data:`MIN_COMPILE_SECONDS`; JAX's default of 1 s would leave out most fits on small
data, and the host-side glue's dozens of small programs, 10-50 ms each, add up), unless
the user changed ``jax_persistent_cache_min_compile_time_secs`` (or its environment
variable). Like any JAX setting these
apply to the whole process, the user's own JAX programs included.
"""
from __future__ import annotations

import os

import jax

# Reading a program back takes milliseconds, compiling even a small one 10-50 ms, and
# select_n_components' host-side glue compiles dozens (benchmarks/results/select_cpu.md's
# warm-cache column is with this setting).
MIN_COMPILE_SECONDS = 0.0
_OFF = ("", "0", "false", "no", "off")


def cache_dir() -> str | None:
    """The folder jaxem would cache compiled programs in, or ``None`` when turned off
    (``JAXEM_NO_CACHE``) or when there is no home folder to put it in."""
    if os.environ.get("JAXEM_NO_CACHE", "").strip().lower() not in _OFF:
        return None
    path = os.environ.get("JAXEM_CACHE_DIR", "").strip()
    if path:
        return os.path.abspath(os.path.expanduser(path))
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    if not base:
        home = os.path.expanduser("~")
        if home == "~":  # no HOME: no user folder to write into
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(os.path.abspath(base), "jaxem")


def setup() -> str | None:
    """Turn on JAX's persistent compilation cache in :func:`cache_dir`, unless the user
    set a cache folder of their own or turned it off; returns the folder used (``None``:
    jaxem left JAX's settings alone)."""
    if jax.config.jax_compilation_cache_dir is not None:  # the user's choice stands
        return None
    path = cache_dir()
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    if not os.access(path, os.W_OK | os.X_OK):
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    if ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ
            and jax.config.jax_persistent_cache_min_compile_time_secs == 1.0):  # JAX's default
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return path
