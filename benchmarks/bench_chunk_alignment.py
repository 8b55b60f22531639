"""Chunk sizes on or off a power of two, each measured in several fresh processes.

The same fit can run at one speed in one process and much slower in the next: with a
chunk of 2048 or 8192 rows, the rows of the E-step's rows-last ``(K, D, rows)`` arrays lie
a multiple of 4 KB apart, in the same CPU cache sets, and how badly they collide depends
on where the process's memory landed. ``jaxem.batch.auto_chunk_size`` therefore picks
chunks off multiples of 32 rows (``jaxem.batch._unaligned``). This runs
``bench_missing.py``'s workload (N = 100,000, D = 16, K = 8, full, 10 iterations from
one explicit start), with 20% missing and with nothing missing, at the power of two and
at the automatic size, each in ``--processes`` fresh processes taken in turn. Every
process reports its best of ``--repeats`` calls after a compiling one; the table gives
the spread over processes, which a single process's best cannot show.

Usage::

    python benchmarks/bench_chunk_alignment.py            # writes benchmarks/results/
    python benchmarks/bench_chunk_alignment.py --quick    # a tiny smoke run, writes nothing
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import _env
import bench_missing as bm
import jaxem
import jaxem.batch

PACKAGES = ("jax", "jaxlib", "numpy", "jaxem")


def child(which: str, chunk: int | None, quick: bool, repeats: int) -> None:
    """One process: print ``{"s_per_iteration": best call / iterations}`` as JSON."""
    w = bm.workload(quick)
    x, x_gaps, start = bm.make_data(w)
    runner = bm.JaxemRunner(w, x_gaps if which == "missing" else x, start, chunk)
    _, times, _, out, _ = bm.time_calls(runner, repeats, warm=True)
    assert int(out.n_iter) == w["iters"], (int(out.n_iter), w["iters"])
    print(json.dumps({"s_per_iteration": min(times) / w["iters"]}))


def fresh_process(which: str, chunk: int | None, quick: bool, repeats: int,
                  cores=None) -> float:
    """:func:`child` in a fresh process (pinned to the CPU set ``cores`` if given): its
    best seconds per iteration."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", which, str(chunk),
           "--repeats", str(repeats)] + ["--quick"] * quick
    pin = None if cores is None else (lambda: os.sched_setaffinity(0, cores))
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, preexec_fn=pin)
    return json.loads(done.stdout.strip().splitlines()[-1])["s_per_iteration"]


def settings(quick: bool) -> list[tuple[str, int, str]]:
    """``(data, chunk rows, how it was chosen)``: the power of two and the automatic size
    (``auto_chunk_size`` on this workload's shape)."""
    w = bm.workload(quick)
    out = []
    for which, pow2 in (("missing", 256 if quick else 2048), ("complete", 512 if quick else 8192)):
        fam = jaxem.gaussian("full", missing=which == "missing")
        auto = jaxem.batch.auto_chunk_size((1, w["n"], w["d"]), 1, w["k"], fam)
        out += [(which, pow2, "power of two"), (which, auto, "auto")]
    return out


def run(args) -> dict:
    rows = settings(args.quick)
    times = {i: [] for i in range(len(rows))}
    for p in range(args.processes):
        for i, (which, chunk, _) in enumerate(rows):
            print(f"process {p + 1}/{args.processes}: {which}, {chunk} rows", file=sys.stderr,
                  flush=True)
            times[i].append(fresh_process(which, chunk, args.quick, args.repeats))
    return {"machine": _env.machine(), "versions": _env.versions(PACKAGES),
            "workload": bm.workload(args.quick)["name"],
            "processes": args.processes, "repeats": args.repeats,
            "rows": [dict(data=w, chunk=c, chosen=how, s_per_iteration=times[i])
                     for i, (w, c, how) in enumerate(rows)]}


def markdown(res: dict) -> str:
    m = res["machine"]
    m["load_average_end"] = list(os.getloadavg())
    L = ["# Chunk sizes on and off a power of two, over fresh processes (CPU)", "",
         f"Workload: {res['workload']} (`bench_missing.py`'s data and start), with 20% "
         "missing and with nothing missing.", "", _env.machine_line(m),
         "Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items() if v) + ".", "",
         f"Each row: {res['processes']} fresh processes, taken in turn with the other rows; "
         f"each reports its best of {res['repeats']} calls after a compiling one, over the "
         "iterations. *median*, *min* and *max* are over the processes.", "",
         "| data | chunk rows | chosen | median s / iteration | min | max | each process |",
         "|---|---:|---|---:|---:|---:|---|"]
    for r in res["rows"]:
        t = r["s_per_iteration"]
        L.append(f"| {r['data']} | {r['chunk']} | {r['chosen']} | {statistics.median(t):.4f} | "
                 f"{min(t):.4f} | {max(t):.4f} | {', '.join(f'{v:.4f}' for v in t)} |")
    return "\n".join(L) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny smoke run; writes nothing")
    p.add_argument("--processes", type=int, default=5, help="fresh processes per row")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per process")
    p.add_argument("--child", nargs=2, metavar=("DATA", "CHUNK"), help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(_env.RESULTS))
    args = p.parse_args(argv)
    if args.child:
        chunk = args.child[1]  # "None": the automatic choice kept all rows (--quick)
        child(args.child[0], None if chunk == "None" else int(chunk), args.quick, args.repeats)
        return
    res = run(args)
    md = markdown(res)
    print(md)
    if not args.quick:
        _env.write_results(args.out, f"chunk_alignment_{_env.backend()}", res, md)


if __name__ == "__main__":
    main()
