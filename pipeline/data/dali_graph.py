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
from vmae.pipeline.data.sampling import segment_evaluation_points, span_steps

SOURCE_BYTES = 1024  # room for "<tar path>:<offset>:<member>" in a fixed-shape output


def build_pipeline(files: list[str], indexes: list[str], ext: str, cfg: DataConfig, device: str, shard_id: int,
                   num_shards: int, device_id: int | None, threads: int = 2, align: int = 1):
    """reader → one decode per video → its K views → per-view crop/flip/normalize.

    Dense sampling decodes one strictly increasing run per video (``window_request``: start, stride, length; no
    index twice, so the decoder never seeks backwards) and slices the K views out of it; segment sampling asks
    for its frames by index. Outputs: K clips [B, 3, T, S, S] (one output per view, layout CFHW), the labels
    [B, 1], each sample's source ("<tar>:<offset>:<key>.<ext>", zero-padded to SOURCE_BYTES) for its key, its
    stored frame count [B, 1], the frames asked for and the frames decoded [B, 1] (fewer decoded than asked: the
    stored count lies), and in segment sampling the brightest value of the darkest decoded frame [B, 1] (0: an
    all-black frame, asked by index past the stream's end, is how a lying count shows there; 255 for dense runs).
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
        T = cfg.frames
        if cfg.sampling == "segment":
            decoded = fn.decoders.video(video, device=device, frames=view_frame_indices(frames, cfg))
            clips = [decoded[k * T:(k + 1) * T] for k in range(cfg.views)]
            asked = fn.constant(idata=[cfg.views * T], dtype=types.INT32)
            # the darkest decoded frame's brightest value [1]: 0 when a frame asked by index is all black
            brightest = fn.reshape(fn.reductions.min(fn.reductions.max(decoded, axes=[1, 2, 3])), shape=[1])
        else:
            start, steps, offsets = window_request(frames, cfg, align)
            # pad_mode none: a run the stream cannot fill comes back short (counted by the loader), never padded
            decoded = fn.decoders.video(video, device=device, start_frame=scalar(start), stride=cfg.stride,
                                        sequence_length=scalar(steps), pad_mode="none")
            clips = [fn.slice(decoded, offset, types.Constant(np.array([T], np.float32)), axes=[0],
                              normalized_anchor=False, normalized_shape=False, out_of_bounds_policy="pad")
                     for offset in offsets]
            asked = fn.cast(steps, dtype=types.INT32)
            brightest = fn.constant(idata=[255], dtype=types.UINT8)  # a short run tells a lie here: no pixel pass
        views = [augment_view(clip, cfg) for clip in clips]
        source = fn.pad(fn.get_property(video, key="source_info")[:SOURCE_BYTES], axes=[0], shape=[SOURCE_BYTES])
        got = fn.slice(decoded.shape(dtype=types.INT32), 0, 1, axes=[0], normalized_anchor=False,
                       normalized_shape=False)
        # the counts stay on the CPU: the loader reads them there, without a device sync
        return (*views, label.gpu() if device == "mixed" else label, source, frames, asked, got, brightest)

    return video_pipeline()


def scalar(node):
    """A [1] float DataNode as the int32 scalar a decoder argument takes."""
    from nvidia.dali import fn, types

    return fn.reshape(fn.cast(node, dtype=types.INT32), shape=[])


def window_request(frames, cfg: DataConfig, align: int = 1):
    """(start [1], steps [1], K offsets [1]) as float DataNodes: the run ``sampling.dense_window`` draws and each
    view's place in it (``sampling.window_views``), computed in float32 inside the graph."""
    import nvidia.dali.math as dmath  # optional: see the module's docstring
    from nvidia.dali import fn, types

    n = fn.cast(frames, dtype=types.FLOAT)  # [1]
    tau, T = float(cfg.stride), cfg.frames

    def aligned_below(high):
        return dmath.floor(fn.random.uniform(range=[0.0, 1.0]) * (dmath.floor(dmath.max(high, 0.0) / align) + 1)) \
            * float(align)

    wanted = None
    if not cfg.augment:
        start = n * 0.0
    elif cfg.span:
        wanted = float(span_steps(cfg))
        start = aligned_below(n - ((wanted - 1) * tau + 1))
    else:
        start = aligned_below(dmath.min(tau - 1, n - float(cfg.clip_length)))
    on_grid = dmath.floor((n - 1 - start) / tau) + 1
    steps = dmath.min(on_grid, wanted) if wanted else on_grid
    room = dmath.max(steps - T, 0.0)
    if cfg.augment:
        offsets = [dmath.floor(fn.random.uniform(range=[0.0, 1.0]) * (room + 1)) for _ in range(cfg.views)]
    else:
        windows = cfg.views // cfg.test_crops
        spread = np.linspace(0, 1, windows, dtype=np.float32)
        offsets = [dmath.floor(room * float(spread[k // cfg.test_crops]) + 0.5) for k in range(cfg.views)]
    return start, steps, offsets


def view_frame_indices(frames, cfg: DataConfig):
    """Segment sampling's K·T frame indices, flattened view after view: [K·T] int32 (as
    ``sampling.segment_frames``)."""
    import nvidia.dali.math as dmath  # optional: see the module's docstring
    from nvidia.dali import fn, types

    n = fn.cast(frames, dtype=types.FLOAT)  # [1]
    segment = n / float(cfg.frames)
    firsts = types.Constant(np.arange(cfg.frames, dtype=np.float32)[None, :]) * segment
    if cfg.augment:
        fraction = fn.random.uniform(range=[0.0, 1.0], shape=[cfg.views, cfg.frames])
    else:
        fraction = types.Constant(segment_evaluation_points(cfg))
    indices = dmath.min(dmath.floor(firsts + fraction * segment), n - 1)
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
