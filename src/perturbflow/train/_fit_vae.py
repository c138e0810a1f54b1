"""Stage 1 training: the count VAE (scvi-tools), with checkpoints and resume."""

from __future__ import annotations

import numpy as np

from perturbflow.nn import CountVAE
from perturbflow.train._checkpoints import Stage, run_stage, stage_trainer_kwargs

VAE_DIR = "vae"


def fit_vae(counts, rows: np.ndarray, genes: list[str], config, stage: Stage | None = None,
            progress_bar: bool = True, **kwargs) -> CountVAE:
    """:meth:`CountVAE.fit <perturbflow.nn.CountVAE.fit>` with a progress bar over all its steps.

    With ``stage`` (the ``vae`` stage of a :class:`~perturbflow.train.TrainingRun`), the fit
    writes checkpoints and resumes from the stage's last one; a stage already finished is
    loaded, not trained again. The other arguments are those of ``CountVAE.fit``.
    """
    trainer_kwargs = stage_trainer_kwargs(stage, "stage 1: VAE", progress_bar) | {"simple_progress_bar": False}
    return run_stage(
        stage,
        lambda: CountVAE.fit(
            counts, rows, genes, config, progress_bar=progress_bar, trainer_kwargs=trainer_kwargs, **kwargs
        ),
        save=lambda vae, path: vae.save(path / VAE_DIR),
        load=lambda path: CountVAE.load(path / VAE_DIR, genes, config.vae_decoder),
    )
