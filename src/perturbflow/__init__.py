"""perturbflow: predict single-cell perturbation responses with a latent rectified flow."""

from importlib.metadata import PackageNotFoundError, version

from perturbflow import datasets, pl, pp, tl
from perturbflow._errors import PerturbFlowError
from perturbflow.models import PerturbFlow, PerturbFlowConfig

try:
    __version__ = version("perturbflow")
except PackageNotFoundError:  # pragma: no cover
    __version__ = "unknown"

__all__ = ["PerturbFlow", "PerturbFlowConfig", "PerturbFlowError", "datasets", "pl", "pp", "tl"]
