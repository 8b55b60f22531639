"""Time jaxem's Gaussian-mixture EM against scikit-learn and other EM implementations.

Runs unchanged on a CPU or a GPU: JAX and the torch peers use the accelerator when there
is one (scikit-learn stays on the CPU), the results files are named by JAX's backend
(``gmm_cpu.*``, ``gmm_gpu.*``), and on a GPU a 10-million-row workload is added.

Every implementation gets the same data, the same explicit starting parameters
(weights, means, precisions) and runs a fixed number of EM iterations (``tol`` set so
that none stops early; the iteration counts are checked). jaxem and gmmx are timed
after a first, compiling call (reported separately as "first call"); every timed
call ends with ``jax.block_until_ready`` on the whole output. The mean
log-likelihood of each implementation's *final* parameters is evaluated by one
float64 routine (scikit-learn's), so a difference from scikit-learn's value says
whether the same work was done.

Usage::

    python benchmarks/bench_gmm.py            # the full run, writes benchmarks/results/gmm_<backend>.*
    python benchmarks/bench_gmm.py --quick    # a tiny smoke run (< 20 s), writes nothing
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

import jax
import jax.numpy as jnp

import jaxem
import _env
import jaxem.batch
from jaxem.families import GaussianParams

try:
    from tqdm import tqdm
except ImportError:  # plain prints instead of a progress bar
    tqdm = None

PEERS = ("sklearn", "gmmx", "pomegranate", "torchgmm")
PACKAGES = ("jax", "jaxlib", "numpy", "scikit-learn", "gmmx", "pomegranate", "torch",
            "torchgmm", "jaxem")


# -- workloads ------------------------------------------------------------------------
def workloads(quick: bool, gpu: bool = False) -> list[dict]:
    if quick:
        return [dict(name="tiny full, n_init=2", n=2000, d=4, k=3, ct="full", iters=5,
                     n_init=2)]
    big = [
        # An accelerator's workload: reading 10^7 x 64 float32 rows (2.56 GB) once per
        # iteration bounds a diag iteration at about 1 ms on an H100. scikit-learn would
        # take minutes per call here, and gmmx materialises (N, K, D) arrays (41 GB).
        dict(name="N=10M D=64 K=16 diag, 10 it, n_init=1", n=10_000_000, d=64, k=16,
             ct="diag", iters=10, n_init=1, peer_repeats=1,
             skip=("sklearn", "gmmx")),
        dict(name="N=10M D=64 K=16 diag, 10 it, n_init=8", n=10_000_000, d=64, k=16,
             ct="diag", iters=10, n_init=8, peer_repeats=1,
             skip=("sklearn", "gmmx", "pomegranate", "torchgmm")),
    ] if gpu else []
    return [
        dict(name="N=20k D=8 K=8 full, 50 it, n_init=1", n=20_000, d=8, k=8, ct="full",
             iters=50, n_init=1),
        dict(name="N=20k D=8 K=8 full, 50 it, n_init=8", n=20_000, d=8, k=8, ct="full",
             iters=50, n_init=8),
        # 1M rows: the slow peers get 1 timed call (gmmx: after its compiling call).
        dict(name="N=1M D=16 K=16 diag, 10 it, n_init=1", n=1_000_000, d=16, k=16, ct="diag",
             iters=10, n_init=1, peer_repeats=1, gmmx_repeats=2),
        dict(name="N=1M D=16 K=16 diag, 10 it, n_init=8", n=1_000_000, d=16, k=16, ct="diag",
             iters=10, n_init=8, peer_repeats=1, gmmx_repeats=1),
    ] + big


# -- arithmetic per EM iteration, and a plain GEMM of the same size -----------------------
FLOP_FORMULA = {
    # log_joint: (x*x) @ prec.T and x @ (mu*prec).T; statistics: resp.T @ x and resp.T @ (x*x)
    "diag": "8·N·D·K (E-step (N, 2D) @ (2D, K), 4·N·D·K + statistics (K, N) @ (N, 2D), 4·N·D·K)",
    "spherical": "4·N·D·K (E-step x @ μᵀ 2·N·D·K + statistics resp.T @ x 2·N·D·K)",
    # per component: (x - mu_k) @ L_k, then sum_n r_nk x_n x_n^T and resp.T @ x
    "full": "4·N·K·D² + 2·N·D·K (E-step (x-μ_k) @ L_k 2·N·K·D² + statistics Σ r x xᵀ "
            "2·N·K·D² + resp.T @ x 2·N·D·K)",
    "tied": "4·N·D·K + 2·N·D² + 2·N·D·K (E-step x@L, μ@L; statistics)",
}


def flops_per_iter(w) -> float:
    """Flops of one EM iteration of one restart (the GEMM-shaped work only)."""
    n, d, k = w["n"], w["d"], w["k"]
    return {"diag": 8.0 * n * d * k, "spherical": 4.0 * n * d * k,
            "full": 4.0 * n * k * d * d + 2.0 * n * d * k,
            "tied": 4.0 * n * d * k + 2.0 * n * d * d + 2.0 * n * d * k}[w["ct"]]


def gemm_peak(w, x, chunk, repeats=5) -> dict:
    """GFLOP/s of plain jitted float32 GEMMs with the flops of one EM iteration of all
    restarts: (N, D) @ (D, M), M = flops / (2·N·D); whole (N×M output written) and in
    row chunks of the jaxem chunk (each chunk's product summed over rows, as EM does)."""
    n, d = w["n"], w["d"]
    m = max(1, int(round(flops_per_iter(w) * w["n_init"] / (2.0 * n * d))))
    xx = jax.block_until_ready(jnp.asarray(x, jnp.float32))
    b = jnp.asarray(np.random.default_rng(1).normal(size=(d, m)), jnp.float32)
    whole = jax.jit(lambda a, b: jnp.dot(a, b))
    out = {"m": m, "flops": 2.0 * n * d * m}
    fns = {"whole": whole}
    if chunk and chunk < n and n % chunk == 0:
        def chunked(a, b):
            a3 = a.reshape(n // chunk, chunk, d)
            def body(i, acc):
                return acc + jnp.dot(a3[i], b).sum(0)
            return jax.lax.fori_loop(0, n // chunk, body, jnp.zeros((m,), jnp.float32))
        fns[f"chunk {chunk}"] = jax.jit(chunked)
    for name, f in fns.items():
        jax.block_until_ready(f(xx, b))
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(xx, b))
            best = min(best, time.perf_counter() - t0)
        out[name] = {"best_s": best, "gflops": out["flops"] / best / 1e9}
    return out


def make_data(w: dict, seed: int = 0):
    """Samples of a random ``K``-component mixture, and ``n_init`` starting parameters
    (drawn from their own stream, so workloads that differ only in ``n_init`` share the
    data and their first starts)."""
    x = make_x(w["n"], w["d"], w["k"], w["ct"], seed)
    return x, make_starts(x, w, seed + 1)


@functools.lru_cache(maxsize=1)
def make_x(n: int, d: int, k: int, ct: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, (k, d))
    z = rng.integers(0, k, n)
    if ct == "full":
        a = rng.normal(size=(k, d, d)) / np.sqrt(d)
        chol = np.linalg.cholesky(a @ a.transpose(0, 2, 1) + 0.2 * np.eye(d))
        return centres[z] + np.einsum("nde,ne->nd", chol[z], rng.normal(size=(n, d)))
    return centres[z] + rng.uniform(0.3, 1.5, (k, d))[z] * rng.normal(size=(n, d))


def make_starts(x: np.ndarray, w: dict, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    (n, d), k = x.shape, w["k"]
    starts = []
    for _ in range(w["n_init"]):  # random_from_data: data points as means, data covariance
        means = x[rng.choice(n, k, replace=False)]
        if w["ct"] == "full":
            prec = np.broadcast_to(np.linalg.inv(np.cov(x.T)), (k, d, d)).copy()
        else:
            prec = np.broadcast_to(1.0 / x.var(0), (k, d)).copy()
        starts.append(dict(weights=np.full(k, 1.0 / k), means=means, precisions=prec))
    return starts


def final_mean_ll(x, ct, weights, means, covariances) -> float:
    """Mean log-likelihood of ``x`` at the given parameters, in float64 (scikit-learn)."""
    from sklearn.mixture import GaussianMixture
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    gm = GaussianMixture(len(weights), covariance_type=ct)
    gm.weights_ = np.asarray(weights, np.float64)
    gm.means_ = np.asarray(means, np.float64)
    gm.covariances_ = np.asarray(covariances, np.float64)
    gm.precisions_cholesky_ = _compute_precision_cholesky(gm.covariances_, ct)
    return float(gm.score(x))


def inv_prec(prec, ct):
    return np.linalg.inv(prec) if ct == "full" else 1.0 / prec


# -- the implementations --------------------------------------------------------------
# Each returns a list of (mean LL at the final parameters, iterations run) per start
# and the time of one call; ``setup`` builds what a call needs outside the timing.

class JaxemRunner:
    def __init__(self, w, x, starts, dtype):
        self.w, self.dtype = w, dtype
        self.fam = jaxem.gaussian(w["ct"])
        self.x64 = x
        with self.ctx():
            self.x = jnp.asarray(x, dtype)
            fam = self.fam
            stack = lambda key: np.stack([s[key] for s in starts])
            prec_chol = fam.precisions_cholesky_from(precisions=jnp.asarray(stack("precisions"), dtype))
            self.init = GaussianParams(jnp.asarray(stack("weights"), dtype),
                                       jnp.asarray(stack("means"), dtype), prec_chol)
            if w["n_init"] == 1:
                self.init = jax.tree.map(lambda a: a[0], self.init)
            self.init = jax.block_until_ready(self.init)

    def ctx(self):
        return jax.enable_x64(True) if self.dtype == np.float64 else contextlib.nullcontext()

    def __call__(self):
        w = self.w
        with self.ctx():
            out = jaxem.fit(self.fam, self.x, n_components=w["k"], key=jax.random.key(0),
                            # tol < 0: never "converged". With tol=0 jaxem stops at an exact
                            # float fixed point (|change| <= tol), i.e. after fewer iterations.
                            n_init=w["n_init"], init=self.init, tol=-1.0, max_iter=w["iters"],
                            chunk_size=w.get("chunk_size"))
            return jax.block_until_ready(out)

    def check(self, out):
        r = out.restarts
        res = []
        with self.ctx():
            cov = self.fam.covariances(r.params)
        for i in range(self.w["n_init"]):
            res.append((final_mean_ll(self.x64, self.w["ct"], np.asarray(r.params.weights[i]),
                                      np.asarray(r.params.means[i]), np.asarray(cov[i])),
                        int(r.n_iter[i]), float(r.log_likelihood[i])))
        return res


class SklearnRunner:
    """n_init starts = that many sequential single-start fits (sklearn's own n_init
    would repeat one explicit start)."""

    def __init__(self, w, x, starts):
        self.w, self.x, self.starts = w, x, starts

    def __call__(self):
        from sklearn.mixture import GaussianMixture

        fits = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "did not converge": intended, tol=0
            for s in self.starts:
                fits.append(GaussianMixture(
                    self.w["k"], covariance_type=self.w["ct"], weights_init=s["weights"],
                    means_init=s["means"], precisions_init=s["precisions"], tol=0.0,
                    max_iter=self.w["iters"]).fit(self.x))
        return fits

    def check(self, fits):
        return [(final_mean_ll(self.x, self.w["ct"], g.weights_, g.means_, g.covariances_),
                 int(g.n_iter_), float(g.lower_bound_)) for g in fits]


class GmmxRunner:
    """gmmx has no batch over starts: n_init starts are sequential calls of one jit."""

    def __init__(self, w, x, starts):
        from gmmx import EMFitter, GaussianMixtureModelJax

        self.w = w
        self.x = jax.block_until_ready(jnp.asarray(x, jnp.float32))
        self.x64 = x
        self.models = [GaussianMixtureModelJax.from_squeezed(
            means=jnp.asarray(s["means"], jnp.float32),
            covariances=jnp.asarray(inv_prec(s["precisions"], w["ct"]), jnp.float32),
            weights=jnp.asarray(s["weights"], jnp.float32), covariance_type=w["ct"])
            for s in starts]
        # tol=0: gmmx continues while |change| >= tol, i.e. always.
        self.fitter = EMFitter(tol=0.0, max_iter=w["iters"], reg_covar=1e-6)

    def __call__(self):
        return [jax.block_until_ready(self.fitter.fit(self.x, m)) for m in self.models]

    def check(self, outs):
        res = []
        for r in outs:
            g = r.gmm
            res.append((final_mean_ll(self.x64, self.w["ct"], g.weights_numpy, g.means_numpy,
                                      g.covariances.values_numpy),
                        int(r.n_iter), float(r.log_likelihood)))
        return res


class PomegranateRunner:
    """pomegranate 1.x (torch, float32). It adds no reg_covar (min_cov=None)."""

    def __init__(self, w, x, starts):
        import torch

        self.torch, self.device = torch, torch_device()
        self.w, self.starts, self.x64 = w, starts, x
        self.x = torch.as_tensor(x, dtype=torch.float32).to(self.device)

    def _model(self, s):
        from pomegranate.distributions import Normal
        from pomegranate.gmm import GeneralMixtureModel

        t = lambda a: self.torch.as_tensor(np.asarray(a), dtype=self.torch.float32)
        cov = inv_prec(s["precisions"], self.w["ct"])
        dists = [Normal(means=t(s["means"][j]), covs=t(cov[j]), covariance_type=self.w["ct"])
                 for j in range(self.w["k"])]
        # tol=-inf: it stops when the improvement < tol, i.e. never.
        model = GeneralMixtureModel(dists, priors=t(s["weights"]), max_iter=self.w["iters"],
                                    tol=-np.inf)
        return _env.count_e_steps(model).to(self.device)

    def __call__(self):
        models = [self._model(s) for s in self.starts]  # construction is cheap
        with self.torch.no_grad():
            for m in models:
                m.fit(self.x)
        torch_sync(self.torch)
        return models

    def check(self, models):
        res = []
        for m in models:
            weights = m.priors.detach().cpu().numpy().astype(np.float64)
            means = np.stack([d.means.detach().cpu().numpy() for d in m.distributions])
            covs = np.stack([d.covs.detach().cpu().numpy() for d in m.distributions])
            res.append((final_mean_ll(self.x64, self.w["ct"], weights / weights.sum(), means, covs),
                        m.n_e_steps, float("nan")))
        return res


class TorchgmmRunner:
    """torchgmm (PyTorch Lightning, float32). Its estimator accepts only initial means
    and re-estimates the rest in an initialisation epoch, so we build its model with
    the given weights/means/precisions and run its EM Lightning module (full batch,
    one epoch = one EM iteration, convergence_tolerance=0: no early stopping)."""

    def __init__(self, w, x, starts):
        import logging

        import torch

        for name in ("lightning.pytorch", "pytorch_lightning", "lightning"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self.torch = torch
        self.w, self.starts, self.x64 = w, starts, x
        self.x = torch.as_tensor(x, dtype=torch.float32)

    def _fit(self, s):
        import pytorch_lightning as pl
        from torchgmm.base.data import DataLoader, collate_tensor, dataset_from_tensors
        from torchgmm.bayes.core import cholesky_precision
        from torchgmm.bayes.gmm.lightning_module import GaussianMixtureLightningModule
        from torchgmm.bayes.gmm.model import GaussianMixtureModel, GaussianMixtureModelConfig

        torch, w = self.torch, self.w
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)
        model = GaussianMixtureModel(GaussianMixtureModelConfig(
            num_components=w["k"], num_features=w["d"], covariance_type=w["ct"]))
        with torch.no_grad():
            model.component_probs.copy_(t(s["weights"]))
            model.means.copy_(t(s["means"]))
            model.precisions_cholesky.copy_(
                cholesky_precision(t(inv_prec(s["precisions"], w["ct"])), w["ct"]))
        module = GaussianMixtureLightningModule(model, convergence_tolerance=0.0,
                                                covariance_regularization=1e-6,
                                                is_batch_training=False)
        loader = DataLoader(dataset_from_tensors(self.x), batch_size=len(self.x),
                            collate_fn=collate_tensor)
        trainer = pl.Trainer(max_epochs=w["iters"], logger=False, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False,
                             accelerator="gpu" if torch_device() == "cuda" else "cpu",
                             devices=1)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            trainer.fit(module, loader)
        torch_sync(torch)
        return model.cpu(), module.current_epoch

    def __call__(self):
        return [self._fit(s) for s in self.starts]

    def check(self, outs):
        res = []
        for model, epochs in outs:
            weights = model.component_probs.detach().numpy().astype(np.float64)
            res.append((final_mean_ll(self.x64, self.w["ct"], weights / weights.sum(),
                                      model.means.detach().numpy(),
                                      model.covariances.detach().numpy()),
                        int(epochs), float("nan")))
        return res


def torch_device() -> str:
    """The torch peers run where JAX runs: on the GPU when JAX's backend is one."""
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def torch_sync(torch) -> None:
    """Wait for queued CUDA work, so the clock reads finished work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peer_runner(name, w, x, starts):
    if name == "sklearn":
        return SklearnRunner(w, x, starts)
    if name == "gmmx":
        return GmmxRunner(w, x, starts)
    if name == "pomegranate":
        return PomegranateRunner(w, x, starts)
    if name == "torchgmm":
        return TorchgmmRunner(w, x, starts)
    raise KeyError(name)


UNCOMPARABLE: dict[str, str] = {}  # peers that cannot be run on equal terms, and why


# -- timing -------------------------------------------------------------------------
def time_calls(fn, repeats: int, warm: bool):
    """``(first call s, [wall s...], [process CPU s...], last output)``.

    ``warm``: the first call compiles and is not one of the repeats. CPU time (all
    threads of this process) is reported too: other jobs shared the machine.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
    times, cpu = ([], []) if warm else ([first], [first_cpu])
    for _ in range(repeats - len(times)):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return first, times, cpu, out


def installed(name: str) -> bool:
    mod = {"sklearn": "sklearn"}.get(name, name)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            __import__(mod)
        return True
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False


def run(args, save=None) -> dict:
    gpu = jax.default_backend() != "cpu"
    wls = [w for w in workloads(args.quick, gpu) if args.only in w["name"]]
    # Quick: only the peers that import fast (torch's import alone takes seconds).
    peers = [p for p in PEERS if p not in args.skip
             and not (args.quick and p in ("pomegranate", "torchgmm"))]
    plan = []
    for w in wls:
        plan.append((w, "jaxem float32"))
        if w["n"] <= 100_000 and not args.quick:
            plan.append((w, "jaxem float64"))
        # On a GPU, torchgmm's Lightning loop (seconds per fit) runs one start only.
        skip = w.get("skip", ()) + (("torchgmm",) if gpu and w["n_init"] > 1 else ())
        plan += [(w, p) for p in peers if p not in skip]
    load_start = list(os.getloadavg())
    bar = tqdm(plan, desc="bench", unit="run") if tqdm else plan
    rows, data_cache = [], {}
    for i, (w, impl) in enumerate(bar):
        if tqdm:
            bar.set_postfix_str(f"{w['name']} | {impl}")
        else:
            print(f"[{i + 1}/{len(plan)}] {w['name']} | {impl}", flush=True)
        if w["name"] not in data_cache:
            data_cache = {w["name"]: make_data(w)}
        x, starts = data_cache[w["name"]]
        row = dict(workload=w["name"], impl=impl, n=w["n"], d=w["d"], k=w["k"],
                   covariance_type=w["ct"], iters=w["iters"], n_init=w["n_init"])
        if impl in UNCOMPARABLE:
            row["note"] = UNCOMPARABLE[impl]
            rows.append(row)
            continue
        if not impl.startswith("jaxem") and not installed(impl):
            row["note"] = "not installed"
            rows.append(row)
            continue
        try:
            measure(row, w, impl, x, starts, args)
        except Exception as e:  # noqa: BLE001 - one failed peer (e.g. out of memory) is a row
            row["note"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        rows.append(row)
        if impl == "jaxem float32" and "best_s" in row:
            peak = gemm_peak(w, x, row.get("chunk_size"))
            rows.append(dict(workload=w["name"], impl="GEMM peak", n=w["n"], d=w["d"], k=w["k"],
                             covariance_type=w["ct"], iters=w["iters"], n_init=w["n_init"],
                             gemm=peak))
        if save:  # what ran so far, so a run cut short still leaves its table
            save(summarise(rows, wls, args, load_start))
    return summarise(rows, wls, args, load_start)


def summarise(rows, wls, args, load_start) -> dict:
    """Ratios, and agreement with scikit-learn (or jaxem float32 where it did not run)."""
    for w in wls:
        group = [r for r in rows if r["workload"] == w["name"]]
        base = {r["impl"]: r for r in group if "best_s" in r}
        jx = base.get("jaxem float32")
        ref_name = "sklearn" if "sklearn" in base else "jaxem float32"
        ref = base.get(ref_name)
        for r in group:
            if "best_s" not in r:
                continue
            if ref:
                r["ll_reference"] = ref_name
                r["max_abs_ll_diff"] = float(np.max(np.abs(
                    np.array(r["final_ll"]) - np.array(ref["final_ll"]))))
            if jx:
                r["time_over_jaxem_f32"] = r["best_s"] / jx["best_s"]
                r["cpu_over_jaxem_f32"] = r["best_cpu_s"] / jx["best_cpu_s"]
    meta = dict(machine=_env.machine(), versions=_env.versions(PACKAGES),
                repeats=args.repeats, peer_repeats=args.peer_repeats, quick=args.quick)
    meta["machine"]["load_average_start"] = load_start
    meta["machine"]["load_average_end"] = list(os.getloadavg())
    return dict(meta=meta, rows=rows)


def measure(row: dict, w: dict, impl: str, x, starts, args) -> None:
    """Time one implementation on one workload and fill ``row`` in."""
    if impl.startswith("jaxem"):
        runner = JaxemRunner(w, x, starts, np.float32 if "32" in impl else np.float64)
        auto = getattr(jaxem.batch, "auto_chunk_size", lambda *a: None)  # older jaxem
        try:
            cs = auto((1, w["n"], w["d"]), w["n_init"], w["k"], runner.fam)
        except TypeError:  # older signature without the family
            cs = auto((1, w["n"], w["d"]), w["n_init"], w["k"])
        row["chunk_size"] = w.get("chunk_size") or cs
        row["chunk_auto"] = w.get("chunk_size") is None
        warm = True
    else:
        runner = peer_runner(impl, w, x, starts)
        warm = impl == "gmmx"
    # Slow single-threaded peers get fewer repeats of the long workloads.
    reps = args.repeats if (impl.startswith("jaxem") or impl == "gmmx") else \
        w.get("peer_repeats", args.peer_repeats)
    if impl == "gmmx":
        reps = w.get("gmmx_repeats", reps)
    first, times, cpu, out = time_calls(runner, reps, warm)
    checks = runner.check(out)
    row.update(first_call_s=first, times_s=times, best_s=min(times),
               median_s=statistics.median(times), cpu_s=cpu, best_cpu_s=min(cpu),
               compile_s=max(first - min(times), 0.0) if warm else None,
               n_iter=[c[1] for c in checks], final_ll=[c[0] for c in checks],
               reported_ll=[c[2] for c in checks])
    row["ran_all_iterations"] = all(c[1] == w["iters"] for c in checks)
    if impl.startswith("jaxem"):
        total = flops_per_iter(w) * w["n_init"] * w["iters"]
        itemsize = 4 if "32" in impl else 8
        row["flops_total"] = total
        row["gflops"] = total / row["best_s"] / 1e9
        # one read of the N×D data per iteration (all restarts share that read)
        row["gbytes_per_s"] = w["n"] * w["d"] * itemsize * w["iters"] / row["best_s"] / 1e9
        # The accelerator's peak so far in this process (runs go from small to large).
        row["device_peak_bytes"] = _env.device_peak_bytes()


def markdown(res: dict) -> str:
    m, v = res["meta"]["machine"], res["meta"]["versions"]
    on_gpu = m.get("backend", "cpu") != "cpu"
    lines = [
        f"# Gaussian-mixture EM on {m.get('backend', 'cpu').upper()}: jaxem vs peers",
        "",
        _env.machine_line(m),
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
        "",
        ("jaxem, gmmx and the torch peers ran on the GPU; scikit-learn on the machine's "
         "CPU. " if on_gpu else "") +
        "Same data, same explicit starting parameters, a fixed number of EM iterations "
        "(checked), best of "
        f"{res['meta']['repeats']} calls for jaxem/gmmx (after a compiling first call) and of "
        f"{res['meta']['peer_repeats']} for the others. *first call* includes jaxem/gmmx's "
        "compilation. *CPU s* is the process CPU time of the best-CPU call (all threads; a "
        "guard against other jobs on the machine). *Δ LL* is the largest difference, over starts, of the float64 mean "
        "log-likelihood at the final parameters from scikit-learn's (from jaxem float32's "
        "where scikit-learn did not run). *× jaxem* is the "
        "implementation's best wall time over jaxem float32's (larger = jaxem faster), "
        "*× jaxem (CPU)* the same for CPU time.",
        "",
        "*GFLOP/s* counts the GEMM-shaped work of one EM iteration of one restart, times "
        "iterations × restarts, over the best wall time: diag " + FLOP_FORMULA["diag"] +
        "; full " + FLOP_FORMULA["full"] + ". *GB/s* counts one read of the N×D data per "
        "iteration (restarts share it). *GEMM peak*: a plain jitted float32 `jnp.dot` "
        "(N, D) @ (D, M) with M = (flops of one iteration of all restarts)/(2·N·D), measured "
        "in the same run, whole (writes the N×M product) and in row chunks of the jaxem chunk "
        "(each chunk's product summed over rows); its GFLOP/s is the ceiling the jaxem number "
        "can be compared with.",
        "",
        "*device peak* is the accelerator's peak allocated memory in the process so far "
        "(JAX's count; the workloads run from small to large)." if on_gpu else "",
        "",
    ]
    for wname in dict.fromkeys(r["workload"] for r in res["rows"]):
        lines += [f"## {wname}", "",
                  "| implementation | best s | median s | CPU s | first call s | iterations | "
                  "final mean LL | Δ LL | × jaxem | × jaxem (CPU) | GFLOP/s | GB/s |"
                  + (" device peak GB |" if on_gpu else ""),
                  "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"
                  + ("---:|" if on_gpu else "")]
        for r in res["rows"]:
            if r["workload"] != wname:
                continue
            if r["impl"] == "GEMM peak":
                g = r["gemm"]
                parts = [f"{k2}: {v2['best_s']:.3f} s, {v2['gflops']:.1f} GFLOP/s"
                         for k2, v2 in g.items() if isinstance(v2, dict)]
                lines.append(f"| GEMM peak (N,{r['d']})@({r['d']},{g['m']}) | "
                             + "; ".join(parts) + " | | | | | | | | | "
                             + f"{max(v2['gflops'] for v2 in g.values() if isinstance(v2, dict)):.1f} | |")
                continue
            name = r["impl"]
            if r.get("chunk_size"):
                name += f" (chunk_size={r['chunk_size']}" + (", auto" if r.get("chunk_auto") else "") + ")"
            if "best_s" not in r:
                lines.append(f"| {name} | – | – | – | – | – | – | – | – | {r.get('note', '')} | | |")
                continue
            its = sorted(set(r["n_iter"]))
            its = f"{its[0]}" if len(its) == 1 else f"{its}"
            if r["n_init"] > 1:
                its += f" × {r['n_init']}"
            lines.append(
                f"| {name} | {r['best_s']:.3f} | {r['median_s']:.3f} | {r['best_cpu_s']:.3f} | "
                f"{r['first_call_s']:.3f} | "
                f"{its} | {r['final_ll'][0]:.6f} | "
                f"{r.get('max_abs_ll_diff', float('nan')):.1e} | "
                f"{r.get('time_over_jaxem_f32', float('nan')):.1f} | "
                f"{r.get('cpu_over_jaxem_f32', float('nan')):.1f} | "
                + (f"{r['gflops']:.1f} | {r['gbytes_per_s']:.2f} |" if "gflops" in r else " | |")
                + (f" {r['device_peak_bytes'] / 1e9:.2f} |" if r.get("device_peak_bytes")
                   else (" |" if on_gpu else "")))
        lines.append("")
    notes = {r["impl"]: r["note"] for r in res["rows"] if r.get("note")}
    if notes:
        lines += ["Notes: " + "; ".join(f"{k}: {val}" for k, val in notes.items()) + ".", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a tiny workload, jaxem/sklearn/gmmx only, print the table, write nothing "
                        "(< 20 s)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls of jaxem and gmmx after the first (default 5; quick 2)")
    p.add_argument("--peer-repeats", type=int, default=None,
                   help="timed calls of the CPU-bound peers (default 2; quick 1)")
    p.add_argument("--only", default="", help="run the workloads whose name contains this")
    p.add_argument("--skip", nargs="*", default=[], choices=PEERS, help="peers to leave out")
    p.add_argument("--out", type=Path, default=_env.RESULTS,
                   help="folder for gmm_<backend>.json and .md (not written with --quick)")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.peer_repeats = args.peer_repeats or (1 if args.quick else 2)
    save = None if args.quick else \
        (lambda res: _env.write_results(args.out, f"gmm_{_env.backend()}", res, markdown(res)))
    print(markdown(run(args, save)))

if __name__ == "__main__":
    main()
