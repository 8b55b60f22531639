"""The k-means (hard EM) family against scikit-learn's Lloyd k-means."""
import jax
import numpy as np
import pytest
from sklearn.cluster import KMeans as SkKMeans

import jaxem
from jaxem.families import KMeansParams


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_lloyd_equals_sklearn(x64, make_blobs, weighted):
    x, _ = make_blobs(11, 150, 2, 4, separation=2.5)
    rng = np.random.default_rng(12)
    w = rng.integers(1, 4, size=len(x)).astype(float) if weighted else np.ones(len(x))
    c0 = x[rng.choice(len(x), 4, replace=False)]
    sk = SkKMeans(4, init=c0, n_init=1, algorithm="lloyd", tol=0.0, max_iter=300)
    sk.fit(x, sample_weight=w)

    fam = jaxem.kmeans()
    r = jaxem.fit(fam, x, n_components=4, key=jax.random.key(0), init=KMeansParams(c0),
                  weights=w if weighted else None, tol=0.0, max_iter=300)
    assert bool(r.converged)
    centers = np.asarray(r.params.centers)
    np.testing.assert_allclose(centers, sk.cluster_centers_, rtol=1e-10, atol=1e-12)
    labels = np.asarray(jaxem.responsibilities(fam, r.params, x).argmax(axis=1))
    np.testing.assert_array_equal(labels, sk.labels_)
    inertia = -np.sum(w * np.asarray(jaxem.log_likelihood(fam, r.params, x)))
    np.testing.assert_allclose(inertia, sk.inertia_, rtol=1e-10)
    # The engine's objective at the last E-step is the same (the centres did not move).
    np.testing.assert_allclose(-float(r.log_likelihood) * w.sum(), sk.inertia_, rtol=1e-10)


def test_empty_cluster_keeps_its_centre(x64):
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    c0 = np.array([[0.5], [10.5], [1000.0]])  # the last centre gets no points
    r = jaxem.fit(jaxem.kmeans(), x, n_components=3, key=jax.random.key(0),
                  init=KMeansParams(c0), tol=0.0, max_iter=10)
    np.testing.assert_allclose(r.params.centers, c0)
    assert not bool(r.failed)
