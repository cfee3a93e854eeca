"""Per-view crop, resize, flip and normalize on the CPU: every frame of a view shares its crop and its flip."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import DataConfig
from pipeline.sampling import ViewPlan


def make_views(frames: torch.Tensor, plan: ViewPlan, inverse: np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """Decoded frames uint8 [F, 3, H, W] → normalized clips float [K, 3, T, S, S]."""
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg.std).view(1, 3, 1, 1) * 255
    size = (cfg.crop_size, cfg.crop_size)
    views = []
    for k in range(plan.frames.shape[0]):
        y, x, h, w = (int(v) for v in plan.crops[k])
        clip = frames[torch.from_numpy(inverse[k]), :, y:y + h, x:x + w].float()  # [T, 3, h, w]
        if (h, w) != size:
            clip = F.interpolate(clip, size=size, mode="bilinear", align_corners=False)
        if plan.flips[k]:
            clip = clip.flip(-1)
        views.append(((clip - mean) / std).permute(1, 0, 2, 3))
    return torch.stack(views)


def denormalize(clips: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """Normalized clips [..., 3, T, H, W] back to uint8, for pictures."""
    mean = torch.tensor(cfg.mean, device=clips.device).view(3, 1, 1, 1)
    std = torch.tensor(cfg.std, device=clips.device).view(3, 1, 1, 1)
    return ((clips.float() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
