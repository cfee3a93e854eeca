"""Where the K views of one video come from: temporal windows, crops and flips, drawn from one seeded generator.

Both decode paths take their draws from here, so a (seed, epoch, key) gives the same views on the GPU and the CPU.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from vmae.pipeline.data.config import DataConfig


@dataclass(frozen=True)
class Window:
    """One run of frames per video, ``stride`` apart: what a GPU decoder is asked for, strictly increasing, so it
    never seeks backwards. Every view of the video is a slice of it."""

    start: int  # its first frame
    steps: int  # frames in it: start, start + stride, ... (fewer than a clip's T only in a short video)


@dataclass(frozen=True)
class ViewPlan:
    frames: np.ndarray  # [K, T] source frame indices (a short video repeats its window's last frame)
    crops: np.ndarray  # [K, 4] y, x, height, width in source pixels
    flips: np.ndarray  # [K] bool
    padded: bool  # the video is shorter than one clip
    window: Window | None = None  # the run the K views are cut from (dense sampling)

    def union(self) -> tuple[np.ndarray, np.ndarray]:
        """The sorted distinct frames to decode once, and for each view's frame its row in that list."""
        unique, inverse = np.unique(self.frames, return_inverse=True)
        return unique, inverse.reshape(self.frames.shape)


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """One generator per (seed, epoch, sample): draws do not depend on which worker or rank decodes it."""
    return np.random.default_rng([seed, epoch, zlib.crc32(key.encode())])


def plan_views(num_frames: int, height: int, width: int, cfg: DataConfig, rng: np.random.Generator,
               align: int = 1) -> ViewPlan:
    """Temporal windows first, then crops and flips, always in this order from the one generator.

    ``align`` > 1 puts every sampled frame on a multiple of it (shards built with ``pframe_interval``: then
    every frame a clip needs is an I- or P-frame, and the decoder may skip all B-frames)."""
    frames, padded, window = temporal_plan(num_frames, cfg, rng, align)
    if cfg.augment:
        crops = np.array([random_resized_crop(height, width, cfg.scale, cfg.ratio, rng) for _ in range(cfg.views)])
        flips = rng.random(cfg.views) < 0.5 if cfg.flip else np.zeros(cfg.views, bool)
    else:  # evaluation: every temporal window cut at test_crops places along the long side
        per_window = [spread_square(height, width, c, cfg.test_crops) for c in range(cfg.test_crops)]
        crops = np.array(per_window * (cfg.views // cfg.test_crops))
        flips = np.zeros(cfg.views, bool)
    return ViewPlan(frames=frames, crops=crops.astype(np.int64), flips=flips, padded=padded, window=window)


def temporal_plan(num_frames: int, cfg: DataConfig, rng: np.random.Generator,
                  align: int = 1) -> tuple[np.ndarray, bool, Window | None]:
    """[K, T] frames, whether the video is shorter than a clip, and the window they are cut from (dense
    sampling; ``sampling=segment`` takes one frame from each of T equal segments of the whole video)."""
    if cfg.sampling == "segment":
        return segment_frames(num_frames, cfg, rng), num_frames < cfg.frames, None
    window = dense_window(num_frames, cfg, rng, align)
    return window_views(window, cfg, rng), window.steps < cfg.frames, window


def temporal_windows(num_frames: int, cfg: DataConfig, rng: np.random.Generator,
                     align: int = 1) -> tuple[np.ndarray, bool]:
    """[K, T] frames and whether the video is shorter than a clip (``temporal_plan`` without its window)."""
    frames, padded, _ = temporal_plan(num_frames, cfg, rng, align)
    return frames, padded


def dense_window(num_frames: int, cfg: DataConfig, rng: np.random.Generator, align: int = 1) -> Window:
    """The one run of frames, ``stride`` apart, that holds all K views of a video (the DALI graph draws the same,
    fed to it with the views' offsets by ``dali_graph.graph_inputs``):
    - training, ``span`` 0: the whole video from a random phase in [0, stride), so the views may fall anywhere in
      it and every frame can be drawn over the epochs; they share that phase;
    - training, ``span`` s: s clip lengths (``span_steps`` frames of the run) from a random start;
    - evaluation: the whole video from frame 0.
    A start is a multiple of ``align`` (a P-frame when ``align`` divides the stride)."""
    tau = cfg.stride
    if not cfg.augment:
        start, wanted = 0, None
    elif cfg.span:
        wanted = span_steps(cfg)
        start = aligned_below(rng, num_frames - ((wanted - 1) * tau + 1), align)
    else:
        start, wanted = aligned_below(rng, min(tau - 1, num_frames - cfg.clip_length), align), None
    on_grid = (num_frames - 1 - start) // tau + 1  # the run's frames inside the video
    return Window(start, min(wanted, on_grid) if wanted else on_grid)


def span_steps(cfg: DataConfig) -> int:
    """Frames of the run in a window of ``span`` clip lengths: as many, ``stride`` apart, as fit in span x the
    clip's extent, and at least one clip's T."""
    extent = max(cfg.clip_length, round(cfg.span * cfg.clip_length))
    return max(cfg.frames, (extent - 1) // cfg.stride + 1)


def aligned_below(rng: np.random.Generator, high: int, align: int) -> int:
    """A uniform multiple of ``align`` in [0, max(high, 0)]."""
    return align * int(np.floor(rng.random() * (max(high, 0) // align + 1)))


def window_views(window: Window, cfg: DataConfig, rng: np.random.Generator) -> np.ndarray:
    """[K, T] frames: view k is T consecutive frames of the window from a random offset (evaluation: offsets
    spread evenly, each repeated for its crops); past a short video's end the window's last frame repeats."""
    room = max(window.steps - cfg.frames, 0)
    if cfg.augment:
        offsets = np.floor(rng.random(cfg.views) * (room + 1)).astype(np.int64)
    else:
        windows = cfg.views // cfg.test_crops
        spread = np.linspace(0, 1, windows, dtype=np.float32)
        offsets = np.repeat(np.floor(spread * np.float32(room) + np.float32(0.5)).astype(np.int64), cfg.test_crops)
    steps = np.minimum(offsets[:, None] + np.arange(cfg.frames)[None, :], window.steps - 1)
    return window.start + cfg.stride * steps


def segment_frames(num_frames: int, cfg: DataConfig, rng: np.random.Generator) -> np.ndarray:
    """[K, T] frames, one per segment (TSN / VideoMAE's Something-Something sampling): at random within each
    segment in training; in evaluation window w of W takes the point (w + 1/2) / W of every segment, so windows
    differ whenever a segment holds W frames or more (one mid-segment point for every window, as PySlowFast
    takes, makes its "multi-view" clips identical)."""
    edges = np.linspace(0, num_frames, cfg.frames + 1)
    start, length = edges[:-1], np.diff(edges)
    fraction = rng.random((cfg.views, cfg.frames)) if cfg.augment else segment_evaluation_points(cfg)
    frames = np.floor(start[None, :] + fraction * length[None, :]).astype(np.int64)
    return np.clip(frames, 0, max(num_frames - 1, 0))


def segment_evaluation_points(cfg: DataConfig) -> np.ndarray:
    """[K, 1] where in its segment each evaluation view takes its frames: (w + 1/2) / W for window w, repeated for
    the window's crops (the CPU path and the DALI graph both use it)."""
    windows = cfg.views // cfg.test_crops
    return np.repeat((np.arange(windows, dtype=np.float32) + 0.5) / windows, cfg.test_crops)[:, None]


def random_resized_crop(height: int, width: int, scale: list[float], ratio: list[float],
                        rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Inception-style crop: a random area fraction and log-uniform aspect ratio, else the largest centre crop."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def spread_square(height: int, width: int, index: int, count: int) -> tuple[int, int, int, int]:
    """The index-th of ``count`` short-side squares spread evenly along the long side (one: the centre;
    three: start, centre, end, as MAE-ST's and SlowFast's test-time crops)."""
    side = min(height, width)
    room_y, room_x = height - side, width - side
    at = 0.5 if count == 1 else index / (count - 1)
    return int(round(room_y * at)), int(round(room_x * at)), side, side
