"""Per-view crop, resize, flip and normalize on the CPU: every frame of a view shares its crop and its flip."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.sampling import ViewPlan


def make_views(frames: torch.Tensor | Sequence[np.ndarray], plan: ViewPlan, inverse: np.ndarray, cfg: DataConfig,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Decoded frames uint8 [F, H, W, 3] (a tensor, or one array per frame as the decoders give them) →
    normalized clips float [K, 3, T, S, S] (written into ``out`` if given; a uint8 ``out`` gets the cut clips
    unnormalized, for ``normalize_clips`` on the GPU).

    Crop and resize stay in uint8 with channels last (torch's fast bilinear path, ~10x the float one); the
    conversion to float and the normalization run once, on the small output.
    """
    if isinstance(frames, torch.Tensor):
        frames = frames.numpy()
    mean = torch.tensor(cfg.mean).view(3, 1, 1, 1) * 255
    inv_std = 1 / (torch.tensor(cfg.std).view(3, 1, 1, 1) * 255)
    size = (cfg.crop_size, cfg.crop_size)
    views = torch.empty(plan.frames.shape[0], 3, cfg.frames, *size) if out is None else out
    for k in range(plan.frames.shape[0]):
        y, x, h, w = (int(v) for v in plan.crops[k])
        clip = crop_rows(frames, inverse[k], y, x, h, w).permute(0, 3, 1, 2)  # [T, 3, h, w], channels last
        if (h, w) != size:
            clip = F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=False)
        if plan.flips[k]:
            clip = clip.flip(-1)
        views[k].copy_(clip.permute(1, 0, 2, 3))
        if views.dtype != torch.uint8:
            views[k].sub_(mean.to(views.dtype)).mul_(inv_std.to(views.dtype))
    return views


def normalize_clips(clips: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """uint8 clips [..., 3, T, S, S] → normalized clips of ``data.dtype``, where they are (on the GPU, a quarter of
    the bytes to copy there); the CPU path's arithmetic: float32 then, for bfloat16, one rounding."""
    mean, inv_std = _normalizer(tuple(cfg.mean), tuple(cfg.std), clips.device)
    return clips.float().sub_(mean).mul_(inv_std).to(clip_dtype(cfg))


@lru_cache(maxsize=8)
def _normalizer(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """mean·255 and 1/(std·255) as [3, 1, 1, 1] tensors on ``device``, made once: a tensor built from a list on a
    GPU is a blocking copy, which every batch would otherwise pay."""
    mean_t = torch.tensor(mean, device=device).view(3, 1, 1, 1) * 255
    return mean_t, 1 / (torch.tensor(std, device=device).view(3, 1, 1, 1) * 255)


def crop_rows(frames: Sequence[np.ndarray], rows: np.ndarray, y: int, x: int, h: int, w: int) -> torch.Tensor:
    """The crop [y:y+h, x:x+w] of the frames at ``rows`` as uint8 [T, h, w, 3]: only the crop is copied, row by
    row (5x faster than torch's advanced indexing of a frame stack with slices, and no stack of whole frames)."""
    crop = np.empty((len(rows), h, w, 3), dtype=np.uint8)
    for t, row in enumerate(rows.tolist()):
        crop[t] = frames[row][y:y + h, x:x + w]
    return torch.from_numpy(crop)


def clip_dtype(cfg: DataConfig) -> torch.dtype:
    """The dtype of the clips handed to the model (data.dtype)."""
    return torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32


def denormalize(clips: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """Normalized clips [..., 3, T, H, W] back to uint8, for pictures."""
    mean = torch.tensor(cfg.mean, device=clips.device).view(3, 1, 1, 1)
    std = torch.tensor(cfg.std, device=clips.device).view(3, 1, 1, 1)
    return ((clips.float() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
