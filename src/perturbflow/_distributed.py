"""Which process of a multi-device (DDP) run this is.

With Lightning's ``strategy="ddp"`` every device runs the whole calling script: the
trainer re-launches it once per extra device, and after ``trainer.fit`` every process goes
on with the rest of the script. These helpers let code that writes files, or draws random
numbers that should differ between processes, tell the processes apart. In a single-process
run every one of them answers as rank 0.
"""

from __future__ import annotations

import torch


def global_rank() -> int:
    """The process's rank over all devices of the run; 0 without a distributed run.

    The process group (set up by the first Lightning trainer of a DDP run, and kept after it)
    is asked first; before it exists, Lightning's own record of the rank, which it reads from
    the launcher's environment variables (``RANK``, ``LOCAL_RANK``, ...).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def is_global_zero() -> bool:
    """Whether this process is the one that writes files (rank 0, or the only process)."""
    return global_rank() == 0


def worker_id() -> int:
    """The index of the data-loader worker running this code; 0 in the main process."""
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else int(info.id)


def allowing_unused_parameters(strategy):
    """``strategy`` with DDP's search for parameters that take no part in the loss turned on.

    scvi-tools' SCVI builds a library-size encoder that is not used when the observed library
    sizes are (as perturbflow's VAE does), and DDP stops at the first step on such parameters
    unless told to look for them. Lightning names that variant of each DDP strategy
    ``<name>_find_unused_parameters_true``; other strategies and strategy objects are returned
    as they are.
    """
    names = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")
    return f"{strategy}_find_unused_parameters_true" if strategy in names else strategy
