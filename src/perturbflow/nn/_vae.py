"""The count VAE of stage 1: scvi-tools' SCVI (negative-binomial or ZINB likelihood)."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from perturbflow.data import TARGET_SUM, is_on_disk, read_rows

logger = logging.getLogger(__name__)

CHUNK = 2048
VALIDATION_FRACTION = 0.1  # of the training cells, as scvi-tools' default train_size of 0.9


def _dense_rows(counts, rows: np.ndarray) -> torch.Tensor:
    block = read_rows(counts, rows)
    block = block.toarray() if sp.issparse(block) else np.asarray(block)
    return torch.as_tensor(block, dtype=torch.float32)  # (n, G)


def _anndata(counts, genes: list[str]) -> ad.AnnData:
    X = counts if sp.issparse(counts) else np.asarray(counts)
    X = sp.csr_matrix(X, dtype=np.float32)
    return ad.AnnData(X=X, var=pd.DataFrame(index=genes))


def default_vae_epochs(n_cells: int, batch_size: int, max_steps: int) -> int:
    """Epochs giving about ``max_steps`` gradient steps, between 10 and 400.

    scvi-tools' own heuristic trains small data sets for 400 epochs; a few thousand steps
    reach the same reconstruction on them at a fraction of the CPU time.
    """
    steps_per_epoch = max(1, -(-n_cells // batch_size))
    return int(np.clip(round(max_steps / steps_per_epoch), 10, 400))


def systematic_round_up(p_up: np.ndarray, rng) -> np.ndarray:
    """Which entries of ``p_up`` (cells x genes) round up: each with probability ``p_up``.

    Systematic sampling down each column (one uniform offset per gene): entry ``i`` rounds up
    when ``[F_{i-1} + u, F_i + u)`` holds an integer, ``F`` the cumulative sum of the column.
    Each cell keeps its own probability, and in every run of consecutive cells the number
    rounded up is within one of its expectation, so the rounding noise of a group's mean
    vanishes instead of shrinking like ``1 / sqrt(n)`` (dependent rounding; Madow 1949).
    """
    cum = np.cumsum(p_up, axis=0)  # (n, G)
    u = rng.random(p_up.shape[1])  # (G,)
    return np.floor(cum + u) - np.floor(cum - p_up + u) > 0


def log_space_round(expected: np.ndarray, target: np.ndarray, scale: np.ndarray, rng) -> np.ndarray:
    """Round counts to a neighbouring integer so that ``E[log1p(scale * n)] = target``.

    Plain stochastic rounding keeps the mean count but lowers the mean of
    ``log1p(normalised count)`` (Jensen's inequality), the scale analyses are done on;
    choosing the upper integer with probability
    ``(target - log1p(scale lo)) / (log1p(scale hi) - log1p(scale lo))`` keeps that mean.
    The choices are drawn by :func:`systematic_round_up`, so consecutive rows (the cells of
    one predicted group) add almost no rounding noise to their mean.
    """
    lo = np.floor(expected)
    log_lo, log_hi = np.log1p(lo * scale), np.log1p((lo + 1) * scale)
    p_up = np.clip((target - log_lo) / (log_hi - log_lo), 0.0, 1.0)
    return lo + systematic_round_up(p_up, rng)


class CountVAE:
    """Thin wrapper over :class:`scvi.model.SCVI` with chunked encode and decode.

    scvi-tools gives the encoder ``q(z | x)``, the decoder ``p(x | z, l)`` (a
    ``torch.distributions`` negative binomial or ZINB) and the training loop; this class only
    encodes and decodes row chunks of a (possibly sparse) matrix, so the whole matrix is
    never densified.
    """

    def __init__(self, scvi_model):
        self.scvi_model = scvi_model
        self.epochs = 0  # of the fit (0 when loaded)

    @property
    def module(self):
        return self.scvi_model.module

    @classmethod
    def fit(
        cls,
        counts,
        rows: np.ndarray,
        genes: list[str],
        config,
        max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: int | str = "auto",
        batch_size: int = 128,
        progress_bar: bool = True,
        seed: int = 0,
    ) -> CountVAE:
        """Fit SCVI on ``counts[rows]`` with observed library sizes.

        ``counts`` may be on disk (anndata's backed sparse dataset): scvi-tools then reads
        each minibatch's rows from it, and the matrix is never loaded whole.

        A tenth of the cells (drawn with ``seed``) is SCVI's validation set. The split is made
        here and passed to scvi-tools, whose own split is drawn from ``scvi.settings.seed``
        (unset by default, so two fits would otherwise differ).
        """
        import scvi

        if max_epochs is None:
            max_epochs = default_vae_epochs(len(rows), batch_size, config.vae_max_steps)
        order = np.random.default_rng(seed).permutation(len(rows))
        n_val = int(len(rows) * VALIDATION_FRACTION)
        train_val = [np.sort(order[n_val:]), np.sort(order[:n_val])]
        if is_on_disk(counts):
            # scvi-tools draws its minibatches from the on-disk matrix itself (anndata's
            # backed sparse dataset); the cells not fitted are its (unused) test set
            adata = ad.AnnData(X=counts, var=pd.DataFrame(index=genes))
            train_val = [rows[i] for i in train_val] + [np.setdiff1d(np.arange(counts.shape[0]), rows)]
        else:
            adata = _anndata(counts[rows], genes)
        scvi.model.SCVI.setup_anndata(adata)
        model = scvi.model.SCVI(
            adata,
            n_hidden=config.n_hidden,
            n_latent=config.n_latent,
            n_layers=config.n_layers,
            dropout_rate=config.dropout_rate,
            gene_likelihood=config.gene_likelihood,
            dispersion="gene",
        )
        model.train(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            batch_size=batch_size,
            enable_progress_bar=progress_bar,
            logger=False,
            enable_checkpointing=False,
            datasplitter_kwargs={"external_indexing": train_val},
        )
        model.module.cpu().eval()
        vae = cls(model)
        vae.epochs = max_epochs
        return vae

    @torch.no_grad()
    def latent(self, counts, rows: np.ndarray) -> np.ndarray:
        """Posterior means ``E[z | x]`` of ``counts[rows]``, ``(len(rows), n_latent)``."""
        self.module.eval()
        # filled in place: small arrays kept between the chunks' large transient ones would
        # pin the allocator's heap, which then grows with the number of cells
        out = np.empty((len(rows), self.module.n_latent), dtype=np.float32)
        for start in range(0, len(rows), CHUNK):
            x = _dense_rows(counts, rows[start : start + CHUNK])  # (n, G)
            batch = torch.zeros(x.shape[0], 1, dtype=torch.long)
            inference = self.module.inference(x, batch_index=batch)
            out[start : start + CHUNK] = inference["qz"].loc.numpy()
        return out

    @torch.no_grad()
    def distribution(self, z: torch.Tensor, library: torch.Tensor):
        """The decoder's count distribution ``p(x | z, l)`` for latents ``(n, D)``, libraries ``(n,)``."""
        batch = torch.zeros(z.shape[0], 1, dtype=torch.long)
        out = self.module.generative(z, torch.log(library).unsqueeze(-1), batch)
        return out["px"]

    @torch.no_grad()
    def decode(self, z: np.ndarray, library: np.ndarray, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
        """Sample counts and expected counts for latents ``z`` at the given library sizes.

        Returns
        -------
        Sampled integer counts (CSR, int32) and expected counts (dense float32).
        """
        self.module.eval()
        samples, means = [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for start in range(0, len(z), CHUNK):
                zz = torch.as_tensor(z[start : start + CHUNK], dtype=torch.float32)
                lib = torch.as_tensor(library[start : start + CHUNK], dtype=torch.float32)
                px = self.distribution(zz, lib)
                means.append(px.mean.numpy().astype(np.float32))
                samples.append(sp.csr_matrix(px.sample().numpy().astype(np.int32)))
        return sp.vstack(samples).tocsr(), np.concatenate(means)

    @torch.no_grad()
    def log_change(self, z_0: np.ndarray, z_1: np.ndarray, library: np.ndarray) -> np.ndarray:
        """Per cell, ``log1p(1e4 mu(z_1) / l) - log1p(1e4 mu(z_0) / l)`` at library ``l``, ``(n, G)``.

        The change of log-normalised expression the decoder gives for moving each cell from
        ``z_0`` to ``z_1``; it depends on the cell's state, not only on the move.
        """
        out = []
        for start in range(0, len(z_0), CHUNK):
            sl = slice(start, start + CHUNK)
            lib = torch.as_tensor(library[sl], dtype=torch.float32).clamp(min=1)  # (n,)
            scale = (TARGET_SUM / lib).unsqueeze(-1)  # (n, 1)
            mu_0 = self.distribution(torch.as_tensor(z_0[sl], dtype=torch.float32), lib).mean
            mu_1 = self.distribution(torch.as_tensor(z_1[sl], dtype=torch.float32), lib).mean
            out.append((torch.log1p(mu_1 * scale) - torch.log1p(mu_0 * scale)).numpy())  # (n, G)
        return np.concatenate(out)

    @torch.no_grad()
    def decode_delta(
        self,
        z_0: np.ndarray,
        z_1: np.ndarray,
        counts,
        rows: np.ndarray,
        gene_shift: np.ndarray | None = None,
        shift_of_rows: np.ndarray | None = None,
        seed: int = 0,
        change_scale: float = 1.0,
    ) -> tuple[sp.csr_matrix, np.ndarray]:
        """Move real source cells by the decoded change from ``z_0`` to ``z_1``.

        The change is ``log1p(1e4 mu(z_1) / l) - log1p(1e4 mu(z_0) / l)`` on the decoder's
        means at the source cell's library ``l``; it is added, with the optional
        ``gene_shift[shift_of_rows]`` (a baseline's change), to the source cell's own
        log-normalised counts (the decoded change times ``change_scale``). The decoder's
        reconstruction error cancels in the
        difference, and each predicted cell keeps the identity and noise of its source cell.
        Expected counts are rounded stochastically to integers, unbiased on the
        log-normalised scale (see :func:`log_space_round`).

        Returns
        -------
        Integer counts (CSR, int32) and expected counts (dense float32).
        """
        rng = np.random.default_rng(seed)
        samples, means = [], []
        for start in range(0, len(rows), CHUNK):
            sl = slice(start, start + CHUNK)
            x = _dense_rows(counts, rows[sl])  # (n, G)
            lib = x.sum(-1).clamp(min=1)  # (n,)
            scale = (TARGET_SUM / lib).unsqueeze(-1)  # (n, 1)
            change = change_scale * torch.from_numpy(self.log_change(z_0[sl], z_1[sl], lib.numpy()))  # (n, G)
            if gene_shift is not None:
                change += torch.as_tensor(gene_shift[shift_of_rows[sl]], dtype=torch.float32)
            moved = (torch.log1p(x * scale) + change).clamp(min=0).numpy()  # (n, G) log1p-normalised
            s_ = scale.numpy()
            expected = (np.expm1(moved) / s_).astype(np.float32)
            sampled = log_space_round(expected, moved, s_, rng)
            means.append(expected)
            samples.append(sp.csr_matrix(sampled.astype(np.int32)))
        return sp.vstack(samples).tocsr(), np.concatenate(means)

    @torch.no_grad()
    def dispersion(self) -> np.ndarray:
        """The decoder's gene-wise NB inverse dispersion ``theta``, shape ``(G,)``."""
        z = torch.zeros(1, self.module.n_latent)
        return self.distribution(z, torch.ones(1)).theta.reshape(-1).numpy().astype(np.float64)

    @torch.no_grad()
    def log_likelihood(self, counts, rows: np.ndarray) -> np.ndarray:
        """Per-cell reconstruction log-likelihood ``log p(x | E[z | x], l)``."""
        out = []
        for start in range(0, len(rows), CHUNK):
            x = _dense_rows(counts, rows[start : start + CHUNK])
            batch = torch.zeros(x.shape[0], 1, dtype=torch.long)
            qz = self.module.inference(x, batch_index=batch)["qz"]
            px = self.distribution(qz.loc, x.sum(-1).clamp(min=1))
            out.append(px.log_prob(x).sum(-1).numpy())
        return np.concatenate(out)

    def save(self, path: Path) -> None:
        self.scvi_model.save(str(path), save_anndata=False, overwrite=True)

    @classmethod
    def load(cls, path: Path, genes: list[str]) -> CountVAE:
        """Load a saved SCVI; a three-cell placeholder AnnData with the model's genes sets it up."""
        import scvi

        placeholder = _anndata(sp.csr_matrix(np.ones((3, len(genes)), dtype=np.float32)), genes)
        scvi.model.SCVI.setup_anndata(placeholder)
        model = scvi.model.SCVI.load(str(path), adata=placeholder, accelerator="cpu")
        model.module.eval()
        return cls(model)
