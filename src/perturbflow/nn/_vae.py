"""The count VAE of stage 1: scvi-tools' SCVI (negative-binomial or ZINB likelihood)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from perturbflow._distributed import allowing_unused_parameters
from perturbflow.data import TARGET_SUM, is_on_disk, mean_exact_shift, read_rows

logger = logging.getLogger(__name__)

CHUNK = 2048
EXACT_MEAN_CELLS = 1024  # cells of a group its exact-mean shift is estimated on
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


def scvi_class(decoder: str):
    """scvi-tools' model for a decoder kind: ``SCVI`` (``"nonlinear"``, an MLP decoder) or
    ``LinearSCVI`` (``"linear"``, log-proportions linear in the latent, Svensson et al. 2020),
    each with its negative binomial's ``lgamma`` terms taken where the counts are
    (:mod:`perturbflow.nn._sparse_nb`: the same likelihood, a third of a CPU step less)."""
    from perturbflow.nn._sparse_nb import CountedLinearSCVI, CountedSCVI

    classes = {"nonlinear": CountedSCVI, "linear": CountedLinearSCVI}
    if decoder not in classes:
        raise ValueError(f"unknown VAE decoder {decoder!r}; use 'nonlinear' or 'linear'")
    return classes[decoder]


def _log_space_round_torch(
    expected: torch.Tensor, target: torch.Tensor, scale: torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """:func:`log_space_round` in torch (float32), given the uniform offsets ``u`` ``(G,)``;
    returns integer-valued float32 ``(n, G)``."""
    lo = torch.floor(expected)  # (n, G)
    log_lo = torch.log1p(lo * scale)
    log_span = torch.log1p((lo + 1).mul_(scale)).sub_(log_lo)
    p_up = (target - log_lo).div_(log_span).clamp_(0.0, 1.0)  # (n, G)
    # floor(F_i + u) > floor(F_{i-1} + u), F the cumulative sum down each gene's column: the
    # draw of systematic_round_up. Summed along rows of the transpose, where torch is fast; in
    # float32, whose error over a chunk's rows moves a boundary by under 1e-3 of a count
    marks = torch.cumsum(p_up.t().contiguous(), 1).add_(u.to(torch.float32).unsqueeze(1)).floor_()  # (G, n)
    up = torch.empty(marks.shape, dtype=torch.bool, device=marks.device)
    torch.gt(marks[:, :1], torch.floor(u).to(marks.dtype).unsqueeze(1), out=up[:, :1])
    torch.gt(marks[:, 1:], marks[:, :-1], out=up[:, 1:])
    return lo.add_(up.view(torch.uint8).t().contiguous())  # bytes transpose faster than bools


def zeroing_level(moved: np.ndarray, share: float = 1.0) -> np.ndarray:
    """Per gene of ``moved`` (cells' log expression after their moves, before clipping at 0,
    ``(n, G)``), the level ``t`` such that setting the clipped cells at or below ``t`` to 0
    brings their mean down to the mean of the moves (or to 0): the smallest cells first,
    until at least the excess is removed; 0 where clipping lifts nothing. With ``share < 1``
    only that share of the excess (the lift of clipping) is removed."""
    clipped = np.maximum(moved, 0)
    excess = share * (clipped.mean(0) - np.maximum(moved.mean(0), 0)) * len(moved)  # (G,) to remove
    ordered = np.sort(clipped, axis=0)  # (n, G) ascending, zeros first
    removed = np.cumsum(ordered, axis=0)  # what setting the first i + 1 cells to 0 removes
    first = np.minimum((removed < excess[None, :] - 1e-9).sum(0), len(moved) - 1)  # first index reaching it
    level = ordered[first, np.arange(moved.shape[1])]
    return np.where(excess > 1e-9, level, 0.0)


def _csr(block: torch.Tensor) -> sp.csr_matrix:
    """A dense, integer-valued ``(n, G)`` tensor as an int32 CSR matrix."""
    values = block.numpy()
    n, G = values.shape
    nonzero = np.flatnonzero(values)  # row-major, so already in CSR order
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(nonzero // G, minlength=n), out=indptr[1:])
    return sp.csr_matrix((values.ravel()[nonzero].astype(np.int32), (nonzero % G).astype(np.int32), indptr), shape=(n, G))


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

    @property
    def device(self) -> torch.device:
        """Where the module is: the CPU, except while a prediction has moved it to its device.
        Encoding and decoding run there and return NumPy arrays."""
        return next(self.module.parameters()).device

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
        trainer_kwargs: dict | None = None,
        strategy: str = "auto",
        precision: str | int | None = None,
    ) -> CountVAE:
        """Fit SCVI on ``counts[rows]`` with observed library sizes.

        ``counts`` may be on disk (anndata's backed sparse dataset): scvi-tools then reads
        each minibatch's rows from it, and the matrix is never loaded whole.

        A tenth of the cells (drawn with ``seed``) is SCVI's validation set. The split is made
        here and passed to scvi-tools, whose own split is drawn from ``scvi.settings.seed``
        (unset by default, so two fits would otherwise differ). ``trainer_kwargs`` go to
        ``SCVI.train`` and on to Lightning's ``Trainer`` (callbacks, ``ckpt_path`` to resume).

        ``accelerator``, ``devices``, ``strategy`` and ``precision`` go to scvi-tools' trainer;
        with a DDP strategy scvi-tools shares each epoch's cells out between the processes.
        """
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
        model_class = scvi_class(config.vae_decoder)
        model_class.setup_anndata(adata)
        model = model_class(
            adata,
            n_hidden=config.n_hidden,
            n_latent=config.n_latent,
            n_layers=config.n_layers,
            dropout_rate=config.dropout_rate,
            gene_likelihood=config.gene_likelihood,
            dispersion="gene",
        )
        kwargs = {
            "max_epochs": max_epochs,
            "accelerator": accelerator,
            "devices": devices,
            "batch_size": batch_size,
            "enable_progress_bar": progress_bar,
            "logger": False,
            "enable_checkpointing": False,
            "strategy": allowing_unused_parameters(strategy),
            **({} if precision is None else {"precision": precision}),
            "datasplitter_kwargs": {"external_indexing": train_val},
        }
        model.train(**{**kwargs, **(trainer_kwargs or {})})
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
            x = _dense_rows(counts, rows[start : start + CHUNK]).to(self.device)  # (n, G)
            out[start : start + len(x)] = self.encode_mean(x).cpu().numpy()
        return out

    @torch.no_grad()
    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``q(z | x)`` for counts ``(n, G)``: scvi-tools' encoder network without
        building the distribution or drawing from it (``inference(x)["qz"].loc``)."""
        module, encoder = self.module, self.module.z_encoder
        x_ = torch.log1p(x) if module.log_variational else x
        batch = torch.zeros(x.shape[0], 1, dtype=torch.long, device=x.device)
        return encoder.mean_encoder(encoder.encoder(x_, batch))  # (n, D)

    @torch.no_grad()
    def distribution(self, z: torch.Tensor, library: torch.Tensor):
        """The decoder's count distribution ``p(x | z, l)`` for latents ``(n, D)``, libraries ``(n,)``."""
        batch = torch.zeros(z.shape[0], 1, dtype=torch.long, device=z.device)
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
        device = self.device
        cuda = [] if device.type != "cuda" else [torch.cuda.current_device() if device.index is None else device.index]
        with torch.random.fork_rng(devices=cuda):  # the seed leaves the global streams as they were
            torch.manual_seed(seed)
            for start in range(0, len(z), CHUNK):
                zz = torch.as_tensor(z[start : start + CHUNK], dtype=torch.float32, device=device)
                lib = torch.as_tensor(library[start : start + CHUNK], dtype=torch.float32, device=device)
                px = self.distribution(zz, lib)
                means.append(px.mean.cpu().numpy().astype(np.float32))
                samples.append(sp.csr_matrix(px.sample().cpu().numpy().astype(np.int32)))
        return sp.vstack(samples).tocsr(), np.concatenate(means)

    @torch.no_grad()
    def log_expression(self, z: torch.Tensor) -> torch.Tensor:
        """``log1p(1e4 rho(z))`` for latents ``(n, D)``, ``rho`` the decoder's normalised expression.

        The decoder's mean is ``l rho(z)``, so ``log1p(1e4 mu / l)`` at any library ``l`` is this.
        """
        decoder = self.module.decoder  # its px_scale is the distribution's scale; only it is needed
        batch = torch.zeros(z.shape[0], 1, dtype=torch.long, device=z.device)
        if hasattr(decoder, "px_scale_decoder"):  # SCVI's MLP decoder
            rho = decoder.px_scale_decoder(decoder.px_decoder(z, batch))  # (n, G)
        else:  # LinearSCVI's decoder: through scvi-tools' generative step, at library 1
            rho = self.distribution(z, torch.ones(z.shape[0], device=z.device)).scale  # (n, G)
        return torch.log1p(rho.mul_(TARGET_SUM))

    @torch.no_grad()
    def log_change(self, z_0: np.ndarray, z_1: np.ndarray, library: np.ndarray | None = None) -> np.ndarray:
        """Per cell, ``log1p(1e4 mu(z_1) / l) - log1p(1e4 mu(z_0) / l)`` at library ``l``, ``(n, G)``.

        The change of log-normalised expression the decoder gives for moving each cell from
        ``z_0`` to ``z_1``; it depends on the cell's state, not only on the move. The decoder's
        mean is proportional to ``l``, so ``library`` cancels (it is accepted for callers that
        pass it).
        """
        out, device = [], self.device
        for start in range(0, len(z_0), CHUNK):
            sl = slice(start, start + CHUNK)
            z_0c, z_1c = (torch.as_tensor(z[sl], dtype=torch.float32, device=device) for z in (z_0, z_1))
            out.append((self.log_expression(z_1c) - self.log_expression(z_0c)).cpu().numpy())  # (n, G)
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
        exact_mean: bool | float | Sequence[bool | float] = False,
        exact_by: str = "zeroing",
    ) -> tuple[sp.csr_matrix, np.ndarray]:
        """Move real source cells by the decoded change from ``z_0`` to ``z_1``.

        The change is ``log1p(1e4 mu(z_1) / l) - log1p(1e4 mu(z_0) / l)`` on the decoder's
        means at the source cell's library ``l``; it is added, with the optional
        ``gene_shift[shift_of_rows]`` (a baseline's change), to the source cell's own
        log-normalised counts (the decoded change times ``change_scale``). The decoder's
        reconstruction error cancels in the
        difference, and each predicted cell keeps the identity and noise of its source cell.

        Moved cells are clipped at 0, which lifts the mean of a gene that goes down. With
        ``exact_mean`` (a sequence says it for each group of rows, a value of
        ``shift_of_rows``; a number in ``[0, 1]`` is the share of clipping's lift taken away,
        ``True`` all of it), each group's mean is kept where its moves add up to, on the genes
        where some of its cells are clipped, estimated on at most ``EXACT_MEAN_CELLS`` of its
        cells: with ``exact_by="thinning"`` each of its cells is set to 0 in such a gene with
        the probability ``1 - target / clipped mean`` (as thinning of counts makes zeros;
        exact in expectation), with ``"shift"`` every cell is moved by the per-gene shift of
        :func:`~perturbflow.data.mean_exact_shift`, with ``"zeroing"`` its lowest cells in
        such a gene are set to 0 up to the level that puts the mean back
        (:func:`zeroing_level`; the others keep their own moves).
        Expected counts are rounded stochastically to integers, unbiased on the
        log-normalised scale (see :func:`log_space_round`; computed here in torch, chunk by
        chunk, with the same draws).

        Returns
        -------
        Integer counts (CSR, int32) and expected counts (dense float32).
        """
        rng, device = np.random.default_rng(seed), self.device
        groups = np.zeros(len(rows), dtype=np.int64) if shift_of_rows is None else np.asarray(shift_of_rows)
        shifts = None if gene_shift is None else torch.as_tensor(gene_shift, dtype=torch.float32, device=device)  # (K, G)
        exact = np.broadcast_to(np.clip(np.asarray(exact_mean, dtype=np.float64), 0, 1), (int(groups.max()) + 1,))
        drop = floor = None  # (K, G): the chance that a cell is set to 0, or the level up to which
        if exact.any():  # what undoes the lift of clipping at 0, per group and gene
            fix = self._exact_mean_fix(z_0, z_1, counts, rows, shifts, groups, seed, change_scale, exact, exact_by)
            if exact_by == "shift":
                shifts = fix if shifts is None else shifts + fix
            elif exact_by == "zeroing":
                floor = fix
            else:
                drop = fix
        thinning = torch.Generator(device=device).manual_seed(int(seed) + 1)  # apart from the rounding's draws
        samples = []
        means = np.empty((len(rows), self.module.n_input), dtype=np.float32)
        for start in range(0, len(rows), CHUNK):
            at = np.arange(start, min(start + CHUNK, len(rows)))
            moved, scale = self._moved(z_0, z_1, counts, rows, at, shifts, groups, change_scale)
            moved.clamp_(min=0)  # (n, G) log1p-normalised
            if drop is not None:
                chance = drop[torch.as_tensor(groups[at], device=device)]  # (n, G)
                moved.masked_fill_(torch.rand(moved.shape, generator=thinning, device=device) < chance, 0.0)
            if floor is not None:
                moved.masked_fill_(moved <= floor[torch.as_tensor(groups[at], device=device)], 0.0)
            expected = torch.expm1(moved).div_(scale)  # (n, G)
            u = torch.from_numpy(rng.random(moved.shape[1])).to(device)  # (G,) as log_space_round draws them
            sampled = _log_space_round_torch(expected, moved, scale, u)
            means[at] = expected.cpu().numpy()
            samples.append(_csr(sampled.cpu()))
        return sp.vstack(samples, format="csr"), means

    def _moved(self, z_0, z_1, counts, rows, at, shifts, groups, change_scale):
        """Source cells ``rows[at]``, log-normalised and moved, before clipping at 0, and their
        normalisation factors ``(n, 1)``."""
        device = self.device
        x = _dense_rows(counts, rows[at]).to(device)  # (n, G)
        scale = TARGET_SUM / x.sum(-1, keepdim=True).clamp(min=1)  # (n, 1)
        z_0c, z_1c = (torch.as_tensor(z[at], dtype=torch.float32, device=device) for z in (z_0, z_1))
        change = self.log_expression(z_1c).sub_(self.log_expression(z_0c))  # (n, G)
        if change_scale != 1.0:
            change.mul_(change_scale)
        if shifts is not None:
            change.add_(shifts[torch.as_tensor(groups[at], device=device)])
        return torch.log1p(x.mul_(scale)).add_(change), scale

    def _exact_mean_fix(self, z_0, z_1, counts, rows, shifts, groups, seed, change_scale, exact, by) -> torch.Tensor:
        """Per group ``k`` with ``exact[k] > 0``, what keeps its cells' mean, clipped at 0, at
        the mean of their moves (with ``exact[k] < 1``, takes that share of clipping's lift
        away), ``(K, G)``: the per-gene shift (``by="shift"``), the level up to which cells are
        set to 0 (``"zeroing"``) or the chance of setting a cell to 0 (``"thinning"``); 0 for
        the other groups and genes."""
        rng = np.random.default_rng([seed, 1])  # apart from the rounding's draws
        out = torch.zeros(len(exact), self.module.n_input, device=self.device)
        for k in np.unique(groups):
            share = float(exact[k])
            if share <= 0:
                continue
            at = np.flatnonzero(groups == k)
            if len(at) > EXACT_MEAN_CELLS:
                at = np.sort(rng.choice(at, EXACT_MEAN_CELLS, replace=False))
            moved = self._moved(z_0, z_1, counts, rows, at, shifts, groups, change_scale)[0].cpu().numpy()
            clipped = np.flatnonzero((moved < 0).any(0))  # the other genes' means are already exact
            cells = moved[:, clipped]
            lifted = np.maximum(cells, 0).mean(0)
            target = lifted - share * (lifted - np.maximum(cells.mean(0), 0))  # the mean kept
            if by == "shift":
                fix = mean_exact_shift(cells, target - cells.mean(0))
            elif by == "zeroing":
                fix = zeroing_level(cells, share)
            else:
                fix = np.where(lifted > 0, 1 - target / np.maximum(lifted, 1e-12), 0.0).clip(0, 1)
            out[k, torch.from_numpy(clipped).to(self.device)] = torch.from_numpy(np.asarray(fix, dtype=np.float32)).to(self.device)
        return out

    @torch.no_grad()
    def dispersion(self) -> np.ndarray:
        """The decoder's gene-wise NB inverse dispersion ``theta``, shape ``(G,)``."""
        z = torch.zeros(1, self.module.n_latent, device=self.device)
        theta = self.distribution(z, torch.ones(1, device=self.device)).theta
        return theta.reshape(-1).cpu().numpy().astype(np.float64)

    @torch.no_grad()
    def log_likelihood(self, counts, rows: np.ndarray) -> np.ndarray:
        """Per-cell reconstruction log-likelihood ``log p(x | E[z | x], l)``."""
        out = []
        for start in range(0, len(rows), CHUNK):
            x = _dense_rows(counts, rows[start : start + CHUNK]).to(self.device)
            batch = torch.zeros(x.shape[0], 1, dtype=torch.long, device=x.device)
            qz = self.module.inference(x, batch_index=batch)["qz"]
            px = self.distribution(qz.loc, x.sum(-1).clamp(min=1))
            out.append(px.log_prob(x).sum(-1).cpu().numpy())
        return np.concatenate(out)

    def save(self, path: Path) -> None:
        self.scvi_model.save(str(path), save_anndata=False, overwrite=True)

    @classmethod
    def load(cls, path: Path, genes: list[str], decoder: str = "nonlinear") -> CountVAE:
        """Load a saved SCVI (``LinearSCVI`` for ``decoder="linear"``); a three-cell
        placeholder AnnData with the model's genes sets it up."""
        placeholder = _anndata(sp.csr_matrix(np.ones((3, len(genes)), dtype=np.float32)), genes)
        model_class = scvi_class(decoder)
        model_class.setup_anndata(placeholder)
        # saved by scvi-tools' own class (before session 25) or by its subclass: the same parameters
        model = model_class.load(str(path), adata=placeholder, accelerator="cpu",
                                 allowed_classes_names_list=[model_class.__base__.__name__])
        model.module.eval()
        return cls(model)
