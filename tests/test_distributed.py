"""Sharding over devices and over processes equals the one-device fit.

* Several processes on localhost (``jax.distributed`` with CPU collectives by gloo),
  each passing its own rows: the fit equals the one-process fit on the concatenated
  rows, and every process gets the same result.
* One process with 4 CPU devices (``--xla_force_host_platform_device_count=4``, in a
  subprocess because this pytest process keeps one device): ``shard="rows"`` and
  ``shard="restarts"`` equal the single-device fit, every family and init method.
* Bad ``devices`` and ``shard`` raise ``ValueError``.

Each subprocess runs several cases and reports through an ``.npz`` file, and has a
timeout, so a hang fails the test instead of blocking.
"""
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import jaxem

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 900  # seconds for all processes together: generous, a loaded machine compiles slowly


def _env(n_devices: int) -> dict:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count", "--_")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n_devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _start(commands: list[list[str]], n_devices: int, cwd) -> list[subprocess.Popen]:
    """Start ``commands`` together (the caller computes its references meanwhile)."""
    return [subprocess.Popen(cmd, env=_env(n_devices), cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for cmd in commands]


def _wait(procs: list[subprocess.Popen], started: float) -> None:
    """Fail (and kill them all) on a non-zero exit, or when they are not done ``TIMEOUT``
    seconds after ``started``."""
    outputs = []
    try:
        for p in procs:
            left = max(1.0, TIMEOUT - (time.monotonic() - started))
            outputs.append(p.communicate(timeout=left)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        logs = [p.communicate()[0] for p in procs]
        pytest.fail("subprocesses timed out after %d s:\n%s" % (TIMEOUT, "\n---\n".join(
            log[-3000:] for log in logs)))
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, f"{p.args} exited with {p.returncode}:\n{out[-5000:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flat(result) -> dict:
    """``{"log_likelihood": ..., "restarts.trace": ...}`` of a FitResult, as numpy."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(result)[0]:
        name = ".".join(str(getattr(k, "name", getattr(k, "idx", k))) for k in path)
        out[name] = np.asarray(leaf)
    return out


def _assert_same(got: dict, ref: dict, rtol: float, what: str) -> None:
    """Every field of two flattened FitResults agrees: exactly for integers and flags,
    to ``rtol`` for floats. Restarts that tie (the same optimum, e.g. with permuted
    components) may make rounding pick another best restart: then the best restart's
    fields are compared with that restart of ``ref``."""
    assert got.keys() == ref.keys(), what
    best, ref_best = got["best"], ref["best"]
    if not np.array_equal(best, ref_best):
        ll = ref["restarts.log_likelihood"]
        np.testing.assert_allclose(np.take_along_axis(ll, best[..., None], -1),
                                   np.take_along_axis(ll, ref_best[..., None], -1),
                                   rtol=rtol, err_msg=f"{what}: best restart")
        ref = dict(ref)
        for name in list(ref):  # the best restart's fields: ref.restarts at got's best
            if "restarts." + name in ref:
                ref[name] = _pick(ref["restarts." + name], best)
        ref["best"] = best
    for name in ref:
        a, b = got[name], ref[name]
        assert a.shape == b.shape, f"{what}: {name} shape {a.shape} != {b.shape}"
        if a.dtype.kind in "fc":
            assert a.dtype == np.float64, f"{what}: {name} is {a.dtype}, not float64"
            # A start with covariances of reg_covar (random_from_data, k-means++) can
            # have a first log-likelihood of -1e6: traces are compared to their scale.
            scale = np.nanmax(np.abs(b), initial=0.0) if name.endswith("trace") else 1e-2
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale,
                                       err_msg=f"{what}: {name}")
        else:
            np.testing.assert_array_equal(a, b, err_msg=f"{what}: {name}")


def _pick(a, best):
    """``a[..., best, ...]``: the restart ``best (B...)`` of ``a (B..., n_init, ...)``."""
    if best.ndim == 0:
        return a[int(best)]
    return np.stack([a[i, int(b)] for i, b in enumerate(best)])


def _data(seed: int, n: int, d: int = 3, k: int = 3, gaps: float = 0.0):
    from conftest import blobs

    x, _ = blobs(seed, n, d, k)
    if gaps:  # missing completely at random, every row keeping its first value
        gone = np.random.default_rng(seed + 200).random(x.shape) < gaps
        gone[:, 0] = False
        x = np.where(gone, np.nan, x)
    w = np.random.default_rng(seed + 100).uniform(0.5, 2.0, n)
    return x, w


# --------------------------------------------------------------------------------------
# (a) Two processes on localhost, each with its own rows.

_SIZES = (1000, 777)  # rows of process 0 and 1: uneven on purpose

_MULTIPROCESS = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_x64", True)
    port, n_proc, pid, data, out = sys.argv[1:]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                               num_processes=int(n_proc), process_id=int(pid))
    import numpy as np
    import jaxem
    sys.path.insert(0, "{tests}")
    from test_distributed import CASES_MP, _flat

    assert jax.process_count() == int(n_proc) and len(jax.devices()) > len(jax.local_devices())
    arrays = np.load(data)
    results = {}
    for name, (family, kwargs, shard) in CASES_MP.items():
        x, w = arrays[f"x{pid}"], arrays[f"w{pid}"]
        if shard == "restarts":  # every process passes all the rows
            x, w = arrays["x"], arrays["w"]
        fit = jaxem.fit(family, x, weights=w, key=jax.random.key(7), devices=jax.devices(),
                        shard=shard, **kwargs)
        try:  # fails while every restart is not held by every process
            results.update({f"{name}/{k}": v for k, v in _flat(fit).items()})
        except RuntimeError as e:
            assert "non-addressable" in str(e), e
            results[f"{name}/not-fetchable"] = np.array(True)
    np.savez(out, **results)
""")

# name: (family, fit keyword arguments, shard); sample weights are always given. With 4
# devices in all, n_init=3 restarts are padded to 4 and n_init=4 are not.
CASES_MP = {
    "full-kmeans": (jaxem.gaussian("full"), dict(n_components=3, n_init=3, init="kmeans"),
                    "rows"),
    "diag-k-means++": (jaxem.gaussian("diag"),
                       dict(n_components=3, n_init=2, init="k-means++", chunk_size=96), "rows"),
    "full-restarts-3": (jaxem.gaussian("full"), dict(n_components=3, n_init=3), "restarts"),
    "full-restarts-4": (jaxem.gaussian("full"), dict(n_components=3, n_init=4), "restarts"),
}


def test_two_processes_equal_one_process_on_the_concatenated_rows(tmp_path):
    """2 processes x 2 CPU devices each, 1000 and 777 rows: the fit equals the one-process
    fit on all 1777 rows (the rows of process 0 first), on every process."""
    x, w = _data(0, sum(_SIZES))
    parts = np.split(np.arange(len(x)), np.cumsum(_SIZES)[:-1])
    np.savez(tmp_path / "data.npz", x=x, w=w,
             **{f"x{i}": x[p] for i, p in enumerate(parts)},
             **{f"w{i}": w[p] for i, p in enumerate(parts)})
    script = tmp_path / "worker.py"
    script.write_text(_MULTIPROCESS.replace("{tests}", str(ROOT / "tests")))
    port, n_proc, started = _free_port(), len(_SIZES), time.monotonic()
    procs = _start([[sys.executable, str(script), str(port), str(n_proc), str(i),
                     str(tmp_path / "data.npz"), str(tmp_path / f"out{i}.npz")]
                    for i in range(n_proc)], n_devices=2, cwd=tmp_path)
    with jax.enable_x64(True):  # the references, while the processes run
        refs = {name: _flat(jaxem.fit(family, x, weights=w, key=jax.random.key(7), **kwargs))
                for name, (family, kwargs, _) in CASES_MP.items()}
    _wait(procs, started)

    got = [dict(np.load(tmp_path / f"out{i}.npz")) for i in range(n_proc)]
    for k in got[0]:  # every process holds the same (replicated) result
        np.testing.assert_array_equal(got[1][k], got[0][k], err_msg=k)
    unfetchable = []
    for name, ref in refs.items():
        if f"{name}/not-fetchable" in got[0]:
            unfetchable.append(name)
            continue
        for i in range(n_proc):
            mine = {k.split("/", 1)[1]: v for k, v in got[i].items()
                    if k.startswith(name + "/")}
            _assert_same(mine, ref, 1e-9, f"{name}, process {i}")
    assert not unfetchable


def test_multihost_example_runs_as_two_processes(tmp_path):
    """``examples/multihost.py`` as two processes on localhost equals a one-process fit."""
    x, _ = _data(1, 901)
    np.save(tmp_path / "data.npy", x)
    port, started = _free_port(), time.monotonic()
    procs = _start([[sys.executable, str(ROOT / "examples" / "multihost.py"),
                     "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                     "--process-id", str(i), "--data", str(tmp_path / "data.npy"),
                     "--components", "3", "--local-devices", "1", "--x64",
                     "--out", str(tmp_path / "result.npz")] for i in range(2)],
                   n_devices=1, cwd=tmp_path)
    with jax.enable_x64(True):
        ref = jaxem.fit(jaxem.gaussian("full"), x, n_components=3, n_init=4,
                        key=jax.random.key(0))
    _wait(procs, started)
    got = dict(np.load(tmp_path / "result.npz"))  # written by process 0
    np.testing.assert_allclose(got["restarts_log_likelihood"], ref.restarts.log_likelihood,
                               rtol=1e-9)
    np.testing.assert_allclose(got["log_likelihood"], ref.log_likelihood, rtol=1e-9)
    best = int(got["best"])  # restarts that tie may let rounding pick another of them
    np.testing.assert_allclose(got["means"], ref.restarts.params.means[best], rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(got["weights"], ref.restarts.params.weights[best], rtol=1e-9)
    np.testing.assert_allclose(got["trace"], ref.restarts.trace[best], rtol=1e-9)
    assert got["n_iter"] == ref.restarts.n_iter[best]


# --------------------------------------------------------------------------------------
# (b) One process, 4 CPU devices: sharded equals unsharded (this process's one device).

_FOUR_DEVICES = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import jaxem
    sys.path.insert(0, "{tests}")
    from test_distributed import CASES_4, _case, _flat

    assert len(jax.devices()) == 4
    results = {}
    for name in CASES_4:
        family, x, w, kw = _case(name)
        kw.setdefault("shard", "rows")
        fit = jaxem.fit(family, x, weights=w, key=jax.random.key(5), devices=jax.devices(), **kw)
        results.update({f"{name}/{k}": v for k, v in _flat(fit).items()})
    np.savez(sys.argv[1], **results)
""")

# name: (family, keywords of fit, plus n rows, batch (data sets), weighted). n is never a
# multiple of 4; every family and every init method appears with shard="rows".
CASES_4 = {
    "full-kmeans": (jaxem.gaussian("full"),
                    dict(n=1001, n_components=3, n_init=2, init="kmeans", weighted=True)),
    "diag-k-means++": (jaxem.gaussian("diag"),
                       dict(n=603, n_components=3, n_init=2, init="k-means++", batch=2)),
    "spherical-random": (jaxem.gaussian("spherical"),
                         dict(n=599, n_components=3, n_init=2, init="random", weighted=True)),
    "tied-random_from_data": (jaxem.gaussian("tied"),
                              dict(n=501, n_components=3, n_init=2, init="random_from_data",
                                   batch=2, weighted=True)),
    # 20% missing: the rows sorted by their gaps, then split over the devices.
    "full-missing-kmeans-chunked": (jaxem.gaussian("full"),
                                    dict(n=1001, n_components=3, n_init=2, init="kmeans",
                                         chunk_size=64, weighted=True, gaps=0.2)),
    "kmeans-k-means++-chunked": (jaxem.kmeans(),
                                 dict(n=1003, n_components=3, n_init=2, init="k-means++",
                                      chunk_size=64, weighted=True)),
    # n_init=5 on 4 devices: 3 padding restarts, dropped; explicit starts are padded too.
    "restarts-kmeans": (jaxem.gaussian("full"),
                        dict(n=401, n_components=3, n_init=5, init="kmeans", batch=2,
                             weighted=True, shard="restarts")),
    "restarts-explicit": (jaxem.gaussian("diag"),
                          dict(n=301, n_components=3, n_init=5, init="explicit",
                               shard="restarts")),
}


def _case(name):
    """``(family, x, weights, fit keywords)`` of ``CASES_4[name]`` (call under x64)."""
    family, kw = CASES_4[name]
    kw = dict(kw)
    n, batch, weighted = kw.pop("n"), kw.pop("batch", 1), kw.pop("weighted", False)
    data = [_data(seed, n, gaps=kw.pop("gaps", 0.0)) for seed in range(batch)]
    x = np.stack([d[0] for d in data]) if batch > 1 else data[0][0]
    w = (np.stack([d[1] for d in data]) if batch > 1 else data[0][1]) if weighted else None
    if kw.get("init") == "explicit":  # one start per restart, the same for every data set
        kw["init"] = jaxem.batch.initial_params(
            family, data[0][0], n_components=kw["n_components"], key=jax.random.key(3),
            n_init=kw["n_init"], init="k-means++")
    return family, x, w, kw


def test_four_devices_equal_one_device(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_FOUR_DEVICES.replace("{tests}", str(ROOT / "tests")))
    started = time.monotonic()
    procs = _start([[sys.executable, str(script), str(tmp_path / "out.npz")]], n_devices=4,
                   cwd=tmp_path)
    refs = {}
    with jax.enable_x64(True):  # the one-device fits, while the subprocess runs
        for name in CASES_4:
            family, x, w, kw = _case(name)
            kw.pop("shard", None)
            refs[name] = _flat(jaxem.fit(family, x, weights=w, key=jax.random.key(5), **kw))
    _wait(procs, started)
    got = dict(np.load(tmp_path / "out.npz"))
    for name, ref in refs.items():
        many = {k.split("/", 1)[1]: v for k, v in got.items() if k.startswith(name + "/")}
        _assert_same(many, ref, 1e-10, name)
        assert ref["restarts.trace"].shape[-2] == CASES_4[name][1]["n_init"], name


# --------------------------------------------------------------------------------------
# (c) Bad arguments.

@pytest.mark.parametrize("devices, match", [
    ([], "non-empty list of JAX devices"),
    ([0, 1], "non-empty list of JAX devices"),
    (["cpu"], "non-empty list of JAX devices"),
    ("twice", "more than once"),
])
def test_bad_devices_raise(devices, match):
    x, _ = _data(0, 50)
    if devices == "twice":
        devices = [jax.devices()[0]] * 2
    with pytest.raises(ValueError, match=match):
        jaxem.fit(jaxem.gaussian("diag"), x, n_components=2, key=jax.random.key(0),
                  devices=devices)


def test_bad_shard_raises():
    x, _ = _data(0, 50)
    with pytest.raises(ValueError, match="shard must be 'rows' or 'restarts'"):
        jaxem.fit(jaxem.gaussian("diag"), x, n_components=2, key=jax.random.key(0),
                  devices=jax.devices(), shard="columns")


def test_bad_shard_raises_without_devices():
    x, _ = _data(0, 50)
    with pytest.raises(ValueError, match="shard must be 'rows' or 'restarts'"):
        jaxem.fit(jaxem.gaussian("diag"), x, n_components=2, key=jax.random.key(0),
                  shard="columns")
