"""The ``jaxem`` command line.

``jaxem demo`` fits the built-in Old Faithful data; ``jaxem fit DATA`` fits a model to a
CSV, ``.npy`` or Parquet file and saves it; ``jaxem predict MODEL DATA`` labels rows with
a saved model; ``jaxem info MODEL`` describes one. Bad input: exit code 2, one line.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax

from jaxem import progress
from jaxem.batch import fit, initial_params
from jaxem.compare import compare
from jaxem.datasets import load_faithful
from jaxem.families.gaussian import COVARIANCE_TYPES, gaussian

SNAPSHOTS = (1, 2, 5, 20)


class _Parser(argparse.ArgumentParser):
    """Bad input: one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jaxem", description="EM for latent-variable models on JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="fit a Gaussian mixture to the built-in Old Faithful data",
        description="Fit a Gaussian mixture with many restarts in one batched call to the "
                    "Old Faithful eruptions (272 points), print the fit, and draw it after "
                    f"iterations {', '.join(map(str, SNAPSHOTS))}.")
    demo.add_argument("--n-components", type=int, default=2, help="mixture components (2)")
    demo.add_argument("--n-init", type=int, default=64, help="restarts run in parallel (64)")
    demo.add_argument("--covariance-type", choices=COVARIANCE_TYPES, default="full")
    demo.add_argument("--max-iter", type=int, default=100, help="EM iterations at most (100)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo.add_argument("--no-compare", dest="compare", action="store_false",
                      help="skip the EM-versus-gradient-ascent panel (adam, L-BFGS)")
    demo.add_argument("--out", default="jaxem_demo.png",
                      help="PNG file for the figure (jaxem_demo.png); '' for none")

    data_help = "rows to fit: .csv (with or without a header row), .npy, or .parquet"
    fit_p = sub.add_parser(
        "fit", help="fit a Gaussian mixture (or k-means) to a data file and save it",
        description="Fit a model to the rows of DATA with restarts in one batched call, "
                    "print a summary, and save the fitted model (a safe .npz, read back by "
                    "jaxem.load or `jaxem predict`).")
    fit_p.add_argument("data", help=data_help)
    size = fit_p.add_mutually_exclusive_group(required=True)
    size.add_argument("--components", "-k", type=int,
                      help="number of mixture components (clusters)")
    size.add_argument("--select-k", type=int, metavar="KMAX",
                      help="choose the number of components in 1..KMAX by BIC (all fitted in "
                           "one batched program), then fit it (gmm only)")
    fit_p.add_argument("--model", choices=("gmm", "kmeans"), default="gmm",
                       help="Gaussian mixture (gmm, default) or k-means")
    fit_p.add_argument("--covariance", choices=COVARIANCE_TYPES, default="full",
                       help="covariance type of the Gaussian mixture (full)")
    fit_p.add_argument("--restarts", type=int, default=4, help="restarts, best kept (4)")
    fit_p.add_argument("--max-iter", type=int, default=100, help="EM iterations at most (100)")
    fit_p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    fit_p.add_argument("--out", default="model.npz", help="where to save the model (model.npz)")
    fit_p.add_argument("--labels", help="also write each row's component to this CSV")
    fit_p.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bar on standard error (shown by default for "
                            "Gaussian mixtures, where tqdm is installed)")

    pred = sub.add_parser("predict", help="label rows with a saved model",
                          description="Print each row's most likely component (or, with "
                                      "--proba, the component probabilities) as CSV.")
    pred.add_argument("model", help="a model saved by `jaxem fit` or est.save()")
    pred.add_argument("data", help=data_help)
    pred.add_argument("--proba", action="store_true",
                      help="component probabilities instead of labels (mixtures only)")
    pred.add_argument("--out", help="write the CSV here instead of standard output")

    info = sub.add_parser("info", help="describe a saved model",
                          description="Print a saved model's class, parameters and fit.")
    info.add_argument("model", help="a model saved by `jaxem fit` or est.save()")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            if args.n_components < 1 or args.n_init < 1 or args.max_iter < 1:
                raise ValueError("--n-components, --n-init and --max-iter must be at least 1.")
            return demo(args)
        return {"fit": fit_file, "predict": predict_file, "info": info_file}[args.command](args)
    except (ValueError, OSError) as e:
        print(f"jaxem: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename is not None:
        text = f"{e.filename}: {e.strerror}"
    return " ".join(text.split())


def read_rows(path: str) -> np.ndarray:
    """A data file as a float ``(n, D)`` array: CSV (a non-numeric first line is a
    header), ``.npy`` (no pickles), or Parquet (numeric columns)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{path}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        x = np.load(p, allow_pickle=False)
    elif suffix in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("reading Parquet needs pyarrow: pip install pyarrow") from None
        table = pq.read_table(p)
        bad = [f.name for f in table.schema if not pa_numeric(f.type)]
        if bad:
            raise ValueError(f"{path}: non-numeric column(s) {', '.join(bad)}")
        x = np.column_stack([c.to_numpy(zero_copy_only=False) for c in table.columns]) \
            if table.num_columns else np.empty((0, 0))
    else:
        with open(p, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        if len(lines) < 1 + (bool(lines) and not _numeric_line(lines[0])):
            raise ValueError(f"{path}: no data rows")
        first = lines[0]
        header = bool(first.strip()) and not _numeric_line(first)
        try:
            x = np.loadtxt(p, delimiter=",", skiprows=int(header), ndmin=2, dtype=np.float64)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"{path}: no data rows (need a table of numbers, got shape {x.shape})")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise ValueError(f"{path}: values must be real numbers, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{path}: contains NaN or infinite values")
    return x.astype(np.float64, copy=False)


def pa_numeric(t) -> bool:
    import pyarrow.types as pt
    return pt.is_integer(t) or pt.is_floating(t) or pt.is_boolean(t)


def _numeric_line(line: str) -> bool:
    try:
        [float(v) for v in line.strip().split(",")]
        return True
    except ValueError:
        return False


def _print_selection(sel, restarts: int) -> None:
    """The BIC table over K = 1..KMAX, the chosen K marked."""
    print(f"{'K':>3} {'log-likelihood':>15} {'BIC':>12} {'AIC':>12} {'converged':>10}")
    for k, ll, bic, aic, conv in zip(sel.n_components, sel.log_likelihood, sel.bic, sel.aic,
                                     sel.n_converged):
        mark = "  <- chosen" if k == sel.best else ""
        print(f"{k:>3} {ll:>15.6g} {bic:>12.6g} {aic:>12.6g} {conv:>6}/{restarts}{mark}")


def fit_file(args) -> int:
    size = args.components if args.components is not None else args.select_k
    if size < 1 or args.restarts < 1 or args.max_iter < 1:
        raise ValueError("--components/--select-k, --restarts and --max-iter must be at "
                         "least 1.")
    x = read_rows(args.data)
    show = getattr(args, "progress", False)
    if show and not progress.available():
        print("jaxem: no progress bar: pip install tqdm (or 'jaxem[progress]')",
              file=sys.stderr)
        show = False
    with progress.shown(show):
        return _fit_file(args, x)


def _fit_file(args, x) -> int:
    from jaxem.estimators import GaussianMixture, KMeans
    from jaxem.persist import save
    if args.select_k and args.model != "gmm":
        raise ValueError("--select-k chooses the components of a Gaussian mixture (--model gmm)")
    if not args.select_k and args.components > x.shape[0]:
        raise ValueError(f"--components {args.components} is more than the "
                         f"{x.shape[0]} rows of {args.data}")
    if args.model == "gmm":  # --select-k: the estimator's one-program sweep over K by BIC
        est = GaussianMixture("bic" if args.select_k else args.components,
                              covariance_type=args.covariance, n_init=args.restarts,
                              max_iter=args.max_iter, random_state=args.seed,
                              max_components=args.select_k or 10)
    else:
        est = KMeans(args.components, n_init=args.restarts, max_iter=args.max_iter,
                     random_state=args.seed)
    t0 = time.perf_counter()
    est.fit(x)
    seconds = time.perf_counter() - t0
    if args.select_k:
        _print_selection(est.selection_, args.restarts)
        args.components = int(est.n_components_)
    labels = est.predict(x)
    print(f"{args.data}: {x.shape[0]} rows x {x.shape[1]} features; {type(est).__name__} "
          f"with {args.components} components, {args.restarts} restarts: {seconds:.2f} s "
          "(compilation included)")
    if args.model == "gmm":
        print(f"mean log-likelihood {est.score(x):.6g}   BIC {est.bic(x):.6g}   "
              f"AIC {est.aic(x):.6g}   iterations {est.n_iter_}   converged {est.converged_}")
        weights = est.weights_
        centres = est.means_
    else:
        print(f"inertia {est.inertia_:.6g}   iterations {est.n_iter_}")
        weights = np.bincount(labels, minlength=args.components) / x.shape[0]
        centres = est.cluster_centers_
    print(f"{'component':>9} {'weight':>8} {'rows':>8}  mean")
    counts = np.bincount(labels, minlength=args.components)
    for k in range(args.components):
        mean = np.array2string(np.asarray(centres[k]), precision=4, max_line_width=10**6,
                               threshold=8, edgeitems=3)
        print(f"{k:>9} {float(weights[k]):>8.4f} {counts[k]:>8}  {mean}")
    save(est, args.out)
    print(f"model saved to {args.out}")
    if args.labels:
        np.savetxt(args.labels, labels, fmt="%d", header="component", comments="")
        print(f"labels written to {args.labels}")
    return 0


def _load_model(path):
    from jaxem.persist import load
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file")
    est = load(path)
    if not hasattr(est, "predict"):
        raise ValueError(f"{path} holds a {type(est).__name__}, not a fitted estimator")
    return est


def predict_file(args) -> int:
    est = _load_model(args.model)
    x = read_rows(args.data)
    n_features = getattr(est, "n_features_in_", x.shape[1])
    if x.shape[1] != n_features:
        raise ValueError(f"{args.data} has {x.shape[1]} features; the model was fitted "
                         f"on {n_features}")
    if args.proba:
        if not hasattr(est, "predict_proba"):
            raise ValueError(f"--proba: a {type(est).__name__} has no probabilities")
        out = np.asarray(est.predict_proba(x))
        header = ",".join(f"p{k}" for k in range(out.shape[1]))
        fmt = "%.6g"
    else:
        out, header, fmt = np.asarray(est.predict(x)), "component", "%d"
    target = args.out or sys.stdout
    np.savetxt(target, out, fmt=fmt, delimiter=",", header=header, comments="")
    return 0


def info_file(args) -> int:
    est = _load_model(args.model)
    print(f"{args.model}: {type(est).__name__}")
    for name, value in est.get_params().items():
        if value is not None and not isinstance(value, (np.ndarray, list)):
            print(f"  {name} = {value!r}")
    print("fitted:")
    for name in sorted(vars(est)):
        value = getattr(est, name)
        if name.endswith("_") and not name.startswith("_"):
            if isinstance(value, np.ndarray):
                print(f"  {name}: array {value.shape} {value.dtype}")
            elif isinstance(value, (int, float, bool, np.number)):
                print(f"  {name} = {value}")
    return 0


def demo(args) -> int:
    x = load_faithful()
    family = gaussian(args.covariance_type)
    key = jax.random.key(args.seed)
    # Random rows as starts: a spread of restarts, and a picture worth drawing.
    starts = initial_params(family, x, n_components=args.n_components, key=key,
                            n_init=args.n_init, init="random_from_data")
    kw = dict(n_components=args.n_components, key=key, max_iter=args.max_iter)
    jax.block_until_ready(fit(family, x, n_init=args.n_init, init=starts, **kw))  # compile
    t0 = time.perf_counter()
    result = jax.block_until_ready(fit(family, x, n_init=args.n_init, init=starts, **kw))
    seconds = time.perf_counter() - t0

    r = result.restarts
    print(f"Old Faithful: {x.shape[0]} eruptions x {x.shape[1]} features "
          "(eruption minutes, waiting minutes)")
    print(f"{args.n_init} restarts of a {args.n_components}-component '{args.covariance_type}' "
          f"Gaussian mixture, fitted in one batched call: {seconds * 1e3:.1f} ms "
          f"on {jax.devices()[0].platform.upper()} (compile time excluded)")
    print("mean log-likelihood per restart:")
    lls = np.asarray(r.log_likelihood)
    for row in range(0, len(lls), 8):
        print("  " + " ".join(f"{v:9.5f}" for v in lls[row:row + 8]))
    print(f"best restart {int(result.best)}: log-likelihood {float(result.log_likelihood):.5f} "
          f"after {int(result.n_iter)} iterations, converged={bool(result.converged)}; "
          f"{int(np.sum(np.abs(lls - np.nanmax(lls)) < 1e-4))} of {args.n_init} restarts "
          "reached it")
    covariances = np.asarray(family.covariances(result.params), dtype=np.float64)
    means = np.asarray(result.params.means, dtype=np.float64)
    for k in range(args.n_components):
        cov = _as_matrix(covariances, k, x.shape[1], family.covariance_type)
        print(f"  component {k}: weight {float(result.params.weights[k]):.3f}  "
              f"mean {np.round(means[k], 3).tolist()}  covariance {np.round(cov, 3).tolist()}")
    comparison = _compare(family, x, args) if args.compare else None
    if args.out:
        best = jax.tree.map(lambda a: a[int(result.best)], starts)
        snapshots = [fit(family, x, init=best, tol=0.0, **{**kw, "max_iter": k}).params
                     for k in SNAPSHOTS]
        if _draw(x, family, snapshots, args.out, comparison):
            print(f"figure of the fit after iterations {SNAPSHOTS} written to {args.out}")
    return 0


def _compare(family, x, args):
    """EM versus adam and L-BFGS from the same 8 random starts; prints a summary."""
    result = compare(family, x, n_components=args.n_components, key=jax.random.key(args.seed),
                     n_init=8, max_iter=100, init="random",
                     optimizers={"adam": (optax.adam, 0.05), "lbfgs": optax.lbfgs()})
    print(f"EM versus gradient ascent (8 random starts, 100 iterations; best mean "
          f"log-likelihood {result.best_log_likelihood:.5f}):")
    for name, m in result.methods.items():
        iters = (f"median {np.median(m.iterations_to_best[m.reached]):g} iterations"
                 if m.reached.any() else "none within 100 iterations")
        print(f"  {name:6s} {100 * m.fraction_reached:3.0f}% of starts reach it ({iters}), "
              f"{m.run_seconds * 1e3:.0f} ms for all 8")
    return result


def _draw(x, family, snapshots, path, comparison=None) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from jaxem import plot
        from jaxem.plot_compare import plot_comparison
    except ImportError:
        print("matplotlib is not installed: no figure (pip install 'jaxem[plot]')",
              file=sys.stderr)
        return False
    n_panels = len(snapshots) + (comparison is not None)
    fig, axes = plt.subplots(1, n_panels, figsize=(4 * n_panels, 3.6))
    for ax, it, params in zip(axes, SNAPSHOTS, snapshots):
        resp = np.asarray(jax.nn.softmax(family.log_joint(params, x), axis=1))
        ax.scatter(x[:, 0], x[:, 1], c=resp[:, 0], cmap="coolwarm", s=8)
        plot.ellipses(ax, params, covariance_type=family.covariance_type, n_std=(1, 2),
                      color="k")
        ax.set_title(f"after iteration {it}")
        ax.set_xlabel("eruption (min)")
    axes[0].set_ylabel("waiting (min)")
    if comparison is not None:
        plot_comparison(comparison, axes[-1])
        axes[-1].set_title("EM versus gradient ascent")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _as_matrix(covs, k, d, covariance_type):
    """One component's covariance as a (D, D) matrix, whatever the covariance type."""
    c = covs if covariance_type == "tied" else covs[k]
    return c if np.ndim(c) == 2 else np.diag(np.broadcast_to(c, (d,)))


if __name__ == "__main__":
    sys.exit(main())
