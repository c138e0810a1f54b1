"""Tools in the scanpy manner: fit, predict and evaluate."""

from perturbflow.tl._evaluate import evaluate

__all__ = ["evaluate"]
