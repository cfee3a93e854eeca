"""Arm (d): how well the hidden patches are reconstructed, against predictors that learned nothing.

Every predictor fills the hidden patches of the same clips under the same masks; PSNR (in 0-255 pixels) is taken
over the hidden patches that move and, apart, over those that do not. A model that only learned to blur or to copy
the background would tie the trivial predictors on still patches and lose on moving ones. The trivial predictors:

- ``visible mean``: the mean of the clip's visible patches, pixel by pixel (one patch for every hidden one);
- ``nearest time``: the visible patch at the same place nearest in time (the visible mean where none is);
- ``space-time interpolation``: the inverse-distance weighted mean of the ``NEIGHBOURS`` nearest visible patches on
  the token grid (time, rows, columns in patch units).

Patches are the model's targets (one frame per temporal patch for MAE-ST's "slice" target, the whole tubelet for
"tube"), in the token order of ``vmae.model.mae.patchify``.
"""

from __future__ import annotations

import math

import torch

NEIGHBOURS = 4  # visible patches space-time interpolation averages
MOVING_LEVEL = 6.0  # mean |frame - previous frame| (grey levels) over a patch above which it moves
TRIVIAL = ("visible mean", "nearest time", "space-time interpolation")
PSNR_CAP = 100.0  # dB: an exact reconstruction (zero error) is reported at this


def grid_positions(grid: tuple[int, int, int]) -> torch.Tensor:
    """[N, 3] float (t, row, column) of every token, in token order."""
    t, h, w = grid
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([tt, hh, ww], dim=-1).reshape(-1, 3).float()


def trivial_predictions(patches: torch.Tensor, masked: torch.Tensor, grid: tuple[int, int, int]) -> dict:
    """Each trivial predictor's patches [B, N, P] for ``patches`` [B, N, P] with ``masked`` [B, N] hidden (visible
    patches are returned as they are: only hidden ones are scored)."""
    visible = (~masked).float()
    mean = (patches * visible[..., None]).sum(1, keepdim=True) / visible.sum(1, keepdim=True)[..., None].clamp(min=1)
    positions = grid_positions(grid).to(patches.device)
    distance = torch.cdist(positions, positions)  # [N, N] in patch units
    same_place = (distance - (positions[:, None, 0] - positions[None, :, 0]).abs()).abs() < 1e-6
    far = torch.finfo(distance.dtype).max
    out = {}
    # nearest time: among visible patches at the same row and column, the one with the least time distance
    time_gap = torch.where(same_place, distance, torch.full_like(distance, far))
    out["nearest time"] = _pick_nearest(patches, masked, time_gap, mean)
    # space-time interpolation: inverse-distance weights over the nearest visible patches
    gaps = distance.expand(patches.shape[0], -1, -1).masked_fill(masked[:, None, :], far)  # [B, N, N] to visible
    k = min(NEIGHBOURS, int((~masked).sum(1).min()))
    nearest, index = gaps.topk(k, dim=-1, largest=False)
    weights = 1.0 / nearest.clamp(min=1e-6)
    gathered = torch.gather(patches[:, None].expand(-1, patches.shape[1], -1, -1), 2,
                            index[..., None].expand(-1, -1, -1, patches.shape[-1]))
    out["space-time interpolation"] = (gathered * weights[..., None]).sum(2) / weights.sum(-1, keepdim=True)
    out["visible mean"] = mean.expand_as(patches)
    return {name: torch.where(masked[..., None], out[name], patches) for name in TRIVIAL}


def _pick_nearest(patches: torch.Tensor, masked: torch.Tensor, gap: torch.Tensor,
                  fallback: torch.Tensor) -> torch.Tensor:
    """The visible patch at the least ``gap`` [N, N] from each patch, ``fallback`` where none is finite."""
    gaps = gap.expand(patches.shape[0], -1, -1).masked_fill(masked[:, None, :], torch.finfo(gap.dtype).max)
    best, index = gaps.min(dim=-1)
    picked = torch.gather(patches, 1, index[..., None].expand(-1, -1, patches.shape[-1]))
    return torch.where((best < torch.finfo(gap.dtype).max)[..., None], picked, fallback.expand_as(patches))


def moving_patches(video: torch.Tensor, tubelet: tuple[int, int, int]) -> torch.Tensor:
    """[B, N] bool: the tokens of ``video`` uint8 or float [B, 3, T, H, W] (0-255) whose pixels change over their
    frames (mean |frame - previous frame| above ``MOVING_LEVEL``; a token's first frame is compared with the frame
    before it, the clip's first with its second)."""
    frames = video.float()
    change = (frames[:, :, 1:] - frames[:, :, :-1]).abs().mean(1)  # [B, T-1, H, W]
    change = torch.cat([change[:, :1], change], dim=1)  # frame 0 takes frame 1's change
    b, t, h, w = change.shape
    tt, p, q = tubelet
    per_token = change.reshape(b, t // tt, tt, h // p, p, w // q, q).mean(dim=(2, 4, 6))
    return per_token.reshape(b, -1) > MOVING_LEVEL


def psnr_by_kind(predictions: dict[str, torch.Tensor], target: torch.Tensor, masked: torch.Tensor,
                 moving: torch.Tensor) -> dict[str, dict[str, float]]:
    """PSNR (dB, 0-255 pixels) of each predictor over the hidden patches that move, that do not, and all; None
    where a kind has no patch. Squared errors are pooled over every patch of a kind, then turned into PSNR."""
    kinds = {"moving": masked & moving, "still": masked & ~moving, "all": masked}
    out = {}
    for name, predicted in predictions.items():
        error = (predicted.float().clamp(0, 255) - target.float()).square().mean(-1)  # [B, N]
        out[name] = {kind: _psnr(error[where]) for kind, where in kinds.items()}
    return out


def _psnr(errors: torch.Tensor) -> float | None:
    if errors.numel() == 0:
        return None
    mse = float(errors.mean())
    return min(PSNR_CAP, 10 * math.log10(255.0**2 / mse)) if mse > 0 else PSNR_CAP
