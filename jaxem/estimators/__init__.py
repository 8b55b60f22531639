"""Estimators with the names users know (scikit-learn's, hmmlearn's)."""
from jaxem import persist
from jaxem.estimators.gaussian_mixture import GaussianMixture
from jaxem.estimators.hmm import CategoricalHMM, ConvergenceMonitor, GaussianHMM, PoissonHMM
from jaxem.estimators.kmeans import KMeans

__all__ = ["CategoricalHMM", "GaussianHMM", "GaussianMixture", "KMeans", "PoissonHMM"]

# What a saved file may name (jaxem.persist rebuilds only registered classes).
for _cls in (GaussianMixture, KMeans, GaussianHMM, CategoricalHMM, PoissonHMM,
             ConvergenceMonitor):
    persist.register(_cls)
