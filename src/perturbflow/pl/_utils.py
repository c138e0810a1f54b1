"""Shared ending of the plotting functions: save, show, or return the axes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt


def finish(
    ax: plt.Axes | Sequence[plt.Axes], show: bool | None, save: str | Path | None
) -> plt.Axes | Sequence[plt.Axes] | None:
    """Lay out the figure of ``ax``, save it to ``save`` (folders are created), show it or return ``ax``."""
    first = ax[0] if hasattr(ax, "__len__") else ax
    fig = first.figure
    fig.tight_layout()
    if save:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show:
        plt.show()
        return None
    return ax
