"""The sampling spec and loader options (the ``data`` config section), shared by the GPU and CPU paths."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from vmae.pipeline.data.backends import BACKEND_NAMES, CPU_DECODER_NAMES
from vmae.shards.config import field_help

DTYPES = ("float32", "bfloat16")
SAMPLINGS = ("dense", "segment")


@dataclass
class DataConfig:
    # what one clip is
    frames: int = field(default=16, metadata=field_help("frames per clip (T)"))
    stride: int = field(default=4, metadata=field_help("temporal stride between sampled frames (tau)"))
    views: int = field(default=4, metadata=field_help("clips drawn from each decoded video (K, repeated sampling)"))
    span: float = field(default=0.0, metadata=field_help(
        "draw all K views from one window this many clip lengths long, so only it is decoded (0: windows "
        "anywhere in the whole video, as MAE-ST, sharing one phase mod stride; 1: the same frames for every view)"))
    sampling: str = field(default="dense", metadata=field_help(
        "dense: T frames tau apart from a window (Kinetics); segment: the video cut into T equal segments, one frame "
        "from each (Something-Something V2: short clips, so evaluation windows differ)", choices=SAMPLINGS))
    crop_size: int = field(default=224, metadata=field_help("side of the square crop fed to the model"))
    scale: list[float] = field(default_factory=lambda: [0.5, 1.0], metadata=field_help(
        "random-resized-crop area range, as fractions of the frame"))
    ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333], metadata=field_help(
        "random-resized-crop aspect-ratio range"))
    flip: bool = field(default=True, metadata=field_help("random horizontal flip, one draw per view"))
    augment: bool = field(default=True, metadata=field_help(
        "random crops and flips; off: the centre crop of the resized frame, no flip (evaluation, checks)"))
    test_crops: int = field(default=1, metadata=field_help(
        "with augment off: spatial crops per temporal window along the long side (3: MAE-ST's 7x3 testing is "
        "views=21 test_crops=3); views counts every clip"))
    mean: list[float] = field(default_factory=lambda: [0.45, 0.45, 0.45], metadata=field_help("per-channel mean (0-1)"))
    std: list[float] = field(default_factory=lambda: [0.225, 0.225, 0.225], metadata=field_help("per-channel std"))
    # how batches are made
    batch_size: int | str = field(default=8, metadata=field_help(
        "videos per batch per rank, the micro-batch (clips = batch_size x views); auto: the largest that fits the "
        "device's memory (train.memory_limit_gb) and still raises clips/s, found by trial steps at start, the "
        "accumulation derived so the global batch stays train.global_batch"))
    backend: str = field(default="auto", metadata=field_help(
        "dali: DALI pipelines (NVDEC on CUDA, DALI's CPU decoder for VP9 otherwise); cpu: decode worker processes; "
        "hybrid: both in one stream, each making the share its speed gives it; auto: hybrid on CUDA with DALI, else "
        "cpu", choices=BACKEND_NAMES))
    cpu_decoder: str = field(default="pyav", metadata=field_help(
        "CPU path decoder; both seek. pyav also skips the non-reference frames (most B-frames) no view needs: "
        "1.13-1.17x torchcodec's clips/s on default shards, 1.55x on --pframe-interval shards (BENCHMARKS.md)",
        choices=CPU_DECODER_NAMES))
    pipelines: int = field(default=0, metadata=field_help(
        "DALI pipelines per rank, each with its own decoder, taking batches as they free up (0: the GPU's NVDEC "
        "engines, one pipeline each keeps one busy; 1 with DALI's CPU decoder)"))
    workers: int = field(default=0, metadata=field_help(
        "decode worker processes per rank (0: this machine's cores shared among its ranks)"))
    prefetch: int = field(default=2, metadata=field_help("batches each worker prepares ahead"))
    worker_nice: int = field(default=10, metadata=field_help(
        "CPU priority the decode workers give up (nice increment): a loader that is ahead only takes cycles the "
        "training process leaves idle (0: equal priority)"))
    decode_deadline: float = field(default=60.0, metadata=field_help(
        "seconds one sample's read and decode may take on the CPU path; past it the sample is abandoned, counted "
        "and replaced, and the decode workers are restarted (a decoder that spins forever cannot hang the run; "
        "0: no deadline)"))
    limit: int = field(default=0, metadata=field_help(
        "use only the first N samples of the dataset, in shard order (CPU path; --overfit sets it; 0: all)"))
    shuffle_buffer: int = field(default=256, metadata=field_help("samples mixed across shard boundaries each epoch"))
    streams: int = field(default=0, metadata=field_help(
        "each epoch's shards, in a fresh order, are cut into this many equal runs and each rank reads its block of "
        "them, opening only its own shards (0: one run per rank). Fixed (e.g. 64), every global step holds the "
        "same videos for any world size dividing it"))
    cache_dir: str = field(default="", metadata=field_help(
        "where the shards of a dataset given as an http(s) URL are staged (default: $VMAE_CACHE or "
        "~/.cache/vmae/shards)"))
    cache_gb: float = field(default=50.0, metadata=field_help(
        "most gigabytes of staged shards kept per dataset URL (least recently used evicted first)"))
    dtype: str = field(default="float32", metadata=field_help("clip dtype handed to the model", choices=DTYPES))
    seed: int = field(default=0, metadata=field_help("seed of the sample order and of every random draw"))

    def __post_init__(self) -> None:
        if self.batch_size != "auto" and (not isinstance(self.batch_size, int) or self.batch_size <= 0):
            raise ValueError(f"data.batch_size must be a number of videos > 0 or auto, got {self.batch_size!r}")
        for key in ("frames", "stride", "views", "crop_size", "prefetch"):
            if getattr(self, key) <= 0:
                raise ValueError(f"data.{key} must be > 0, got {getattr(self, key)}")
        for key, choices in (("backend", BACKEND_NAMES), ("cpu_decoder", CPU_DECODER_NAMES), ("dtype", DTYPES)):
            if getattr(self, key) not in choices:
                raise ValueError(f"data.{key} must be one of {', '.join(choices)}; got {getattr(self, key)!r}")
        for key in ("scale", "ratio"):
            low, high = getattr(self, key)
            if not 0 < low <= high:
                raise ValueError(f"data.{key} must be [low, high] with 0 < low <= high, got {getattr(self, key)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("data.mean and data.std need three values each, std > 0")
        if self.test_crops < 1 or self.views % self.test_crops:
            raise ValueError(f"data.views ({self.views}) must be a multiple of data.test_crops ({self.test_crops})")
        if self.cache_gb <= 0:
            raise ValueError(f"data.cache_gb must be > 0, got {self.cache_gb}")
        for key in ("limit", "streams", "pipelines"):
            if getattr(self, key) < 0:
                raise ValueError(f"data.{key} must be >= 0, got {getattr(self, key)}")
        if self.decode_deadline < 0:
            raise ValueError(f"data.decode_deadline is in seconds and must be >= 0, got {self.decode_deadline}")
        if self.sampling == "segment" and self.span:
            raise ValueError("data.span draws windows of dense clips: set data.span=0 with data.sampling=segment")
        if self.span and self.span < 1:
            raise ValueError(f"data.span is in clip lengths and must be 0 or >= 1, got {self.span}")

    @property
    def worker_count(self) -> int:
        """``workers``, or the cores divided among the ranks this machine runs (LOCAL_WORLD_SIZE, set by
        torchrun; SLURM_NTASKS_PER_NODE under srun)."""
        if self.workers:
            return self.workers
        ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0])
        return max(1, (os.cpu_count() or 1) // max(ranks, 1))

    @property
    def clip_length(self) -> int:
        """Source frames one clip covers: (T - 1) x tau + 1."""
        return (self.frames - 1) * self.stride + 1
