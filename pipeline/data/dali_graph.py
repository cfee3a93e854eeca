"""The DALI graph: encoded videos and their view plans in → one decode per video (NVDEC with ``device="mixed"``) →
the K views cut, cropped, flipped and normalized.

The plan of every view (window, crop, flip) is drawn in Python by ``vmae.pipeline.data.sampling``, exactly as the
CPU path draws it, and fed with the encoded bytes through ``fn.external_source``: the two paths cut the same views
from the same frames, and which batch a pipeline makes is decided when it asks for one (``tickets``).

The graph is one function whose decode device is a parameter: ``mixed`` on CUDA, ``cpu`` for VP9/MJPEG shards
(DALI's CPU decoder takes no H.264). CI runs the same function on CPU with VP9 shards; only the decoder's device
string differs on a GPU.

nvidia.dali is imported inside the functions that build the graph: it is optional, and a machine without it
still imports this module (the loader registry, the tests of the helpers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.sampling import ViewPlan

VIEW_INPUTS = 3  # per view: offset in the run (or nothing, segment sampling), crop start [y, x], crop end [y, x]


def input_count(cfg: DataConfig) -> int:
    """Arrays fed per sample: the video, the decode request (start and length of the run, or the frame indices),
    and per view its offset, crop start, crop end and flip."""
    return 3 + cfg.views * (VIEW_INPUTS + 1)


def graph_inputs(videos: Sequence[bytes], plans: Sequence[ViewPlan], cfg: DataConfig) -> tuple[list, ...]:
    """What the graph's external source hands over for one batch: one list per input, one array per sample."""
    columns: list[list] = [[] for _ in range(input_count(cfg))]
    for video, plan in zip(videos, plans):
        row = [np.frombuffer(video, dtype=np.uint8)]
        if cfg.sampling == "segment":  # frames by index, view after view; the decoder returns them in that order
            row += [plan.frames.reshape(-1).astype(np.int32), np.array(0, np.int32)]
            offsets = np.arange(cfg.views) * cfg.frames
        else:  # one strictly increasing run: the decoder never seeks backwards
            row += [np.array(plan.window.start, np.int32), np.array(plan.window.steps, np.int32)]
            offsets = (plan.frames[:, 0] - plan.window.start) // cfg.stride
        for k in range(cfg.views):
            y, x, h, w = (float(v) for v in plan.crops[k])
            row += [np.array([offsets[k]], np.float32), np.array([y, x], np.float32),
                    np.array([y + h, x + w], np.float32), np.array(int(plan.flips[k]), np.int32)]
        for column, value in zip(columns, row):
            column.append(value)
    return tuple(columns)


def build_pipeline(source: Callable[[], tuple[list, ...]], cfg: DataConfig, device: str, device_id: int | None,
                   threads: int = 2, batch_size: int | None = None, prefetch: int | None = None):
    """external source → one decode per video → its K views → per-view crop/flip/normalize.

    ``source`` is called once per batch (on the thread running the pipeline) and returns ``graph_inputs``.
    Outputs: the views [B, K, 3, T, S, S] float (layout CFHW per view); the frames each video's decode returned
    [B, 1] (on the CPU: fewer than a dense run asked means the stored count lies); and for segment sampling the
    brightest value of the darkest decoded frame [B, 1] (0: an all-black frame, asked by index past the stream's
    end, is how a lying count shows there; 255 for dense runs, read from the count instead).
    """
    from nvidia.dali import fn, pipeline_def, types  # optional: see the module's docstring

    T = cfg.frames
    dtypes = [types.UINT8, types.INT32, types.INT32] + [types.FLOAT, types.FLOAT, types.FLOAT, types.INT32] * cfg.views

    @pipeline_def(batch_size=batch_size or cfg.batch_size, num_threads=threads, device_id=device_id,
                  prefetch_queue_depth=prefetch or cfg.prefetch)
    def video_pipeline():
        video, request, steps, *per_view = fn.external_source(source=source, num_outputs=input_count(cfg),
                                                               batch=True, dtype=dtypes)
        if cfg.sampling == "segment":
            decoded = fn.decoders.video(video, device=device, frames=request)
            # the darkest decoded frame's brightest value [1]: 0 when a frame asked by index is all black
            brightest = fn.reshape(fn.reductions.min(fn.reductions.max(decoded, axes=[1, 2, 3])), shape=[1])
        else:
            # pad_mode none: a run the stream cannot fill comes back short (counted by the loader), never padded
            decoded = fn.decoders.video(video, device=device, start_frame=request, stride=cfg.stride,
                                        sequence_length=steps, pad_mode="none")
            brightest = fn.constant(idata=[255], dtype=types.UINT8)
        views = []
        for k in range(cfg.views):
            offset, crop_start, crop_end, mirror = per_view[k * 4:(k + 1) * 4]
            clip = fn.slice(decoded, offset, types.Constant(np.array([T], np.float32)), axes=[0],
                            normalized_anchor=False, normalized_shape=False, out_of_bounds_policy="pad")
            views.append(crop_view(clip, crop_start, crop_end, mirror, cfg))
        got = fn.slice(decoded.shape(dtype=types.INT32), 0, 1, axes=[0], normalized_anchor=False,
                       normalized_shape=False)
        # the counts stay on the CPU: the loader reads them there, without a device sync
        return fn.stack(*views), got, brightest

    return video_pipeline()


def crop_view(clip, crop_start, crop_end, mirror, cfg: DataConfig):
    """One view [T, H, W, 3] → [3, T, S, S] float: the plan's crop of every frame resized to S (bilinear, as the
    CPU path), its flip, then normalize."""
    from nvidia.dali import fn, types  # optional: see the module's docstring

    clip = fn.resize(clip, size=[cfg.crop_size, cfg.crop_size], roi_start=crop_start, roi_end=crop_end,
                     roi_relative=False, antialias=False, interp_type=types.INTERP_LINEAR)
    return fn.crop_mirror_normalize(clip, mirror=mirror, dtype=types.FLOAT, output_layout="CFHW",
                                    mean=[m * 255 for m in cfg.mean], std=[s * 255 for s in cfg.std])
