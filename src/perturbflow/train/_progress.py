"""One progress bar per training stage, over all its steps, with the time left."""

from __future__ import annotations

import math
import sys

from lightning.pytorch.callbacks import ProgressBar


class StageProgressBar(ProgressBar):
    """A rich progress bar over every training step of a stage (not one per epoch).

    It shows the steps done, the time elapsed and left, and the latest losses logged for the
    progress bar. A resumed run starts the bar at the step it resumes from. Only the process
    of global rank 0 draws it.

    Parameters
    ----------
    description
        Text before the bar, e.g. ``"stage 1: VAE"``.
    """

    def __init__(self, description: str):
        super().__init__()
        self.description = description
        self._enabled = True
        self._progress = None
        self._task = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        total = trainer.estimated_stepping_batches
        self._progress = Progress(  # e.g. "stage 2: flow ━━━━━━  600/2000 steps 0:00:31 elapsed 0:01:12 left loss 0.52"
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TimeElapsedColumn(),
            TextColumn("elapsed"),
            TimeRemainingColumn(),
            TextColumn("left {task.fields[metrics]}"),
            console=Console(file=sys.stderr),
        )
        self._progress.start()
        self._task = self._progress.add_task(
            self.description,
            total=None if math.isinf(total) else int(total),
            completed=trainer.global_step,
            metrics="",
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=trainer.global_step)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._progress is not None:
            self._progress.update(self._task, metrics=self._metrics(trainer))

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @staticmethod
    def _metrics(trainer) -> str:
        shown = []
        for name, value in trainer.progress_bar_metrics.items():
            if "loss" in name and len(shown) < 2:
                try:
                    shown.append(f"{name.replace('_epoch', '').replace('train_', '')} {float(value):.3g}")
                except (TypeError, ValueError):
                    continue
        return "  ".join(shown)
