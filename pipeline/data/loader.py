"""`make_loader`: batches of K-view clips [B·K, 3, T, H, W] on the training device, from a built dataset.

One sampling spec, two paths: DALI (reader → NVDEC decode → GPU crops) when CUDA is present, and torch
DataLoader workers with a seeking CPU decoder otherwise. Both yield the same contract:
``{"video": float [B·K, 3, T, S, S], "label": long [B·K], "key": [B] sample keys}``; the K clips of a video
are adjacent.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.cpu_loader import CpuLoader
from vmae.pipeline.data.shardset import MixedShardSet, open_shards
from vmae.pipeline.data.stats import LoaderStats

__all__ = ["CpuLoader", "LoaderStats", "make_loader", "pick_backend"]

log = logging.getLogger(__name__)


def pick_backend(cfg: DataConfig, video_ext: str) -> str:
    if cfg.backend != "auto":
        return cfg.backend
    return "dali" if torch.cuda.is_available() and _dali_available() else "cpu"


def make_loader(dataset: Path | str, cfg: DataConfig, rank: int = 0, world_size: int = 1, device: str | None = None,
                accumulation: int = 1):
    """The loader for this machine: DALI with NVDEC on CUDA, CPU workers otherwise; the choice is logged.

    ``accumulation`` micro-batches make one optimizer step: the CPU path then hands each rank its
    micro-batch x accumulation videos of every global step (see ``ShardSet.rank_part``)."""
    shardset = open_shards(dataset, cfg)
    backend = pick_backend(cfg, shardset.video_ext)
    if device is None:
        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    log.info("loader: %s backend, %d samples, %d views of %dx%d frames (stride %d), batch %d videos",
             backend, len(shardset), cfg.views, cfg.frames, cfg.crop_size, cfg.stride, cfg.batch_size)
    if isinstance(shardset, MixedShardSet):
        log.info("loader: a mix of %d datasets: %s", len(shardset.parts), shardset.describe())
    if backend == "cpu" and shardset.frame_alignment(cfg.stride) > 1:
        log.info("loader: shards have a P-frame every %d frames: clips start on them and the decoder (PyAV) skips "
                 "every B-frame", shardset.pframe_interval)
    if backend == "dali":
        from vmae.pipeline.data.dali_loader import DaliLoader

        if cfg.limit:
            raise ValueError("data.limit (and --overfit) runs on the CPU path: set data.backend=cpu")
        return DaliLoader(dataset, cfg, rank, world_size, device)
    return CpuLoader(dataset, cfg, rank, world_size, device, accumulation)


def _dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401

        return True
    except ImportError:
        return False
