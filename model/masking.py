"""Which spacetime patches stay visible: each strategy is one function of (batch, grid, ratio, generator).

Every sample of a batch keeps the same number of visible tokens, so the encoder runs dense attention over
[B, N_visible, D] with no padding. Tokens are numbered t·(H·W) + h·W + w on a T×H×W patch grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vmae.model.config import STRATEGIES


@dataclass(frozen=True)
class Mask:
    keep: torch.Tensor  # [B, N_visible] token indices, ascending
    hidden: torch.Tensor  # [B, N_masked] token indices, ascending
    masked: torch.Tensor  # [B, N] bool, True where the token is hidden from the encoder

    @property
    def visible_count(self) -> int:
        return self.keep.shape[1]


def make_mask(strategy: str, batch: int, grid: tuple[int, int, int], ratio: float,
              generator: torch.Generator | None = None) -> Mask:
    """The mask of ``strategy`` ("random" spacetime-agnostic, "tube" space-only, "frame" time-only, "block" cubes)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"mask strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if not 0 <= ratio < 1:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    masked = {"random": _random, "tube": _tube, "frame": _frame, "block": _block}[strategy](batch, grid, ratio,
                                                                                           generator)
    return _from_bool(masked)


def _random(batch: int, grid: tuple[int, int, int], ratio: float, generator) -> torch.Tensor:
    n = grid[0] * grid[1] * grid[2]
    return _hide_lowest(torch.rand(batch, n, generator=generator), n - _visible(n, ratio))


def _tube(batch: int, grid: tuple[int, int, int], ratio: float, generator) -> torch.Tensor:
    """One spatial mask per sample, the same at every time step."""
    t, h, w = grid
    spatial = _hide_lowest(torch.rand(batch, h * w, generator=generator), h * w - _visible(h * w, ratio))
    return spatial.repeat(1, t)


def _frame(batch: int, grid: tuple[int, int, int], ratio: float, generator) -> torch.Tensor:
    """Whole time slices hidden or visible."""
    t, h, w = grid
    frames = _hide_lowest(torch.rand(batch, t, generator=generator), t - _visible(t, ratio))
    return frames.repeat_interleave(h * w, dim=1)


def _block(batch: int, grid: tuple[int, int, int], ratio: float, generator) -> torch.Tensor:
    """Random spacetime cubes hidden until the ratio is reached, then trimmed to the exact visible count."""
    t, h, w = grid
    n = t * h * w
    target = n - _visible(n, ratio)
    out = torch.zeros(batch, t, h, w, dtype=torch.bool)
    for b in range(batch):
        while out[b].sum() < target:
            size = [int(torch.randint(1, max(2, d // 2 + 1), (1,), generator=generator)) for d in grid]
            start = [int(torch.randint(0, d - s + 1, (1,), generator=generator)) for d, s in zip(grid, size,
                                                                                               strict=True)]
            out[b, start[0]:start[0] + size[0], start[1]:start[1] + size[1], start[2]:start[2] + size[2]] = True
    flat = out.view(batch, n)
    # cubes overshoot: un-hide random hidden tokens until exactly ``target`` are hidden
    score = torch.rand(batch, n, generator=generator) + (~flat).float() * 2  # hidden tokens sort first
    return _hide_lowest(score, target)


def decoder_subset(mask: Mask, grid: tuple[int, int, int], ratio: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """VideoMAE V2's dual masking: the hidden tokens the decoder reconstructs, [B, k] ascending, k equal for every
    sample (int(N_masked·(1 − ratio))). Running-cell tokens come first: in each 2×2 spatial cell two of the four
    positions, shifting by one each time step; random ones fill up when they run short."""
    t, h, w = grid
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    in_cell = ((((hh % 2) * 2 + (ww % 2)) + tt) % 4 < 2).reshape(-1)
    hidden = mask.hidden
    k = max(1, int(hidden.shape[1] * (1 - ratio)))
    score = (~in_cell[hidden]).float() + 0.5 * torch.rand(hidden.shape, generator=generator)
    chosen = hidden.gather(1, score.argsort(dim=1)[:, :k])
    return chosen.sort(dim=1).values


def _visible(n: int, ratio: float) -> int:
    """MAE's count: int(N·(1 − ratio)) visible, at least one (1568 tokens at 0.9 → 156)."""
    return max(1, int(n * (1 - ratio)))


def _hide_lowest(score: torch.Tensor, hidden: int) -> torch.Tensor:
    """A bool mask hiding, in each row, the ``hidden`` positions of lowest score."""
    masked = torch.zeros_like(score, dtype=torch.bool)
    if hidden:
        masked.scatter_(1, score.argsort(dim=1)[:, :hidden], True)
    return masked


def _from_bool(masked: torch.Tensor) -> Mask:
    positions = torch.arange(masked.shape[1]).expand_as(masked)
    keep = positions[~masked].view(masked.shape[0], -1)
    hidden = positions[masked].view(masked.shape[0], -1)
    return Mask(keep=keep, hidden=hidden, masked=masked)
