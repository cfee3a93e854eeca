"""The study's data: clips whose class is what an object is. Fashion-MNIST items (real photographs of clothes, 28 x
28 grey) composited onto textured backgrounds and moving along random paths; the class is the item's category.

Items of Fashion-MNIST's training split make the unlabelled pool and, drawn from the pool per seed, the labelled
subsets; items of its test split make the test clips. Every clip is written as an H.264 mp4 the shard builder can
stream-copy, one folder per class, and built into shards with `vmae shards build`'s own code: the study reads them
through the project's loader like any dataset.
"""

from __future__ import annotations

import gzip
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Debian's dataset-fashion-mnist package puts the four files here; VMAE_FASHION_MNIST points elsewhere
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
# Fashion-MNIST's label order
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
FPS = 30  # the shard builder's default rate: clips at it are stream-copied, not transcoded
KEYFRAME_INTERVAL = 16  # the builder's largest keyframe gap for a stream copy


class StudyDataError(RuntimeError):
    """The study's data cannot be made; the message says what to install or fix."""


@dataclass(frozen=True)
class ClipSpec:
    """The look of every clip: frames, square size, the item's size range (px) and speed range (px per frame)."""

    frames: int = 32
    size: int = 48  # the model's crop: clips are not resized, so the item keeps its pixels
    item_min: int = 24  # the item covers a quarter to a half of the frame's side at least
    item_max: int = 36
    speed_min: float = 0.6
    speed_max: float = 1.6
    contrast: float = 20.0  # amplitude of the background's blotches (0-255 scale)
    grain: float = 4.0  # standard deviation of its per-pixel grain: noise no predictor can know


def fashion_mnist_dir() -> Path:
    return Path(os.environ.get("VMAE_FASHION_MNIST") or FASHION_MNIST_DIR)


def load_items(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's ``split`` ("train" or "test"): images uint8 [N, 28, 28] and labels int64 [N]."""
    folder = fashion_mnist_dir()
    images_file, labels_file = (folder / name for name in FILES[split])
    missing = [p for p in (images_file, labels_file) if not p.is_file()]
    if missing:
        raise StudyDataError(
            f"Fashion-MNIST is not at {folder} ({missing[0].name} missing): install Debian's dataset-fashion-mnist "
            "package (as root: apt-get install dataset-fashion-mnist; `make setup` does it when run as root) or "
            "set VMAE_FASHION_MNIST to a folder holding the four idx .gz files")
    images = read_idx(images_file)
    labels = read_idx(labels_file).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise StudyDataError(f"{images_file}: expected N x 28 x 28 images and N labels, got {images.shape} and "
                             f"{labels.shape}: the files are not Fashion-MNIST's")
    return images, labels


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST's format: magic 0x0000 08 NDIM, big-endian sizes, unsigned bytes), gzipped."""
    data = gzip.decompress(path.read_bytes())
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise StudyDataError(f"{path}: not an idx file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise StudyDataError(f"{path}: {body.size} bytes of data for shape {shape}: the file is truncated")
    return body.reshape(shape)


def render_clip(item: np.ndarray, rng: np.random.Generator, spec: ClipSpec) -> np.ndarray:
    """One clip uint8 [T, S, S, 3]: ``item`` (28 x 28 grey), resized and tinted, moving over a textured background
    in a straight line that bounces off the borders and bends a little each frame."""
    background = textured_background(rng, spec.size, spec.contrast, spec.grain)
    size = int(rng.integers(spec.item_min, spec.item_max + 1))
    alpha = resize_item(item, size).astype(np.float32) / 255.0
    tint = rng.uniform(0.45, 1.0, size=3).astype(np.float32) * 255
    room = spec.size - size - 1  # the sprite covers size + 1 pixels once placed between pixels
    position = rng.uniform(0, room, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(spec.speed_min, spec.speed_max)
    velocity = speed * np.array([np.cos(angle), np.sin(angle)])
    frames = np.empty((spec.frames, spec.size, spec.size, 3), dtype=np.uint8)
    for t in range(spec.frames):
        (y, x), (fy, fx) = np.floor(position).astype(int), position - np.floor(position)
        placed = subpixel(alpha, fy, fx)[..., None]  # the item's own shading as its opacity, in one colour
        frame = background.copy()
        window = frame[y:y + size + 1, x:x + size + 1]
        window[:] = window * (1 - placed) + placed * tint
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
        velocity = rotate(velocity, rng.normal(0, 0.08))
        position, velocity = bounce(position + velocity, velocity, room)
    return frames


def subpixel(alpha: np.ndarray, fy: float, fx: float) -> np.ndarray:
    """[h, w] shifted down by ``fy`` and right by ``fx`` of a pixel (bilinear) into [h + 1, w + 1]: motion slower
    than a pixel per frame still moves."""
    h, w = alpha.shape
    out = np.zeros((h + 1, w + 1), dtype=np.float32)
    out[:h, :w] += (1 - fy) * (1 - fx) * alpha
    out[:h, 1:] += (1 - fy) * fx * alpha
    out[1:, :w] += fy * (1 - fx) * alpha
    out[1:, 1:] += fy * fx * alpha
    return out


def textured_background(rng: np.random.Generator, size: int, contrast: float, grain: float) -> np.ndarray:
    """float32 [S, S, 3]: a random colour under smooth blotches (a coarse random grid, upsampled) and fine grain,
    so that no patch is flat and none can be told from its neighbours by colour alone."""
    cells = int(rng.integers(3, 7))
    coarse = rng.uniform(-1, 1, size=(cells, cells, 3)).astype(np.float32)
    blotches = upsample(coarse, size)
    base = rng.uniform(40, 180, size=3).astype(np.float32)
    noise = rng.normal(0, grain, size=(size, size, 1)).astype(np.float32)
    return np.clip(base + contrast * blotches + noise, 0, 255)


def upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of [h, w, c] to [size, size, c]."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(grid.transpose(2, 0, 1)))[None]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=True)[0].numpy().transpose(1, 2, 0)


def resize_item(item: np.ndarray, size: int) -> np.ndarray:
    """The 28 x 28 item resized to ``size`` x ``size`` (bilinear), uint8."""
    return np.clip(upsample(item[..., None].astype(np.float32), size)[..., 0], 0, 255).astype(np.uint8)


def rotate(vector: np.ndarray, radians: float) -> np.ndarray:
    c, s = np.cos(radians), np.sin(radians)
    return np.array([c * vector[0] - s * vector[1], s * vector[0] + c * vector[1]])


def bounce(position: np.ndarray, velocity: np.ndarray, room: float) -> tuple[np.ndarray, np.ndarray]:
    """The position kept in [0, room] on both axes, the velocity reversed on an axis that hit a border."""
    position, velocity = position.copy(), velocity.copy()
    for axis in range(2):
        if position[axis] < 0 or position[axis] > room:
            position[axis] = np.clip(position[axis], 0, room)
            velocity[axis] = -velocity[axis]
    return position, velocity


def write_mp4(frames: np.ndarray, path: Path) -> None:
    """H.264 (yuv420p) at ``FPS`` with a keyframe every ``KEYFRAME_INTERVAL`` frames: what the builder copies."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(KEYFRAME_INTERVAL), "keyint_min": str(KEYFRAME_INTERVAL), "crf": "18",
                          "preset": "veryfast", "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@dataclass(frozen=True)
class ClipJob:
    """One clip to make: which item, where it goes, and the seed of its look and path."""

    split: str
    index: int
    label: int
    seed: int
    path: str


def make_clips(jobs: list[ClipJob], spec: ClipSpec, workers: int) -> None:
    """Write every clip of ``jobs`` (each item read from its split), ``workers`` processes at once."""
    by_split: dict[str, list[ClipJob]] = {}
    for job in jobs:
        by_split.setdefault(job.split, []).append(job)
    for split, group in by_split.items():
        chunks = [group[i::max(workers, 1)] for i in range(max(workers, 1))]
        if workers <= 1:
            _make_chunk(split, group, spec)
            continue
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_make_chunk, [split] * len(chunks), chunks, [spec] * len(chunks)))


def _make_chunk(split: str, jobs: list[ClipJob], spec: ClipSpec) -> None:
    images, _ = load_items(split)
    for job in jobs:
        frames = render_clip(images[job.index], np.random.default_rng(job.seed), spec)
        Path(job.path).parent.mkdir(parents=True, exist_ok=True)
        write_mp4(frames, Path(job.path))


def spec_card(spec: ClipSpec) -> dict:
    return {**asdict(spec), "fps": FPS, "source": "Fashion-MNIST", "classes": list(CLASSES)}


def write_card(folder: Path, card: dict) -> None:
    (folder / "study-data.json").write_text(json.dumps(card, indent=1) + "\n")
