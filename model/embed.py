"""Tubelet embedding and positions on the T×H×W patch grid.

Positions (``vmae.model.config.POSITIONS``): learned and separable (a space table plus a time table, summed:
MAE-ST's default), fixed 3-D sin-cos, or VideoMAE's fixed 1-D sinusoid. Tokens are numbered t·(H·W) + h·W + w, as
in ``vmae.model.masking``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from vmae.model.config import POSITIONS, token_grid


class TubeletEmbed(nn.Module):
    """[B, C, T, H, W] video → [B, N, D] tokens with a Conv3d of kernel = stride = tubelet (2×16×16 by default)."""

    def __init__(self, frames: int = 16, size: int = 224, tubelet: tuple[int, int, int] = (2, 16, 16),
                 channels: int = 3, dim: int = 768):
        super().__init__()
        self.tubelet = tuple(tubelet)
        self.grid = token_grid(frames, size, self.tubelet)
        self.proj = nn.Conv3d(channels, dim, kernel_size=tubelet, stride=tubelet)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if tuple(video.shape[2:]) != tuple(g * k for g, k in zip(self.grid, self.tubelet, strict=True)):
            raise ValueError(f"expected clips of {self.grid[0] * self.tubelet[0]}x{self.grid[1] * self.tubelet[1]}"
                             f"x{self.grid[2] * self.tubelet[2]} (T x H x W), got {tuple(video.shape[2:])}")
        return self.proj(video).flatten(2).transpose(1, 2)


class PositionEmbed(nn.Module):
    """Adds a position to each token of the grid: ``separable`` (learned space + time), or the fixed tables
    ``sincos`` (3-D) and ``sinusoid`` (1-D, VideoMAE's)."""

    def __init__(self, grid: tuple[int, int, int], dim: int, kind: str = "separable"):
        super().__init__()
        if kind not in POSITIONS:
            raise ValueError(f"position embedding must be one of {', '.join(POSITIONS)}; got {kind!r}")
        self.grid, self.kind = grid, kind
        t, h, w = grid
        if kind == "separable":
            self.space = nn.Parameter(torch.zeros(1, h * w, dim))
            self.time = nn.Parameter(torch.zeros(1, t, dim))
            trunc_normal_(self.space, std=0.02)
            trunc_normal_(self.time, std=0.02)
        else:
            table = sincos_3d(grid, dim) if kind == "sincos" else sinusoid_1d(t * h * w, dim)
            self.register_buffer("table", table.unsqueeze(0), persistent=False)

    def full(self) -> torch.Tensor:
        """[1, N, D] positions of every token."""
        if self.kind != "separable":
            return self.table
        t = self.grid[0]
        return (self.space.unsqueeze(1) + self.time.unsqueeze(2)).reshape(1, t * self.space.shape[1], -1)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """tokens + positions; with ``keep`` [B, n] (token indices), tokens are only those tokens."""
        positions = self.full().to(tokens.dtype)
        if keep is None:
            return tokens + positions
        index = keep.unsqueeze(-1).expand(-1, -1, positions.shape[-1])
        return tokens + positions.expand(keep.shape[0], -1, -1).gather(1, index)


def sinusoid_1d(n: int, dim: int) -> torch.Tensor:
    """[N, D] VideoMAE's fixed positions: one sinusoid table over the flattened token index, sin on even
    channels and cos on odd ones (what its checkpoints, and HuggingFace's VideoMAE, were trained with)."""
    position = torch.arange(n, dtype=torch.float64)[:, None]
    rates = torch.pow(10000.0, 2 * (torch.arange(dim) // 2).double() / dim)[None, :]
    angles = position / rates
    table = torch.empty(n, dim, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = angles[:, 0::2].sin(), angles[:, 1::2].cos()
    return table.float()


def sincos_3d(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """[N, D] fixed sin-cos positions; the channels split between t, h and w (w and h get 1/3 each, rounded to 4)."""
    t, h, w = grid
    per_axis = (dim // 3) // 4 * 4
    time_dim = dim - 2 * per_axis
    coords = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), -1)
    coords = coords.reshape(-1, 3).float()
    return torch.cat([_sincos_1d(coords[:, 0], time_dim), _sincos_1d(coords[:, 1], per_axis),
                      _sincos_1d(coords[:, 2], per_axis)], dim=1)


def _sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    angles = positions[:, None] * freqs[None, :]
    out = torch.cat([angles.sin(), angles.cos()], dim=1)
    return torch.nn.functional.pad(out, (0, dim - out.shape[1]))
