"""Pair control cells (source) with perturbed cells (target) of the same context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch.utils.data import Dataset

from perturbflow._distributed import global_rank, worker_id

Coupling = Literal["random", "ot", "gaussian"]


@dataclass
class Group:
    """One (perturbation, context) group: its perturbed cells and the controls of its context."""

    label: str
    context: int
    atom_ids: np.ndarray  # (A,) indices into the atom vocabulary, 1-based (0 pads)
    target_idx: np.ndarray  # rows of perturbed cells
    source_idx: np.ndarray  # rows of control cells of the same context
    prior: np.ndarray  # (D,) baseline latent shift of the group, computed without the group


def ot_pairing(x_0: np.ndarray, x_1: np.ndarray) -> np.ndarray:
    """Permutation of ``x_1`` that minimises the summed squared distance to ``x_0`` (exact OT)."""
    cost = ((x_0[:, None, :] - x_1[None, :, :]) ** 2).sum(-1)  # (S, S)
    rows, cols = linear_sum_assignment(cost)
    return cols[np.argsort(rows)]


def _sqrt_psd(m: np.ndarray, inverse: bool = False) -> np.ndarray:
    """The symmetric square root (or its inverse) of a positive semi-definite matrix."""
    values, vectors = np.linalg.eigh(m)
    values = np.clip(values, 1e-9 * max(float(values.max()), 1e-12), None) ** (-0.5 if inverse else 0.5)
    return (vectors * values) @ vectors.T


class GaussianMap(NamedTuple):
    """An affine transport map ``T(x) = m_1 + A (x - m_0)``; calling it moves the rows of ``x``."""

    m_0: np.ndarray  # (D,)
    m_1: np.ndarray  # (D,)
    a: np.ndarray  # (D, D)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.m_1 + (x - self.m_0) @ self.a.T


def gaussian_map(x_0: np.ndarray, x_1: np.ndarray) -> GaussianMap:
    """The optimal-transport map between normals fitted to the rows of ``x_0`` and ``x_1``:
    ``T(x) = m_1 + A (x - m_0)``, ``A = S_0^-1/2 (S_0^1/2 S_1 S_0^1/2)^1/2 S_0^-1/2`` (the Monge
    map between two Gaussians; Peyre & Cuturi 2019, remark 2.31).

    A shift where the two covariances agree, an affine, state-dependent move where they do
    not; estimated from the two clouds' first two moments rather than from each cell's
    partner in an empirical plan, whose moves carry the plan's own sampling error (large in
    a 20-dimensional latent: benchmarks/RESULTS.md, "Session 20").

    ``S_1`` is the perturbed cells' covariance shrunk towards the control cells' by
    :func:`shrunk_covariance`: a perturbation measured in a few dozen cells has a sample
    covariance whose eigenvalues spread far from the true ones (in 20 dimensions and 35
    cells, from about a twentieth to three times), and the unshrunk map turned that noise
    into large moves of every cell, which the flow learned group by group and carried
    nowhere else (benchmarks/RESULTS.md, "Session 26"). A side with no more cells than
    dimensions has no full-rank covariance: the map is then the shift of the means."""
    m_0, m_1 = x_0.mean(0), x_1.mean(0)
    if min(len(x_0), len(x_1)) <= x_0.shape[1]:  # too few cells for a covariance: the shift alone
        return GaussianMap(m_0, m_1, np.eye(x_0.shape[1]))
    s_0 = np.atleast_2d(np.cov(x_0, rowvar=False))
    return GaussianMap(m_0, m_1, monge_matrix(s_0, shrunk_covariance(x_1, s_0)))


def monge_matrix(s_0: np.ndarray, s_1: np.ndarray) -> np.ndarray:
    """``A = S_0^-1/2 (S_0^1/2 S_1 S_0^1/2)^1/2 S_0^-1/2``: the linear part of the optimal
    transport map from a normal of covariance ``s_0`` to one of covariance ``s_1``."""
    root, inv_root = _sqrt_psd(s_0), _sqrt_psd(s_0, inverse=True)
    return inv_root @ _sqrt_psd(root @ s_1 @ root) @ inv_root


def covariance_shrinkage(x: np.ndarray, target: np.ndarray) -> float:
    """The Ledoit-Wolf intensity with which the sample covariance of the rows of ``x`` is
    shrunk towards ``target``: the summed sampling variance of its entries over its summed
    squared distance from ``target``, clipped to ``[0, 1]`` (Ledoit & Wolf 2004, lemma 3.3
    and theorem 3.1, with a general target in place of a scaled identity).

    The sampling variance is estimated from the cells themselves,
    ``sum_k ||y_k y_k^T - S||_F^2 / n^2`` with ``y_k`` the centred rows and ``S`` their
    covariance (divided by ``n``): a handful of cells in many dimensions gives 1 (the
    target), many cells whose covariance differs from the target give near 0."""
    n = len(x)
    y = x - x.mean(0)
    s = y.T @ y / n
    norms = (y * y).sum(1)
    spread = float((norms**2 - 2 * np.einsum("ki,ij,kj->k", y, s, y) + (s * s).sum()).sum()) / n**2
    distance = float(((s - target) ** 2).sum())
    return 1.0 if distance <= 0 else float(np.clip(spread / distance, 0.0, 1.0))


def shrunk_covariance(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The covariance of the rows of ``x`` shrunk towards ``target`` by
    :func:`covariance_shrinkage`: ``lam * target + (1 - lam) * S``."""
    lam = covariance_shrinkage(x, target)
    return lam * target + (1 - lam) * np.atleast_2d(np.cov(x, rowvar=False))


def pad_atoms(atom_ids: list[np.ndarray]) -> np.ndarray:
    """Stack variable-length atom index lists into a zero-padded ``(N, A_max)`` array."""
    width = max(1, max(len(a) for a in atom_ids))
    out = np.zeros((len(atom_ids), width), dtype=np.int64)
    for i, a in enumerate(atom_ids):
        out[i, : len(a)] = a
    return out


class _RandomPairs(NamedTuple):
    """Sources and targets of a group drawn independently, with replacement."""

    group: Group

    def draw(self, z: np.ndarray, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        return z[rng.choice(self.group.source_idx, size)], z[rng.choice(self.group.target_idx, size)]


class _PlannedPairs(NamedTuple):
    """Pairs drawn from one of a group's exact OT plans, each a (source rows, target rows) pairing."""

    plans: list[tuple[np.ndarray, np.ndarray]]

    def draw(self, z: np.ndarray, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        src, tgt = self.plans[rng.integers(len(self.plans))]
        pick = rng.choice(len(src), size, replace=len(src) < size)
        return z[src[pick]], z[tgt[pick]]


class _MappedPairs(NamedTuple):
    """Drawn control latents of a group, each paired with its image under the group's map."""

    group: Group
    transport: GaussianMap

    def draw(self, z: np.ndarray, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        x_0 = z[rng.choice(self.group.source_idx, size)]
        return x_0, self.transport(x_0).astype(np.float32)


class PairedSetDataset(Dataset):
    """Sets of ``set_size`` control latents paired with as many perturbed latents of one group.

    Each item draws a group (every group equally often) and ``set_size`` (source, target)
    pairs of it. With ``coupling="random"`` sources and targets are drawn independently
    (with replacement). With ``"gaussian"`` each drawn control latent is paired with its image
    under the optimal-transport map between normals fitted to the group's control and
    perturbed latents (:func:`gaussian_map`): a point, not a measured cell. With ``"ot"`` the pairs come from an exact optimal-transport plan
    between up to ``OT_POOL`` sources and as many targets of the whole group (a few plans per
    group, each on its own resampling), not from a plan within the small set: in a
    20-dimensional latent, OT within 32 cells pairs almost at random, and the flow learned
    from such pairs contracts the cells towards their mean (Tong et al. 2023 describe the
    minibatch approximation of the OT coupling and its dependence on the batch size).

    Items are drawn at random whatever their index, so in a multi-device run (DDP) or with
    several data-loader workers each process draws from its own stream: the single process
    (rank 0, main worker) keeps the stream of ``seed``, any other one is seeded from
    ``(seed, rank, worker)``. The OT plans are made once from ``seed`` and are the same in
    every process.
    """

    OT_POOL = 256  # cells per side of a group's OT plan
    N_PLANS = 4  # resampled plans per group

    def __init__(
        self,
        z: np.ndarray,
        groups: list[Group],
        context_stats: np.ndarray,
        set_size: int = 32,
        n_items: int = 400,
        coupling: Coupling = "ot",
        seed: int = 0,
    ):
        self.z = z.astype(np.float32)
        self.groups = groups
        self.context_stats = context_stats.astype(np.float32)
        self.set_size = set_size
        self.n_items = n_items
        self.coupling = coupling
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._process: tuple[int, int] | None = None  # (rank, worker) of self._draws
        self._draws = self.rng
        self.atoms = pad_atoms([g.atom_ids for g in groups])
        self.couplings = [self._coupling(g) for g in groups]  # each group's pairs, drawn per item

    def _coupling(self, group: Group) -> _RandomPairs | _PlannedPairs | _MappedPairs:
        if self.coupling == "ot":
            return _PlannedPairs(self._plans(group))
        if self.coupling == "gaussian":
            return _MappedPairs(group, self._map(group))
        return _RandomPairs(group)

    def _plans(self, group: Group) -> list[tuple[np.ndarray, np.ndarray]]:
        """``N_PLANS`` (source rows, target rows) pairings of the group, each an exact OT plan."""
        n = min(self.OT_POOL, max(len(group.source_idx), len(group.target_idx), self.set_size))
        plans = []
        for _ in range(self.N_PLANS):
            src = self.rng.choice(group.source_idx, n, replace=len(group.source_idx) < n)
            tgt = self.rng.choice(group.target_idx, n, replace=len(group.target_idx) < n)
            plans.append((src, tgt[ot_pairing(self.z[src], self.z[tgt])]))
        return plans

    def _map(self, group: Group) -> GaussianMap:
        """The group's Gaussian transport map, fitted on up to ``OT_POOL`` cells of each side."""
        src = self.rng.choice(group.source_idx, min(self.OT_POOL, len(group.source_idx)), replace=False)
        tgt = self.rng.choice(group.target_idx, min(self.OT_POOL, len(group.target_idx)), replace=False)
        return gaussian_map(self.z[src].astype(np.float64), self.z[tgt].astype(np.float64))

    def __len__(self) -> int:
        return self.n_items

    def _stream(self) -> np.random.Generator:
        """The item stream of this process: known only once the process runs (DDP re-launches
        or spawns processes, and workers get copies of the dataset, after it is built)."""
        process = (global_rank(), worker_id())
        if process != self._process:
            self._process = process
            self._draws = self.rng if process == (0, 0) else np.random.default_rng([self.seed, *process])
        return self._draws

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = self._stream()
        g = rng.integers(len(self.groups))
        x_0, x_1 = self.couplings[g].draw(self.z, rng, self.set_size)
        return {
            "x_0": torch.from_numpy(x_0),  # (S, D)
            "x_1": torch.from_numpy(x_1),  # (S, D)
            "atoms": torch.from_numpy(self.atoms[g]),
            "context": torch.from_numpy(self.context_stats[self.groups[g].context]),
            "prior": torch.from_numpy(self.groups[g].prior.astype(np.float32)),
        }
