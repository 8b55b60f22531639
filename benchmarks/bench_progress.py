"""The cost of ``jaxem.fit(..., progress=True)``: the same fit with and without the bar.

A benchmark-like workload (N=200,000, D=16, K=16, diagonal covariances, 50 iterations,
one restart, explicit starting parameters, ``tol=-1`` so every iteration runs). Both
variants are compiled first, then timed alternately (so a machine busy with other work
slows both alike), best of ``--repeats``; the bar goes to standard error. Also times the
worst case, blocks of one iteration (``--every-iteration``).

Usage::

    python benchmarks/bench_progress.py [--n 200000] [--repeats 3] [--every-iteration]
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

import jaxem
from jaxem import progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--every-iteration", action="store_true",
                        help="also time blocks of one iteration each (the worst case)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(args.k, args.d)) * 4
    x = (centres[rng.integers(0, args.k, args.n)]
         + rng.normal(size=(args.n, args.d))).astype(np.float32)
    family = jaxem.gaussian("diag")
    key = jax.random.key(0)
    start = jaxem.batch.initial_params(family, x, n_components=args.k, key=key,
                                       init="random_from_data")
    kw = dict(n_components=args.k, key=key, init=start, max_iter=args.iters, tol=-1.0)

    def run(show: bool) -> float:
        t0 = time.perf_counter()
        result = jax.block_until_ready(jaxem.fit(family, x, progress=show, **kw))
        assert int(result.n_iter) == args.iters
        return time.perf_counter() - t0

    variants = {"no progress": (False, None), "progress": (True, None)}
    if args.every_iteration:
        variants["progress, 1-iteration blocks"] = (True, 0.0)
    default_block = progress.BLOCK_SECONDS
    times = {name: [] for name in variants}
    for rep in range(args.repeats + 1):  # the first round compiles
        for name, (show, block) in variants.items():
            progress.BLOCK_SECONDS = default_block if block is None else block
            seconds = run(show)
            if rep:
                times[name].append(seconds)
    best = {name: min(t) for name, t in times.items()}
    base = best["no progress"]
    report = {
        "device": str(jax.devices()[0]), "n": args.n, "d": args.d, "k": args.k,
        "iterations": args.iters, "repeats": args.repeats,
        "seconds": times, "best": best,
        "overhead_percent": {name: 100 * (t / base - 1) for name, t in best.items()},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
