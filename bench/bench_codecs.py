"""Which shard encoding makes clips cheapest to decode ("know the codec").

    python bench/bench_codecs.py [--repeats 3] [--out bench/results/codecs.json]

A clip is T=16 frames tau=4 apart. Three encodings of the same videos (320 short side, GOP 16), one decode thread:
  default      30 fps, the x264 preset's B-frames (references included): decode from the keyframe to each frame
  nonref-B     30 fps, 3 non-reference B-frames between P-frames (P every tau=4 frames, `b-pyramid=none`,
               `b-adapt=0`): a clip whose start is a multiple of tau needs only I/P frames, so the decoder skips
               every B-frame (FFmpeg `skip_frame=nonref`)
  7.5 fps      the frame rate divided by tau, clips sampled with stride 1: the same moments, a quarter of the frames
Reported per encoding: ms per clip (median over clips and repeats), frames the decoder worked through per clip,
and bytes, each against the default.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmae.shards.config import SynthConfig  # noqa: E402
from vmae.shards.encode import ffmpeg_exe  # noqa: E402
from vmae.shards.synth import copy_sample_videos, make_synthetic_videos  # noqa: E402

T, TAU, GOP = 16, 4, 16
ENCODINGS = {
    "default": (["-r", "30", "-g", str(GOP), "-keyint_min", str(GOP), "-sc_threshold", "0"], TAU),
    "nonref-B": (["-r", "30", "-g", str(GOP), "-keyint_min", str(GOP), "-sc_threshold", "0", "-bf", str(TAU - 1),
                  "-x264-params", "b-pyramid=none:b-adapt=0"], TAU),
    "7.5 fps": (["-r", str(30 / TAU), "-g", str(GOP // TAU), "-keyint_min", str(GOP // TAU), "-sc_threshold", "0"], 1),
}


def encode(src: Path, dst: Path, args: list[str]) -> None:
    import subprocess

    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-threads", "1", "-i", str(src),
                    "-vf", "scale=-2:320", "-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
                    "-threads", "1", *args, str(dst)], check=True)


def decode_clip(video: bytes, start: int, stride: int, skip_nonref: bool) -> tuple[int, float]:
    """Decode one clip's T frames (seeking to the keyframe before the start); returns frames decoded and seconds."""
    wanted = set(range(start, start + T * stride, stride))
    began = time.perf_counter()
    decoded = 0
    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        if skip_nonref:
            stream.codec_context.skip_frame = "NONREF"
        rate, tb = stream.average_rate, stream.time_base
        container.seek(int(start / rate / tb), stream=stream, backward=True)
        got = 0
        for frame in container.decode(stream):
            decoded += 1
            index = int(round(float(frame.pts * tb * rate)))
            if index in wanted:
                frame.to_ndarray(format="rgb24")
                got += 1
                if got == T:
                    break
    if got != T:
        raise RuntimeError(f"clip at {start} gave {got} of {T} frames")
    return decoded, time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clips", type=int, default=6, help="clips per video per repeat")
    parser.add_argument("--out", type=Path, default=Path("bench/results/codecs.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vmae-bench-codecs-") as tmp:
        root = Path(tmp)
        make_synthetic_videos(root / "src", SynthConfig(classes=4, videos_per_class=2, seconds=8))
        sources = sorted((root / "src").rglob("*.mp4")) + copy_sample_videos(root / "src" / "real")
        results = {}
        for name, (ffargs, stride) in ENCODINGS.items():
            videos = []
            for i, src in enumerate(sources):
                dst = root / name.replace(" ", "_") / f"{i}.mp4"
                dst.parent.mkdir(exist_ok=True)
                encode(src, dst, ffargs)
                videos.append(dst.read_bytes())
            times, work = [], []
            rng = np.random.default_rng(0)
            for _ in range(args.repeats):
                for video in videos:
                    with av.open(io.BytesIO(video)) as c:
                        n = c.streams.video[0].frames
                    span = (T - 1) * stride + 1
                    for _ in range(args.clips):
                        start = int(rng.integers(0, max(n - span, 0) + 1))
                        if name == "nonref-B":
                            start -= start % TAU  # clips start on a P-frame
                        frames, seconds = decode_clip(video, start, stride, skip_nonref=name == "nonref-B")
                        times.append(seconds)
                        work.append(frames)
            results[name] = {"ms_per_clip": statistics.median(times) * 1e3, "frames_decoded_per_clip":
                             statistics.mean(work), "bytes": sum(len(v) for v in videos)}
    base = results["default"]
    for r in results.values():
        r["speed_vs_default"] = round(base["ms_per_clip"] / r["ms_per_clip"], 2)
        r["bytes_vs_default"] = round(r["bytes"] / base["bytes"], 2)
        r["ms_per_clip"] = round(r["ms_per_clip"], 2)
        r["frames_decoded_per_clip"] = round(r["frames_decoded_per_clip"], 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"{'encoding':10} {'ms/clip':>8} {'x faster':>9} {'frames/clip':>12} {'bytes':>7}")
    for name, r in results.items():
        print(f"{name:10} {r['ms_per_clip']:8.2f} {r['speed_vs_default']:9.2f} {r['frames_decoded_per_clip']:12.1f} "
              f"{r['bytes_vs_default']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
