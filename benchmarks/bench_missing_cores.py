"""The missing-value fit against the complete one, on one CPU core and on all of them.

``bench_missing.py`` measures exact EM with 20% missing at several times the time per
iteration of the complete fit. This asks how much of that is the second core: the
complete fit's E- and M-steps are a few large GEMMs, which XLA spreads over the cores,
while the missing-value E-step is many small kernels (the per-row block algebra on
``(K, rows)`` arrays, each chunk inside a ``lax.switch`` over block sizes) that run one
after another. Each row runs ``bench_missing.py``'s workload (N = 100,000, D = 16, K = 8,
full, 10 iterations from one explicit start) at the automatic chunk size in
``--processes`` fresh processes, taken in turn, each either pinned to one core (CPU
affinity, inherited by XLA's threads) or free to use all of them; every process reports
its best of ``--repeats`` calls after a compiling one (``bench_chunk_alignment.py``'s
child).

Usage::

    python benchmarks/bench_missing_cores.py            # writes benchmarks/results/
    python benchmarks/bench_missing_cores.py --quick    # a tiny smoke run, writes nothing
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import _env
import bench_chunk_alignment as bca
import bench_missing as bm
import jaxem
import jaxem.batch


def run(args) -> dict:
    w = bm.workload(args.quick)
    cores = sorted(os.sched_getaffinity(0))
    rows = []
    for which in ("complete", "missing"):
        fam = jaxem.gaussian("full", missing=which == "missing")
        chunk = jaxem.batch.auto_chunk_size((1, w["n"], w["d"]), 1, w["k"], fam)
        rows += [dict(data=which, chunk=chunk, cores=c, s_per_iteration=[])
                 for c in (cores[:1], cores)]
    for p in range(args.processes):
        for r in rows:
            print(f"process {p + 1}/{args.processes}: {r['data']}, {len(r['cores'])} core(s)",
                  file=sys.stderr, flush=True)
            r["s_per_iteration"].append(bca.fresh_process(r["data"], r["chunk"], args.quick,
                                                          args.repeats, r["cores"]))
    return {"machine": _env.machine(), "versions": _env.versions(bca.PACKAGES),
            "workload": w["name"], "processes": args.processes, "repeats": args.repeats,
            "rows": [dict(r, cores=len(r["cores"])) for r in rows]}


def markdown(res: dict) -> str:
    m = res["machine"]
    m["load_average_end"] = list(os.getloadavg())
    median = {(r["data"], r["cores"]): statistics.median(r["s_per_iteration"])
              for r in res["rows"]}
    L = ["# Missing values against complete data, on one core and on all (CPU)", "",
         f"Workload: {res['workload']} (`bench_missing.py`'s data and start), with 20% "
         "missing and with nothing missing, at the automatic chunk size.", "",
         _env.machine_line(m),
         "Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items() if v) + ".", "",
         f"Each row: {res['processes']} fresh processes, taken in turn with the other rows, "
         "pinned to one core or free to use all; each reports its best of "
         f"{res['repeats']} calls after a compiling one, over the iterations. *median*, "
         "*min* and *max* are over the processes; *× complete*: the median over the "
         "complete fit's on as many cores.", "",
         "| data | chunk rows | cores | median s / iteration | × complete | min | max | "
         "each process |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["rows"]:
        t = r["s_per_iteration"]
        ratio = median[r["data"], r["cores"]] / median["complete", r["cores"]]
        L.append(f"| {r['data']} | {r['chunk'] or 'all'} | {r['cores']} | "
                 f"{statistics.median(t):.4f} | {ratio:.1f} | {min(t):.4f} | {max(t):.4f} | "
                 f"{', '.join(f'{v:.4f}' for v in t)} |")
    return "\n".join(L) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny smoke run; writes nothing")
    p.add_argument("--processes", type=int, default=5, help="fresh processes per row")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per process")
    p.add_argument("--out", default=str(_env.RESULTS))
    args = p.parse_args(argv)
    res = run(args)
    md = markdown(res)
    print(md)
    if not args.quick:
        _env.write_results(args.out, f"missing_cores_{_env.backend()}", res, md)


if __name__ == "__main__":
    main()
