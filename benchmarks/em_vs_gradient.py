"""EM versus gradient ascent (optax) on Gaussian mixtures, from identical starting points.

Two workloads (well-separated and heavily overlapping components), ``n_init`` restarts
each, every method started from the same parameters and run for the same number of
iterations, batched over the restarts in one jit. Per method: median iterations and
seconds (the batched run's wall clock, compile excluded and reported separately) to reach
within ``eps`` (mean log-likelihood per sample) of the best value any method found, and
the share of restarts that reach it.

    python benchmarks/em_vs_gradient.py [--n-init 32] [--max-iter 500]

writes ``benchmarks/results/em_vs_gradient.{json,md}``.
"""
from __future__ import annotations

import argparse
import functools
import json

import jax
import numpy as np
import optax

import _env
import jaxem

SGD_MOMENTUM = functools.partial(optax.sgd, momentum=0.9)
FACTORIES = {"sgd": optax.sgd, "sgd+momentum": SGD_MOMENTUM, "adam": optax.adam}
LBFGS = optax.lbfgs()
SWEEP = [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0]


def choose_learning_rate(factory, x, max_iter, key, init):
    """The swept rate with the best median final log-likelihood and no divergence, on
    8 restarts from another key: one batched, vmapped program per optimiser."""
    res = jaxem.fit_gradient(jaxem.gaussian("full"), x, n_components=4, key=key, n_init=8,
                             optimizer=factory, learning_rate=SWEEP, max_iter=max_iter,
                             init=init)
    failed = np.asarray(res.restarts.failed).any(axis=1)
    score = np.where(failed, -np.inf, np.median(np.asarray(res.restarts.log_likelihood), 1))
    return SWEEP[int(np.argmax(score))]


def workload(name: str, key, n: int = 2000):
    """Four 2-D Gaussians; ``separation`` scales the distance between their means."""
    separation = {"well separated": 6.0, "heavily overlapping": 1.0}[name]
    means = separation * np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    covs = np.array([[[1.0, 0.3], [0.3, 0.5]], [[0.5, 0.0], [0.0, 1.0]],
                     [[0.8, -0.2], [-0.2, 0.6]], [[1.0, 0.0], [0.0, 1.0]]])
    fam = jaxem.gaussian("full")
    params = jaxem.families.GaussianParams(
        np.full(4, 0.25, np.float32), means.astype(np.float32),
        np.asarray(fam.precisions_cholesky_from(covariances=covs.astype(np.float32))))
    return fam.sample(key, params, n)[0]


def machine():
    return dict(_env.machine(), versions=_env.versions(("jax", "jaxlib", "optax", "numpy", "jaxem")))


def summarise(cmp):
    rows = {}
    for name, m in cmp.methods.items():
        reached = m.reached
        rows[name] = {
            "median_iterations_to_best": float(np.median(m.iterations_to_best[reached]))
            if reached.any() else None,
            "median_seconds_to_best": float(np.median(m.seconds_to_best[reached]))
            if reached.any() else None,
            "share_reaching_best": m.fraction_reached,
            "failed": int(m.failed.sum()),
            "median_final_log_likelihood": float(np.median(m.final_log_likelihood)),
            "seconds_per_iteration": m.run_seconds / max(int(np.nanmax(
                np.sum(np.isfinite(m.trace), axis=1))), 1),
            "run_seconds": m.run_seconds,
            "compile_seconds": m.compile_seconds,
        }
    return {"best_log_likelihood": cmp.best_log_likelihood, "eps": cmp.eps, "methods": rows}


def markdown(report):
    out = ["# EM versus gradient ascent\n",
           _env.machine_line(report["machine"]) + " Versions: "
           + ", ".join(f"{k} {v}" for k, v in report["machine"]["versions"].items()) + ".\n",
           f"Gaussian mixture, full covariances, K=4, D=2, n={report['n_samples']}, "
           f"n_init={report['n_init']} restarts (init {report['init']!r}) shared by all "
           f"methods, {report['max_iter']} iterations max, float32. 'Best' = the best final "
           f"mean log-likelihood of any method; a restart reaches it when its trace comes "
           f"within eps={report['eps']} of it. Iterations and seconds are medians over the "
           f"restarts that reach it; seconds are the batched run's wall clock per iteration "
           f"(all restarts together) times the iterations, compile excluded. Learning "
           f"rates: " + "; ".join(f"{w}: " + ", ".join(f"{k} {v}" for k, v in lr.items())
                                   for w, lr in report["learning_rates"].items())
           + " (per workload, chosen by a vmapped sweep over " + str(SWEEP)
           + " on 8 other restarts: best median final log-likelihood without divergence)"
           "; lbfgs: optax defaults (zoom line search).\n"]
    for wl, s in report["workloads"].items():
        em = s["methods"]["EM"]
        out.append(f"\n## {wl} (best mean log-likelihood {s['best_log_likelihood']:.4f})\n")
        out.append("| method | median iterations to best | median seconds to best | "
                   "share of restarts reaching best | failed | s / iteration | "
                   "seconds to best / EM's | compile s |")
        out.append("|---|---|---|---|---|---|---|---|")
        for name, r in s["methods"].items():
            it = "never" if r["median_iterations_to_best"] is None else \
                f"{r['median_iterations_to_best']:.0f}"
            sec = "never" if r["median_seconds_to_best"] is None else \
                f"{r['median_seconds_to_best']:.4f}"
            ratio = "–" if r["median_seconds_to_best"] is None or \
                not em["median_seconds_to_best"] else \
                f"{r['median_seconds_to_best'] / em['median_seconds_to_best']:.1f}×"
            out.append(f"| {name} | {it} | {sec} | {100 * r['share_reaching_best']:.0f}% | "
                       f"{r['failed']} | {r['seconds_per_iteration']:.2e} | {ratio} | "
                       f"{r['compile_seconds']:.1f} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-init", type=int, default=32)
    ap.add_argument("--max-iter", type=int, default=500)
    ap.add_argument("--n-samples", type=int, default=2000)
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--init", default="random")
    args = ap.parse_args()
    report = {"machine": machine(), "n_init": args.n_init, "max_iter": args.max_iter,
              "n_samples": args.n_samples, "eps": args.eps, "init": args.init,
              "learning_rates": {}, "workloads": {}}
    for i, wl in enumerate(["well separated", "heavily overlapping"]):
        x = workload(wl, jax.random.key(100 + i), args.n_samples)
        lrs = {name: choose_learning_rate(f, x, args.max_iter, jax.random.key(50 + i), args.init)
               for name, f in FACTORIES.items()}
        report["learning_rates"][wl] = lrs
        methods = {name: (FACTORIES[name], lr) for name, lr in lrs.items()}
        methods["lbfgs"] = LBFGS
        cmp = jaxem.compare(jaxem.gaussian("full"), x, n_components=4,
                            key=jax.random.key(i), n_init=args.n_init,
                            max_iter=args.max_iter, eps=args.eps, init=args.init,
                            optimizers=methods, repeat=3)
        report["workloads"][wl] = summarise(cmp)
        print(wl, json.dumps(report["workloads"][wl], indent=1), flush=True)
    _env.write_results(_env.RESULTS, "em_vs_gradient", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
