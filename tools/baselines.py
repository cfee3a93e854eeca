"""What vmae is measured against: VideoMAE's per-file decord loader (one clip per decode), on the same videos and
clip spec, with the same crop/normalize code, so that the comparison is of reading and decoding.

Only the loader lives here; `vmae profile --baselines` times it (vmae.tools.profile.stages)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.sampling import plan_views
from vmae.pipeline.data.views import make_views


class PerFileDecord(Dataset):
    """One item = one clip: open the mp4 with decord, get_batch the clip's frames, crop and normalize."""

    def __init__(self, files: list[Path], cfg: DataConfig):
        self.files, self.cfg = files, cfg

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        # decord is optional and only this baseline reads with it: importing vmae.tools.baselines must not need it
        import decord

        reader = decord.VideoReader(str(self.files[i]), num_threads=1, ctx=decord.cpu(0))
        n = len(reader)
        rng = np.random.default_rng(i + int(time.time_ns() % 1000))
        plan = plan_views(n, reader[0].shape[0], reader[0].shape[1], self.cfg, rng)
        frames = torch.from_numpy(reader.get_batch(plan.frames[0].tolist()).asnumpy())
        inverse = np.arange(self.cfg.frames)[None, :]
        return make_views(frames, plan, inverse, self.cfg)[0]


def per_file_loader(files: list[Path], cfg: DataConfig, workers: int) -> DataLoader:
    """Batches of ``cfg.batch_size`` per-file clips, shuffled, from ``workers`` worker processes."""
    return DataLoader(PerFileDecord(files, cfg), batch_size=cfg.batch_size, num_workers=workers, shuffle=True,
                      drop_last=True, persistent_workers=workers > 0)
