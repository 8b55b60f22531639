"""Scale: chunked initialisation, and memory bounded by the chunk with many restarts.

Sharding over devices and processes is tested in ``test_distributed.py``; streaming and
online EM in ``test_stream.py``.
"""
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jaxem
from jaxem.batch import auto_chunk_size
from jaxem.init import INIT_METHODS


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 10**7), d=st.integers(1, 64), k=st.integers(1, 64),
       n_init=st.integers(1, 16), family=st.sampled_from(
           [None, jaxem.gaussian("full"), jaxem.gaussian("diag"),
            jaxem.gaussian("full").with_missing(True)]))
def test_auto_chunks_cover_the_rows_evenly_off_powers_of_two(n, d, k, n_init, family):
    # Off multiples of 32 rows, so rows-last arrays' rows are not 4 KB apart; evened out
    # over the chunks, so fewer than 32 rows per chunk are padding.
    rows = auto_chunk_size((1, n, d), n_init, k, family)
    if rows is None:
        return
    chunks = -(-n // rows)
    assert chunks >= 2 and rows % 32 == 16
    assert 0 <= chunks * rows - n < 32 * chunks


@pytest.mark.parametrize("method", INIT_METHODS)
@pytest.mark.parametrize("fam", [jaxem.gaussian("full"), jaxem.gaussian("diag"), jaxem.kmeans()],
                         ids=["full", "diag", "kmeans"])
def test_initialisation_does_not_depend_on_the_chunk_size(x64, make_blobs, method, fam):
    x, _ = make_blobs(3, 203, 3, 4)  # 203 is prime: no chunk size divides it
    w = np.random.default_rng(0).uniform(0.5, 2.0, len(x))
    w[::7] = 0.0  # never drawn
    init = jax.jit(jaxem.initialize, static_argnames=("n_components", "method", "chunk_size"))
    for seed in range(2):
        ref = init(fam, jax.random.key(seed), x, w, n_components=4, method=method)
        for chunk in (5, 64):
            got = init(fam, jax.random.key(seed), x, w, n_components=4, method=method,
                       chunk_size=chunk)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_drawn_rows_follow_the_weights(x64):
    """Inverse-CDF draws: the first k-means++ centre is row i with probability w_i / sum w."""
    x = jnp.arange(6.0)[:, None]
    w = jnp.array([0.0, 1.0, 2.0, 0.0, 3.0, 4.0])
    draw = jax.jit(jax.vmap(lambda k: jaxem.kmeans_plusplus(k, x, w, 1, chunk_size=4)[1][0]))
    idx = np.asarray(draw(jax.random.split(jax.random.key(0), 20000)))
    freq = np.bincount(idx, minlength=6) / len(idx)
    np.testing.assert_allclose(freq, w / w.sum(), atol=0.015)


_PEAK = textwrap.dedent("""
    import sys
    import numpy as np, jaxem
    n, n_init = int(sys.argv[1]), int(sys.argv[2])
    x = np.random.default_rng(0).standard_normal((n, 8), dtype=np.float32)
    with open("/proc/self/clear_refs", "w") as f:  # start the peak (VmHWM) afresh
        f.write("5")
    jaxem.GaussianMixture(8, n_init=n_init, max_iter=1, init_params="random_from_data",
                          random_state=0).fit(x)
    status = open("/proc/self/status").read()
    print(int(status.split("VmHWM:")[1].split()[0]) * 1024)
""")


def _peak_rss(n, n_init):
    out = subprocess.run([sys.executable, "-c", _PEAK, str(n), str(n_init)],
                         capture_output=True, text=True, timeout=600, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_peak_memory_does_not_grow_with_restarts_times_rows():
    """16 restarts, full covariances, D = K = 8, from 50,000 to 1,000,000 rows. Chunked
    evaluation costs a few copies of the extra data (30 MB each; 80-160 MB measured, the
    spread being the allocator's), far below the smallest restarts x rows array an
    unchunked initialisation or E-step would hold: the 16 restarts' responsibilities,
    16 x 950,000 x 8 floats = 486 MB (their (n, K, D) products would be 3.9 GB)."""
    small, large = _peak_rss(50_000, 16), _peak_rss(1_000_000, 16)
    extra_data = (1_000_000 - 50_000) * 8 * 4
    restarts_by_rows = 16 * (1_000_000 - 50_000) * 8 * 4
    assert large - small < 10 * extra_data < restarts_by_rows, (small, large)


_PEAK_FIT = textwrap.dedent("""
    import sys
    import jax, numpy as np, jaxem
    n = int(sys.argv[1])
    x = np.random.default_rng(0).standard_normal((n, 16), dtype=np.float32)
    fit = lambda x: jaxem.fit(jaxem.gaussian("diag"), x, n_components=8, n_init=4, max_iter=2,
                              key=jax.random.key(0), init="random_from_data")
    jax.block_until_ready(fit(x[: n - 1]))  # compiled: the peak below is the data's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = int(open("/proc/self/statm").read().split()[1]) * 4096  # x included
    jax.block_until_ready(fit(x))
    status = open("/proc/self/status").read()
    print(int(status.split("VmHWM:")[1].split()[0]) * 1024 - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_fit_holds_the_data_once():
    """jaxem.fit on NumPy rows that need padding (to the row bucket) holds one device
    copy of the data: padded on the way to the device, checked in chunks, centred in
    place (the copy is donated). From 100,003 to 2,000,003 rows x 16 features (122 MB
    more), the peak over the caller's own array grows by 1.26-1.35x the extra data
    (measured on a 2-core CPU); it grew by 2.47x when the rows were padded on the host
    and checked and centred through whole-array temporaries."""
    def peak(n):
        out = subprocess.run([sys.executable, "-c", _PEAK_FIT, str(n)], capture_output=True,
                             text=True, timeout=600, check=True)
        return int(out.stdout.split()[-1])

    small, large = peak(100_003), peak(2_000_003)
    extra_data = (2_000_003 - 100_003) * 16 * 4
    assert large - small < 1.75 * extra_data, ((large - small) / extra_data)
