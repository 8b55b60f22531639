"""Model families: the mathematics of one model each, as pure functions."""
from jaxem.families.gaussian import (
    COVARIANCE_TYPES,
    Gaussian,
    GaussianParams,
    GaussianStats,
    gaussian,
)
from jaxem.families.kmeans import KMeans, KMeansParams, KMeansStats, kmeans

__all__ = [
    "COVARIANCE_TYPES", "Gaussian", "GaussianParams", "GaussianStats", "gaussian",
    "KMeans", "KMeansParams", "KMeansStats", "kmeans",
]
