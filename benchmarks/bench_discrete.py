"""Time jaxem's discrete-mixture EM (Bernoulli, categorical) against pomegranate.

Workloads: a Bernoulli mixture on scikit-learn's bundled digits binarised (pixel >= 8
of 16, 1,797 x 64, K = 10), a Bernoulli mixture on N = 100,000 x D = 784 binary rows
drawn from a random 10-component Bernoulli mixture, and a categorical mixture on
N = 100,000 rows of 20 attributes with 5 values each (K = 8).

Every implementation gets the same data, the same explicit starting parameters and runs
a fixed number of EM iterations (tolerances set so that none stops early; the iteration
counts are checked). Each is called once first (reported as "first call": jaxem's
compilation, torch's warm-up) and then timed over several calls; every jaxem call ends
with ``jax.block_until_ready`` on the whole output, every torch call with
``torch.cuda.synchronize()`` on a GPU. The mean log-likelihood of each implementation's
*final* parameters is evaluated by one float64 NumPy routine of this script
(:func:`mean_log_likelihood`), so its difference from jaxem float64's says whether the
same work was done.

jaxem runs maximum-likelihood EM (``alpha=0``), which is what pomegranate's
``Bernoulli`` and ``Categorical`` (``pseudocount=0``) do; see ``M_STEP_NOTE``.

Usage::

    python benchmarks/bench_discrete.py            # the full run, writes benchmarks/results/
    python benchmarks/bench_discrete.py --quick    # tiny shapes (< 30 s), writes nothing
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import time
from pathlib import Path

import numpy as np

import jax
import jax.numpy as jnp

import _env
import jaxem
from jaxem.families.bernoulli import BernoulliParams
from jaxem.families.categorical import CategoricalParams

try:
    from tqdm import tqdm
except ImportError:  # plain prints instead of a progress bar
    tqdm = None

PEERS = ("pomegranate",)
PACKAGES = ("jax", "jaxlib", "numpy", "scikit-learn", "pomegranate", "torch", "jaxem")

M_STEP_NOTE = (
    "Both sides run maximum-likelihood EM: jaxem with `alpha=0` (no pseudo-counts on the "
    "weights or the probabilities), pomegranate's `Bernoulli` (which has no pseudo-count: "
    "p = Σ r·x / Σ r) and `Categorical(pseudocount=0)`; mixing weights Σ r / N on both. "
    "pomegranate checks that its *starting* Bernoulli probabilities lie in [eps, 1 - eps] "
    "but clamps none of its updates. They differ only at the edges: (1) a component with "
    "zero expected count keeps its current parameters in jaxem and becomes 0/0 = NaN in "
    "pomegranate (not met here); (2) a probability estimated as exactly 0 or 1: jaxem takes "
    "log 0 as -1e30, so 0·log 0 = 0, while pomegranate's Bernoulli computes "
    "X @ log p + (1 - X) @ log(1 - p) with log 0 = -inf and 0·(-inf) = NaN. On the digits, "
    "10 pixels are 0 in every image (and others set in only a few), so from the second "
    "iteration on every pomegranate Bernoulli parameter is NaN: that row is timed but its "
    "work is not comparable. *pomegranate (Categorical, 2 values)* fits the same binary "
    "data as a 2-valued categorical, whose M-step is the same maximum-likelihood estimate "
    "and whose log-probability indexes log p instead of multiplying by it, so no NaN. "
    "pomegranate runs with `check_data=False` (its per-call input validation uses "
    "`numpy.isin`, which is slow and fails on CUDA tensors).")


# -- workloads ------------------------------------------------------------------------
def workloads(quick: bool) -> list[dict]:
    """The workloads: ``family`` "bernoulli" or "categorical", ``data`` "digits" or
    "synthetic", shapes, ``iters``; ``categorical_route``: also run pomegranate's
    2-valued Categorical on the binary data."""
    if quick:
        return [
            dict(name="digits binarised 1797x64, K=10, 5 it", family="bernoulli",
                 data="digits", k=10, iters=5, categorical_route=True),
            dict(name="Bernoulli synthetic N=2k D=50 K=4, 5 it", family="bernoulli",
                 data="synthetic", n=2000, d=50, k=4, iters=5),
            dict(name="categorical synthetic N=2k D=6 V=3 K=3, 5 it", family="categorical",
                 data="synthetic", n=2000, d=6, v=3, k=3, iters=5),
        ]
    return [
        dict(name="digits binarised 1797x64, K=10, 50 it", family="bernoulli",
             data="digits", k=10, iters=50, categorical_route=True),
        dict(name="Bernoulli synthetic N=100k D=784 K=10, 50 it", family="bernoulli",
             data="synthetic", n=100_000, d=784, k=10, iters=50),
        dict(name="categorical synthetic N=100k D=20 V=5 K=8, 50 it", family="categorical",
             data="synthetic", n=100_000, d=20, v=5, k=8, iters=50),
    ]


def make_data(w: dict, seed: int = 0):
    """``(x (n, D) integer codes, start)``: the data (0/1 for Bernoulli) and the starting
    parameters ``{"weights": (K,), "probs": (K, D) or (K, D, V)}``, float64."""
    rng = np.random.default_rng(seed)
    k = w["k"]
    if w["data"] == "digits":
        from sklearn.datasets import load_digits

        x = (load_digits().data > 7).astype(np.int8)  # pixel value >= 8 of 16
    elif w["family"] == "bernoulli":
        n, d = w["n"], w["d"]
        true_w, true_p = rng.dirichlet(np.full(k, 5.0)), rng.uniform(0.05, 0.95, (k, d))
        z = rng.choice(k, n, p=true_w)
        x = np.empty((n, d), np.int8)
        for i in range(0, n, 10_000):  # in chunks: no (n, D) float64 temporary
            u = rng.random((min(10_000, n - i), d), dtype=np.float32)
            x[i:i + 10_000] = u < true_p[z[i:i + 10_000]]
    else:
        n, d, v = w["n"], w["d"], w["v"]
        true_w = rng.dirichlet(np.full(k, 5.0))
        true_theta = rng.dirichlet(np.ones(v), (k, d))  # (K, D, V)
        z = rng.choice(k, n, p=true_w)
        u = rng.random((n, d, 1))
        cdf = np.cumsum(true_theta[z], axis=-1)
        x = np.minimum((u > cdf).sum(-1), v - 1).astype(np.int8)  # inverse-CDF draw
    d = x.shape[1]
    if w["family"] == "bernoulli":  # a common Bernoulli-mixture start
        probs = rng.uniform(0.25, 0.75, (k, d))
    else:
        probs = rng.dirichlet(np.full(w["v"], 10.0), (k, d))
    return x, dict(weights=np.full(k, 1.0 / k), probs=probs)


def as_categorical(family: str, probs: np.ndarray) -> np.ndarray:
    """Probabilities as ``(K, D, V)``: a Bernoulli ``p (K, D)`` becomes ``[1 - p, p]``."""
    probs = np.asarray(probs, np.float64)
    return np.stack([1.0 - probs, probs], -1) if family == "bernoulli" else probs


# -- the one float64 evaluation of every implementation's final parameters ----------
def mean_log_likelihood(x: np.ndarray, weights, theta, chunk: int = 8192) -> float:
    """Mean over rows of ``log sum_k w_k prod_d theta[k, d, x_nd]``, in float64.

    ``x (n, D)`` integer codes, ``weights (K,)``, ``theta (K, D, V)`` (a Bernoulli
    mixture as ``V = 2``, see :func:`as_categorical`). ``0 log 0 = 0``; a row with an
    observed value of probability 0 under every component gives ``-inf``; NaN
    parameters give NaN. One-hot rows times ``log theta``, in row chunks.
    """
    from scipy.special import logsumexp

    w = np.asarray(weights, np.float64)
    theta = np.asarray(theta, np.float64)
    k, d, v = theta.shape
    flat = theta.reshape(k, d * v)
    log_t = np.log(np.where(flat > 0, flat, 1.0)).T  # (D V, K), log 0 replaced by 0 ...
    zero = (flat == 0).T.astype(np.float64)  # ... and counted here instead
    with np.errstate(divide="ignore"):
        log_w = np.log(w)
    total = 0.0
    for i in range(0, len(x), chunk):
        xc = x[i:i + chunk].astype(np.int64)
        one_hot = np.zeros((len(xc), d * v))
        one_hot[np.arange(len(xc))[:, None], np.arange(d) * v + xc] = 1.0
        lj = one_hot @ log_t + log_w
        lj[(one_hot @ zero) > 0] = -np.inf  # an observed value of probability 0
        lj[:, np.isnan(flat).any(1) | np.isnan(w)] = np.nan
        total += float(np.sum(logsumexp(lj, axis=1)))
    return total / len(x)


# -- the implementations --------------------------------------------------------------
# Each is a callable doing one whole fit, with ``check(out) -> (final mean LL, iterations)``.

class JaxemRunner:
    """``jaxem.fit`` of the family with ``alpha=0`` from the explicit start."""

    def __init__(self, w, x, start, dtype):
        self.w, self.dtype, self.x_codes = w, dtype, x
        if w["family"] == "bernoulli":
            self.fam, params = jaxem.bernoulli(alpha=0.0), BernoulliParams
        else:
            self.fam, params = jaxem.categorical((w["v"],) * x.shape[1], alpha=0.0), \
                CategoricalParams
        with self.ctx():
            self.x = jax.block_until_ready(jnp.asarray(x, dtype))
            self.init = jax.block_until_ready(params(jnp.asarray(start["weights"], dtype),
                                                     jnp.asarray(start["probs"], dtype)))

    def ctx(self):
        return jax.enable_x64(True) if self.dtype == np.float64 else contextlib.nullcontext()

    def __call__(self):
        w = self.w
        with self.ctx():
            # tol < 0: never "converged" (tol=0 would stop at an exact float fixed point).
            out = jaxem.fit(self.fam, self.x, n_components=w["k"], key=jax.random.key(0),
                            init=self.init, tol=-1.0, max_iter=w["iters"])
            return jax.block_until_ready(out)

    def check(self, out):
        p = out.params
        theta = as_categorical(self.w["family"], np.asarray(p.probabilities))
        return mean_log_likelihood(self.x_codes, np.asarray(p.weights), theta), int(out.n_iter)


def torch_device() -> str:
    """The torch peers run where JAX runs: on the GPU when JAX's backend is one."""
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


class PomegranateRunner:
    """pomegranate 1.x ``GeneralMixtureModel`` (torch, float32) of ``Bernoulli`` or
    ``Categorical`` components; ``as_categorical_route``: binary data as 2-valued
    categoricals."""

    def __init__(self, w, x, start, as_categorical_route=False):
        import torch

        self.torch, self.device = torch, torch_device()
        self.w, self.start, self.x_codes = w, start, x
        self.categorical = w["family"] == "categorical" or as_categorical_route
        # Categorical indexes with integer codes; Bernoulli multiplies float 0/1.
        dtype = torch.int64 if self.categorical else torch.float32
        self.x = torch.as_tensor(x).to(dtype).to(self.device)

    def _model(self):
        from pomegranate.distributions import Bernoulli, Categorical
        from pomegranate.gmm import GeneralMixtureModel

        torch, s = self.torch, self.start
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)
        if self.categorical:
            theta = as_categorical(self.w["family"], s["probs"])
            dists = [Categorical(t(theta[j]), pseudocount=0.0, check_data=False)
                     for j in range(self.w["k"])]
        else:
            dists = [Bernoulli(t(s["probs"][j]), check_data=False) for j in range(self.w["k"])]
        # tol=-inf: it stops when the improvement < tol, i.e. never.
        model = GeneralMixtureModel(dists, priors=t(s["weights"]), max_iter=self.w["iters"],
                                    tol=-np.inf, check_data=False)
        return _env.count_e_steps(model).to(self.device)

    def __call__(self):
        model = self._model()  # construction is cheap; fit changes the model in place
        with self.torch.no_grad():
            model.fit(self.x)
        if self.torch.cuda.is_available():
            self.torch.cuda.synchronize()
        return model

    def check(self, model):
        weights = model.priors.detach().cpu().numpy()
        probs = np.stack([d.probs.detach().cpu().numpy() for d in model.distributions])
        theta = probs if self.categorical else as_categorical("bernoulli", probs)
        return mean_log_likelihood(self.x_codes, weights, theta), model.n_e_steps


def installed(name: str) -> bool:
    """Whether ``name`` imports (any failure counts as not installed)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            __import__(name)
        return True
    except Exception:  # noqa: BLE001
        return False


# -- timing ---------------------------------------------------------------------------
def time_calls(fn, repeats: int):
    """``(first call s, [timed call s...], last output)``: one untimed first call
    (compilation, warm-up), then ``repeats`` timed calls."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return first, times, out


def plan_for(w: dict, skip) -> list[str]:
    """The implementations run on workload ``w``, in order."""
    impls = ["jaxem float32", "jaxem float64"]
    if "pomegranate" not in skip:
        impls.append("pomegranate")
        if w.get("categorical_route"):
            impls.append("pomegranate (Categorical, 2 values)")
    return impls


def run(args) -> dict:
    machine = _env.machine()
    wls = workloads(args.quick)
    plan = [(w, impl) for w in wls for impl in plan_for(w, args.skip)]
    bar = tqdm(plan, desc="bench", unit="run") if tqdm else plan
    rows, cache = [], {}
    for i, (w, impl) in enumerate(bar):
        if tqdm:
            bar.set_postfix_str(f"{w['name']} | {impl}")
        else:
            print(f"[{i + 1}/{len(plan)}] {w['name']} | {impl}", flush=True)
        if w["name"] not in cache:
            cache = {w["name"]: make_data(w)}  # one workload's data held at a time
        x, start = cache[w["name"]]
        row = dict(workload=w["name"], impl=impl, family=w["family"], n=x.shape[0],
                   d=x.shape[1], k=w["k"], iters=w["iters"])
        if impl.startswith("pomegranate") and not installed("pomegranate"):
            row["note"] = "not installed"
            rows.append(row)
            continue
        if impl.startswith("jaxem"):
            runner = JaxemRunner(w, x, start, np.float32 if "32" in impl else np.float64)
            reps = args.repeats
        else:
            runner = PomegranateRunner(w, x, start, as_categorical_route="Categorical" in impl)
            row["device"] = runner.device
            reps = args.peer_repeats
        first, times, out = time_calls(runner, reps)
        ll, n_iter = runner.check(out)
        row.update(first_call_s=first, times_s=times, best_s=min(times),
                   median_s=statistics.median(times), n_iter=n_iter,
                   ran_all_iterations=n_iter == w["iters"], final_ll=ll,
                   s_per_iter=min(times) / max(n_iter, 1))
        if impl.startswith("jaxem"):  # cumulative over the process (None on CPU)
            row["device_peak_bytes"] = _env.device_peak_bytes()
        rows.append(row)
        del runner, out
    # Agreement with jaxem float64 and speed relative to jaxem float32, per workload.
    for w in wls:
        group = {r["impl"]: r for r in rows if r["workload"] == w["name"]}
        ref, base = group.get("jaxem float64", {}), group.get("jaxem float32", {})
        for r in group.values():
            if "best_s" not in r:
                continue
            if "final_ll" in ref:
                r["ll_diff_vs_jaxem_f64"] = r["final_ll"] - ref["final_ll"]
            if "best_s" in base:
                r["time_over_jaxem_f32"] = r["best_s"] / base["best_s"]
    machine["load_average_end"] = list(os.getloadavg())
    meta = dict(machine=machine, versions=_env.versions(PACKAGES), repeats=args.repeats,
                peer_repeats=args.peer_repeats, quick=args.quick,
                device_peak_bytes=_env.device_peak_bytes(), m_step_note=M_STEP_NOTE,
                # jaxem's persistent compilation cache: with it, a first call may read an
                # earlier run's compiled program instead of compiling.
                compilation_cache_dir=jax.config.jax_compilation_cache_dir)
    return dict(meta=meta, rows=rows)


def markdown(res: dict) -> str:
    meta = res["meta"]
    m, v = meta["machine"], meta["versions"]
    peak = meta["device_peak_bytes"]
    lines = [
        f"# Discrete-mixture EM on {m['backend'].upper()}: jaxem vs pomegranate",
        "",
        _env.machine_line(m),
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
        "",
        "Same data, same explicit starting parameters (uniform weights; Bernoulli "
        "probabilities uniform in [0.25, 0.75], categorical ones Dirichlet(10)), a fixed "
        "number of EM iterations (jaxem `tol=-1`, pomegranate `tol=-inf`; the counts are "
        "checked: pomegranate's are its `summarize` calls). Each implementation is called "
        "once first (*first call*: jaxem's compilation, torch's warm-up), then "
        f"{meta['repeats']} timed calls for jaxem and {meta['peer_repeats']} for pomegranate; "
        "*best s* and *median s* are over the timed calls, *s/iteration* = best / "
        "iterations. *final mean LL* is the mean log-likelihood of the final parameters, "
        "evaluated by one float64 NumPy routine for every row; *Δ LL* is its difference "
        "from jaxem float64's (≈ 0: the same work was done). *× jaxem* is the best time "
        "over jaxem float32's (larger = jaxem faster)."
        + (f" jaxem's persistent compilation cache was on (`{meta['compilation_cache_dir']}`): "
           "a jaxem first call may have read an earlier run's compiled program instead of "
           "compiling it." if meta.get("compilation_cache_dir") else "")
        + (f" Peak device memory after all jaxem runs: {peak / 2**20:.0f} MiB." if peak else ""),
        "",
        "M-step: " + meta["m_step_note"],
        "",
    ]
    for wname in dict.fromkeys(r["workload"] for r in res["rows"]):
        lines += [f"## {wname}", "",
                  "| implementation | best s | median s | first call s | iterations | "
                  "s/iteration | final mean LL (float64) | Δ LL vs jaxem f64 | × jaxem |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["rows"]:
            if r["workload"] != wname:
                continue
            name = r["impl"] + (f" ({r['device']})" if r.get("device") == "cuda" else "")
            if "best_s" not in r:
                lines.append(f"| {name} | {r.get('note', '')} | | | | | | | |")
                continue
            its = f"{r['n_iter']}" + ("" if r["ran_all_iterations"] else " (not all!)")
            lines.append(
                f"| {name} | {r['best_s']:.4f} | {r['median_s']:.4f} | "
                f"{r['first_call_s']:.3f} | {its} | {r['s_per_iter']:.2e} | "
                f"{r['final_ll']:.6f} | {r.get('ll_diff_vs_jaxem_f64', float('nan')):.1e} | "
                f"{r.get('time_over_jaxem_f32', float('nan')):.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes and 5 iterations, print the table, write nothing (< 30 s)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed jaxem calls after the first (default 5; quick 2)")
    p.add_argument("--peer-repeats", type=int, default=None,
                   help="timed pomegranate calls after the first (default 3; quick 1)")
    p.add_argument("--skip", nargs="*", default=[], choices=PEERS, help="peers to leave out")
    p.add_argument("--out", type=Path, default=_env.RESULTS,
                   help="folder for discrete_<backend>.json and .md (not written with --quick)")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.peer_repeats = args.peer_repeats or (1 if args.quick else 3)
    res = run(args)
    md = markdown(res)
    print(md)
    if not args.quick:
        _env.write_results(args.out, f"discrete_{_env.backend()}", res, md)


if __name__ == "__main__":
    main()
