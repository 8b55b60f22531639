"""Estimators with the names users know (scikit-learn's, hmmlearn's)."""
from jaxem.estimators.gaussian_mixture import GaussianMixture
from jaxem.estimators.hmm import CategoricalHMM, GaussianHMM, PoissonHMM
from jaxem.estimators.kmeans import KMeans

__all__ = ["CategoricalHMM", "GaussianHMM", "GaussianMixture", "KMeans", "PoissonHMM"]
