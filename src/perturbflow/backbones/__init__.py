"""Velocity backbones, chosen by name from a registry."""

from perturbflow.backbones import (  # noqa: F401  (each module registers its backbone)
    dit,
    mlp,
    settransformer,
    ssm,
)
from perturbflow.backbones._registry import (
    build_backbone,
    get_backbone,
    list_backbones,
    register_backbone,
)

__all__ = ["build_backbone", "get_backbone", "list_backbones", "register_backbone"]
