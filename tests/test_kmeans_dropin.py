"""``jaxem.KMeans`` as a drop-in for ``sklearn.cluster.KMeans``: each gap closed for
issue 7, with scikit-learn as the oracle, and hostile inputs with clear errors.

Most tests share a few compiled programs (data ``(120, 3)``, 4 clusters; an explicit
init, or k-means++ / random starts with 1 or 2 restarts): ``max_iter`` and ``tol`` are
traced, so only shapes, restarts and chunking compile anew.
"""
import re

import jax
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn import cluster
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils._param_validation import InvalidParameterError

import jaxem
from jaxem.estimators import kmeans as kmeans_module


def _data(seed=0, n=120, d=3, k=4, scale=3.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * scale
    return centres[rng.integers(0, k, n)] + rng.normal(size=(n, d))


class _Compiled(Exception):
    """The engine was reached (it compiles there)."""


def _no_compile(*args, **kwargs):
    raise _Compiled


def _same_fit(ours, ref, rtol=1e-10):
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=rtol,
                               atol=1e-12)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    np.testing.assert_allclose(ours.inertia_, ref.inertia_, rtol=rtol, atol=1e-12)
    assert ours.n_iter_ == ref.n_iter_


@pytest.mark.parametrize("tol", [0.0, 1e-4, 1e-1])
@pytest.mark.parametrize("weighted", [False, True])
def test_same_init_same_result_as_sklearn(x64, tol, weighted):
    x = _data(1)
    w = np.random.default_rng(2).uniform(0.1, 3, len(x)) if weighted else None
    c0 = x[:4]  # several iterations from a poor start
    kw = dict(init=c0, n_init=1, tol=tol, max_iter=300)
    _same_fit(jaxem.KMeans(4, **kw).fit(x, sample_weight=w),
              cluster.KMeans(4, **kw).fit(x, sample_weight=w))


@pytest.mark.parametrize("max_iter", [1, 2, 3])
def test_max_iter_stops_like_sklearn(x64, max_iter):
    """Stopped runs: the centres after ``max_iter`` moves, labels and inertia at them."""
    x = _data(3)
    kw = dict(init=x[:4], n_init=1, max_iter=max_iter)
    _same_fit(jaxem.KMeans(4, **kw).fit(x), cluster.KMeans(4, **kw).fit(x))


def test_empty_cluster_relocated_like_sklearn(x64):
    x = _data(4, k=3)
    c0 = np.vstack([x[:2], [[100.0, 100.0, 100.0], [-100.0, 50.0, 0.0]]])  # two far centres
    ours = jaxem.KMeans(4, init=c0, n_init=1).fit(x)
    ref = cluster.KMeans(4, init=c0, n_init=1).fit(x)
    _same_fit(ours, ref)
    assert len(np.unique(ours.labels_)) == 4


def test_relocation_with_weights_and_chunks(x64):
    """Relocation picks the farthest rows over all chunks, as one pass would."""
    x = _data(5, k=3)
    w = np.random.default_rng(5).uniform(0.5, 2, len(x))
    c0 = np.vstack([x[:3], [[50.0, 50.0, 50.0]]])
    ref = cluster.KMeans(4, init=c0, n_init=1).fit(x, sample_weight=w)
    for chunk in (None, 16):  # 16 does not divide 120: the last chunk overlaps
        _same_fit(jaxem.KMeans(4, init=c0, n_init=1, chunk_size=chunk)
                  .fit(x, sample_weight=w), ref)


def test_fewer_distinct_points_than_clusters_warns(x64):
    x = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    msg = re.escape("Number of distinct clusters (3) found smaller than n_clusters (4)")
    with pytest.warns(ConvergenceWarning, match=msg):
        ref = cluster.KMeans(4, init=x[[0, 1, 2, 3]], n_init=1).fit(x)
    with pytest.warns(ConvergenceWarning, match=msg):
        ours = jaxem.KMeans(4, init=x[[0, 1, 2, 3]], n_init=1).fit(x)
    _same_fit(ours, ref)
    with pytest.warns(ConvergenceWarning, match=msg):
        jaxem.KMeans(4, random_state=0).fit(x)


@pytest.mark.parametrize("container", [sp.csr_matrix, sp.csc_array])
def test_sparse_input_like_dense(x64, container):
    """TF-IDF-like sparse rows: the same fit as scikit-learn's, and as dense input."""
    rng = np.random.default_rng(6)
    x = sp.random(80, 30, density=0.2, random_state=7, format="csr").toarray()
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    c0 = x[rng.choice(80, 3, replace=False)]
    ours = jaxem.KMeans(3, init=c0, n_init=1).fit(container(x))
    _same_fit(ours, cluster.KMeans(3, init=c0, n_init=1).fit(container(x)))
    np.testing.assert_array_equal(ours.predict(container(x)), ours.labels_)
    np.testing.assert_allclose(ours.transform(container(x)), ours.transform(x))
    dense = jaxem.KMeans(3, random_state=1).fit(x)
    np.testing.assert_array_equal(jaxem.KMeans(3, random_state=1).fit(container(x)).labels_,
                                  dense.labels_)


def test_algorithm_elkan_is_lloyd(x64, monkeypatch):
    x = _data(8)
    lloyd = jaxem.KMeans(4, algorithm="lloyd", random_state=0).fit(x)
    elkan = jaxem.KMeans(4, algorithm="elkan", random_state=0).fit(x)
    _same_fit(elkan, lloyd, rtol=0)
    monkeypatch.setattr(kmeans_module, "_fit", _no_compile)
    with pytest.warns(RuntimeWarning, match="algorithm='elkan' doesn't make sense"):
        with pytest.raises(_Compiled):
            jaxem.KMeans(1, algorithm="elkan").fit(x)


def test_copy_x_leaves_x_unchanged(x64):
    x = _data(9)
    before = x.copy()
    jaxem.KMeans(4, copy_x=False, random_state=0).fit(x)
    np.testing.assert_array_equal(x, before)


def test_callable_init_called_per_restart(x64):
    x = _data(10)
    calls = []

    def init(X, n_clusters, random_state):
        calls.append(random_state)
        np.testing.assert_array_equal(X, x)  # the data as given (not centred)
        return X[random_state.choice(len(X), n_clusters, replace=False)]

    km = jaxem.KMeans(4, init=init, random_state=0).fit(x)
    assert km._n_init == 10 and len(calls) == 10
    assert all(isinstance(r, np.random.RandomState) for r in calls)
    # One fixed start: the same as the array init, and as scikit-learn's.
    fixed = jaxem.KMeans(4, init=lambda X, k, random_state: x[:4], n_init=1).fit(x)
    _same_fit(fixed, cluster.KMeans(4, init=x[:4], n_init=1).fit(x))


@pytest.mark.parametrize(
    "init, match",
    [
        (np.zeros((3, 3)), r"initial centers \(3, 3\) does not match the number of clusters 4"),
        (np.zeros((4, 2)), r"\(4, 2\) does not match the number of features of the data 3"),
        (np.full((4, 3), np.nan), "init contains NaN"),
        (np.zeros(4), "Expected 2D array"),
        (lambda X, k, random_state: X[:2], "does not match the number of clusters 4"),
        ("banana", "The 'init' parameter of KMeans must be"),
    ],
)
def test_bad_init_raises(init, match):
    with pytest.raises(ValueError, match=match):
        jaxem.KMeans(4, init=init, n_init=1).fit(_data(11))


def test_array_init_with_n_init_warns_and_runs_once(x64):
    x = _data(12)
    with pytest.warns(RuntimeWarning, match="performing only one init in KMeans instead "
                                            "of n_init=5"):
        km = jaxem.KMeans(4, init=x[:4], n_init=5).fit(x)
    assert km._n_init == 1 and km.restarts_.n_iter.shape == (1,)


def test_feature_names_out(x64):
    x = _data(13)
    ours = jaxem.KMeans(4, random_state=0).fit(x)
    ref = cluster.KMeans(4, random_state=0).fit(x)
    assert list(ours.get_feature_names_out()) == [f"kmeans{i}" for i in range(4)]
    assert list(ours.get_feature_names_out()) == list(ref.get_feature_names_out())
    assert ours.set_output(transform="default") is ours
    # In a pipeline, the next step sees the names.
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    pipe = make_pipeline(jaxem.KMeans(4, random_state=0), StandardScaler()).fit(x)
    assert list(pipe.get_feature_names_out()) == [f"kmeans{i}" for i in range(4)]


def test_set_output_pandas(x64):
    pd = pytest.importorskip("pandas")
    x = pd.DataFrame(_data(13), columns=["a", "b", "c"])
    ours = jaxem.KMeans(4, random_state=0).set_output(transform="pandas").fit(x)
    ref = cluster.KMeans(4, random_state=0).set_output(transform="pandas").fit(x)
    out = ours.transform(x)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == list(ref.transform(x).columns)
    np.testing.assert_array_equal(ours.feature_names_in_, ["a", "b", "c"])


def test_transform_float32_far_from_origin():
    """X ~ 1e6 + N(0, 1) in float32: distances as exact as the data allow."""
    rng = np.random.default_rng(14)
    x = (1e6 + rng.normal(size=(120, 3))).astype(np.float32)
    km = jaxem.KMeans(4, random_state=0).fit(x)
    assert km.cluster_centers_.dtype == np.float32
    x64_, c64 = x.astype(np.float64), km.cluster_centers_.astype(np.float64)
    exact = np.sqrt(((x64_[:, None] - c64[None]) ** 2).sum(-1))
    np.testing.assert_allclose(km.transform(x), exact, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(km.predict(x), exact.argmin(axis=1))
    sq = (x64_ - c64[km.labels_]) ** 2
    np.testing.assert_allclose(km.inertia_, sq.sum(), rtol=1e-6)


def test_verbose_prints_sklearn_messages(x64, capsys):
    x = _data(15)
    pattern = re.compile(r"^(Initialization complete|Iteration \d+, inertia|Converged at "
                         r"iteration \d+: (strict convergence|center shift))")

    def lines(est):
        est.fit(x)
        out = capsys.readouterr().out.splitlines()
        return [pattern.match(line).group(0) for line in out if pattern.match(line)]

    for tol in (0.0, 0.5):
        kw = dict(init=x[:4], n_init=1, tol=tol, verbose=1)
        ours = lines(jaxem.KMeans(4, **kw))
        assert ours == lines(cluster.KMeans(4, **kw)) and len(ours) > 3


@pytest.mark.parametrize("rel", [0.5, 7.0])
def test_sample_weight_scaling_and_repetition(x64, rel):
    x = _data(16)
    reps = np.random.default_rng(16).integers(1, 3, len(x))
    kw = dict(init=x[:4], n_init=1)
    weighted = jaxem.KMeans(4, **kw).fit(x, sample_weight=reps)
    repeated = jaxem.KMeans(4, **kw).fit(np.repeat(x, reps, axis=0))
    np.testing.assert_allclose(weighted.cluster_centers_, repeated.cluster_centers_)
    np.testing.assert_allclose(weighted.inertia_, repeated.inertia_)
    scaled = jaxem.KMeans(4, random_state=3).fit(x, sample_weight=rel * reps)
    plain = jaxem.KMeans(4, random_state=3).fit(x, sample_weight=reps)
    np.testing.assert_array_equal(scaled.labels_, plain.labels_)
    # score: minus the weighted inertia, as scikit-learn's
    ref = cluster.KMeans(4, **kw).fit(x, sample_weight=reps)
    np.testing.assert_allclose(weighted.score(x, sample_weight=reps),
                               ref.score(x, sample_weight=reps), rtol=1e-10)


def test_zero_weight_rows_are_never_centres(x64):
    x = _data(17)
    w = np.ones(len(x))
    w[::2] = 0
    for init in ("k-means++", "random"):
        for seed in range(3):
            km = jaxem.KMeans(4, init=init, n_init=2, random_state=seed, max_iter=1)
            km.fit(x, sample_weight=w)
            starts = km.restarts_.params.centers  # one iteration from the starts
            assert not np.isclose(km.transform(x[::2]), 0).any(), starts


def test_n_iter_inertia_and_restarts(x64):
    x = _data(18)
    km = jaxem.KMeans(4, init="random", n_init=2, random_state=0).fit(x)
    assert km._n_init == 2 and km.restarts_.n_iter.shape == (2,)
    best = np.argmax(km.restarts_.log_likelihood)
    assert km.n_iter_ == km.restarts_.n_iter[best]
    np.testing.assert_allclose(km.inertia_, -km.restarts_.log_likelihood[best] * len(x))
    sq = ((x - km.cluster_centers_[km.labels_]) ** 2).sum()
    np.testing.assert_allclose(km.inertia_, sq, rtol=1e-12)


def test_chunks_and_devices_equal_one_pass(x64):
    x = _data(19)
    ref = jaxem.KMeans(4, init="k-means++", n_init=2, random_state=0).fit(x)
    chunked = jaxem.KMeans(4, init="k-means++", n_init=2, random_state=0, chunk_size=16)
    _same_fit(chunked.fit(x), ref)
    ref = jaxem.KMeans(4, init=x[:4], n_init=1).fit(x)
    _same_fit(jaxem.KMeans(4, init=x[:4], n_init=1, devices=jax.devices()).fit(x), ref)


def test_float32_by_default_and_dtype_follows_data(x64):
    x = _data(20)
    assert jaxem.KMeans(4, random_state=0).fit(x.astype(np.float32)).cluster_centers_.dtype \
        == np.float32
    assert jaxem.KMeans(4, random_state=0).fit(x.astype(int)).cluster_centers_.dtype \
        == np.float64
    with jax.enable_x64(False):
        assert jaxem.KMeans(4, random_state=0).fit(x).cluster_centers_.dtype == np.float32


def test_float16_is_upcast_like_sklearn(x64):
    x = _data(21).astype(np.float16)
    c0 = x[:4].astype(np.float64)
    ours = jaxem.KMeans(4, init=c0, n_init=1).fit(x)
    _same_fit(ours, cluster.KMeans(4, init=c0, n_init=1).fit(x))
    assert ours.cluster_centers_.dtype == np.float64


def test_no_future_warning_from_initialisation(x64):
    """k-means++ and random starts (chunked too) scatter with matching dtypes."""
    import warnings
    x = _data(22)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        jaxem.KMeans(4, init="k-means++", n_init=2, chunk_size=16, random_state=0).fit(x)
        jaxem.KMeans(4, init="random", n_init=2, random_state=0).fit(x)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(n_clusters=0), "The 'n_clusters' parameter of KMeans must be an int in the "
                             "range [1, inf). Got 0"),
        (dict(n_clusters=2.5), "The 'n_clusters' parameter of KMeans must be an int"),
        (dict(n_init=0), "The 'n_init' parameter of KMeans must be a str among {'auto'} or "
                         "an int in the range [1, inf). Got 0"),
        (dict(max_iter=0), "The 'max_iter' parameter of KMeans must be an int in the range "
                           "[1, inf). Got 0"),
        (dict(tol=-1.0), "The 'tol' parameter of KMeans must be a float in the range "
                         "[0.0, inf). Got -1.0"),
        (dict(algorithm="full"), "The 'algorithm' parameter of KMeans must be a str among"),
        (dict(copy_x="yes"), "The 'copy_x' parameter of KMeans must be an instance of"),
        (dict(chunk_size=0), "The 'chunk_size' parameter of KMeans must be an int in the "
                             "range [1, inf) or None"),
    ],
)
def test_bad_parameters_raise_before_compiling(monkeypatch, params, match):
    monkeypatch.setattr(kmeans_module, "_fit", _no_compile)
    with pytest.raises(InvalidParameterError, match=re.escape(match)):
        jaxem.KMeans(**{"n_clusters": 2, **params}).fit(_data(23))


@pytest.mark.parametrize(
    "x, kwargs, error, match",
    [
        (_data(24) + 1j, {}, ValueError, "Complex data not supported"),
        (np.array([["a", "b"], ["c", "d"]]), {}, ValueError, "could not convert"),
        (np.zeros((0, 3)), {}, ValueError, r"Found array with 0 sample\(s\)"),
        (np.zeros((5, 0)), {}, ValueError, r"Found array with 0 feature\(s\)"),
        (np.where(np.eye(8, 3) > 0, np.nan, 1.0), {}, ValueError, "Input X contains NaN"),
        (np.where(np.eye(8, 3) > 0, np.inf, 1.0), {}, ValueError, "Input X contains infinity"),
        (np.arange(8.0), {}, ValueError, "Expected 2D array, got 1D array"),
        (np.zeros((2, 3, 4)), {}, ValueError, "Found array with dim 3"),
        (np.zeros((3, 2)), {}, ValueError, r"n_samples=3 should be >= n_clusters=4"),
        (_data(25), dict(sample_weight=np.ones(5)), ValueError,
         r"sample_weight.shape == \(5,\), expected \(120,\)"),
        (_data(25), dict(sample_weight=-np.ones(120)), ValueError,
         "Negative values in data passed to `sample_weight`"),
        (_data(25), dict(sample_weight=np.zeros(120)), ValueError,
         "Sample weights must contain at least one non-zero number"),
        (_data(25), dict(sample_weight=np.r_[np.ones(3), np.zeros(117)]), ValueError,
         "n_clusters=4 needs at least as many samples of positive sample_weight, got 3"),
        (_data(25), dict(sample_weight=np.full(120, np.nan)), ValueError,
         "Input sample_weight contains NaN"),
    ],
    ids=["complex", "strings", "no-rows", "no-features", "nan", "inf", "1d", "3d",
         "too-few-rows", "weight-shape", "weight-negative", "weight-zero",
         "too-few-weighted-rows", "weight-nan"],
)
def test_hostile_fit_inputs(monkeypatch, x, kwargs, error, match):
    monkeypatch.setattr(kmeans_module, "_fit", _no_compile)
    with pytest.raises(error, match=match):
        jaxem.KMeans(4).fit(x, **kwargs)


def test_hostile_predict_inputs():
    x = _data(26)
    km = jaxem.KMeans(4, random_state=0)
    for method in (km.predict, km.transform, km.score):
        with pytest.raises(NotFittedError, match="This KMeans instance is not fitted yet"):
            method(x)
    km.fit(x)
    for method in (km.predict, km.transform, km.score):
        with pytest.raises(ValueError, match="X has 2 features, but KMeans is expecting 3"):
            method(x[:, :2])
        with pytest.raises(ValueError, match="Input X contains NaN"):
            method(np.where(np.eye(len(x), 3) > 0, np.nan, x))
        with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
            method(x[0])
        with pytest.raises(ValueError, match="Complex data not supported"):
            method(x + 1j)


def test_kmeans_plusplus_mixed_dtypes_no_future_warning(x64):
    """float32 rows with float64 (or integer) weights, NumPy or JAX arrays: the seeds
    are written into the buffers without a narrowing scatter."""
    import warnings
    x = _data(27).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for w in (np.ones(len(x)), np.ones(len(x), dtype=np.int64)):
            for arr in (np.asarray, jax.numpy.asarray):
                centers, idx = jaxem.kmeans_plusplus(jax.random.key(0), arr(x), arr(w), 4)
                np.testing.assert_array_equal(np.asarray(centers), x[np.asarray(idx)])


def test_overflow_raises_kmeans_advice():
    """float32 squared distances overflow at 1e20: a k-means error, not reg_covar advice."""
    x = _data(28).astype(np.float32) * np.float32(1e20)
    with pytest.raises(jaxem.FitError, match="squared distance overflowed float32") as e:
        jaxem.KMeans(4, random_state=0).fit(x)
    assert "StandardScaler" in str(e.value) and "reg_covar" not in str(e.value)
