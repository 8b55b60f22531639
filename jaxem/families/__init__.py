"""Model families: the mathematics of one model each, as pure functions."""
from jaxem.families.gaussian import (
    COVARIANCE_TYPES,
    Gaussian,
    GaussianParams,
    GaussianStats,
    gaussian,
)
from jaxem.families.emissions import (CategoricalEmission, GaussianEmission, MixtureEmission,
                                     PoissonEmission)
from jaxem.families.gmm_emission import GMMEmission
from jaxem.families.hmm import HMM, HMMParams, HMMStats, hmm, pad_sequences
from jaxem.families.kmeans import KMeans, KMeansParams, KMeansStats, kmeans
from jaxem.families.bernoulli import Bernoulli, BernoulliParams, BernoulliStats, bernoulli
from jaxem.families.categorical import (Categorical, CategoricalParams, CategoricalStats,
                                        categorical)
from jaxem.families.poisson import Poisson, PoissonParams, PoissonStats, poisson

__all__ = [
    "COVARIANCE_TYPES", "Gaussian", "GaussianParams", "GaussianStats", "gaussian",
    "KMeans", "KMeansParams", "KMeansStats", "kmeans", "HMM", "HMMParams", "HMMStats", "hmm",
    "pad_sequences", "CategoricalEmission", "GaussianEmission", "PoissonEmission", "MixtureEmission", "GMMEmission",
    "Bernoulli", "BernoulliParams", "BernoulliStats", "bernoulli", "Categorical",
    "CategoricalParams", "CategoricalStats", "categorical", "Poisson", "PoissonParams",
    "PoissonStats", "poisson",
]
