"""Safe persistence: round trips give the same predictions; bad files raise ValueError
and never run code."""
import json
import pickle

import jax
import numpy as np
import pytest

import jaxem
from jaxem import persist


@pytest.fixture(scope="module")
def data(make_blobs):
    x, _ = make_blobs(0, 300, 3, 3)
    return x.astype(np.float32)


def _hmm_data(rng):
    x = rng.normal(size=(120, 2)) + np.repeat([[0, 0], [4, 4], [0, 4]], 40, axis=0)
    return x.astype(np.float32), [60, 60]


ESTIMATORS = {
    "GaussianMixture": lambda: jaxem.GaussianMixture(3, covariance_type="full", n_init=2,
                                                     random_state=0),
    "KMeans": lambda: jaxem.KMeans(3, n_init=2, random_state=0),
    "GaussianHMM": lambda: jaxem.GaussianHMM(3, n_iter=5, random_state=0),
    "PoissonMixture": lambda: jaxem.PoissonMixture(2, random_state=0),
    "MixtureClassifier": lambda: jaxem.MixtureClassifier(2, random_state=0),
}


@pytest.mark.parametrize("name", ESTIMATORS)
def test_estimator_round_trip_predicts_the_same(name, data, tmp_path):
    est = ESTIMATORS[name]()
    if name == "GaussianHMM":
        x, lengths = _hmm_data(np.random.default_rng(0))
        est.fit(x, lengths)
    elif name == "PoissonMixture":
        x = np.random.default_rng(0).poisson([[1.0, 8.0]], size=(100, 2)).astype(float)
        est.fit(x)
    elif name == "MixtureClassifier":
        x = data
        est.fit(x, (x[:, 0] > np.median(x[:, 0])).astype(int))
    else:
        x = data
        est.fit(x)
    path = tmp_path / "model.npz"
    est.save(path)
    back = jaxem.load(path)
    assert type(back) is type(est)
    assert back.get_params() == est.get_params()
    np.testing.assert_array_equal(back.predict(x), est.predict(x))
    if name != "MixtureClassifier":  # a classifier's score needs labels
        np.testing.assert_allclose(back.score(x), est.score(x), rtol=1e-6)
    if name != "KMeans":
        np.testing.assert_allclose(back.predict_proba(x), est.predict_proba(x), rtol=1e-6)


def test_functional_result_round_trip(data, tmp_path):
    res = jaxem.fit(jaxem.gaussian("diag"), data, n_components=3, key=jax.random.key(0),
                    n_init=3)
    jaxem.save(res, tmp_path / "r.npz")
    back = jaxem.load(tmp_path / "r.npz")
    assert type(back) is jaxem.FitResult and type(back.restarts) is jaxem.EMResult
    for a, b in zip(jax.tree.leaves(res), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), b)
    fam = jaxem.gaussian("diag")
    np.testing.assert_array_equal(jaxem.log_likelihood(fam, back.params, data),
                                  jaxem.log_likelihood(fam, res.params, data))


def test_prng_keys_and_families_round_trip(tmp_path):
    obj = {"key": jax.random.key(7), "family": jaxem.gaussian("tied", reg_covar=1e-3),
           "nested": [(1, 2.5, None, "s")]}
    jaxem.save(obj, tmp_path / "o.npz")
    back = jaxem.load(tmp_path / "o.npz")
    assert back["family"] == obj["family"] and back["nested"] == obj["nested"]
    np.testing.assert_array_equal(jax.random.key_data(back["key"]),
                                  jax.random.key_data(obj["key"]))


def test_unregistered_objects_are_refused(tmp_path):
    with pytest.raises(TypeError, match="cannot save a RandomState"):
        jaxem.save({"rs": np.random.RandomState(0)}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="object"):
        jaxem.save(np.array([object()]), tmp_path / "x.npz")


class _Boom:
    """Unpickling this would create a file: proof that loading ran code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _saved(tmp_path, data):
    path = tmp_path / "good.npz"
    jaxem.save(jaxem.GaussianMixture(2, random_state=0).fit(data), path)
    return path


def _rewrite_meta(src, dst, change):
    with np.load(src, allow_pickle=False) as a:
        arrays = {k: a[k] for k in a.files}
    meta = json.loads(str(arrays["__jaxem__"]))
    change(meta)
    arrays["__jaxem__"] = np.array(json.dumps(meta))
    np.savez(dst, **arrays)


@pytest.mark.parametrize("case,words", [
    ("truncated", "truncated or corrupted"),
    ("garbage", "not a jaxem file"),
    ("foreign npz", "not a jaxem file"),
    ("newer version", "format version 99"),
    ("foreign format", "not a jaxem file"),
    ("unknown type", "unknown type 'os.system'"),
    ("pickle", "pickled data"),
    ("npz with pickle", "pickled data"),
])
def test_bad_files_raise_value_error_and_run_nothing(case, words, tmp_path, data):
    good = _saved(tmp_path, data)
    bad = tmp_path / "bad.npz"
    witness = tmp_path / "code-ran"
    if case == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "garbage":
        bad.write_bytes(np.random.default_rng(0).bytes(4000))
    elif case == "foreign npz":
        np.savez(bad, weights=np.ones(3))
    elif case == "newer version":
        _rewrite_meta(good, bad, lambda m: m.update(version=99))
    elif case == "foreign format":
        _rewrite_meta(good, bad, lambda m: m.update(format="other"))
    elif case == "unknown type":
        _rewrite_meta(good, bad, lambda m: m["object"].update(type="os.system"))
    elif case == "pickle":
        bad.write_bytes(pickle.dumps(_Boom(str(witness))))
    else:  # a jaxem file whose arrays were swapped for pickled objects
        with np.load(good, allow_pickle=False) as a:
            arrays = {k: a[k] if k == "__jaxem__" else np.array([_Boom(str(witness))])
                      for k in a.files}
        np.savez(bad, **arrays, allow_pickle=True)
    with pytest.raises(ValueError, match=words):
        jaxem.load(bad)
    assert not witness.exists()


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        persist.load(tmp_path / "nope.npz")
