"""The DALI path: webdataset reader → video decoder (NVDEC with ``device="mixed"``) → per-view crops on the GPU.

The graph is one function whose decode device is a parameter: ``mixed`` on CUDA, ``cpu`` for VP9/MJPEG shards
(DALI's CPU decoder takes no H.264). CI runs the same function on CPU with VP9 shards; only the decoder's device
string differs on a GPU.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import DataConfig
from pipeline.shardset import ShardSet

log = logging.getLogger(__name__)

CPU_DECODABLE = {"webm", "mkv"}  # DALI's CPU video decoder reads VP8, VP9 and MJPEG only


def build_pipeline(files: list[str], indexes: list[str], ext: str, cfg: DataConfig, device: str, shard_id: int,
                   num_shards: int, device_id: int | None, threads: int = 2):
    """reader → K views' frame indices from the frame count → one decode per video → per-view crop/flip/normalize.

    Outputs: K clips [B, 3, T, S, S] (one output per view, layout CFHW) and the labels [B, 1].
    """
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=cfg.batch_size, num_threads=threads, device_id=device_id, seed=cfg.seed,
                  prefetch_queue_depth=cfg.prefetch)
    def video_pipeline():
        video, frames, label = fn.readers.webdataset(
            paths=files, index_paths=indexes, ext=[ext, "frames", "label"],
            dtypes=[types.UINT8, types.INT32, types.INT32], missing_component_behavior="error",
            random_shuffle=True, initial_fill=max(cfg.shuffle_buffer, 1), shard_id=shard_id, num_shards=num_shards,
            pad_last_batch=True, name="reader")
        decoded = fn.decoders.video(video, device=device, frames=view_frame_indices(frames, cfg))
        T = cfg.frames
        views = [augment_view(decoded[k * T:(k + 1) * T], cfg) for k in range(cfg.views)]
        return (*views, label.gpu() if device == "mixed" else label)

    return video_pipeline()


def view_frame_indices(frames, cfg: DataConfig):
    """K windows of T frames, tau apart, drawn uniformly over the video (inside one window with ``span``),
    clamped to the last frame; flattened view after view: [K·T] int32."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    n = fn.cast(frames, dtype=types.FLOAT)  # [1]
    length = float(cfg.clip_length)
    offsets = types.Constant(np.arange(cfg.frames, dtype=np.float32)[None, :] * cfg.stride)
    if not cfg.augment:  # evenly spread, as the CPU path's evaluation windows
        spread = types.Constant(np.linspace(0, 1, cfg.views, dtype=np.float32)[:, None])
        starts = dmath.floor(spread * dmath.max(n - length, 0.0) + 0.5)
    elif cfg.span:
        window = max(length, round(cfg.span * length))
        window_start = dmath.floor(fn.random.uniform(range=[0.0, 1.0]) * (dmath.max(n - window, 0.0) + 1))
        room = dmath.max(dmath.min(window_start + window, n) - length - window_start, 0.0) + 1
        starts = window_start + dmath.floor(fn.random.uniform(range=[0.0, 1.0], shape=[cfg.views, 1]) * room)
    else:
        starts = dmath.floor(fn.random.uniform(range=[0.0, 1.0], shape=[cfg.views, 1]) * (dmath.max(n - length,
                                                                                                   0.0) + 1))
    indices = dmath.min(starts + offsets, n - 1)
    return fn.reshape(fn.cast(indices, dtype=types.INT32), shape=[cfg.views * cfg.frames])


def augment_view(clip, cfg: DataConfig):
    """One view [T, H, W, 3] → [3, T, S, S] float: one crop and one flip for all its frames, then normalize."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    size = [cfg.crop_size, cfg.crop_size]
    if cfg.augment:
        clip = fn.random_resized_crop(clip, size=size, random_area=list(cfg.scale),
                                      random_aspect_ratio=list(cfg.ratio), antialias=False)
        mirror = fn.random.coin_flip(probability=0.5) if cfg.flip else 0
    else:
        shape = clip.shape(dtype=types.FLOAT)  # [T, H, W, C]
        side = dmath.min(shape[1], shape[2])
        clip = fn.resize(fn.crop(clip, crop_h=side, crop_w=side), size=size, antialias=False)
        mirror = 0
    return fn.crop_mirror_normalize(clip, mirror=mirror, dtype=types.FLOAT, output_layout="CFHW",
                                    mean=[m * 255 for m in cfg.mean], std=[s * 255 for s in cfg.std])


class DaliLoader:
    """Batches from the DALI graph in the loader contract; ``device`` picks NVDEC (cuda) or DALI's CPU decoder."""

    backend = "dali"

    def __init__(self, dataset: Path, cfg: DataConfig, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu"):
        self.shardset = ShardSet(dataset)
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.device = torch.device(device)
        self.decode_device = "mixed" if self.device.type == "cuda" else "cpu"
        ext = self.shardset.video_ext
        if self.decode_device == "cpu" and ext not in CPU_DECODABLE:
            raise ValueError(f"{dataset}: DALI's CPU decoder cannot read .{ext} (H.264) shards; use the cpu backend "
                             "(data.backend=cpu), or build shards with --codec vp9")
        from pipeline.loader import LoaderStats

        self.stats = LoaderStats()
        self.pipe = build_pipeline([str(p) for p in self.shardset.shards],
                                   [str(p.with_suffix(".idx")) for p in self.shardset.shards], ext, cfg,
                                   self.decode_device, rank, world_size,
                                   self.device.index or 0 if self.device.type == "cuda" else None)
        self.pipe.build()
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.outputs = [f"view{k}" for k in range(cfg.views)] + ["label"]
        # Drop the last partial batch: every rank runs the same number of full steps.
        self.iterator = DALIGenericIterator([self.pipe], self.outputs, reader_name="reader",
                                            last_batch_policy=LastBatchPolicy.DROP, auto_reset=True)
        self.skip = 0

    def set_epoch(self, epoch: int, samples_seen: int = 0) -> None:
        """DALI's reader moves on by itself between epochs; a resumed run skips ``samples_seen`` videos."""
        self.skip = samples_seen // self.cfg.batch_size

    def __len__(self) -> int:
        return len(self.iterator)

    def __iter__(self):
        k, size = self.cfg.views, self.cfg.batch_size
        waited = time.perf_counter()
        for step, (batch,) in enumerate(self.iterator):
            if step < self.skip:
                continue
            # [B, K, 3, T, S, S] → [B·K, ...]: the clips of one video stay adjacent
            video = torch.stack([batch[name] for name in self.outputs[:k]], dim=1).flatten(0, 1)
            if self.cfg.dtype == "bfloat16":
                video = video.to(torch.bfloat16)
            label = batch["label"].view(-1).long().repeat_interleave(k)
            self.stats.seconds += time.perf_counter() - waited
            self.stats.add({"videos": size, "clips": size * k, "decoded_frames": size * k * self.cfg.frames,
                            "padded": 0, "failed": {}})
            yield {"video": video.to(self.device, non_blocking=True), "label": label.to(self.device),
                   "key": [None] * size}
            waited = time.perf_counter()
        self.skip = 0
