"""A trained PerturbFlow as a folder: VAE and flow weights, the priors, and a JSON of the rest."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import torch

from perturbflow._errors import PerturbFlowError
from perturbflow.data import DataRegistry
from perturbflow.models._prior import BaselinePrior
from perturbflow.nn import CountVAE
from perturbflow.train import build_flow

CONFIG_FILE = "perturbflow.json"
FLOW_FILE = "flow.pt"
VAE_DIR = "vae"
LATENT_PRIOR_FILE = "latent_shifts.npz"
GENE_PRIOR_FILE = "gene_shifts.npz"


def write_model(model, path: Path, overwrite: bool) -> None:
    """Write a trained ``model`` to the folder ``path`` (refused if it holds files, unless ``overwrite``)."""
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise PerturbFlowError(f"{path} already exists and is not empty; pass overwrite=True")
    path.mkdir(parents=True, exist_ok=True)
    model.vae.save(path / VAE_DIR)
    torch.save(model.flow.state_dict(), path / FLOW_FILE)
    model.prior.save(path / LATENT_PRIOR_FILE)
    model.gene_prior.save(path / GENE_PRIOR_FILE)
    meta = {
        "perturbflow_version": version("perturbflow"),
        "config": model.config.to_dict(),
        "registry": model.registry.to_dict(),
        "genes": model.genes,
        "atoms": model.atoms,
        "contexts": model.contexts,
        "context_stats": model.context_stats,
        "correction_scale": model.correction_scale,
        "flow_contexts": model.flow_contexts,
    }
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=1))


def read_model(cls, path: Path):
    """The trained model of class ``cls`` saved in the folder ``path``."""
    if not (path / CONFIG_FILE).is_file():
        what = "does not exist" if not path.exists() else f"is not a perturbflow model (no {CONFIG_FILE})"
        raise PerturbFlowError(f"model folder {path} {what}")
    meta = json.loads((path / CONFIG_FILE).read_text())
    model = cls(None, **meta["config"])
    model.registry = DataRegistry.from_dict(meta["registry"])
    model.genes = meta["genes"]
    model.atoms = meta["atoms"]
    model.contexts = meta["contexts"]
    model.context_stats = meta["context_stats"]
    model.correction_scale = meta["correction_scale"]
    model.flow_contexts = meta.get("flow_contexts", list(model.context_stats))
    model.vae = CountVAE.load(path / VAE_DIR, model.genes)
    model.prior = BaselinePrior.load(path / LATENT_PRIOR_FILE)
    model.gene_prior = BaselinePrior.load(path / GENE_PRIOR_FILE)
    model.flow = build_flow(model.config, len(model.atoms))
    model.flow.load_state_dict(torch.load(path / FLOW_FILE, map_location="cpu", weights_only=True))
    model.flow.eval()
    model.is_trained = True
    return model
