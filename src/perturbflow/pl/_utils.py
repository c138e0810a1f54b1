"""Shared ending of the plotting functions: save, show, or return the axes."""

from __future__ import annotations

import matplotlib.pyplot as plt


def finish(ax, show: bool | None, save: str | None):
    first = ax[0] if hasattr(ax, "__len__") else ax
    fig = first.figure
    fig.tight_layout()
    if save:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show:
        plt.show()
        return None
    return ax
