"""Estimators with the names users know (scikit-learn's, hmmlearn's)."""
from jaxem.estimators.gaussian_mixture import GaussianMixture
from jaxem.estimators.kmeans import KMeans

__all__ = ["GaussianMixture", "KMeans"]
