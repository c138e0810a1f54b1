"""The user-facing model."""

from perturbflow.models._config import PerturbFlowConfig
from perturbflow.models._perturbflow import PerturbFlow

__all__ = ["PerturbFlow", "PerturbFlowConfig"]
