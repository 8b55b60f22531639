"""Estimators with the names users know (scikit-learn's, hmmlearn's)."""
from jaxem import persist
from jaxem.estimators.classifier import MixtureClassifier
from jaxem.estimators.discrete import BernoulliMixture, CategoricalMixture, PoissonMixture
from jaxem.estimators.gaussian_mixture import GaussianMixture
from jaxem.estimators.gmmhmm import GMMHMM
from jaxem.estimators.hmm import CategoricalHMM, ConvergenceMonitor, GaussianHMM, PoissonHMM
from jaxem.estimators.kmeans import KMeans

__all__ = ["BernoulliMixture", "CategoricalHMM", "CategoricalMixture", "GaussianHMM", "GMMHMM",
           "GaussianMixture", "KMeans", "MixtureClassifier", "PoissonHMM", "PoissonMixture"]

persist.register(ConvergenceMonitor)  # hmmlearn's monitor_, saved with the HMMs
