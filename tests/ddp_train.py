"""Train perturbflow on 2 CPU processes with Lightning DDP (gloo); run by ``tests/test_ddp.py``.

Usage: ``python tests/ddp_train.py OUT_DIR [STRATEGY [ACCELERATOR]]`` (default ``ddp cpu``). Lightning's ``strategy="ddp"``
re-launches this very script for the second process, so it is a file, not ``python -c``.
Every process trains both stages and writes ``OUT_DIR/rank{r}.json`` (what it saw of the
run, and checksums of its weights); ``model.save`` writes ``OUT_DIR/model`` from rank 0 only.
Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import perturbflow as pf
from perturbflow._distributed import global_rank

DEVICES = 2


def data():
    """The small seeded synthetic set of ``tests/conftest.py`` (``small_synthetic``)."""
    adata = pf.datasets.synthetic(
        n_genes=60, n_atoms=5, n_combos=4, n_cells_per_group=40, n_control_cells=120,
        n_heldout_combos=2, seed=0,
    )
    pf.PerturbFlow.setup_anndata(
        adata, perturbation_key="perturbation", control_value="control",
        context_keys=["cell_type"], split_key="split",
    )
    return adata


def checksum(module: torch.nn.Module) -> float:
    return float(sum(p.detach().double().abs().sum() for p in module.parameters()))


def main(out: Path, strategy: str = "ddp", accelerator: str = "cpu") -> None:
    torch.set_num_threads(1)
    model = pf.PerturbFlow(data(), n_latent=8, flow_steps_per_epoch=20)
    # the flow's steps are few: on 2 shared cores each one waits for both processes' gradients
    model.train(
        max_epochs=15, flow_max_epochs=6, accelerator=accelerator, devices=DEVICES, strategy=strategy,
        progress_bar=False,
    )
    rank = global_rank()
    vae_trainer = model.vae.scvi_model.trainer
    record = {
        "rank": rank,
        "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "vae_world_size": vae_trainer.world_size,
        "vae_steps": vae_trainer.global_step,
        "vae_checksum": checksum(model.vae.module),
        "flow_checksum": checksum(model.flow),
        "correction_scale": model.correction_scale,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    model.save(out / "model")  # rank 0 only
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # every process ends together


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:4])
