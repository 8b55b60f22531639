"""Fit a Gaussian mixture on rows spread over several machines (``jax.distributed``).

Every host runs this script once. Each process reads its own share of the rows of
``--data`` (a ``.npy`` file of shape ``(n_samples, n_features)``: process ``p`` of ``P``
takes the ``p``-th of ``P`` nearly equal blocks; in real use each host would load only
its own file), and ``jaxem.fit(..., devices=jax.devices())`` fits the mixture on all the
rows of all processes: the rows are split over every device of every process, and each
EM pass over them ends in one ``psum``. Every process gets the same result; process 0
prints it. The fit equals a one-process fit on the concatenated rows (process 0's first).

Plain ssh, two hosts (``node0`` is the coordinator; any free port)::

    ssh node0 python examples/multihost.py --coordinator node0:12345 \\
        --num-processes 2 --process-id 0 --data /data/x.npy --components 8 &
    ssh node1 python examples/multihost.py --coordinator node0:12345 \\
        --num-processes 2 --process-id 1 --data /data/x.npy --components 8 &
    wait

On one machine, to try it: the same two commands without ``ssh nodeN`` and with
``--coordinator 127.0.0.1:12345`` (add ``--local-devices 2`` for two CPU devices each).

SLURM (one task per node; ``srun`` starts them all)::

    #!/bin/bash
    #SBATCH --job-name=jaxem-multihost
    #SBATCH --nodes=4
    #SBATCH --ntasks-per-node=1
    #SBATCH --time=01:00:00
    head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    srun bash -c 'python examples/multihost.py --coordinator '"$head"':12345 \\
        --num-processes "$SLURM_NTASKS" --process-id "$SLURM_PROCID" \\
        --data /data/x.npy --components 8'

(``srun`` sets ``SLURM_PROCID`` per task, hence the single quotes. On GPU or TPU
clusters ``jax.distributed.initialize()`` with no arguments also detects SLURM; the
explicit form here works everywhere, the CPU included.)

Every process must contribute the same number of devices. On CPU the processes
communicate through gloo (``jax_cpu_collectives_implementation``), set below.
"""
from __future__ import annotations

import argparse
import os


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coordinator", required=True,
                        help="host:port of process 0, reachable from every process")
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--data", required=True, help=".npy file, (n_samples, n_features)")
    parser.add_argument("--components", type=int, default=3)
    parser.add_argument("--n-init", type=int, default=4)
    parser.add_argument("--covariance-type", default="full",
                        choices=["full", "diag", "spherical", "tied"])
    parser.add_argument("--local-devices", type=int, default=None,
                        help="CPU only: split this process's CPU into N devices")
    parser.add_argument("--x64", action="store_true", help="fit in float64")
    parser.add_argument("--out", default=None, help="process 0 saves the result (.npz)")
    args = parser.parse_args(argv)

    if args.local_devices:  # must happen before JAX starts its backend
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_"
                                   f"platform_device_count={args.local_devices}").strip()
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id)

    import numpy as np

    import jaxem

    data = np.load(args.data, mmap_mode="r")
    block = np.array_split(np.arange(len(data)), args.num_processes)[args.process_id]
    x = np.asarray(data[block[0]:block[-1] + 1] if len(block) else data[:0],
                   np.float64 if args.x64 else np.float32)
    print(f"process {jax.process_index()}/{jax.process_count()}: {len(x)} rows, "
          f"{len(jax.local_devices())} of {len(jax.devices())} devices", flush=True)

    result = jaxem.fit(jaxem.gaussian(args.covariance_type), x, n_components=args.components,
                       n_init=args.n_init, key=jax.random.key(0), devices=jax.devices())

    if jax.process_index() == 0:
        np.set_printoptions(precision=4, suppress=True)
        print(f"{len(data)} rows, {args.components} components: mean log-likelihood "
              f"{float(result.log_likelihood):.6f}, {int(result.n_iter)} iterations, "
              f"converged {bool(result.converged)}")
        print("weights:", np.asarray(result.params.weights))
        print("means:\n", np.asarray(result.params.means))
        if args.out:
            np.savez(args.out, log_likelihood=np.asarray(result.log_likelihood),
                     n_iter=np.asarray(result.n_iter), weights=np.asarray(result.params.weights),
                     means=np.asarray(result.params.means),
                     trace=np.asarray(result.trace), best=np.asarray(result.best),
                     restarts_log_likelihood=np.asarray(result.restarts.log_likelihood))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
