"""The device a prediction runs on, and moving the model's modules there for it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from perturbflow._errors import PerturbFlowError


def prediction_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device of ``device``: ``None`` or ``"auto"`` pick CUDA when a device is
    available and the CPU otherwise (as scvi-tools' ``accelerator="auto"`` does); ``"gpu"``
    means CUDA; other names are torch's (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "gpu":
        device = "cuda"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise PerturbFlowError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or None") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PerturbFlowError(f"device {str(device)!r} asked for, but torch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PerturbFlowError(
                f"device {str(device)!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PerturbFlowError("device 'mps' asked for, but torch sees no MPS device")
    return device


@contextmanager
def modules_on(device: torch.device, *modules: nn.Module) -> Iterator[torch.device]:
    """Move ``modules`` to ``device`` for the block, and back to the CPU after it (a trained
    model keeps its modules on the CPU between calls, so saving and loading need no device)."""
    try:
        for module in modules:
            module.to(device)
        yield device
    finally:
        for module in modules:
            module.cpu()
