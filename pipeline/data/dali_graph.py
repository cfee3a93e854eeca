"""The DALI graph: webdataset reader → video decoder (NVDEC with ``device="mixed"``) → per-view crops.

The graph is one function whose decode device is a parameter: ``mixed`` on CUDA, ``cpu`` for VP9/MJPEG shards
(DALI's CPU decoder takes no H.264). CI runs the same function on CPU with VP9 shards; only the decoder's device
string differs on a GPU. Its views follow the sampling spec of the CPU path (``vmae.pipeline.data.sampling``).

nvidia.dali is imported inside the functions that build the graph: it is optional, and a machine without it
still imports this module (the loader registry, the tests of the helpers).
"""

from __future__ import annotations

import numpy as np

from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.sampling import segment_evaluation_points

SOURCE_BYTES = 1024  # room for "<tar path>:<offset>:<member>" in a fixed-shape output


def build_pipeline(files: list[str], indexes: list[str], ext: str, cfg: DataConfig, device: str, shard_id: int,
                   num_shards: int, device_id: int | None, threads: int = 2):
    """reader → K views' frame indices from the frame count → one decode per video → per-view crop/flip/normalize.

    Outputs: K clips [B, 3, T, S, S] (one output per view, layout CFHW), the labels [B, 1], each sample's
    source ("<tar>:<offset>:<key>.<ext>", zero-padded to SOURCE_BYTES) for its key, its stored frame count [B, 1]
    and the brightest value of each decoded frame [B, K·T].
    """
    from nvidia.dali import fn, pipeline_def, types  # optional: see the module's docstring

    @pipeline_def(batch_size=cfg.batch_size, num_threads=threads, device_id=device_id, seed=cfg.seed,
                  prefetch_queue_depth=cfg.prefetch)
    def video_pipeline():
        video, frames, label = fn.readers.webdataset(
            paths=files, index_paths=indexes, ext=[ext, "frames", "label"],
            dtypes=[types.UINT8, types.INT32, types.INT32], missing_component_behavior="error",
            # a fresh order of whole tars each epoch (the same on every rank), samples mixed in a buffer
            random_shuffle=True, shuffle_after_epoch=True, initial_fill=max(cfg.shuffle_buffer, 1),
            shard_id=shard_id, num_shards=num_shards, pad_last_batch=True, name="reader")
        decoded = fn.decoders.video(video, device=device, frames=view_frame_indices(frames, cfg))
        T = cfg.frames
        views = [augment_view(decoded[k * T:(k + 1) * T], cfg) for k in range(cfg.views)]
        source = fn.pad(fn.get_property(video, key="source_info")[:SOURCE_BYTES], axes=[0], shape=[SOURCE_BYTES])
        # DALI hands back black frames, without a word, for indices past the stream's end (a lying count)
        brightest = fn.reductions.max(decoded, axes=[1, 2, 3])  # [K·T]
        return (*views, label.gpu() if device == "mixed" else label, source, frames, brightest)

    return video_pipeline()


def view_frame_indices(frames, cfg: DataConfig):
    """K windows of T frames, tau apart, drawn uniformly over the video (inside one window with ``span``),
    clamped to the last frame; flattened view after view: [K·T] int32."""
    import nvidia.dali.math as dmath  # optional: see the module's docstring
    from nvidia.dali import fn, types

    n = fn.cast(frames, dtype=types.FLOAT)  # [1]
    if cfg.sampling == "segment":  # one frame from each of T equal segments, as sampling.segment_frames
        segment = n / float(cfg.frames)
        firsts = types.Constant(np.arange(cfg.frames, dtype=np.float32)[None, :]) * segment
        if cfg.augment:
            fraction = fn.random.uniform(range=[0.0, 1.0], shape=[cfg.views, cfg.frames])
        else:
            fraction = types.Constant(segment_evaluation_points(cfg))
        indices = dmath.min(dmath.floor(firsts + fraction * segment), n - 1)
        return fn.reshape(fn.cast(indices, dtype=types.INT32), shape=[cfg.views * cfg.frames])
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
    import nvidia.dali.math as dmath  # optional: see the module's docstring
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
