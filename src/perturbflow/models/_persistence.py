"""A trained PerturbFlow as a folder: VAE and flow weights, the priors, and a JSON of the rest.

Saving is all-or-nothing: the folder is written under a temporary name beside its target
and moved into place once complete, and ``perturbflow.json`` carries ``"complete": false``
until every part is written. Loading turns any damage into one :class:`PerturbFlowError`
line that names the folder and the part.

While ``perturbflow train --out DIR`` runs, ``DIR`` holds only the run's checkpoints
(``DIR/checkpoints/``); the finished model replaces them. Loading such a folder says to
resume the run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import torch

from perturbflow._errors import PerturbFlowError
from perturbflow.data import DataRegistry
from perturbflow.models._prior import BaselinePrior
from perturbflow.nn import CountVAE
from perturbflow.train import build_model_flow, is_unfinished_run

CONFIG_FILE = "perturbflow.json"
FLOW_FILE = "flow.pt"
VAE_DIR = "vae"
LATENT_PRIOR_FILE = "latent_shifts.npz"
GENE_PRIOR_FILE = "gene_shifts.npz"
RESIDUAL_PRIOR_FILE = "residual_shifts.npz"  # absent from folders saved before it existed
TRAINING_DIR = "checkpoints"  # the checkpoints of a training run writing this folder
PARTS = (VAE_DIR, FLOW_FILE, LATENT_PRIOR_FILE, GENE_PRIOR_FILE)
# the keys of perturbflow.json that read_model needs
META_KEYS = ("config", "registry", "genes", "atoms", "contexts", "context_stats", "correction_scale")


def write_model(model, path: Path, overwrite: bool) -> None:
    """Write a trained ``model`` to the folder ``path``.

    ``path`` must not hold files unless ``overwrite`` is true. The parts are written into a
    temporary folder beside ``path``, which replaces ``path`` only once it is complete: an
    interrupted save leaves the old folder (if any) untouched.
    """
    if path.exists() and not path.is_dir():
        raise PerturbFlowError(f"{path} exists and is not a folder")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise PerturbFlowError(f"{path} already exists and is not empty; pass overwrite=True")
    path.parent.mkdir(parents=True, exist_ok=True)
    # a plain mkdir (not mkdtemp, which makes it private) so the folder gets the usual permissions
    staging = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir()
    try:
        meta = _metadata(model)
        _write_json(staging / CONFIG_FILE, {**meta, "complete": False})
        model.vae.save(staging / VAE_DIR)
        torch.save(model.flow.state_dict(), staging / FLOW_FILE)
        model.prior.save(staging / LATENT_PRIOR_FILE)
        model.gene_prior.save(staging / GENE_PRIOR_FILE)
        model.residual_prior.save(staging / RESIDUAL_PRIOR_FILE)
        _write_json(staging / CONFIG_FILE, {**meta, "complete": True})
        _move_into_place(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_model(cls, path: Path):
    """The trained model of class ``cls`` saved in the folder ``path``.

    Raises :class:`PerturbFlowError` naming the folder when it is missing, incomplete (a
    save or training run was interrupted) or damaged (a part missing, truncated or unreadable).
    """
    if is_unfinished_run(path / TRAINING_DIR):
        raise unfinished_run(path)
    if not (path / CONFIG_FILE).is_file():
        if not path.exists():
            raise PerturbFlowError(f"model folder {path} does not exist")
        if path.is_dir() and any((path / part).exists() for part in PARTS):
            raise _incomplete(path)
        raise PerturbFlowError(f"model folder {path} is not a perturbflow model (no {CONFIG_FILE})")
    with _reading(path, "the model description is truncated or not valid JSON", CONFIG_FILE):
        meta = json.loads((path / CONFIG_FILE).read_text())
    missing = [key for key in META_KEYS if key not in meta] if isinstance(meta, dict) else ["its fields"]
    if missing:
        lacks = ", ".join(missing)
        raise PerturbFlowError(
            f"model folder {path} is damaged: the model description lacks {lacks} ({CONFIG_FILE})"
        )
    # folders saved before the marker existed have no "complete" field and count as complete
    if meta.get("complete", True) is not True:
        raise _incomplete(path)
    for part in PARTS:
        if not (path / part).exists():
            name = f"{part}/" if part == VAE_DIR else part
            raise PerturbFlowError(f"model folder {path} is damaged: {name} is missing")

    with _reading(path, "the model description holds invalid values", CONFIG_FILE):
        model = cls(None, **{"flow_ensemble": 1, **meta["config"]})  # one flow, if saved before ensembles
        model.registry = DataRegistry.from_dict(meta["registry"])
        model.genes = meta["genes"]
        model.atoms = meta["atoms"]
        model.contexts = meta["contexts"]
        model.context_stats = meta["context_stats"]
        model.correction_scale = meta["correction_scale"]
        model.flow_contexts = meta.get("flow_contexts", list(model.context_stats))
        model.measured_contexts = meta.get("measured_contexts", model.flow_contexts)
        if "measured_contexts" not in meta and model.config.new_context_flow == "auto":
            model.config.new_context_flow = "probe"  # saved before session 21, when "auto" was the probe
        model.new_context_parts = meta.get("new_context_parts", {})
        model.decoding_scores = meta.get("decoding_scores", {})
        model.flow = build_model_flow(model.config, len(model.atoms))
    with _reading(path, "the VAE could not be read", f"{VAE_DIR}/"):
        model.vae = CountVAE.load(path / VAE_DIR, model.genes, model.config.vae_decoder)
    with _reading(path, "the latent baseline shifts could not be read", LATENT_PRIOR_FILE):
        model.prior = BaselinePrior.load(path / LATENT_PRIOR_FILE)
    with _reading(path, "the gene baseline shifts could not be read", GENE_PRIOR_FILE):
        model.gene_prior = BaselinePrior.load(path / GENE_PRIOR_FILE)
    if (path / RESIDUAL_PRIOR_FILE).exists():
        with _reading(path, "the gene-space residual shifts could not be read", RESIDUAL_PRIOR_FILE):
            model.residual_prior = BaselinePrior.load(path / RESIDUAL_PRIOR_FILE)
    else:  # saved before the residual existed: predict as it was trained to
        model.config.gene_offset = "baseline"
    with _reading(path, "the flow weights could not be read", FLOW_FILE):
        state = torch.load(path / FLOW_FILE, map_location="cpu", weights_only=True)
        if model.config.flow_ensemble == 1:  # saved before the null context existed: its zeros
            state.setdefault("null_context", torch.zeros_like(model.flow.null_context))
    with _reading(path, "the flow weights do not match the model description", FLOW_FILE):
        model.flow.load_state_dict(state)
    model.flow.eval()
    model.is_trained = True
    return model


def _metadata(model) -> dict:
    return {
        "perturbflow_version": version("perturbflow"),
        "config": model.config.to_dict(),
        "registry": model.registry.to_dict(),
        "genes": model.genes,
        "atoms": model.atoms,
        "contexts": model.contexts,
        "context_stats": model.context_stats,
        "correction_scale": model.correction_scale,
        "flow_contexts": model.flow_contexts,
        "measured_contexts": model.measured_contexts,
        "new_context_parts": model.new_context_parts,
        "decoding_scores": model.decoding_scores,
    }


def _write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file: ``path`` is never half-written."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _move_into_place(staging: Path, path: Path) -> None:
    """Move the complete folder ``staging`` to ``path``; an old ``path`` is removed only after."""
    if not path.exists():
        os.replace(staging, path)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    try:
        os.replace(path, trash / path.name)
        try:
            os.replace(staging, path)
        except BaseException:
            os.replace(trash / path.name, path)
            raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def unfinished_run(path: Path) -> PerturbFlowError:
    return PerturbFlowError(
        f"model folder {path} holds an unfinished training run (interrupted or still running); "
        f"finish it with `perturbflow train ... --out {path} --resume`"
    )


def _incomplete(path: Path) -> PerturbFlowError:
    return PerturbFlowError(
        f"model folder {path} is incomplete: a training run or save was interrupted; "
        "train the model again"
    )


@contextmanager
def _reading(path: Path, what: str, part: str) -> Iterator[None]:
    """Turn any error raised while reading ``part`` of the model folder ``path`` into one line."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as exc:  # PerturbFlowError too: its message would not name the folder
        # the first sentence of the cause: libraries append advice that does not apply here
        text = str(exc).strip()
        reason = text.splitlines()[0].split(". ")[0].rstrip(".")[:150] if text else type(exc).__name__
        raise PerturbFlowError(f"model folder {path} is damaged: {what} ({part}: {reason})") from exc
