"""`make_loader`: batches of K-view clips [B·K, 3, T, H, W] on the training device, from a built dataset.

One sampling spec, two paths: DALI (reader → NVDEC decode → GPU crops) when CUDA is present, and torch
DataLoader workers with a seeking CPU decoder otherwise. Both yield the same contract:
``{"video": float [B·K, 3, T, S, S], "label": long [B·K], "key": [B] sample keys}``; the K clips of a video
are adjacent.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pipeline.config import DataConfig
from pipeline.cpu_loader import BatchStream
from pipeline.shardset import ShardSet

log = logging.getLogger(__name__)


@dataclass
class LoaderStats:
    """What the loader did since it was made: rates, decode work and every replaced sample by reason."""

    batches: int = 0
    videos: int = 0
    clips: int = 0
    decoded_frames: int = 0
    padded: int = 0
    decode_seconds: float = 0.0  # summed over workers: decoder time alone
    failed: Counter = field(default_factory=Counter)
    seconds: float = 0.0  # wall time spent inside the iterator, waiting included

    def add(self, batch_stats: dict) -> None:
        self.batches += 1
        for key in ("videos", "clips", "decoded_frames", "padded", "decode_seconds"):
            setattr(self, key, getattr(self, key) + batch_stats.get(key, 0))
        self.failed.update(batch_stats["failed"])

    @property
    def clips_per_second(self) -> float:
        return self.clips / self.seconds if self.seconds else 0.0

    @property
    def decoded_frames_per_clip(self) -> float:
        return self.decoded_frames / self.clips if self.clips else 0.0

    def as_dict(self) -> dict:
        return {"batches": self.batches, "videos": self.videos, "clips": self.clips,
                "decoded_frames": self.decoded_frames, "padded": self.padded,
                "decode_seconds": round(self.decode_seconds, 3), "failed": dict(self.failed),
                "seconds": round(self.seconds, 3), "clips_per_second": round(self.clips_per_second, 2),
                "decoded_frames_per_clip": round(self.decoded_frames_per_clip, 2)}


class CpuLoader:
    """The CPU path; iterate it once per epoch (``set_epoch`` first, as with a DistributedSampler).

    One DataLoader and its workers serve the whole run: consecutive epochs continue the same stream; a
    ``set_epoch`` that jumps elsewhere (a resume) starts a new one.
    """

    backend = "cpu"

    def __init__(self, dataset: Path, cfg: DataConfig, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu"):
        self.shardset = ShardSet(dataset)
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.device = torch.device(device)
        self.epoch, self.start_batch = 0, 0
        self.stats = LoaderStats()
        self._stream = None  # (iterator, the (epoch, batch) it yields next)
        self.per_epoch = BatchStream(self.shardset, cfg, rank, world_size, 0).batches_per_epoch()

    def set_epoch(self, epoch: int, samples_seen: int = 0) -> None:
        """Start ``epoch``; ``samples_seen`` (videos this rank already took in it) resumes mid-epoch."""
        self.epoch = epoch
        self.start_batch = samples_seen // self.cfg.batch_size

    def __len__(self) -> int:
        return self.per_epoch - self.start_batch

    def __iter__(self):
        position = (self.epoch, self.start_batch)
        if self._stream is None or self._stream[1] != position:
            self._stream = (iter(self._dataloader(*position)), position)
        iterator = self._stream[0]
        waited = time.perf_counter()
        for b in range(self.start_batch, self.per_epoch):
            batch = next(iterator)
            self.stats.add(batch.pop("stats"))
            batch["video"] = batch["video"].to(self.device, non_blocking=True)
            batch["label"] = batch["label"].to(self.device, non_blocking=True)
            self.stats.seconds += time.perf_counter() - waited
            self._stream = (iterator, (self.epoch, b + 1) if b + 1 < self.per_epoch else (self.epoch + 1, 0))
            yield batch
            waited = time.perf_counter()
        self.epoch, self.start_batch = self.epoch + 1, 0  # unless set_epoch says otherwise, the next epoch

    def _dataloader(self, epoch: int, start_batch: int) -> DataLoader:
        stream = BatchStream(self.shardset, self.cfg, self.rank, self.world_size, epoch, start_batch)
        workers = self.cfg.workers or os.cpu_count() or 1
        return DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=self.cfg.prefetch,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)


def pick_backend(cfg: DataConfig, video_ext: str) -> str:
    if cfg.backend != "auto":
        return cfg.backend
    return "dali" if torch.cuda.is_available() and _dali_available() else "cpu"


def make_loader(dataset: Path, cfg: DataConfig, rank: int = 0, world_size: int = 1, device: str | None = None):
    """The loader for this machine: DALI with NVDEC on CUDA, CPU workers otherwise; the choice is logged."""
    shardset = ShardSet(dataset)
    backend = pick_backend(cfg, shardset.video_ext)
    if device is None:
        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    log.info("loader: %s backend, %d samples, %d views of %dx%d frames (stride %d), batch %d videos",
             backend, len(shardset), cfg.views, cfg.frames, cfg.crop_size, cfg.stride, cfg.batch_size)
    if backend == "cpu" and shardset.frame_alignment(cfg.stride) > 1:
        log.info("loader: shards have a P-frame every %d frames: clips start on them and the decoder (PyAV) skips "
                 "every B-frame", shardset.pframe_interval)
    if backend == "dali":
        from pipeline.dali_loader import DaliLoader

        return DaliLoader(dataset, cfg, rank, world_size, device)
    return CpuLoader(dataset, cfg, rank, world_size, device)


def _dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401

        return True
    except ImportError:
        return False
