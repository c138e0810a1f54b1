"""Velocity backbones, chosen by name from a registry."""

from perturbflow.backbones._registry import (
    build_backbone,
    get_backbone,
    list_backbones,
    register_backbone,
)
from perturbflow.backbones import mlp  # noqa: F401  (registers "mlp")
from perturbflow.backbones import dit, settransformer, ssm  # noqa: F401  (register the others)

__all__ = ["build_backbone", "get_backbone", "list_backbones", "register_backbone"]
