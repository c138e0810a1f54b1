"""Checkpoints of a training run, so that an interrupted run resumes where it stopped.

A run folder holds a record of the run's settings (``run.json``) and, per stage (``vae``,
``flow``), either the latest Lightning checkpoint of the stage in progress
(``{stage}.ckpt``, written every ``every_n_steps`` training steps) or, once the stage has
ended, its result (``{stage}-done/``), which a resumed run loads instead of training again.
Each checkpoint and each stage result carries the random states of the run (torch, numpy,
Python, and the generators of the flow's datasets), so a resumed run continues the seeded
stream of random numbers instead of starting a new one: a run resumed from a checkpoint
of the flow, or from one the VAE took at the end of an epoch, ends with the very weights of
an uninterrupted run. A VAE checkpoint taken within an epoch resumes with a new order of
that epoch's remaining cells (scvi-tools' loader cannot be put back within an epoch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import lightning.pytorch as pl
import numpy as np
import torch

from perturbflow._errors import PerturbFlowError

logger = logging.getLogger(__name__)

RUN_RECORD = "run.json"
RANDOM_STATE_FILE = "random_state.pt"
STAGE_FILE = "stage.json"
DEFAULT_EVERY_N_STEPS = 500
T = TypeVar("T")


def random_state() -> dict[str, Any]:
    """The global random states (torch, CUDA, numpy, Python), as tensors and plain values."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {**np_state["state"], "key": np_state["state"]["key"].tolist()}
    state = {"torch": torch.get_rng_state(), "numpy": np_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: Mapping[str, Any]) -> None:
    """Restore the global random states captured by :func:`random_state`."""
    torch.set_rng_state(state["torch"])
    np_state = dict(state["numpy"])
    np_state["state"] = {**np_state["state"], "key": np.asarray(np_state["state"]["key"], dtype=np.uint32)}
    np.random.set_state(np_state)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RecordedDraws(torch.utils.data.Dataset):
    """A dataset whose items come from its own generator ``rng`` (e.g. ``PairedSetDataset``),
    with the generator's state kept at the start of each of the last few batches.

    Lightning fetches a batch ahead of the one it trains on, so when a checkpoint is written
    after step ``k`` the generator has already drawn batch ``k + 1``; the state kept at the
    start of that batch is the one a resumed run must continue from. ``sampler`` reads the
    items in order and, after a resume in the middle of an epoch, only the epoch's rest, so
    the epoch ends where Lightning expects it to and draws nothing more.
    """

    KEEP = 4  # batches whose starting states are kept

    def __init__(self, dataset, batch_size: int):
        self.dataset = dataset
        self.batch_size = batch_size
        self.drawn = 0  # items drawn since the stage began, over all epochs
        self.states: dict[int, dict] = {}
        self.sampler = _RestOfEpoch(len(dataset))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        if self.drawn % self.batch_size == 0:
            batch = self.drawn // self.batch_size
            self.states[batch] = self.dataset.rng.bit_generator.state
            self.states.pop(batch - self.KEEP, None)
        self.drawn += 1
        return self.dataset[i]

    def state_at(self, batch: int) -> dict:
        """The generator's state before batch ``batch`` (0-based, over all epochs) was drawn."""
        return self.states.get(batch, self.dataset.rng.bit_generator.state)

    def restore(self, batch: int, state: dict) -> None:
        """Continue before batch ``batch`` (0-based, over all epochs) with the generator at ``state``."""
        self.dataset.rng.bit_generator.state = state
        self.drawn = batch * self.batch_size
        self.states = {}
        self.sampler.start = self.drawn % len(self.dataset)


class _RestOfEpoch(torch.utils.data.Sampler):
    """Items ``0 .. n-1`` in order, the next epoch starting at ``start`` (then 0 again)."""

    def __init__(self, n: int):
        self.n = n
        self.start = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        start, self.start = self.start, 0
        return iter(range(start, self.n))


class StepCheckpoint(pl.Callback):
    """Write the stage's Lightning checkpoint every ``every_n_steps`` optimizer steps.

    One file per stage, replaced each time (written beside it, then moved over it). Each
    checkpoint carries the random states too, restored where the interrupted run would have
    drawn its next number: before the next training batch, or, for a checkpoint at the end
    of an epoch (written once the epoch's validation is done), before the next epoch.
    ``datasets`` are :class:`RecordedDraws` whose generators are saved and restored with
    them (the flow's ``"train"`` and ``"val"`` sets).
    """

    def __init__(self, path: Path, every_n_steps: int, datasets: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.every_n_steps = max(1, int(every_n_steps))
        self.datasets = dict(datasets or {})
        self._trainer: pl.Trainer | None = None
        self._at_epoch_end = False  # a checkpoint is due once the epoch ends
        self._saving_at_epoch_end = False
        self._pending: dict | None = None  # random states to restore before the next batch
        self.steps = 0
        self.epochs = 0

    @property
    def state_key(self) -> str:
        return f"StepCheckpoint[{self.path.stem}]"

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or step == 0:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.current.ready >= trainer.num_training_batches:
            self._at_epoch_end = True  # after the epoch's validation, which draws random numbers
        else:
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._at_epoch_end:
            self._at_epoch_end = False
            self._save(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending is not None:
            set_random_state(self._pending)
            self._pending = None

    def on_train_end(self, trainer, pl_module) -> None:
        self.steps, self.epochs = trainer.global_step, trainer.current_epoch

    def _save(self, trainer: pl.Trainer) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        self._saving_at_epoch_end = progress.ready >= trainer.num_training_batches
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
            logger.debug("checkpoint at step %d: %s", trainer.global_step, self.path)

    def state_dict(self) -> dict[str, Any]:
        if self._trainer is None:
            return {}
        step = self._trainer.global_step
        datasets = {}
        for name, data in self.datasets.items():
            # the training set is read a batch ahead; a validation set is drawn whole when used
            datasets[name] = data.state_at(step) if name == "train" else data.dataset.rng.bit_generator.state
        return {"random": random_state(), "step": step, "datasets": datasets, "epoch_end": self._saving_at_epoch_end}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        step = state_dict["step"]
        for name, state in state_dict.get("datasets", {}).items():
            if name not in self.datasets:
                continue
            if name == "train":
                self.datasets[name].restore(step, state)
            else:
                self.datasets[name].dataset.rng.bit_generator.state = state
        if state_dict.get("epoch_end"):
            # the next epoch's loader is made after this, and draws from the restored state
            set_random_state(state_dict["random"])
        else:
            self._pending = state_dict["random"]


class Stage:
    """One stage (``vae`` or ``flow``) of a :class:`TrainingRun`."""

    def __init__(self, run: TrainingRun, name: str):
        self.run = run
        self.name = name
        self.checkpoint = run.path / f"{name}.ckpt"
        self.done = run.path / f"{name}-done"

    @property
    def finished(self) -> bool:
        return (self.done / STAGE_FILE).is_file()

    def resume_from(self) -> str | None:
        """The checkpoint to resume from, when the run resumes and the stage has one.

        A damaged checkpoint is a one-line :class:`PerturbFlowError` (``torch.save`` writes a
        zip archive, whose checksums are read here).
        """
        if not (self.run.resume and self.checkpoint.is_file()):
            return None
        try:
            with zipfile.ZipFile(self.checkpoint) as archive:
                bad = archive.testzip()
        except (OSError, zipfile.BadZipFile) as exc:
            bad = str(exc) or type(exc).__name__
        if bad is not None:
            raise PerturbFlowError(
                f"cannot resume: the {self.name} checkpoint {self.checkpoint} is damaged ({bad}); "
                "delete it to train that stage again from its start"
            )
        return str(self.checkpoint)

    def callback(self, datasets: Mapping[str, Any] | None = None) -> StepCheckpoint:
        self._callback = StepCheckpoint(self.checkpoint, self.run.every_n_steps, datasets)
        return self._callback

    def finish(self, write: Callable[[Path], None]) -> None:
        """Store the stage's result (``write`` fills a folder) with the random states after it.

        The folder is written beside its place and moved there complete, then the stage's
        checkpoint, no longer needed, is removed. Only the main process writes.
        """
        if not is_main_process():
            return
        staging = self.run.path / f".{self.done.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        write(staging)
        torch.save(random_state(), staging / RANDOM_STATE_FILE)
        cb = getattr(self, "_callback", None)
        steps = {"steps": cb.steps, "epochs": cb.epochs} if cb is not None else {}
        (staging / STAGE_FILE).write_text(json.dumps({"stage": self.name, **steps}))
        os.replace(staging, self.done)
        self.checkpoint.unlink(missing_ok=True)
        logger.info("%s stage finished%s; stored in %s", self.name,
                    f" after {steps['steps']} steps" if steps else "", self.done)

    def restore(self, read: Callable[[Path], T]) -> T:
        """The stage's stored result (``read`` reads its folder); the random states after it
        are restored, so what follows draws the same numbers as in the interrupted run."""
        try:
            record = json.loads((self.done / STAGE_FILE).read_text())
            self.steps, self.epochs = record.get("steps"), record.get("epochs")
            state = torch.load(self.done / RANDOM_STATE_FILE, weights_only=True)
            result = read(self.done)
        except Exception as exc:
            raise PerturbFlowError(
                f"cannot resume: the finished {self.name} stage in {self.run.path} could not be read "
                f"({type(exc).__name__}); start the run again (with --overwrite on the command line)"
            ) from exc
        set_random_state(state)
        logger.info("%s stage already finished in %s (%s steps); not trained again",
                    self.name, self.done, self.steps)
        return result


class TrainingRun:
    """The checkpoint folder of one training run.

    Parameters
    ----------
    path
        Folder of the checkpoints.
    settings
        What must match for a run to resume (seed, epochs, hyper-parameters, data shape).
    resume
        Continue the run whose checkpoints ``path`` holds; otherwise ``path`` must not hold one.
    every_n_steps
        Training steps between two checkpoints of a stage.
    """

    def __init__(self, path: str | os.PathLike, settings: Mapping[str, Any], resume: bool = False,
                 every_n_steps: int = DEFAULT_EVERY_N_STEPS):
        self.path = Path(path)
        self.resume = resume
        self.every_n_steps = int(every_n_steps)
        if self.every_n_steps < 1:
            raise PerturbFlowError(f"the checkpoint interval must be at least 1 step, not {every_n_steps}")
        settings = json.loads(json.dumps(dict(settings)))  # as it reads back from the record
        record = self.path / RUN_RECORD
        if resume:
            if not record.is_file():
                raise PerturbFlowError(f"cannot resume: {self.path} holds no training checkpoints")
            try:
                saved = json.loads(record.read_text())["settings"]
            except (OSError, ValueError, KeyError, TypeError):
                raise PerturbFlowError(f"cannot resume: the run record {record} is damaged") from None
            differ = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            if differ:
                raise PerturbFlowError(
                    f"cannot resume the run in {self.path}: it was started with other settings "
                    f"({', '.join(differ)})"
                )
            return
        if not is_main_process():  # a process Lightning started for another device: rank 0 made the folder
            return
        if self.path.exists() and any(self.path.iterdir()):
            raise PerturbFlowError(
                f"{self.path} already holds checkpoints; resume the run or remove the folder"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{RUN_RECORD}.tmp")
        tmp.write_text(json.dumps({"settings": settings}, indent=1))
        os.replace(tmp, record)

    def stage(self, name: str) -> Stage:
        return Stage(self, name)


def run_stage(stage: Stage | None, fit: Callable[[], T], save: Callable[[T, Path], None],
              load: Callable[[Path], T]) -> T:
    """``fit()`` a stage, or load its result where a resumed run has already finished it.

    Without a run (``stage=None``) this is ``fit()``.
    """
    if stage is not None and stage.finished:
        if stage.run.resume:
            return stage.restore(load)
        raise PerturbFlowError(f"{stage.done} exists in a run that does not resume")
    result = fit()
    if stage is not None:
        stage.finish(lambda path: save(result, path))
    return result


def digest(names: list[str]) -> str:
    """A short fingerprint of a list of names (the genes of a run), for its record."""
    return hashlib.sha1("\n".join(names).encode()).hexdigest()


def is_main_process() -> bool:
    """Whether this is the process of global rank 0 (see :mod:`perturbflow._distributed`)."""
    from perturbflow._distributed import is_global_zero

    return is_global_zero()


def is_unfinished_run(path: Path) -> bool:
    """Whether the folder ``path`` holds the checkpoints of a training run."""
    return (Path(path) / RUN_RECORD).is_file()


def open_run(path: str | os.PathLike | None, settings: Mapping[str, Any], resume: bool = False,
             every_n_steps: int = DEFAULT_EVERY_N_STEPS) -> TrainingRun | None:
    """The :class:`TrainingRun` in ``path``, or ``None`` without a checkpoint folder."""
    if path is None:
        if resume:
            raise PerturbFlowError("resume needs the checkpoint folder of the run (checkpoint_dir)")
        return None
    return TrainingRun(path, settings, resume, every_n_steps)


def stage_trainer_kwargs(stage: Stage | None, description: str, progress_bar: bool,
                         datasets: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Lightning ``Trainer`` arguments of a stage: its progress bar, checkpoints and resume point."""
    callbacks: list[pl.Callback] = []
    if stage is not None:
        callbacks.append(stage.callback(datasets))
    if progress_bar:
        from perturbflow.train._progress import StageProgressBar

        callbacks.append(StageProgressBar(description))
    kwargs: dict[str, Any] = {"callbacks": callbacks, "enable_progress_bar": progress_bar}
    if stage is not None and stage.resume_from():
        kwargs["ckpt_path"] = stage.resume_from()
    return kwargs
