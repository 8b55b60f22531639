"""jaxem: latent-variable models fitted by EM on JAX, batched over restarts and data sets."""
from jaxem import _cache

_cache.setup()  # JAX's persistent compilation cache in a user folder (see jaxem._cache)

from jaxem import datasets, em, families, hmm_inference, progress, select, trim  # noqa: E402
from jaxem.batch import FitError, FitResult, fit
from jaxem.compare import compare
from jaxem.em import EMResult, e_step, em_step, log_likelihood, m_step, responsibilities, run
from jaxem.estimators import (CategoricalHMM, GaussianHMM, GaussianMixture, KMeans,
                              MixtureClassifier, PoissonHMM)
from jaxem.estimators import BernoulliMixture, CategoricalMixture, PoissonMixture
from jaxem.estimators import GMMHMM
from jaxem.families import gaussian, kmeans
from jaxem.families import bernoulli, categorical, poisson
from jaxem.gradient import fit_gradient
from jaxem.init import initialize, kmeans_plusplus
from jaxem.persist import load, save
from jaxem.select import select_n_components
from jaxem.stream import fit_online, fit_stream
from jaxem.trim import trimmed

__version__ = "0.1.0"

__all__ = [
    "CategoricalHMM", "EMResult", "FitError", "FitResult", "GaussianHMM", "GaussianMixture",
    "GMMHMM", "MixtureClassifier",
    "KMeans", "PoissonHMM", "compare", "datasets", "e_step", "em", "em_step", "families",
    "fit", "fit_gradient", "fit_online", "fit_stream", "gaussian", "hmm_inference", "initialize", "kmeans",
    "kmeans_plusplus", "load", "log_likelihood", "m_step", "responsibilities", "run", "save",
    "BernoulliMixture", "CategoricalMixture", "PoissonMixture", "bernoulli", "categorical",
    "poisson", "plot", "progress", "select", "select_n_components", "trim", "trimmed",
]


def __getattr__(name):
    # jaxem.plot on first use, so that importing jaxem never imports matplotlib.
    if name == "plot":
        import importlib

        return importlib.import_module("jaxem.plot")
    raise AttributeError(f"module 'jaxem' has no attribute {name!r}")
