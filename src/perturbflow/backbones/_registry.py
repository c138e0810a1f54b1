"""The registry of velocity backbones, filled by the :func:`register_backbone` decorator."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from perturbflow._errors import PerturbFlowError

_BACKBONES: dict[str, type[nn.Module]] = {}


def register_backbone(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator registering a backbone under ``name``.

    A backbone is an ``nn.Module`` built as ``cls(n_latent=..., n_cond=..., **hyper)`` and
    called as ``backbone(x_t=x_t, t=t, cond=cond)`` with ``x_t`` of shape ``(B, S, D)``,
    ``t`` of shape ``(B,)`` and ``cond`` of shape ``(B, C)``; it returns ``(B, S, D)``.
    The first line of its docstring is its description in ``perturbflow backbones``.
    """

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered ({_BACKBONES[name].__name__})")
        cls.backbone_name = name
        _BACKBONES[name] = cls
        return cls

    return decorator


def get_backbone(name: str) -> type[nn.Module]:
    """Return the backbone class registered under ``name``."""
    try:
        return _BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(_BACKBONES))
        raise PerturbFlowError(f"unknown backbone {name!r}; known backbones: {known}") from None


def list_backbones() -> dict[str, str]:
    """Names of the registered backbones with their one-line descriptions."""
    return {
        name: (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        for name, cls in sorted(_BACKBONES.items())
    }


def build_backbone(name: str, n_latent: int, n_cond: int, **hyper) -> nn.Module:
    """Build the backbone ``name`` for latents of size ``n_latent`` and conditions of size ``n_cond``."""
    return get_backbone(name)(n_latent=n_latent, n_cond=n_cond, **hyper)
