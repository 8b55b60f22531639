"""jaxem.plot draws what it is given (counted artists, Agg backend) and refuses what it
cannot draw; importing jaxem does not import matplotlib."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402

import jaxem  # noqa: E402
from jaxem import plot  # noqa: E402
from jaxem.families.gaussian import GaussianParams  # noqa: E402
from jaxem.trim import start  # noqa: E402


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


@pytest.fixture(scope="module")
def faithful():
    return jaxem.datasets.load_faithful()


def _ellipses(ax):
    return [p for p in ax.patches if isinstance(p, Ellipse)]


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
def test_one_ellipse_per_component_and_level_for_every_covariance_type(ct, ax, faithful):
    gm = jaxem.GaussianMixture(3, covariance_type=ct, random_state=0).fit(faithful)
    plot.ellipses(ax, gm, x=faithful, n_std=(1, 2))
    drawn = _ellipses(ax)
    assert len(drawn) == 6
    assert len(ax.collections) == 1  # the points
    # The 2-sd ellipse of each component has the covariance's eigenvalues as its axes.
    cov = {"full": lambda c: c, "tied": lambda c: np.broadcast_to(c, (3, 2, 2)),
           "diag": lambda c: np.stack([np.diag(v) for v in c]),
           "spherical": lambda c: c[:, None, None] * np.eye(2)}[ct](gm.covariances_)
    for k in range(3):
        e = drawn[2 * k + 1]
        vals = np.linalg.eigvalsh(cov[k])
        np.testing.assert_allclose(sorted([e.width, e.height]), 4 * np.sqrt(vals), rtol=1e-5)
        np.testing.assert_allclose(e.center, gm.means_[k], rtol=1e-6)


def test_params_results_and_parameters_of_one_fit_agree(ax, faithful):
    res = jaxem.fit(jaxem.gaussian("diag"), faithful, n_components=2, key=jax.random.key(0),
                    n_init=2, max_iter=10)
    plot.ellipses(ax, res)
    plot.ellipses(ax, res.params)
    plot.ellipses(ax, jax.tree.map(lambda a: a[0], res.restarts))  # an EMResult
    assert len(_ellipses(ax)) == 6
    a, b = _ellipses(ax)[:2], _ellipses(ax)[2:4]
    for e, f in zip(a, b):
        assert (e.width, e.height, e.angle) == (f.width, f.height, f.angle)


def test_only_live_components_of_a_trimmed_fit_are_drawn(ax):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) + 6])
    fam = jaxem.trimmed(jaxem.gaussian("full"), 0.1)
    res = jaxem.fit(fam, x.astype(np.float32), n_components=6, key=jax.random.key(0),
                    max_iter=60, init="random_from_data")
    live = int(jaxem.trim.n_live(res.params))
    assert live < 6
    plot.ellipses(ax, res)
    assert len(_ellipses(ax)) == live
    means_marks = [line for line in ax.lines if line.get_marker() == "+"]
    assert len(means_marks) == 1 and len(means_marks[0].get_xdata()) == live


def test_traces_one_line_per_restart(ax, faithful):
    res = jaxem.fit(jaxem.gaussian("spherical"), faithful, n_components=2,
                    key=jax.random.key(0), n_init=5, max_iter=15, init="random")
    plot.traces(ax, res)
    assert len(ax.lines) == 5
    bold = [line for line in ax.lines if line.get_linewidth() == 2]
    assert len(bold) == 1
    n = int(res.n_iter)
    np.testing.assert_allclose(bold[0].get_ydata()[:n], res.trace[:n])
    fig, other = plt.subplots()
    plot.traces(other, res.restarts)  # an EMResult of restarts: the best is the highest
    assert len(other.lines) == 5
    plt.close(fig)


def test_criterion_curve_marks_the_chosen_k(ax, faithful):
    sel = jaxem.select_n_components(jaxem.gaussian("diag"), faithful, k_max=4,
                                    key=jax.random.key(0), n_init=2, max_iter=30)
    plot.criterion_curve(ax, sel)
    curve, star = ax.lines
    np.testing.assert_array_equal(curve.get_xdata(), [1, 2, 3, 4])
    np.testing.assert_allclose(curve.get_ydata(), sel.bic)
    assert star.get_xdata()[0] == sel.best
    fig, both = plt.subplots()
    plot.criterion_curve(both, sel, criterion="both")
    assert len(both.lines) == 4
    plt.close(fig)


def test_trimming_history_steps_down_to_the_survivors(ax):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(80, 2)), rng.normal(size=(80, 2)) + 6])
    fam = jaxem.trimmed(jaxem.gaussian("spherical"), 0.1)
    res = jaxem.fit(fam, x.astype(np.float32), n_components=6, key=jax.random.key(0),
                    n_init=3, max_iter=40, init="random_from_data")
    plot.trimming_history(ax, res)
    (line,) = ax.lines
    y = line.get_ydata()
    assert y[0] == 6 and y[-1] == int(jaxem.trim.n_live(res.params))
    assert np.all(np.diff(y) <= 0) and len(y) == int(res.params.n_iter) + 1
    fig, every = plt.subplots()
    plot.trimming_history(every, res, restarts=True)
    assert len(every.lines) == 4
    plt.close(fig)


def test_batches_need_an_index(ax, faithful):
    xb = np.stack([faithful, faithful[::-1]])
    res = jaxem.fit(jaxem.trimmed(jaxem.gaussian("diag"), 0.05), xb, n_components=3,
                    key=jax.random.key(0), n_init=2, max_iter=5)
    with pytest.raises(ValueError, match="pick one"):
        plot.ellipses(ax, res)
    with pytest.raises(ValueError, match="dataset="):
        plot.traces(ax, res)
    with pytest.raises(ValueError, match="dataset="):
        plot.trimming_history(ax, res)
    plot.traces(ax, res, dataset=1)
    plot.trimming_history(ax, res, dataset=1)
    plot.ellipses(ax, jax.tree.map(lambda a: a[1], res.params))
    assert len(ax.lines) == 2 + 1 + 1 and len(_ellipses(ax)) >= 1


def test_bad_input_raises(ax, faithful):
    three_d = GaussianParams(jnp.array([0.5, 0.5]), jnp.zeros((2, 3)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="2-D fits"):
        plot.ellipses(ax, three_d)
    with pytest.raises(TypeError, match="Gaussian mixture"):
        plot.ellipses(ax, object())
    two = GaussianParams(jnp.array([0.5, 0.5]), jnp.zeros((2, 2)), jnp.ones((2, 2)))
    with pytest.raises(TypeError, match="matplotlib Axes"):
        plot.ellipses(None, two, covariance_type="diag")
    with pytest.raises(ValueError, match="n_std"):
        plot.ellipses(ax, two, covariance_type="diag", n_std=-1)
    tied = two._replace(precisions_cholesky=jnp.array([[1.0, 0.5], [0.0, 2.0]]))
    with pytest.raises(ValueError, match="covariance_type="):
        plot.ellipses(ax, tied._replace(precisions_cholesky=jnp.ones((3, 3))))
    with pytest.raises(ValueError, match="covariance_type must be"):
        plot.ellipses(ax, two, covariance_type="round")
    with pytest.raises(ValueError, match="x must have shape"):
        plot.ellipses(ax, two, covariance_type="diag", x=np.zeros((3, 3)))
    assert not ax.patches
    plot.ellipses(ax, two)  # all positive (2, 2) factors: diag
    plot.ellipses(ax, tied)  # triangular: tied
    diag_axes = sorted([_ellipses(ax)[0].width, _ellipses(ax)[0].height])
    np.testing.assert_allclose(diag_axes, [4.0, 4.0])
    tied_cov = np.linalg.inv(np.asarray(tied.precisions_cholesky)
                             @ np.asarray(tied.precisions_cholesky).T)
    np.testing.assert_allclose(sorted([_ellipses(ax)[2].width, _ellipses(ax)[2].height]),
                               4 * np.sqrt(np.linalg.eigvalsh(tied_cov)), rtol=1e-6)
    assert len(_ellipses(ax)) == 4
    with pytest.raises(TypeError, match="jaxem.fit result"):
        plot.traces(ax, np.zeros(3))
    with pytest.raises(ValueError, match="criterion must be"):
        plot.criterion_curve(ax, None, criterion="icl")
    with pytest.raises(TypeError, match="select_n_components"):
        plot.criterion_curve(ax, np.zeros(3))
    with pytest.raises(TypeError, match="trimmed"):
        plot.trimming_history(ax, two)


def test_without_matplotlib_the_error_says_what_to_install(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'jaxem\[plot\]'"):
        plot.ellipses(None, start(GaussianParams(jnp.ones(1), jnp.zeros((1, 2)),
                                               jnp.ones(1))))


def test_importing_jaxem_does_not_import_matplotlib():
    code = ("import sys, jaxem; assert 'matplotlib' not in sys.modules; "
            "jaxem.plot.ellipses; assert 'matplotlib' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
