"""Time model selection: jaxem's one-call sweep over K × restarts against scikit-learn's loop.

The workload (the issue's): choose K in 1..16 by BIC with 8 restarts each, N = 20,000
rows, D = 8, diagonal covariances, 50 EM iterations. jaxem runs all 16 × 8 = 128 fits
as ONE call of :func:`jaxem.select_n_components` (one compiled program, components
beyond each instance's K masked); scikit-learn fits the same 128 models one after
another and takes ``bic(X)`` of each.

Both sides start from the same parameters and run exactly the same number of
iterations: the starts are those ``select_n_components`` draws itself
(:func:`jaxem.batch.initial_params` with the same key and init, K-component starts
being the first K components of the k_max start, :func:`jaxem.select.mask`), handed to
``GaussianMixture(weights_init=, means_init=, precisions_init=, tol=0, max_iter=50)``.
jaxem gets ``tol=-1`` (no instance ever counts as converged). Iteration counts are
checked: scikit-learn's ``n_iter_``, and jaxem's from an untimed rerun of the driver
call ``select_n_components`` makes (same masked starts, ``restarts.n_iter``).

jaxem is timed as the best of ``--repeats`` calls after a first call (compile
excluded); the first call is reported, and so is the first call in a fresh Python
process with the persistent compilation cache off (``JAXEM_NO_CACHE=1``), which is
the honest "compile included" time, and the first call in a fresh process after another
one made it, with jaxem's persistent compilation cache on in a new folder (what a user
sees from the second run on: tracing, reading the programs back, the sweep).

Usage::

    python benchmarks/bench_select.py            # the full run, writes benchmarks/results/
    python benchmarks/bench_select.py --quick    # a tiny smoke run (< 30 s), writes nothing
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import _env

PACKAGES = ("jax", "jaxlib", "numpy", "scikit-learn", "jaxem")
KEY_SEED = 0  # jax.random.key(KEY_SEED): the key of select_n_components
INIT = "k-means++"  # select_n_components' default init


def workload(quick: bool) -> dict:
    """The sweep's shape: the issue's, or a tiny one for ``--quick``."""
    if quick:
        return dict(n=2000, d=4, k_true=3, k_min=1, k_max=4, n_init=2, iters=10, ct="diag",
                    seed=0)
    return dict(n=20_000, d=8, k_true=6, k_min=1, k_max=16, n_init=8, iters=50, ct="diag",
                seed=0)


def make_data(w: dict) -> np.ndarray:
    """``(n, d)`` float64 samples of a random ``k_true``-component diagonal mixture."""
    rng = np.random.default_rng(w["seed"])
    centres = rng.normal(0.0, 3.0, (w["k_true"], w["d"]))
    scales = rng.uniform(0.3, 1.5, (w["k_true"], w["d"]))
    z = rng.integers(0, w["k_true"], w["n"])
    return centres[z] + scales[z] * rng.normal(size=(w["n"], w["d"]))


# -- jaxem --------------------------------------------------------------------------
def jaxem_call(w: dict, x32):
    """One ``select_n_components`` call (all K × restarts), blocked on its output."""
    import jax

    import jaxem

    sel = jaxem.select_n_components(
        jaxem.gaussian(w["ct"]), x32, k_min=w["k_min"], k_max=w["k_max"],
        key=jax.random.key(KEY_SEED), n_init=w["n_init"], init=INIT,
        max_iter=w["iters"], tol=-1.0)  # tol < 0: every instance runs max_iter iterations
    return jax.block_until_ready(sel)


def jaxem_starts(w: dict, x32):
    """The masked starting parameters ``select_n_components`` fits, ordered (K, restart)
    (the same calls it makes; see jaxem/select.py)."""
    import jax
    import jax.numpy as jnp

    import jaxem
    from jaxem.batch import initial_params
    from jaxem.select import mask

    starts = initial_params(jaxem.gaussian(w["ct"]), x32, n_components=w["k_max"],
                            key=jax.random.key(KEY_SEED), n_init=w["n_init"], init=INIT)
    per_k = [mask(starts, k) for k in range(w["k_min"], w["k_max"] + 1)]
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *per_k)


def jaxem_check(w: dict, x32, masked):
    """Untimed: the driver call inside ``select_n_components`` with the same starts;
    returns per instance (K, restart) its iteration count, converged/failed flags and
    mean log-likelihood of the last E-step."""
    import jax

    import jaxem
    from jaxem.select import Masked

    n_k = w["k_max"] - w["k_min"] + 1
    res = jaxem.fit(Masked(jaxem.gaussian(w["ct"])), x32, n_components=w["k_max"],
                    key=jax.random.key(KEY_SEED), n_init=n_k * w["n_init"], init=masked,
                    max_iter=w["iters"], tol=-1.0)
    r = jax.block_until_ready(res.restarts)
    shape = (n_k, w["n_init"])
    return dict(n_iter=np.asarray(r.n_iter).reshape(shape),
                converged=np.asarray(r.converged).reshape(shape),
                failed=np.asarray(r.failed).reshape(shape),
                lower_bound=np.asarray(r.log_likelihood, np.float64).reshape(shape))


def sklearn_starts(w: dict, masked) -> list[list[dict]]:
    """``[K][restart]`` dicts of float64 weights (K,), means (K, D), precisions (K, D):
    the first K components of each masked start."""
    import jaxem

    fam = jaxem.gaussian(w["ct"])
    weights = np.asarray(masked.params.weights, np.float64)
    means = np.asarray(masked.params.means, np.float64)
    prec = np.asarray(fam.precisions(masked.params), np.float64)
    out = []
    for i, k in enumerate(range(w["k_min"], w["k_max"] + 1)):
        row = []
        for r in range(w["n_init"]):
            j = i * w["n_init"] + r
            wk = weights[j, :k]
            # Renormalised in float64: scikit-learn checks sum == 1 to 1e-8.
            row.append(dict(weights=wk / wk.sum(), means=means[j, :k], precisions=prec[j, :k]))
        out.append(row)
    return out


# -- scikit-learn -------------------------------------------------------------------
def sklearn_loop(w: dict, x: np.ndarray, starts) -> list[list[dict]]:
    """The 128 (K, restart) fits one after another, each with ``bic(X)`` (the work a
    user's model-selection loop does); returns ``[K][restart]`` results."""
    from sklearn.mixture import GaussianMixture

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "did not converge": intended, tol=0
        for k, row in zip(range(w["k_min"], w["k_max"] + 1), starts):
            fits = []
            for s in row:
                gm = GaussianMixture(k, covariance_type=w["ct"], tol=0.0, max_iter=w["iters"],
                                     weights_init=s["weights"], means_init=s["means"],
                                     precisions_init=s["precisions"]).fit(x)
                bic = gm.bic(x)
                # bic = -2 * total LL + p log n: the LL at the final parameters
                total = -(bic - gm._n_parameters() * np.log(len(x))) / 2
                fits.append(dict(bic=float(bic), mean_ll=float(total / len(x)),
                                 n_iter=int(gm.n_iter_), lower_bound=float(gm.lower_bound_)))
            out.append(fits)
    return out


# -- the fresh process ----------------------------------------------------------------
def child(w: dict) -> None:
    """Run in a fresh process: time the import and the first ``select_n_components``
    call and print them as one JSON line."""
    t0 = time.perf_counter()
    import jax
    import jax.numpy as jnp

    import jaxem

    x32 = jax.block_until_ready(jnp.asarray(make_data(w), jnp.float32))
    t1 = time.perf_counter()
    jaxem_call(w, x32)
    t2 = time.perf_counter()
    print(json.dumps(dict(import_s=t1 - t0, first_call_s=t2 - t1,
                          cache_dir=jax.config.jax_compilation_cache_dir,
                          jaxem_version=jaxem.__version__)))


def fresh_first_call(w: dict, cache: str | None = None) -> dict:
    """The first call's time in a new Python process, with jaxem's persistent compile
    cache in the folder ``cache`` (its defaults otherwise), or off where ``None``."""
    mine = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
            "JAXEM_NO_CACHE", "JAXEM_CACHE_DIR")  # the caller's settings: left out
    env = {k: v for k, v in os.environ.items() if k not in mine}
    if cache is None:
        env["JAXEM_NO_CACHE"] = "1"
    else:
        env["JAXEM_CACHE_DIR"] = cache
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                        json.dumps(w)], env=env, capture_output=True, text=True, check=True)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t0
    return out


# -- the run --------------------------------------------------------------------------
def run(args) -> dict:
    """Time both sides, check iterations and agreement; returns the results dict."""
    import jax
    import jax.numpy as jnp

    import jaxem  # first, as a user would: importing it turns on the compile cache

    w = workload(args.quick)
    load_start = list(os.getloadavg())
    # The fresh process first, before this one starts JAX's backend (on a GPU this
    # process would otherwise hold most of the device memory while the child runs).
    # A new process is one sample of a noisy quantity: the best of several, as the rest.
    fastest = lambda runs: min(runs, key=lambda r: r["first_call_s"])
    fresh_runs = [fresh_first_call(w) for _ in range(args.fresh_repeats)]
    with tempfile.TemporaryDirectory() as cache:  # new processes after one that compiled
        fresh_first_call(w, cache)
        warm_runs = [fresh_first_call(w, cache) for _ in range(args.fresh_repeats)]
    fresh, warm = fastest(fresh_runs), fastest(warm_runs)
    m = _env.machine()
    m["load_average_start"] = load_start
    x = make_data(w)
    x32 = jax.block_until_ready(jnp.asarray(x, jnp.float32))
    cache_dir = jax.config.jax_compilation_cache_dir

    # jaxem: first call (before anything else compiles), then the best of the repeats.
    t0 = time.perf_counter()
    sel = jaxem_call(w, x32)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        sel = jaxem_call(w, x32)
        times.append(time.perf_counter() - t0)
    peak = _env.device_peak_bytes()

    # The same starts for scikit-learn, and jaxem's iteration counts (untimed).
    masked = jaxem_starts(w, x32)
    check = jaxem_check(w, x32, masked)
    starts = sklearn_starts(w, masked)
    sk_times, sk = [], None
    for _ in range(args.sk_repeats):
        t0 = time.perf_counter()
        sk = sklearn_loop(w, x, starts)
        sk_times.append(time.perf_counter() - t0)

    # Per K: best-of-restarts LL and BIC from each side.
    ks = [int(k) for k in sel.n_components]
    per_k = []
    for i, k in enumerate(ks):
        best = min(sk[i], key=lambda f: f["bic"])  # same p per K: lowest BIC = highest LL
        j_ll = float(sel.log_likelihood[i]) / w["n"]
        lb_diff = max(abs(f["lower_bound"] - check["lower_bound"][i, r])
                      for r, f in enumerate(sk[i]))
        per_k.append(dict(k=k, jaxem_mean_ll=j_ll, sklearn_mean_ll=best["mean_ll"],
                          abs_diff_mean_ll=abs(j_ll - best["mean_ll"]),
                          jaxem_bic=float(sel.bic[i]), sklearn_bic=best["bic"],
                          max_abs_diff_restart_ll=float(lb_diff),
                          jaxem_n_converged=int(sel.n_converged[i]),
                          jaxem_n_failed=int(check["failed"][i].sum())))
    sk_best_k = ks[int(np.argmin([r["sklearn_bic"] for r in per_k]))]
    sk_iters = sorted({f["n_iter"] for row in sk for f in row})
    jx_iters = sorted({int(n) for n in check["n_iter"].ravel()})
    best_s, sk_s = min(times), min(sk_times)
    m["load_average_end"] = list(os.getloadavg())
    return dict(
        meta=dict(machine=m, versions=_env.versions(PACKAGES), workload=w,
                  repeats=args.repeats, sk_repeats=args.sk_repeats,
                  fresh_repeats=args.fresh_repeats, quick=args.quick,
                  key=f"jax.random.key({KEY_SEED})", init=INIT,
                  main_process_cache_dir=cache_dir, device_peak_bytes=peak,
                  jaxem_path=str(Path(jaxem.__file__).parent)),
        jaxem=dict(best_s=best_s, times_s=times, first_call_s=first,
                   fresh_first_call_s=fresh["first_call_s"], fresh_import_s=fresh["import_s"],
                   fresh_process_s=fresh["process_s"], fresh_cache_dir=fresh["cache_dir"],
                   warm_first_call_s=warm["first_call_s"],
                   fresh_first_call_runs_s=[r["first_call_s"] for r in fresh_runs],
                   warm_first_call_runs_s=[r["first_call_s"] for r in warm_runs],
                   n_iter=jx_iters, chosen_k=int(sel.best),
                   n_converged=int(check["converged"].sum()),
                   n_failed=int(check["failed"].sum())),
        sklearn=dict(best_s=sk_s, times_s=sk_times, n_iter=sk_iters, chosen_k=sk_best_k),
        speedup_excl_compile=sk_s / best_s,
        speedup_incl_compile=sk_s / fresh["first_call_s"],
        speedup_incl_compile_same_process=sk_s / first,
        speedup_warm_cache=sk_s / warm["first_call_s"],
        same_k=int(sel.best) == sk_best_k,
        max_abs_diff_mean_ll=max(r["abs_diff_mean_ll"] for r in per_k),
        per_k=per_k)


def _secs(times) -> str:
    return ", ".join(f"{t:.2f}" for t in times) + " s"


def markdown(res: dict) -> str:
    """The Markdown tables of one run."""
    meta, w, jx, sk = res["meta"], res["meta"]["workload"], res["jaxem"], res["sklearn"]
    m = meta["machine"]
    n_fits = (w["k_max"] - w["k_min"] + 1) * w["n_init"]
    v = ", ".join(f"{k} {val}" for k, val in meta["versions"].items() if val)
    peak = meta["device_peak_bytes"]
    lines = [
        f"# Model selection on {m['backend'].upper()}: jaxem's one call vs scikit-learn's loop",
        "",
        _env.machine_line(m),
        f"Versions: {v}.",
        "",
        f"K = {w['k_min']}..{w['k_max']} × {w['n_init']} restarts = {n_fits} diagonal-"
        f"covariance fits of N = {w['n']:,} rows, D = {w['d']} (a random {w['k_true']}-"
        f"component mixture), {w['iters']} EM iterations each, K chosen by BIC. jaxem: one "
        f"`select_n_components(..., init=\"{INIT}\", tol=-1, max_iter={w['iters']})` call "
        f"in float32; scikit-learn: {n_fits} `GaussianMixture(tol=0, max_iter={w['iters']})"
        ".fit(X)` + `bic(X)` in a loop, float64. Both start from the same parameters: "
        "the starts `select_n_components` draws (`jaxem.batch.initial_params` with the same "
        "key, first K components of each k_max start, weights renormalised) passed as "
        "`weights_init`/`means_init`/`precisions_init`. Iterations run: jaxem "
        f"{jx['n_iter']} (from an untimed rerun of its driver call; {jx['n_converged']} "
        f"converged, {jx['n_failed']} failed), scikit-learn {sk['n_iter']}. *best s*: best "
        f"of {meta['repeats']} jaxem calls after a first call (compile excluded), of "
        f"{meta['sk_repeats']} scikit-learn loops. *first call s*: jaxem's first call in "
        "this process (persistent compilation cache: "
        f"{meta['main_process_cache_dir'] or 'off'}). *fresh-process first call s*: best of "
        f"{meta['fresh_repeats']} new processes' first call with `JAXEM_NO_CACHE=1` (compile "
        f"included, not the {jx['fresh_import_s']:.1f} s of imports; each: "
        f"{_secs(jx['fresh_first_call_runs_s'])}). *warm-cache first call s*: best of "
        f"{meta['fresh_repeats']} new processes' first call after another process made the "
        "same call, jaxem's persistent compilation cache on (its defaults, a new folder; "
        f"each: {_secs(jx['warm_first_call_runs_s'])}): what a user sees from the second "
        "run on. *× scikit-learn*: its best time over jaxem's, compile excluded / included "
        "(fresh process, cache off) / warm cache. Target: ≥ 10× excluded, ≥ 5× included, "
        "on a 2-core CPU."
        + (f" Device peak memory: {peak / 2**20:.0f} MiB." if peak else ""),
        "",
        "| implementation | best s (excl compile) | first call s | fresh-process first call s "
        "| warm-cache first call s | × scikit-learn (excl / incl compile / warm cache) "
        "| chosen K |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| jaxem (one call, {n_fits} fits) | {jx['best_s']:.3f} | {jx['first_call_s']:.3f} | "
        f"{jx['fresh_first_call_s']:.3f} | {jx['warm_first_call_s']:.3f} | "
        f"{res['speedup_excl_compile']:.3g} / {res['speedup_incl_compile']:.3g} / "
        f"{res['speedup_warm_cache']:.3g} | {jx['chosen_k']} |",
        f"| scikit-learn (loop of {n_fits} fits) | {sk['best_s']:.3f} | – | – | – | 1.0 | "
        f"{sk['chosen_k']} |",
        "",
        f"Same K chosen: {'yes' if res['same_k'] else 'NO'}; largest abs Δ mean LL of the "
        f"best restarts: {res['max_abs_diff_mean_ll']:.1e}.",
        "",
        "Per K: mean log-likelihood (per row, at the final parameters) and BIC of the best "
        "restart; *max abs Δ per restart*: the largest difference over the restarts of the "
        "last E-step's mean LL (jaxem's `log_likelihood`, scikit-learn's `lower_bound_`).",
        "",
        "| K | jaxem mean LL | scikit-learn mean LL | abs Δ | jaxem BIC | scikit-learn BIC "
        "| max abs Δ per restart |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["per_k"]:
        mark = lambda who: " ←" if r["k"] == res[who]["chosen_k"] else ""
        lines.append(
            f"| {r['k']} | {r['jaxem_mean_ll']:.6f} | {r['sklearn_mean_ll']:.6f} | "
            f"{r['abs_diff_mean_ll']:.1e} | {r['jaxem_bic']:.1f}{mark('jaxem')} | "
            f"{r['sklearn_bic']:.1f}{mark('sklearn')} | {r['max_abs_diff_restart_ll']:.1e} |")
    lines += ["", "← marks the K each side chooses.", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes (K=1..4 × 2 restarts, N=2000): print the table, write "
                        "nothing (< 30 s)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed jaxem calls after the first (default 3)")
    p.add_argument("--sk-repeats", type=int, default=3,
                   help="timed scikit-learn loops (default 3, best of them, as jaxem's)")
    p.add_argument("--fresh-repeats", type=int, default=3,
                   help="new processes timed, cache off and warm (default 3, best of them)")
    p.add_argument("--out", type=Path, default=_env.RESULTS,
                   help="folder for select_<backend>.json/.md (not written with --quick)")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: the fresh process
    args = p.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return
    res = run(args)
    md = markdown(res)
    print(md)
    if not args.quick:
        _env.write_results(args.out, f"select_{_env.backend()}", res, md)


if __name__ == "__main__":
    main()
