"""Lightning training plans."""

from perturbflow.train._plan import FlowTrainingPlan

__all__ = ["FlowTrainingPlan"]
