"""Bidirectional diagonal state-space model (S4D) over the coordinates of each cell's latent."""

from __future__ import annotations

import math

import torch
from torch import nn

from perturbflow.backbones._layers import (
    AdaLNZeroBlock,
    ConditionEmbedder,
    CoordinateTokens,
    FinalLayer,
)
from perturbflow.backbones._registry import register_backbone


def fft_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal FFT convolution of ``u`` ``(N, d, L)`` with a kernel per channel ``k`` ``(d, L)``."""
    length = u.shape[-1]
    n = 2 * length  # zero padding turns the FFT's circular convolution into a linear one
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)  # (N, d, 2L)
    return y[..., :length]  # (N, d, L)


class BidirectionalS4D(nn.Module):
    """Diagonal state-space convolution (S4D) run forwards and backwards along the sequence, summed.

    Each channel is a linear SSM ``x' = A x + B u, y = C x`` with diagonal complex ``A``
    (``d_state // 2`` modes, their conjugates implied so the output is real) and ``B = 1``,
    discretised by zero-order hold with a learned step ``dt``. Its impulse response over ``L``
    steps is computed in closed form,
    ``K[l] = 2 Re(sum_n C_n (exp(dt A_n) - 1) / A_n exp(dt A_n l))``,
    and applied by FFT convolution: O(L log L) in the sequence length. One set of SSMs reads the
    sequence forwards, another reads it reversed; their outputs are summed with a skip term.
    This plain-PyTorch path is the reference implementation; no fast kernel is needed at the
    sequence lengths of a latent.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int,
        dropout_rate: float,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
    ):
        super().__init__()
        n_modes = max(d_state // 2, 1)
        n_ssm = 2 * d_model  # forwards and backwards
        log_dt = math.log(dt_min) + torch.rand(n_ssm) * (math.log(dt_max) - math.log(dt_min))
        self.log_dt = nn.Parameter(log_dt)  # (2d,)
        # S4D-Lin initialisation: A_n = -1/2 + i pi n
        self.log_a_real = nn.Parameter(torch.full((n_ssm, n_modes), math.log(0.5)))  # (2d, N)
        self.a_imag = nn.Parameter(math.pi * torch.arange(n_modes).float().repeat(n_ssm, 1))
        self.c = nn.Parameter(math.sqrt(0.5) * torch.randn(n_ssm, n_modes, 2))  # (2d, N, re/im)
        self.skip = nn.Parameter(torch.randn(d_model))  # (d,)
        self.out = nn.Sequential(
            nn.GELU(approximate="tanh"), nn.Dropout(dropout_rate), nn.Linear(d_model, d_model)
        )

    def kernel(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernels ``(d, L)`` of the forward and the backward SSMs: their impulse responses."""
        dt = self.log_dt.exp()[:, None]  # (2d, 1)
        a = torch.complex(-self.log_a_real.exp(), self.a_imag)  # (2d, N)
        # zero-order hold: B_bar = (exp(dt A) - 1) / A, folded into C
        c = torch.view_as_complex(self.c) * (torch.exp(dt * a) - 1) / a  # (2d, N)
        steps = torch.arange(length, device=a.device, dtype=torch.float32)  # (L,)
        powers = torch.exp((dt * a)[..., None] * steps)  # (2d, N, L)
        k = 2 * torch.einsum("hn,hnl->hl", c, powers).real  # (2d, L)
        return k.chunk(2, dim=0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        u = h.transpose(1, 2)  # (N, d, L)
        k_fwd, k_bwd = self.kernel(u.shape[-1])  # (d, L) each
        y = fft_conv(u, k_fwd) + fft_conv(u.flip(-1), k_bwd).flip(-1)  # (N, d, L)
        y = y + self.skip[:, None] * u  # (N, d, L)
        return self.out(y.transpose(1, 2))  # (N, L, d)


@register_backbone("ssm")
class SSMBackbone(nn.Module):
    """Bidirectional diagonal state-space model (S4D) along each cell's latent, with adaLN-Zero.

    Tokens: the latent of a cell, cut into chunks of ``chunk`` coordinates, forms a sequence of
    ``ceil(D / chunk)`` tokens (each projected to ``d_model`` plus a learned position
    embedding; chunks keep the sequence, and the cost, 4 times smaller than one token per
    coordinate); cells of a set are processed independently
    (S is treated as a batch axis). A sequence model needs an order: the cells of a set have
    none (ordering them would break permutation equivariance), while the latent coordinates
    have a fixed one. That order is arbitrary, so the SSM reads it in both directions and each
    coordinate sees all others, at a cost linear-log in D instead of attention's quadratic one.
    The embedding of (t, cond) modulates every block by adaLN-Zero; the modulation and the
    final projection are zero-initialised, so the output starts at zero.

    Parameters
    ----------
    n_latent
        Size D of the latent.
    n_cond
        Size C of the condition vector.
    d_model
        Width of the tokens (number of SSM channels per direction).
    depth
        Number of SSM blocks.
    d_state
        State size of each channel's SSM (``d_state // 2`` complex-conjugate mode pairs).
    chunk
        Latent coordinates per token (4: a 20-dimensional latent is 5 tokens).
    dropout_rate
        Dropout after the SSM and in the MLPs.
    """

    def __init__(
        self,
        n_latent: int,
        n_cond: int,
        d_model: int = 64,
        depth: int = 4,
        d_state: int = 32,
        dropout_rate: float = 0.0,
        chunk: int = 4,
    ):
        super().__init__()
        self.embed = ConditionEmbedder(n_cond, d_model)
        self.tokens = CoordinateTokens(n_latent, d_model, chunk)
        self.blocks = nn.ModuleList(
            AdaLNZeroBlock(d_model, BidirectionalS4D(d_model, d_state, dropout_rate), dropout_rate)
            for _ in range(depth)
        )
        self.final = FinalLayer(d_model, chunk)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        n_sets, n_cells, _ = x_t.shape
        c = self.embed(t, cond).repeat_interleave(n_cells, dim=0)  # (B*S, d)
        h = self.tokens(x_t)  # (B*S, L, d)
        for block in self.blocks:
            h = block(h, c)  # (B*S, L, d)
        return self.tokens.to_latent(self.final(h, c), n_sets, n_cells)  # (B, S, D)
