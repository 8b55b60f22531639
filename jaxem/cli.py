"""The ``jaxem`` command line: ``jaxem demo`` fits the built-in Old Faithful data."""
from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
import optax

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
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.n_components < 1 or args.n_init < 1 or args.max_iter < 1:
            raise ValueError("--n-components, --n-init and --max-iter must be at least 1.")
        return demo(args)
    except ValueError as e:
        print(f"jaxem: error: {e}", file=sys.stderr)
        return 2


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
        from matplotlib.patches import Ellipse

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
        covs = np.asarray(family.covariances(params))
        for k, mean in enumerate(np.asarray(params.means)):
            cov = _as_matrix(covs, k, x.shape[1], family.covariance_type)
            vals, vecs = np.linalg.eigh(cov)
            angle = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))
            for n_sd in (1, 2):
                w, h = 2 * n_sd * np.sqrt(vals[::-1])
                ax.add_patch(Ellipse(mean, w, h, angle=angle, fill=False, lw=1.2, color="k"))
            ax.plot(*mean, "k+", ms=10)
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
