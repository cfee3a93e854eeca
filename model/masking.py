"""Which spacetime patches stay visible: the masking strategies named in ``vmae.model.config.STRATEGIES``, each
drawn from (batch, grid, ratio, generator), and how many tokens each leaves visible.

Every sample of a batch keeps the same number of visible tokens, so the encoder runs dense attention over
[B, N_visible, D] with no padding. Tokens are numbered t·(H·W) + h·W + w on a T×H×W patch grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vmae.model.config import STRATEGIES


@dataclass(frozen=True)
class Mask:
    """One batch's mask, as the token indices the encoder sees, those it does not, and a bool map."""

    keep: torch.Tensor  # [B, N_visible] token indices, ascending
    hidden: torch.Tensor  # [B, N_masked] token indices, ascending
    masked: torch.Tensor  # [B, N] bool, True where the token is hidden from the encoder

    @property
    def visible_count(self) -> int:
        return self.keep.shape[1]

    def to(self, device: torch.device) -> Mask:
        """The mask on ``device``; to a GPU through pinned memory without blocking, so the host never waits."""
        if self.keep.device == device:
            return self
        return Mask(*(to_device(t, device) for t in (self.keep, self.hidden, self.masked)))


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; host to GPU through pinned memory without blocking (a pageable copy waits for the
    GPU to drain, stalling the host that should be queueing the next kernels)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def make_mask(strategy: str, batch: int, grid: tuple[int, int, int], ratio: float,
              generator: torch.Generator | None = None) -> Mask:
    """The mask of ``strategy`` ("random" spacetime-agnostic, "tube" space-only, "frame" time-only, "block" cubes),
    keeping ``visible_count(strategy, grid, ratio)`` tokens of every sample."""
    check_strategy(strategy, ratio)
    if strategy == "block":
        return _from_bool(_block(batch, grid, ratio, generator))
    return _from_bool(_shared_draw(batch, grid, _drawn_grid(strategy, grid), ratio, generator))


def visible_count(strategy: str, grid: tuple[int, int, int], ratio: float) -> int:
    """Tokens ``strategy`` leaves visible on a T×H×W grid at ``ratio``: MAE's int(N·(1 − ratio)), at least one, of
    the units it draws, times the tokens each unit covers (8×14×14 at 0.9: random 156, tube 19·8 = 152, frame
    1·196 = 196)."""
    check_strategy(strategy, ratio)
    drawn = _drawn_grid(strategy, grid)
    units = math.prod(drawn)
    return math.prod(grid) // units * _visible(units, ratio)


def check_strategy(strategy: str, ratio: float) -> None:
    """Refuse a strategy that is not registered (``STRATEGIES``) or a ratio outside [0, 1)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"mask strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if not 0 <= ratio < 1:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")


def _drawn_grid(strategy: str, grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """The sub-grid whose units ``strategy`` draws at random, each unit then shared along the missing axes: tube
    draws one spatial mask for every time step, frame one bit per time step for the whole frame; random and block
    draw every token."""
    t, h, w = grid
    if strategy == "tube":
        return 1, h, w
    if strategy == "frame":
        return t, 1, 1
    return grid


def _shared_draw(batch: int, grid: tuple[int, int, int], drawn: tuple[int, int, int], ratio: float,
                 generator: torch.Generator | None) -> torch.Tensor:
    """Hide the lowest-scoring units of the ``drawn`` sub-grid, then spread each unit over the axes it spans."""
    units = math.prod(drawn)
    hidden = _hide_lowest(torch.rand(batch, units, generator=generator), units - _visible(units, ratio))
    return hidden.view(batch, *drawn).expand(batch, *grid).reshape(batch, -1)


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
    k = decoder_subset_count(hidden.shape[1], ratio)
    score = (~in_cell[hidden]).float() + 0.5 * torch.rand(hidden.shape, generator=generator)
    chosen = hidden.gather(1, score.argsort(dim=1)[:, :k])
    return chosen.sort(dim=1).values


def decoder_subset_count(hidden: int, ratio: float) -> int:
    """Hidden tokens dual masking lets the decoder reconstruct: int(N_masked·(1 − ratio)), at least one."""
    return max(1, int(hidden * (1 - ratio)))


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
