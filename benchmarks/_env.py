"""What the benchmark tables record about the machine and the installed versions, and
where they are written."""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def versions(packages) -> dict:
    """Python's version and each package's (None where it is not installed)."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def backend() -> str:
    """JAX's default backend ("cpu", "gpu", "tpu"): it names the results files, so a
    run on a GPU writes beside, not over, the CPU tables."""
    import jax

    return jax.default_backend()


def machine() -> dict:
    """CPU, cores, memory, JAX's devices (with the accelerator's kind) and the load."""
    import jax

    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    dev = jax.devices()[0]
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "memory": mem,
            "platform": platform.platform(), "backend": jax.default_backend(),
            "device_kind": getattr(dev, "device_kind", str(dev)),
            "jax_devices": [str(d) for d in jax.devices()],
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "load_average_start": list(os.getloadavg())}


def machine_line(m: dict) -> str:
    """One Markdown line naming the machine a table was measured on."""
    acc = "" if m.get("backend", "cpu") == "cpu" else f"; timed on {m['device_kind']}"
    load = m.get("load_average_start", [float("nan")])[0]
    end = m.get("load_average_end")
    load_s = f"load average {load:.1f} at the start" + (
        f", {end[0]:.1f} at the end" if end else "")
    return (f"Machine: {m['cpu']}, {m['cores']} cores, {m.get('memory', '')} "
            f"({m['platform']}){acc}; {load_s}.")


def device_peak_bytes() -> int | None:
    """The accelerator's peak allocated bytes so far in this process (None on CPU, where
    JAX keeps no such count)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def best_of(fn, repeat: int) -> float:
    """The least wall time of ``repeat`` calls of ``fn()`` (which blocks on its result)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def count_e_steps(model):
    """Count a pomegranate model's ``summarize`` calls (its E-steps, each followed by an
    M-step) in ``model.n_e_steps``, so fixed-iteration runs can be checked."""
    model.n_e_steps = 0
    summarize = model.summarize

    def counted(*a, **kw):
        model.n_e_steps += 1
        return summarize(*a, **kw)

    model.summarize = counted
    return model


def write_results(out: Path, stem: str, results: dict, markdown: str) -> None:
    """Write ``stem.json`` and ``stem.md`` into ``out`` and say so on stderr."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out / f"{stem}.md").write_text(markdown)
    print(f"wrote {out / stem}.json and .md", file=sys.stderr)
