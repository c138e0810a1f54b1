"""Neural-network parts: the count VAE (on scvi-tools) and embeddings of time, perturbations and contexts."""

from perturbflow.nn._conditioning import (
    ContextEncoder,
    PerturbationEncoder,
    context_statistics,
)
from perturbflow.nn._time import TimeEmbedding
from perturbflow.nn._vae import CountVAE

__all__ = ["ContextEncoder", "CountVAE", "PerturbationEncoder", "TimeEmbedding", "context_statistics"]
