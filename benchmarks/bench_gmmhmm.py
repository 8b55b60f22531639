"""Baum-Welch with Gaussian-mixture emissions: jaxem.GMMHMM versus hmmlearn's GMMHMM.

Same data, same starting parameters, a fixed number of iterations, for each covariance
type: 20 sequences x 500 steps, 4-D observations, 4 states with 3 mixture components
each, 20 EM iterations. jaxem runs in float32 (its default), hmmlearn in float64 (its
only precision). Timed:

* ``jaxem``: the EM engine (``jaxem.em.run`` on the ``HMM`` + ``GMMEmission`` family),
  compiled ahead of time (compile time reported separately), best of ``--repeat``;
* ``jaxem GMMHMM estimator``: ``jaxem.GMMHMM.fit`` end to end (validation, padding,
  transfer, attributes); the first call's extra time is its compilation;
* ``hmmlearn``: ``hmmlearn.hmm.GMMHMM.fit`` for both ``implementation`` values, best of
  ``--repeat``. With ``init_params=""`` its ``_init`` sets nothing but still runs
  k-means on the data; it is skipped so that only EM is timed.

The final log-likelihoods are recorded to show that the runs did the same work.
Writes ``benchmarks/results/bench_gmmhmm_<backend>.json`` and ``.md`` (``--quick``, a
smoke test on tiny shapes, prints and writes nothing).

    PYTHONPATH=. python benchmarks/bench_gmmhmm.py [--quick] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import jaxem
import _env
from jaxem.families.gmm_emission import GMMEmission
from jaxem.families.hmm import HMM, HMMParams, pad_sequences

COVARIANCE_TYPES = ("diag", "spherical", "full", "tied")


def machine() -> dict:
    return dict(_env.machine(), versions=_env.versions(
        ("jax", "jaxlib", "numpy", "scipy", "scikit-learn", "hmmlearn")))


def make_problem(n_seq, t, d, k, m, ct, seed=0):
    """Sequences from a random sticky GMM-HMM ``(n_seq, t, d)``, and starting parameters
    in hmmlearn's shapes (perturbed truth, broad covariances)."""
    rng = np.random.default_rng(seed)
    trans = 0.9 * np.eye(k) + 0.1 * rng.dirichlet(np.ones(k), k)
    means = rng.normal(size=(k, 1, d)) * 4 + rng.normal(size=(k, m, d))
    weights = rng.dirichlet(np.full(m, 3.0), k)
    z = np.zeros((n_seq, t), int)
    z[:, 0] = rng.integers(0, k, n_seq)
    cum = np.cumsum(trans, axis=1)
    u = rng.random((n_seq, t))
    for s in range(1, t):
        z[:, s] = np.minimum((u[:, s, None] > cum[z[:, s - 1]]).sum(axis=1), k - 1)
    comp = (rng.random((n_seq, t, 1)) > np.cumsum(weights[z], axis=-1)).sum(axis=-1)
    comp = np.minimum(comp, m - 1)
    x = means[z, comp] + rng.normal(size=(n_seq, t, d)) * 0.7
    var = x.reshape(-1, d).var(axis=0)
    covars = {"diag": np.tile(var, (k, m, 1)), "spherical": np.full((k, m), var.mean()),
              "full": np.tile(np.diag(var), (k, m, 1, 1)),
              "tied": np.tile(np.diag(var), (k, 1, 1))}[ct]
    start = dict(startprob_=np.full(k, 1.0 / k), transmat_=0.5 * np.eye(k) + 0.5 / k,
                 weights_=np.full((k, m), 1.0 / m),
                 means_=means + rng.normal(size=means.shape) * 0.5, covars_=covars)
    return x, start


def bench_engine(x, start, ct, n_iter, repeat):
    n_seq, t, d = x.shape
    k, m = start["weights_"].shape
    fam = HMM(GMMEmission(n_mix=m, covariance_type=ct), seq_len=t, update="stmcw")
    xf, w = pad_sequences(x.reshape(-1, d), [t] * n_seq)
    shift = xf.mean(axis=0)  # as the estimator: fit centred data
    xf, w = jnp.asarray(xf - shift, jnp.float32), jnp.asarray(w, jnp.float32)
    f = lambda a: jnp.asarray(start[a], jnp.float32)
    p0 = HMMParams(f("startprob_"), f("transmat_"), fam.emission.from_covariances(
        f("weights_"), f("means_") - jnp.asarray(shift, jnp.float32), f("covars_")))
    run = jax.jit(lambda p, x, w: jaxem.em.run(fam, p, x, w, max_iter=n_iter, tol=-1.0))
    t0 = time.perf_counter()
    compiled = run.lower(p0, xf, w).compile()
    compile_s = time.perf_counter() - t0
    out = jax.block_until_ready(compiled(p0, xf, w))
    seconds = _env.best_of(lambda: jax.block_until_ready(compiled(p0, xf, w)), repeat)
    return {"seconds": seconds, "compile_seconds": compile_s, "n_iter": int(out.n_iter),
            "final_total_log_likelihood": float(out.trace[-1]) * n_seq * t}


def bench_estimator(x, start, ct, n_iter):
    n_seq, t, d = x.shape
    k, m = start["weights_"].shape
    model = jaxem.GMMHMM(k, n_mix=m, covariance_type=ct, n_iter=n_iter, tol=-np.inf,
                         init_params="")
    X, lengths = x.reshape(-1, d), [t] * n_seq

    def fit():
        for name, value in start.items():
            setattr(model, name, value)
        model.fit(X, lengths)

    t0 = time.perf_counter()
    fit()
    first = time.perf_counter() - t0
    seconds = _env.best_of(fit, 1)
    return {"seconds": seconds, "compile_seconds": max(first - seconds, 0.0),
            "n_iter": len(model.monitor_.history),
            "final_total_log_likelihood": float(model.monitor_.history[-1])}


def bench_hmmlearn(x, start, ct, n_iter, implementation, repeat):
    from hmmlearn import hmm as hl

    n_seq, t, d = x.shape
    k, m = start["weights_"].shape
    X, lengths = x.reshape(-1, d), [t] * n_seq
    model = None

    def fit():
        nonlocal model
        model = hl.GMMHMM(k, n_mix=m, covariance_type=ct, n_iter=n_iter, tol=-np.inf,
                          init_params="", implementation=implementation)
        for name, value in start.items():
            setattr(model, name, np.array(value))
        model._init = lambda X, lengths=None: None  # sets nothing here; skip its k-means
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X, lengths)

    seconds = _env.best_of(fit, repeat)
    return {"seconds": seconds, "compile_seconds": 0.0, "n_iter": len(model.monitor_.history),
            "final_total_log_likelihood": float(model.monitor_.history[-1])}


def flops_per_iteration(n, k, m, d, ct):
    """Rough floating-point work of one EM iteration (multiply-add = 2): the component
    densities twice (log-likelihoods, then responsibilities), their statistics, and
    forward-backward. An estimate for the achieved rate, not a count of XLA's ops."""
    per_density = {"full": 2 * d * d, "tied": 2 * d * d, "diag": 3 * d, "spherical": 3 * d}[ct]
    per_stat = {"full": 2 * d * d, "tied": 2 * d * d, "diag": 4 * d, "spherical": 4 * d}[ct]
    return n * k * m * (2 * per_density + per_stat + 10) + n * 6 * k * k


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny shapes, for a smoke test")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    ap.add_argument("--covariance-types", default=",".join(COVARIANCE_TYPES))
    args = ap.parse_args()
    n_seq, t, d, k, m, n_iter = 20, 500, 4, 4, 3, 20
    if args.quick:
        n_seq, t, d, k, m, n_iter = 2, 30, 2, 2, 2, 2
    results = {"machine": machine(),
               "problem": {"n_sequences": n_seq, "seq_len": t, "n_features": d,
                           "n_components": k, "n_mix": m, "n_iter": n_iter,
                           "repeat": args.repeat, "jaxem_dtype": "float32",
                           "hmmlearn_dtype": "float64"},
               "fit": {}}
    for ct in args.covariance_types.split(","):
        x, start = make_problem(n_seq, t, d, k, m, ct)
        runs = {"jaxem": bench_engine(x, start, ct, n_iter, args.repeat),
                "jaxem GMMHMM estimator": bench_estimator(x, start, ct, n_iter),
                "hmmlearn (log)": bench_hmmlearn(x, start, ct, n_iter, "log", args.repeat),
                "hmmlearn (scaling)": bench_hmmlearn(x, start, ct, n_iter, "scaling",
                                                     args.repeat)}
        base = runs["jaxem"]["seconds"]
        flops = flops_per_iteration(n_seq * t, k, m, d, ct) * n_iter
        runs["jaxem"]["gflops_per_second_estimate"] = flops / base / 1e9
        for r in runs.values():
            r["time_over_jaxem"] = r["seconds"] / base
        results["fit"][ct] = runs
        print(ct, {name: round(r["seconds"], 4) for name, r in runs.items()}, flush=True)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    if not args.quick:
        _env.write_results(_env.RESULTS, f"bench_gmmhmm_{_env.backend()}", results,
                           markdown(results))
    print(markdown(results))


def markdown(r):
    mach, p = r["machine"], r["problem"]
    vers = ", ".join(f"{k} {v}" for k, v in mach["versions"].items() if v)
    lines = [
        "# GMM-HMM Baum-Welch benchmark (bench_gmmhmm.py)", "",
        _env.machine_line(mach), f"Versions: {vers}.", "",
        f"{p['n_sequences']} sequences x {p['seq_len']} steps, {p['n_features']}-D, "
        f"{p['n_components']} states x {p['n_mix']} Gaussian components, {p['n_iter']} EM "
        "iterations from the same starting parameters on the same data; jaxem in float32, "
        f"hmmlearn in float64. Best of {p['repeat']} (the estimator: its second call); "
        "compile time excluded and reported separately.", "",
        "| covariance | implementation | seconds | compile s | time / jaxem's | "
        "final log-likelihood |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for ct, runs in r["fit"].items():
        for name, x in runs.items():
            lines.append(f"| {ct} | {name} | {x['seconds']:.4f} | {x['compile_seconds']:.2f} "
                         f"| {x['time_over_jaxem']:.2f} | {x['final_total_log_likelihood']:.6g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
