"""User-facing errors: raised for bad input, shown by the CLI as one line."""

from __future__ import annotations


class PerturbFlowError(ValueError):
    """Bad input given to perturbflow; the message names the cause."""
