"""`make_loader`: batches of K-view clips [B·K, 3, T, H, W] on the training device, from a built dataset.

One sampling spec, several backends (``vmae.pipeline.data.backends.LOADERS``): DALI pipelines (NVDEC decode → GPU
crops) and torch DataLoader workers with a seeking CPU decoder, together (``hybrid``) when CUDA is present, the
workers alone otherwise. Every backend
yields the contract of ``vmae.pipeline.data.protocol.Loader``:
``{"video": float [B·K, 3, T, S, S], "label": long [B·K], "key": [B] sample keys}``; the K clips of a video
are adjacent.

    loader = make_loader("data/shards", DataConfig(batch_size=8))
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            ...
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vmae.pipeline.data.backends import AUTO, dali_available, loader_class
from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.protocol import Batch, Loader
from vmae.pipeline.data.shardset import MixedShardSet, ShardSet, open_shards
from vmae.pipeline.data.stats import LoaderStats

__all__ = ["Batch", "Loader", "LoaderStats", "make_loader", "pick_backend"]

log = logging.getLogger(__name__)


def pick_backend(cfg: DataConfig) -> str:
    """``data.backend``, or for ``auto``: the hybrid of DALI pipelines and CPU workers on a machine with CUDA and
    DALI (each makes the share of batches its speed gives it), the CPU path otherwise."""
    if cfg.backend != AUTO:
        return cfg.backend
    return "hybrid" if torch.cuda.is_available() and dali_available() else "cpu"


def default_device() -> str:
    """The current CUDA device when there is one, else the CPU."""
    return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"


def make_loader(dataset: Path | str, cfg: DataConfig, rank: int = 0, world_size: int = 1, device: str | None = None,
                accumulation: int = 1) -> Loader:
    """The loader for this machine: DALI pipelines with NVDEC and CPU workers on CUDA, CPU workers otherwise; the
    choice is logged.

    ``accumulation`` micro-batches make one optimizer step: the CPU path then hands each rank its
    micro-batch x accumulation videos of every global step (see ``ShardSet.rank_part``)."""
    if cfg.batch_size == "auto":
        raise ValueError("data.batch_size=auto is found on the device by `vmae pretrain` and `vmae finetune`; a "
                         "loader on its own needs a number of videos: set data.batch_size=N")
    backend = pick_backend(cfg)
    describe(open_shards(dataset, cfg), cfg, backend)
    device = default_device() if device is None else device
    return loader_class(backend)(dataset, cfg, rank, world_size, device, accumulation)


def describe(shardset: ShardSet, cfg: DataConfig, backend: str) -> None:
    """Log what the loader is about to read and cut."""
    log.info("loader: %s backend, %d samples, %d views of %dx%d frames (stride %d), batch %d videos",
             backend, len(shardset), cfg.views, cfg.frames, cfg.crop_size, cfg.stride, cfg.batch_size)
    if isinstance(shardset, MixedShardSet):
        log.info("loader: a mix of %d datasets: %s", len(shardset.parts), shardset.describe())
