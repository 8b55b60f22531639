"""Scale benchmarks of jaxem's Gaussian-mixture EM: streaming, devices, online EM.

Runs unchanged on a GPU (results named by JAX's backend: ``scale_cpu.*``, ``scale_gpu.*``);
part (b) forces CPU devices, so run ``--parts ac`` there.

(a) N=10^7, D=16, K=16 float32 diag streamed by ``jaxem.fit_stream`` from a
    memory-mapped ``.npy`` (written in pieces to a temporary folder), 3 EM
    iterations (tol=-1) from explicit starting parameters: seconds per iteration and
    the peak-RSS rise; the same 3 iterations by ``jaxem.fit`` on the array in memory.
(b) N=10^6, D=16, K=16 diag, 10 iterations with ``devices=`` 1, 2, 4 forced CPU
    devices (each in a subprocess with
    XLA_FLAGS=--xla_force_host_platform_device_count=4); compile excluded.
(c) online (``jaxem.fit_online``, one epoch, batch 1024 and 8192) vs batch EM
    (``jaxem.fit`` to convergence) on N=10^6 well-separated blobs, same start:
    time and final full-data mean log-likelihood.

Usage::

    python benchmarks/bench_scale.py [--tmp /tmp/jaxem_scale] [--n-stream 10000000]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import _env

# *first call s* times a real compile: jaxem's persistent compilation cache off (its
# subprocesses inherit this)
os.environ.setdefault("JAXEM_NO_CACHE", "1")

D, K = 16, 16


# -- helpers ----------------------------------------------------------------------------
def rss_reset():
    """Reset VmHWM (peak RSS) to the current RSS."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def centres(seed=0, scale=3.0):
    return np.random.default_rng(seed).normal(0.0, scale, (K, D))


def blobs(n, seed, c, spread=(0.3, 1.5)):
    """Rows of a K-component diag mixture with centres ``c`` (shuffled labels)."""
    rng = np.random.default_rng(seed)
    sd = np.random.default_rng(12345).uniform(*spread, (K, D))
    z = rng.integers(0, K, n)
    return (c[z] + sd[z] * rng.normal(size=(n, D))).astype(np.float32)


def start_params(x, seed=1):
    """One explicit start: K data rows as means, the data variance, equal weights."""
    import jax.numpy as jnp
    import jaxem
    from jaxem.families import GaussianParams

    rng = np.random.default_rng(seed)
    fam = jaxem.gaussian("diag")
    means = np.asarray(x[np.sort(rng.choice(min(len(x), 100_000), K, replace=False))])
    var = np.asarray(x[:100_000], np.float64).var(0)
    prec = np.broadcast_to(1.0 / var, (K, D)).astype(np.float32)
    pc = fam.precisions_cholesky_from(precisions=jnp.asarray(prec))
    return GaussianParams(jnp.full((K,), 1.0 / K, jnp.float32), jnp.asarray(means, jnp.float32), pc)


def block(out):
    import jax
    return jax.block_until_ready(out)


# -- (a) streaming ---------------------------------------------------------------------
def part_stream(n, tmp: Path) -> dict:
    import jax
    import jaxem

    fam = jaxem.gaussian("diag")
    path = tmp / f"x_{n}.npy"
    c = centres()
    t0 = time.perf_counter()
    piece = 1_000_000
    reused = path.exists()  # an earlier run's file: not rewritten (maybe in the page cache)
    if not reused:
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, D))
        for i, s in enumerate(range(0, n, piece)):
            e = min(n, s + piece)
            mm[s:e] = blobs(e - s, 100 + i, c)
        mm.flush()
        del mm
    write_s = time.perf_counter() - t0
    x_mm = np.load(path, mmap_mode="r")
    init = start_params(x_mm)
    key = jax.random.key(0)
    kw = dict(n_components=K, key=key, init=init, tol=-1.0)
    res = {"n": n, "d": D, "k": K, "file": str(path), "file_gb": path.stat().st_size / 1e9,
           "write_s": None if reused else write_s}
    # Streaming: a compiling call (1 iteration), then timed 1- and 3-iteration calls.
    t0 = time.perf_counter()
    block(jaxem.fit_stream(fam, str(path), max_iter=1, **kw))
    res["stream_first_call_1it_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    block(jaxem.fit_stream(fam, str(path), max_iter=1, **kw))
    t1 = time.perf_counter() - t0
    rss0 = rss_kb("VmRSS")
    rss_reset()
    t0 = time.perf_counter()
    out = block(jaxem.fit_stream(fam, str(path), max_iter=3, **kw))
    t3 = time.perf_counter() - t0
    hwm = rss_kb("VmHWM")
    res.update(stream_1it_s=t1, stream_3it_s=t3, stream_s_per_iter=(t3 - t1) / 2,
               stream_s_per_iter_incl_setup=t3 / 3,
               stream_rss_before_mb=rss0 / 1024, stream_rss_rise_mb=(hwm - rss0) / 1024,
               stream_n_iter=int(out.n_iter), stream_ll=float(out.log_likelihood),
               stream_block_size=65536, stream_device_peak_bytes=_env.device_peak_bytes())
    # In memory: the array read into RAM (before the RSS reset), jaxem.fit 3 iterations.
    x = np.array(x_mm)
    del x_mm
    t0 = time.perf_counter()
    block(jaxem.fit(fam, x, max_iter=3, **kw))
    res["fit_first_call_s"] = time.perf_counter() - t0
    rss0 = rss_kb("VmRSS")
    rss_reset()
    t0 = time.perf_counter()
    out = block(jaxem.fit(fam, x, max_iter=3, **kw))
    tf = time.perf_counter() - t0
    hwm = rss_kb("VmHWM")
    res.update(fit_3it_s=tf, fit_s_per_iter=tf / 3, fit_rss_before_mb=rss0 / 1024,
               fit_rss_rise_mb=(hwm - rss0) / 1024, fit_n_iter=int(out.n_iter),
               fit_ll=float(out.log_likelihood), data_mb=x.nbytes / 2**20,
               fit_device_peak_bytes=_env.device_peak_bytes())
    try:
        import jaxem.batch
        res["fit_chunk_size_auto"] = jaxem.batch.auto_chunk_size((1, n, D), 1, K, fam)
    except Exception:  # noqa: BLE001
        pass
    del x
    return res


# -- (b) devices (run in a subprocess) --------------------------------------------------
def part_devices_child(k: int, repeats: int = 3) -> dict:
    import jax
    import jaxem

    fam = jaxem.gaussian("diag")
    x = blobs(1_000_000, 7, centres())
    init = start_params(x)
    devs = jax.devices()
    devices = None if k == 1 else devs[:k]
    kw = dict(n_components=K, key=jax.random.key(0), init=init, tol=-1.0, max_iter=10,
              devices=devices)
    t0 = time.perf_counter()
    out = block(jaxem.fit(fam, x, **kw))
    first = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = block(jaxem.fit(fam, x, **kw))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return dict(k=k, n_devices_visible=len(devs), devices="default (1)" if devices is None
                else [str(d) for d in devices], first_call_s=first, times_s=times,
                best_s=min(times), best_cpu_s=min(cpu), n_iter=int(out.n_iter),
                ll=float(out.log_likelihood))


def part_devices() -> list:
    rows = []
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    for k in (1, 2, 4):
        p = subprocess.run([sys.executable, __file__, "--devices-child", str(k)], env=env,
                           capture_output=True, text=True, timeout=600)
        try:
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        except Exception:  # noqa: BLE001
            rows.append(dict(k=k, error=(p.stderr or p.stdout)[-2000:]))
    return rows


# -- (c) online vs batch ---------------------------------------------------------------
def part_online(n=1_000_000) -> dict:
    import jax
    import jaxem

    fam = jaxem.gaussian("diag")
    # well separated: centres 8 sd apart on average, small spreads
    x = blobs(n, 21, centres(seed=5, scale=6.0), spread=(0.3, 1.0))
    init = start_params(x, seed=3)
    key = jax.random.key(0)
    full_ll = jax.jit(lambda p, x: jaxem.log_likelihood(fam, p, x).mean())
    xj = jax.numpy.asarray(x)
    res = {"n": n, "d": D, "k": K, "start_ll": float(full_ll(init, xj))}
    kw = dict(n_components=K, key=key, init=init, tol=1e-6, max_iter=500)
    block(jaxem.fit(fam, x, **kw))  # compile
    t0 = time.perf_counter()
    out = block(jaxem.fit(fam, x, **kw))
    res["batch"] = dict(s=time.perf_counter() - t0, n_iter=int(out.n_iter),
                        converged=bool(out.converged), reported_ll=float(out.log_likelihood),
                        ll=float(full_ll(out.params, xj)), tol=1e-6)
    res["online"] = []
    bs_block = 65_536
    for bs in (1024, 8192):
        okw = dict(n_components=K, key=key, init=init, batch_size=bs, n_epochs=1,
                   block_size=bs_block)
        warm = x[: bs_block + n % bs_block]  # a full and the final partial block: compiles
        block(jaxem.fit_online(fam, warm, **okw))
        t0 = time.perf_counter()
        o = block(jaxem.fit_online(fam, x, **okw))
        s = time.perf_counter() - t0
        ll = float(full_ll(o.params, xj))
        res["online"].append(dict(batch_size=bs, s=s, n_steps=int(o.n_iter), ll=ll,
                                  gap_to_batch=res["batch"]["ll"] - ll,
                                  last_epoch_minibatch_ll=float(o.log_likelihood)))
    return res


# -- report ----------------------------------------------------------------------------
def markdown(r: dict) -> str:
    m, v = r["machine"], r["versions"]
    on_gpu = m.get("backend", "cpu") != "cpu"
    m = dict(m, load_average_start=r["load_start"], load_average_end=r["load_end"])
    L = [f"# jaxem at scale on {m.get('backend', 'cpu').upper()}: streaming, devices, online EM",
         "", _env.machine_line(m),
         "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".", ""]
    a = r.get("stream")
    if a:
        L += [f"## (a) N={a['n']:,} D={a['d']} K={a['k']} diag float32, 3 iterations (tol=-1), "
              "explicit start", "",
              f"Data: {a['file_gb']:.2f} GB .npy in {Path(a['file']).parent} ("
              + ("reused from an earlier run, maybe still in the page cache" if a["write_s"] is None
                 else f"written in 1M-row pieces in {a['write_s']:.1f} s")
              + "). Streaming reads it memory-mapped, block_size="
              f"{a['stream_block_size']}. *s / iteration* for fit_stream is (3-iteration call − "
              "1-iteration call)/2, i.e. without its set-up pass (validation, centre, init "
              "sample); *whole call / 3* includes it. *RSS rise*: peak RSS (VmHWM, reset via "
              "/proc/self/clear_refs) during the timed call minus RSS before it; for jaxem.fit "
              "the array was already in RAM. Compile excluded (a previous identical-shape call)."
              + (" *device peak GB*: the GPU's peak allocated bytes in the process after the "
                 "row's runs (JAX's count; streaming ran first)." if on_gpu else ""),
              "",
              "| method | 3-iteration call s | s / iteration | whole call / 3 | RSS before MB | "
              "peak RSS rise MB | final mean LL |" + (" device peak GB |" if on_gpu else ""),
              "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if on_gpu else ""),
              f"| fit_stream (.npy memmap) | {a['stream_3it_s']:.2f} | {a['stream_s_per_iter']:.3f} | "
              f"{a['stream_s_per_iter_incl_setup']:.3f} | {a['stream_rss_before_mb']:.0f} | "
              f"{a['stream_rss_rise_mb']:.0f} | {a['stream_ll']:.6f} |"
              + (f" {(a.get('stream_device_peak_bytes') or 0) / 1e9:.2f} |" if on_gpu else ""),
              f"| jaxem.fit (in memory, chunk {a.get('fit_chunk_size_auto')}) | {a['fit_3it_s']:.2f} | "
              f"{a['fit_s_per_iter']:.3f} | {a['fit_s_per_iter']:.3f} | "
              f"{a['fit_rss_before_mb']:.0f} | {a['fit_rss_rise_mb']:.0f} | {a['fit_ll']:.6f} |"
              + (f" {(a.get('fit_device_peak_bytes') or 0) / 1e9:.2f} |" if on_gpu else ""),
              "", f"(The data are {a['data_mb']:.0f} MiB in memory.)", ""]
    b = r.get("devices")
    if b:
        L += ["## (b) devices: N=1M D=16 K=16 diag, 10 iterations, shard='rows'", "",
              "Each run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=4, "
              "`devices=jax.devices()[:k]` (k=1: devices=None, the default device). The forced "
              "CPU devices share the same 2 cores: this measures the overhead of sharding, not a "
              "speed-up. Best of 3 after a compiling call.", "",
              "| devices | best s | CPU s | first call s | s / iteration | × 1 device | final mean LL |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
        base = next((x["best_s"] for x in b if x.get("k") == 1 and "best_s" in x), None)
        for x in b:
            if "best_s" not in x:
                L.append(f"| {x['k']} | error: {x.get('error', '')[-200:]!r} | | | | | |")
                continue
            L.append(f"| {x['k']} | {x['best_s']:.3f} | {x['best_cpu_s']:.3f} | "
                     f"{x['first_call_s']:.2f} | {x['best_s'] / x['n_iter']:.4f} | "
                     f"{x['best_s'] / base:.2f} | {x['ll']:.6f} |")
        L.append("")
    c = r.get("online")
    if c:
        bt = c["batch"]
        L += ["## (c) online vs batch EM: N=1M D=16 K=16 diag, well-separated blobs, same start",
              "", f"Start mean LL {c['start_ll']:.4f}. Batch: jaxem.fit to convergence "
              f"(tol={bt['tol']}, max_iter=500). Online: fit_online, one epoch, step size "
              "(t0, κ) = (2, 0.6) (default), block_size 65536. Final LL = full-data mean "
              "log-likelihood (`jaxem.log_likelihood(...).mean()`, float32). Compile excluded.",
              "", "| method | s | iterations / steps | final mean LL | gap to batch |",
              "|---|---:|---:|---:|---:|",
              f"| batch EM | {bt['s']:.2f} | {bt['n_iter']} (converged={bt['converged']}) | "
              f"{bt['ll']:.6f} | 0 |"]
        for o in c["online"]:
            L.append(f"| online, batch_size={o['batch_size']}, 1 epoch | {o['s']:.2f} | "
                     f"{o['n_steps']} | {o['ll']:.6f} | {o['gap_to_batch']:.2e} |")
        L.append("")
    return "\n".join(L)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tmp", type=Path, default=Path("/tmp/jaxem_scale"))
    p.add_argument("--n-stream", type=int, default=10_000_000)
    p.add_argument("--parts", default="abc")
    p.add_argument("--devices-child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=_env.RESULTS)
    args = p.parse_args(argv)
    if args.devices_child is not None:
        print(json.dumps(part_devices_child(args.devices_child)))
        return
    r = {"machine": _env.machine(), "versions": _env.versions(("jax", "jaxlib", "numpy", "jaxem")),
         "load_start": list(os.getloadavg())}
    args.tmp.mkdir(parents=True, exist_ok=True)
    for part, name, fn in (("a", "stream", lambda: part_stream(args.n_stream, args.tmp)),
                           ("b", "devices", part_devices), ("c", "online", part_online)):
        if part in args.parts:
            t0 = time.perf_counter()
            print(f"part {part} ...", file=sys.stderr, flush=True)
            r[name] = fn()
            print(f"part {part} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr,
                  flush=True)
            # write what ran so far
            r["load_end"] = list(os.getloadavg())
            _env.write_results(args.out, f"scale_{_env.backend()}", r, markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
