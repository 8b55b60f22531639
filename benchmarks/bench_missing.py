"""Time jaxem's exact EM with missing values against the same fit with nothing missing.

Workload: N = 100,000 rows, D = 16, K = 8, full covariances, 20% of the entries
missing completely at random (a row keeps at least one value). From one set of explicit
starting parameters (weights, means, precisions), a fixed number of EM iterations
(``tol=-1``: never "converged"; the iteration counts are checked):

* **jaxem, nothing missing**: ``jaxem.fit`` on the complete data;
* **jaxem, 20% missing**: ``jaxem.fit`` on the same data with the gaps (NaN): exact EM
  over the observed entries (``jaxem.families.gaussian_missing``), with the automatic
  chunk size and with ``chunk_size=2048``, the power of two nearest the automatic one
  (whose rows-last arrays' rows then share CPU cache sets: see
  ``jaxem.batch._unaligned``);
* **jaxem on one CPU device per core** (on a machine with several cores), complete and
  with the gaps: ``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>`` and
  ``devices=jax.devices()``, the rows (sorted by their gaps) split over the devices. The
  complete fit's GEMMs already use every core on one device; the missing-value fit's
  many small kernels do not (``bench_missing_cores.py``), which is why on one CPU device
  jaxem runs its E-step on one thread per core (``jaxem.batch.cpu_threads``; not with
  ``devices``). The headline gives the ratio on one device and the ratio of each fit at
  its fastest setting;
* **peers**: scikit-learn's ``GaussianMixture`` rejects NaN, so it runs after an imputer,
  ``SimpleImputer(strategy="mean")`` and ``IterativeImputer`` (its default BayesianRidge,
  ``max_iter=10``), from the same starting parameters, ``tol=0``. These are **different
  estimators** (EM on filled-in data, not on the observed entries), timed for scale only;
  pomegranate 1.x reads missing values as torch masked tensors in some of its
  distributions (not in its 1.1.2 ``Normal``); it needs torch and its row says "not
  installed" when it is absent.

jaxem is timed after a first, compiling call (reported separately: *compile s* = first
call − best call; jaxem's persistent compilation cache is off, ``JAXEM_NO_CACHE=1``, so
it is a real compile); every timed call ends with ``jax.block_until_ready`` on the whole
output; best of ``--repeats`` (default 10) calls. Each row runs in its own process, so
*peak RSS* is that process's high-water mark (``VmHWM``: data, compilation and calls) and
no row reuses another's compilations; a row whose process stops using CPU time for
``--stall-s`` seconds (a hang) or runs past ``--row-timeout-s`` is stopped and reported,
and the others still run. The mean log-likelihood of the observed entries at each
implementation's final parameters is evaluated by one float64 NumPy routine, so the
columns say whether the same work was done and what the imputers cost in fit quality.

Usage::

    python benchmarks/bench_missing.py            # the full run, writes benchmarks/results/
    python benchmarks/bench_missing.py --quick    # a tiny smoke run, writes nothing
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("JAXEM_NO_CACHE", "1")  # compile times that are compiles (see above)
import jax
import jax.numpy as jnp

import jaxem
import jaxem.batch
import _env
from jaxem.families import GaussianParams

PACKAGES = ("jax", "jaxlib", "numpy", "scikit-learn", "pomegranate", "torch", "jaxem")
TARGET_RATIO = 3.0  # the issue's target: per-iteration time with gaps <= 3x without


def workload(quick: bool, n: int | None = None) -> dict:
    if quick:
        w = dict(name="quick: N=2000 D=4 K=3 full, 20% missing, 5 it", n=2000, d=4, k=3,
                 rate=0.2, iters=5)
    else:
        w = dict(name="N=100k D=16 K=8 full, 20% missing, 10 it", n=100_000, d=16, k=8,
                 rate=0.2, iters=10)
    if n is not None and n != w["n"]:  # a smaller or larger run of the same shape
        old = "N=2000" if quick else "N=100k"
        w["name"], w["n"] = w["name"].replace(old, f"N={n:,}", 1), n
    return w


# -- data and starting parameters ---------------------------------------------------------
def make_data(w: dict, seed: int = 0):
    """``(x complete (n, d) float64, x with NaN gaps, start dict)``."""
    rng = np.random.default_rng(seed)
    n, d, k = w["n"], w["d"], w["k"]
    centres = rng.normal(0.0, 3.0, (k, d))
    a = rng.normal(size=(k, d, d)) / np.sqrt(d)
    chol = np.linalg.cholesky(a @ a.transpose(0, 2, 1) + 0.2 * np.eye(d))
    z = rng.integers(0, k, n)
    x = centres[z] + np.einsum("nde,ne->nd", chol[z], rng.normal(size=(n, d)))
    gone = rng.random((n, d)) < w["rate"]
    empty = gone.all(axis=1)
    gone[empty, rng.integers(0, d, empty.sum())] = False  # every row keeps one value
    x_gaps = np.where(gone, np.nan, x)
    # One explicit start for everybody (random_from_data): k data rows as means, the
    # complete data's covariance for every component, equal weights.
    start = dict(weights=np.full(k, 1.0 / k), means=x[rng.choice(n, k, replace=False)],
                 precisions=np.broadcast_to(np.linalg.inv(np.cov(x.T)), (k, d, d)).copy())
    return x, x_gaps, start


def observed_mean_ll(x, weights, means, covariances, chunk: int = 4096) -> float:
    """Mean log-likelihood of the observed entries of ``x (n, d)`` (NaN = missing) under a
    full-covariance mixture, in float64 NumPy: per row, the marginal density of its
    observed features (``S~ = o oᵀ ∘ S + diag(1 - o)`` is ``S_oo`` plus an identity)."""
    weights, means, cov = (np.asarray(a, np.float64) for a in (weights, means, covariances))
    d = x.shape[1]
    total = 0.0
    for s in range(0, len(x), chunk):
        xc = x[s:s + chunk]
        o = (~np.isnan(xc)).astype(np.float64)
        x0 = np.where(o > 0, xc, 0.0)
        log_p = np.empty((len(xc), len(weights)))
        eye_miss = np.eye(d) * (1.0 - o)[:, None, :]
        for k in range(len(weights)):
            s_t = (o[:, :, None] * o[:, None, :]) * cov[k] + eye_miss
            diff = o * (x0 - means[k])
            c = np.linalg.cholesky(s_t)
            y = np.linalg.solve(c, diff[..., None])[..., 0]
            log_det = 2.0 * np.log(np.diagonal(c, axis1=1, axis2=2)).sum(axis=1)
            log_p[:, k] = (math.log(weights[k]) - 0.5 * (o.sum(axis=1) * math.log(2 * math.pi)
                                                         + (y * y).sum(axis=1) + log_det))
        top = log_p.max(axis=1)
        total += float(np.sum(top + np.log(np.exp(log_p - top[:, None]).sum(axis=1))))
    return total / len(x)


# -- peak RSS and CPU time -------------------------------------------------------------------
def rss_mb(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` (peak) of this process in MB, where Linux reports them."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return None


def cpu_ticks(pid: int) -> int | None:
    """User + system CPU ticks of process ``pid`` (all its threads), from /proc."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    return None


# -- the implementations --------------------------------------------------------------------
class JaxemRunner:
    def __init__(self, w, x, start, chunk_size=None, devices=None):
        self.w, self.chunk_size, self.devices = w, chunk_size, devices
        # The missing-value family is named here, decided on the host: jaxem.fit's own
        # NaN test (jaxem.batch.has_nan, a jitted min) misses NaN in arrays of >= 4096
        # entries on XLA's CPU backend at jaxem 2444509, and then refuses the data.
        self.fam = jaxem.gaussian("full", missing=bool(np.isnan(x).any()))
        self.x = jax.block_until_ready(jnp.asarray(x, jnp.float32))
        prec_chol = self.fam.precisions_cholesky_from(
            precisions=jnp.asarray(start["precisions"], jnp.float32))
        self.init = jax.block_until_ready(GaussianParams(
            jnp.asarray(start["weights"], jnp.float32), jnp.asarray(start["means"], jnp.float32),
            prec_chol))

    def __call__(self):
        out = jaxem.fit(self.fam, self.x, n_components=self.w["k"], key=jax.random.key(0),
                        init=self.init, tol=-1.0, max_iter=self.w["iters"],
                        chunk_size=self.chunk_size, devices=self.devices)
        return jax.block_until_ready(out)

    def chunk(self) -> int | None:
        """The chunk size jaxem used (its automatic choice where none was given)."""
        if self.chunk_size is not None:
            return self.chunk_size
        auto = getattr(jaxem.batch, "auto_chunk_size", None)
        if auto is None:
            return None
        with contextlib.suppress(TypeError):
            n, d = self.x.shape  # each device's share of the rows
            share = -(-n // len(self.devices)) if self.devices else n
            return auto((1, share, d), 1, self.w["k"], self.fam)
        return None

    def result(self, out):
        p = out.params
        cov = np.asarray(self.fam.covariances(p))
        return dict(weights=np.asarray(p.weights), means=np.asarray(p.means), covariances=cov,
                    n_iter=int(out.n_iter), reported_ll=float(out.log_likelihood))


class SklearnImputedRunner:
    """An imputer, then scikit-learn's GaussianMixture from the given start (tol=0)."""

    def __init__(self, w, x_gaps, start, imputer: str):
        self.w, self.x, self.start, self.imputer = w, x_gaps, start, imputer

    def _imputer(self):
        from sklearn.impute import SimpleImputer

        if self.imputer == "mean":
            return SimpleImputer(strategy="mean")
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401
        from sklearn.impute import IterativeImputer

        return IterativeImputer(max_iter=10, random_state=0)

    def __call__(self):
        from sklearn.mixture import GaussianMixture

        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # IterativeImputer's early-stopping notice
            filled = self._imputer().fit_transform(self.x)
        impute_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "did not converge": intended, tol=0
            gm = GaussianMixture(self.w["k"], covariance_type="full", tol=0.0,
                                 max_iter=self.w["iters"], weights_init=self.start["weights"],
                                 means_init=self.start["means"],
                                 precisions_init=self.start["precisions"]).fit(filled)
        self.last_split = dict(impute_s=impute_s, fit_s=time.perf_counter() - t0)
        return gm

    def result(self, gm):
        return dict(weights=gm.weights_, means=gm.means_, covariances=gm.covariances_,
                    n_iter=int(gm.n_iter_), reported_ll=float(gm.lower_bound_))


def installed(module: str) -> bool:
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            __import__(module)
        return True
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False


# -- timing -----------------------------------------------------------------------------------
def time_calls(fn, repeats: int, warm: bool):
    """``(first call s, [wall s...], [process CPU s...], last output, [per-call extras])``.

    ``warm``: the first call compiles and is not one of the repeats.
    """
    extras = []
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    first = time.perf_counter() - t0
    times, cpu = ([], []) if warm else ([first], [time.process_time() - c0])
    if not warm:
        extras.append(getattr(fn, "last_split", None))
    for _ in range(repeats - len(times)):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        extras.append(getattr(fn, "last_split", None))
    return first, times, cpu, out, extras


CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def plan_rows(quick: bool) -> list[tuple[str, str, str, int | None, int | None]]:
    """``(row name, kind, data, chunk_size, CPU devices)`` in the order they run. With
    several cores, jaxem runs again on one CPU device per core
    (``XLA_FLAGS=--xla_force_host_platform_device_count``, ``devices=jax.devices()``:
    the rows split over them)."""
    small = 256 if quick else 2048  # quick: a small chunk still exercises the chunked scan
    per_core = [] if CORES < 2 else [
        (f"jaxem, nothing missing, {CORES} CPU devices", "jaxem", "complete", None, CORES),
        (f"jaxem, 20% missing, {CORES} CPU devices", "jaxem", "gaps", None, CORES)]
    return [("jaxem, nothing missing", "jaxem", "complete", None, None),
            ("jaxem, 20% missing", "jaxem", "gaps", None, None),
            (f"jaxem, 20% missing, chunk_size={small}", "jaxem", "gaps", small, None),
            *per_core,
            ("sklearn GaussianMixture after SimpleImputer(mean)", "mean", "gaps", None, None),
            ("sklearn GaussianMixture after IterativeImputer", "iterative", "gaps", None, None),
            ("pomegranate GeneralMixtureModel", "pomegranate", "gaps", None, None)]


def measure(w: dict, name: str, kind: str, which: str, chunk, devices, repeats: int) -> dict:
    """One row, in its own process: time the calls, then evaluate the final parameters."""
    x, x_gaps, start = make_data(w)
    data_x = x if which == "complete" else x_gaps
    row = dict(impl=name, kind=kind, n=w["n"], d=w["d"], k=w["k"], iters=w["iters"],
               data="complete" if which == "complete" else f"{w['rate']:.0%} missing")
    if kind == "jaxem":
        if devices:
            assert len(jax.devices()) == devices, (jax.devices(), devices)
        runner = JaxemRunner(w, data_x, start, chunk, jax.devices() if devices else None)
        row["chunk_size"], row["chunk_auto"] = runner.chunk(), chunk is None
        row["devices"] = devices or 1
        warm = True
    else:
        runner, warm = SklearnImputedRunner(w, data_x, start, kind), False
    rss_before = rss_mb("VmRSS")
    first, times, cpu, out, extras = time_calls(runner, repeats, warm)
    peak = rss_mb("VmHWM")
    res = runner.result(out)
    best = int(np.argmin(times))
    row.update(first_call_s=first, times_s=times, best_s=times[best],
               median_s=statistics.median(times), cpu_s=cpu, best_cpu_s=min(cpu),
               compile_s=max(first - min(times), 0.0) if warm else None,
               n_iter=res["n_iter"], ran_all_iterations=res["n_iter"] == w["iters"],
               rss_before_mb=rss_before, peak_rss_mb=peak, reported_ll=res["reported_ll"])
    if extras and extras[best]:  # the imputers: imputation and EM, split
        row.update(extras[best])
        row["s_per_iter"] = extras[best]["fit_s"] / w["iters"]
    else:
        row["s_per_iter"] = row["best_s"] / w["iters"]
    t0 = time.perf_counter()
    row["observed_ll"] = observed_mean_ll(x_gaps, res["weights"], res["means"],
                                          res["covariances"])
    row["complete_ll"] = observed_mean_ll(x, res["weights"], res["means"], res["covariances"])
    row["ll_eval_s"] = time.perf_counter() - t0
    return row


def _child(conn, *args):
    try:
        conn.send(("ok", measure(*args)))
    except BaseException as err:  # noqa: BLE001 - reported in the table
        conn.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


def run_row(args, w, name, kind, which, chunk, devices) -> dict:
    """``measure`` in a fresh process (its own peak RSS, no compilation cache from other
    rows), stopped when its CPU time has not moved for ``--stall-s`` seconds or after
    ``--row-timeout-s``: a hung row is reported as such and the others still run."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    repeats = args.repeats if kind == "jaxem" else args.peer_repeats
    proc = ctx.Process(target=_child, args=(send, w, name, kind, which, chunk, devices,
                                             repeats))
    t0 = time.perf_counter()
    flags = os.environ.get("XLA_FLAGS")
    if devices:  # read by the child's XLA when it starts
        os.environ["XLA_FLAGS"] = " ".join(
            [flags or "", f"--xla_force_host_platform_device_count={devices}"]).strip()
    try:
        proc.start()
    finally:
        os.environ.pop("XLA_FLAGS", None)
        if flags is not None:
            os.environ["XLA_FLAGS"] = flags
    send.close()
    last, still, poll = None, 0.0, 2.0
    status = payload = None
    while status is None:
        if recv.poll(poll):
            try:
                status, payload = recv.recv()
            except EOFError:
                status, payload = "error", f"the process exited (code {proc.exitcode})"
            break
        if not proc.is_alive():
            status, payload = "error", f"the process exited (code {proc.exitcode})"
            break
        ticks = cpu_ticks(proc.pid)
        still = still + poll if ticks is not None and ticks == last else 0.0
        last = ticks
        if still >= args.stall_s:
            status = "stalled"
            payload = (f"stopped: no CPU time used for {args.stall_s:.0f} s after "
                       f"{time.perf_counter() - t0:.0f} s (a hang)")
        elif time.perf_counter() - t0 > args.row_timeout_s:
            status, payload = "timeout", f"stopped after {args.row_timeout_s:.0f} s"
    if proc.is_alive():
        proc.kill()
    proc.join()
    if status == "ok":
        payload["wall_incl_setup_s"] = time.perf_counter() - t0
        return payload
    return dict(impl=name, n=w["n"], d=w["d"], k=w["k"], iters=w["iters"],
                status="did not finish" if status != "error" else "failed", note=payload)


def run(args) -> dict:
    w = workload(args.quick, args.n)
    load_start = list(os.getloadavg())
    x, x_gaps, _ = make_data(w)
    data = dict(missing_fraction=float(np.isnan(x_gaps).mean()),
                incomplete_rows_fraction=float(np.isnan(x_gaps).any(axis=1).mean()))
    del x, x_gaps
    rows = []
    for name, kind, which, chunk, devices in plan_rows(args.quick):
        if any(s in name for s in args.skip):
            continue
        print(f"{w['name']} | {name}", file=sys.stderr, flush=True)
        if kind == "pomegranate":
            row = dict(impl=name, n=w["n"], d=w["d"], k=w["k"], iters=w["iters"])
            if installed("pomegranate"):
                row["status"] = row["note"] = "installed, not run (no missing-value Normal)"
            else:
                row["status"] = "not installed"
                row["note"] = ("not installed (it needs torch, which is not installed here); "
                               "read from its 1.1.2 wheel: only some of its distributions "
                               "handle masked (missing) entries, and "
                               "pomegranate/distributions/normal.py has no masked path, so a "
                               "full-covariance Gaussian mixture with missing values is not "
                               "something it offers either")
            rows.append(row)
            continue
        rows.append(run_row(args, w, name, kind, which, chunk, devices))
    base = next((r for r in rows if r["impl"] == "jaxem, nothing missing" and "best_s" in r),
                None)
    for r in rows:
        if base and "s_per_iter" in r:
            r["per_iter_over_complete"] = r["s_per_iter"] / base["s_per_iter"]
            r["total_over_complete"] = r["best_s"] / base["best_s"]
    gaps = next((r for r in rows if r["impl"] == "jaxem, 20% missing"), None)
    target = dict(target=TARGET_RATIO, ratio=None, met=None, best_ratio=None)
    if gaps is not None and "per_iter_over_complete" in gaps:
        target.update(ratio=gaps["per_iter_over_complete"],
                      met=bool(gaps["per_iter_over_complete"] <= TARGET_RATIO))
    # Each at its fastest setting (one device, or one CPU device per core): what a user
    # who picks the faster setting for each gets.
    fastest = {which: min((r["s_per_iter"] for r in rows if r.get("kind") == "jaxem"
                           and r.get("data", "").endswith(which) and "s_per_iter" in r),
                          default=None) for which in ("complete", "missing")}
    if None not in fastest.values():
        best = fastest["missing"] / fastest["complete"]
        target.update(best_ratio=best, best_met=bool(best <= TARGET_RATIO))
    meta = dict(workload=w, data=data, machine=_env.machine(), versions=_env.versions(PACKAGES),
                repeats=args.repeats, peer_repeats=args.peer_repeats, quick=args.quick,
                stall_s=args.stall_s, row_timeout_s=args.row_timeout_s, target=target)
    meta["machine"]["load_average_start"] = load_start
    meta["machine"]["load_average_end"] = list(os.getloadavg())
    return dict(meta=meta, rows=rows)


def _f(v, fmt, dash="–"):
    return dash if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def markdown(res: dict) -> str:
    m, v, w, t = (res["meta"][k] for k in ("machine", "versions", "workload", "target"))
    data = res["meta"]["data"]
    lines = [
        f"# Gaussian-mixture EM with missing values on {m.get('backend', 'cpu').upper()}",
        "",
        f"Workload: {w['name']}: N={w['n']:,}, D={w['d']}, K={w['k']}, full covariances; "
        f"{data['missing_fraction']:.1%} of the entries missing completely at random "
        f"({data['incomplete_rows_fraction']:.1%} of the rows incomplete).",
        "",
        _env.machine_line(m),
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
        "",
        "One set of explicit starting parameters, a fixed number of EM iterations (checked), "
        f"best of {res['meta']['repeats']} calls for jaxem (after a compiling first call: "
        f"*compile s* = first call − best, with jaxem's persistent compilation cache "
        f"off) and of {res['meta']['peer_repeats']} for the "
        "imputer + scikit-learn rows. *s / iteration*: jaxem's best call over the iterations; "
        "for the imputer rows, scikit-learn's EM alone (the imputation is *impute s*). "
        "*× complete*: s / iteration over jaxem's with nothing missing. *peak RSS*: the "
        "process's high-water mark over that row's calls (compilation included), in "
        "brackets its rise over the RSS before them. *LL "
        "observed*: float64 mean log-likelihood of the observed entries at the final "
        "parameters (the objective of exact EM with gaps); *LL complete*: the same "
        "parameters on the complete data (the entries before they were removed).",
        "",
        "The imputer rows are **different estimators** (EM on filled-in data, not on the "
        "observed entries): timed for scale, not a like-for-like peer.",
        "",
    ]
    if t and t.get("ratio") is not None:
        lines += [f"**jaxem with 20% missing: {t['ratio']:.1f}× the time per EM iteration "
                  f"of the complete fit** on one device (issue target ≤ {t['target']:.0f}×: "
                  f"{'met' if t['met'] else 'not met'})."]
        if t.get("best_ratio") is not None:
            lines[-1] += (f" Each at its fastest setting (one device, or one CPU device per "
                          f"core): **{t['best_ratio']:.1f}×** "
                          f"({'met' if t['best_met'] else 'not met'}).")
        lines.append("")
    elif t:
        lines += [f"**jaxem with 20% missing: not measured** (its row did not finish; issue "
                  f"target ≤ {t['target']:.0f}×).", ""]
    lines += ["| implementation | chunk | iterations | best s | s / iteration | × complete | "
              "compile s | impute s | CPU s | peak RSS MB | LL observed | LL complete |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        if "best_s" not in r:
            lines.append(f"| {r['impl']} | – | – | – | – | – | – | – | – | – | – | "
                         f"{r.get('status', '')} |")
            continue
        chunk = "" if r.get("chunk_size", "x") == "x" else (
            "all rows" if r["chunk_size"] is None else
            f"{r['chunk_size']}{' (auto)' if r.get('chunk_auto') else ''}")
        lines.append(
            f"| {r['impl']} | {chunk} | {r['n_iter']} | {r['best_s']:.3f} | "
            f"{r['s_per_iter']:.4f} | {_f(r.get('per_iter_over_complete'), '.1f')} | "
            f"{_f(r.get('compile_s'), '.2f')} | {_f(r.get('impute_s'), '.2f')} | "
            f"{r['best_cpu_s']:.2f} | {_f(r.get('peak_rss_mb'), '.0f')}"
            + (f" (+{r['peak_rss_mb'] - r['rss_before_mb']:.0f})"
               if r.get("peak_rss_mb") and r.get("rss_before_mb") else "") + " | "
            f"{r['observed_ll']:.4f} | {r['complete_ll']:.4f} |")
    notes = [f"{r['impl']}: {r['note']}" for r in res["rows"] if r.get("note")]
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a tiny workload; print the table, write nothing")
    p.add_argument("--repeats", type=int, default=10,
                   help="timed jaxem calls after the compiling one (default 10: the "
                        "complete fit takes 0.1 s, and its best of 3 moved by 50%%)")
    p.add_argument("--peer-repeats", type=int, default=3,
                   help="timed imputer + scikit-learn calls (default 3)")
    p.add_argument("--n", type=int, default=None,
                   help="rows (default 100,000; quick 2,000), e.g. a smaller check of the "
                        "full run's shape with --out elsewhere")
    p.add_argument("--stall-s", type=float, default=120.0,
                   help="stop a row whose process has used no CPU time for this long (a "
                        "hang), default 120")
    p.add_argument("--row-timeout-s", type=float, default=3600.0,
                   help="stop a row after this long, default 3600")
    p.add_argument("--skip", nargs="*", default=[],
                   help="leave out the rows whose name contains any of these words")
    p.add_argument("--out", type=Path, default=_env.RESULTS,
                   help="folder for missing_<backend>.json and .md (not with --quick)")
    args = p.parse_args(argv)
    res = run(args)
    md = markdown(res)
    print(md)
    if not args.quick:
        _env.write_results(args.out, f"missing_{_env.backend()}", res, md)

if __name__ == "__main__":
    main()
