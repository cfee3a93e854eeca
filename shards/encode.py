"""Turn one probed input into normalized video files: a stream copy when it conforms, else an ffmpeg transcode.

Normalized means: constant frame rate, the short side resized, rotation applied, audio dropped, closed GOPs
of a bounded length, and a codec the loader can decode.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import av
import ffmpeg

from vmae.shards.config import ShardConfig
from vmae.shards.format import VIDEO_EXTENSION
from vmae.shards.frames import link_frames
from vmae.shards.probe import PacketCounter, PacketScan, RejectedInput, VideoInfo, scan_packets

MUXER = {"h264": "mp4", "hevc": "mp4", "vp9": "webm", "mjpeg": "matroska"}
# NVDEC on A100/Hopper decodes 8-bit 4:2:0 H.264 in these profiles only.
NVDEC_H264_PROFILES = {"Baseline", "Constrained Baseline", "Main", "High"}
COPYABLE_CONTAINERS = {"mov,mp4,m4a,3gp,3g2,mj2"}


@dataclass(frozen=True)
class Encoded:
    """One output video file and what it holds."""

    path: Path
    frames: int  # counted from the file's packets, not taken from the container header
    start_seconds: float  # where in the source it begins
    padded_frames: int  # frames added by repeating the last one (short_policy=pad)


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """The ffmpeg binary: $VMAE_FFMPEG, else imageio-ffmpeg's pinned build (same encoder, same bytes everywhere)."""
    override = os.environ.get("VMAE_FFMPEG")
    if override:
        return override
    try:
        import imageio_ffmpeg  # optional: without it, the ffmpeg on PATH

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        found = shutil.which("ffmpeg")
        if not found:
            raise RuntimeError("no ffmpeg binary: `pip install imageio-ffmpeg` or install ffmpeg, "
                               "or point VMAE_FFMPEG at one") from None
        return found


def ffmpeg_version() -> str:
    """The ffmpeg binary's version string, from the first line of its ``-version`` output."""
    out = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout
    return out.split("\n", 1)[0].replace("ffmpeg version ", "").split(" Copyright")[0]


def output_size(info: VideoInfo, short_side: int) -> tuple[int, int]:
    """Even width and height with the display aspect kept and the short side at ``short_side``."""
    w, h = info.display_width, info.display_height
    if short_side <= 0:
        return _even(w), _even(h)
    if w <= h:
        return short_side, _even(h * short_side / w)
    return _even(w * short_side / h), short_side


def stored_size(info: VideoInfo, cfg: ShardConfig) -> tuple[int, int]:
    """The (width, height) a transcoded video is stored at: ``frame_size``, else the short side's resize."""
    return cfg.frame_dimensions or output_size(info, cfg.short_side)


def size_filters(video, info: VideoInfo, cfg: ShardConfig):
    """The scale (and crop or pad) filters that bring a video to its stored size."""
    if cfg.frame_dimensions is None:
        width, height = output_size(info, cfg.short_side)
        return video.filter("scale", width, height).filter("setsar", 1)
    width, height = cfg.frame_dimensions
    if cfg.frame_fit == "crop":  # scale to cover the frame, cut its centre
        video = video.filter("scale", width, height, force_original_aspect_ratio="increase", force_divisible_by=2)
        video = video.filter("crop", width, height)
    else:  # scale to fit inside it, centre, black bars
        video = video.filter("scale", width, height, force_original_aspect_ratio="decrease", force_divisible_by=2)
        video = video.filter("pad", width, height, "(ow-iw)/2", "(oh-ih)/2", color="black")
    return video.filter("setsar", 1)


def output_fps(info: VideoInfo, cfg: ShardConfig) -> float:
    return cfg.fps if cfg.fps > 0 else round(info.fps, 3)


def expected_frames(info: VideoInfo, cfg: ShardConfig) -> int:
    """Frames the output should hold, from the container's claimed duration."""
    if info.duration <= 0:
        return info.frames
    return int(math.floor(info.duration * output_fps(info, cfg) + 0.5))


def why_not_copy(info: VideoInfo, scan: PacketScan | None, cfg: ShardConfig) -> list[str]:
    """Reasons the source cannot be stream-copied as it is; empty when it already conforms."""
    reasons = []
    if not cfg.stream_copy:
        reasons.append("stream copy disabled")
    if cfg.pframe_interval:
        reasons.append("pframe_interval needs a known frame structure")
    if cfg.codec != "h264" or info.codec != "h264":
        reasons.append(f"codec {info.codec}, target {cfg.codec}")
    if info.container not in COPYABLE_CONTAINERS:
        reasons.append(f"container {info.container}")
    if info.profile not in NVDEC_H264_PROFILES or info.pix_fmt not in ("yuv420p", "yuvj420p"):
        reasons.append(f"profile {info.profile} {info.pix_fmt}")
    if info.rotation:
        reasons.append(f"rotation {info.rotation}")
    if (info.width, info.height) != (info.display_width, info.display_height):
        reasons.append("non-square pixels")
    if cfg.frame_dimensions and (info.width, info.height) != cfg.frame_dimensions:
        reasons.append(f"size {info.width}x{info.height}, not shards.frame_size {cfg.frame_size}")
    elif not cfg.frame_dimensions and cfg.short_side and min(info.width, info.height) != cfg.short_side:
        reasons.append(f"short side {min(info.width, info.height)}")
    if info.width % 2 or info.height % 2:
        reasons.append("odd size")
    if cfg.fps and abs(info.fps - cfg.fps) > 1e-3:
        reasons.append(f"fps {info.fps:.3f}")
    if scan is not None:
        if not scan.constant_rate:
            reasons.append("variable frame rate")
        if scan.max_keyframe_gap > cfg.keyframe_interval:
            reasons.append(f"keyframe gap {scan.max_keyframe_gap}")
        if not scan.starts_with_keyframe:
            reasons.append("does not start on a keyframe")
    return reasons


def encode(source: Path, info: VideoInfo, cfg: ShardConfig, workdir: Path) -> tuple[str, list[Encoded]]:
    """Write the normalized video(s) of one input into ``workdir``; returns the mode ("copy"/"transcode") and files."""
    target_frames = expected_frames(info, cfg)
    pad = 0
    if target_frames < cfg.min_frames:
        if cfg.short_policy != "pad":
            raise RejectedInput(
                "too_short", f"about {target_frames} frames at {output_fps(info, cfg):g} fps, fewer than "
                f"shards.min_frames={cfg.min_frames} (one clip); set shards.short_policy=pad to keep it padded")
        pad = cfg.min_frames - max(target_frames, 0)
    segmented = cfg.segment_seconds > 0 and info.duration > cfg.segment_seconds
    may_copy = not pad and not why_not_copy(info, None, cfg)
    if may_copy and not segmented:
        copied = workdir / f"seg0000.{VIDEO_EXTENSION[cfg.codec]}"
        scan = copy_video_stream(source, copied)
        if not why_not_copy(info, scan, cfg):
            return "copy", _check_count([Encoded(copied, scan.packets, 0.0, 0)], target_frames, pad)
        copied.unlink()
    mode = "copy" if may_copy and segmented and not why_not_copy(info, scan_packets(source), cfg) else "transcode"
    args = single_threaded(_ffmpeg_args(source, info, cfg, workdir, mode, segmented, pad), cfg.threads_per_worker)
    try:
        _run_ffmpeg(args, cfg.timeout_seconds)
    finally:
        shutil.rmtree(workdir / "frames", ignore_errors=True)  # a frame folder's links
    files = sorted(p for p in workdir.iterdir() if p.name.startswith("seg"))
    if not files:
        raise RejectedInput("ffmpeg_failed", "ffmpeg wrote no output")
    return mode, _describe_outputs(files, info, cfg, pad, target_frames)


def copy_video_stream(source: Path, target: Path) -> PacketScan:
    """Stream-copy the video into a faststart mp4 in this process (no ffmpeg per file), scanning it on the way."""
    counter = PacketCounter()
    with av.open(str(source), metadata_errors="ignore") as inp, \
            av.open(str(target), "w", format="mp4", options={"movflags": "+faststart", "fflags": "+bitexact"}) as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        for packet in inp.demux(in_stream):
            if counter.add(packet) and packet.dts is not None:
                packet.stream = out_stream
                out.mux(packet)
    return counter.result()


def _ffmpeg_args(source: Path, info: VideoInfo, cfg: ShardConfig, workdir: Path, mode: str,
                 segmented: bool, pad: int) -> list[str]:
    ext = VIDEO_EXTENSION[cfg.codec]
    target = str(workdir / (f"seg%04d.{ext}" if segmented else f"seg0000.{ext}"))
    if source.is_dir():  # a folder of extracted frames: one numbered image sequence at its given rate
        video = ffmpeg.input(str(link_frames(source, workdir)), f="image2", framerate=info.fps, start_number=0,
                             threads=cfg.threads_per_worker).video
    else:
        video = ffmpeg.input(str(source), threads=cfg.threads_per_worker).video
    out_opts: dict = {"an": None, "sn": None, "dn": None, "map_metadata": -1, "fflags": "+bitexact",
                      "threads": cfg.threads_per_worker}
    if mode == "copy":
        out_opts["c:v"] = "copy"
    else:
        video = size_filters(video.filter("fps", fps=output_fps(info, cfg)), info, cfg)
        if pad:
            video = video.filter("tpad", stop_mode="clone", stop=pad + 1)
            out_opts["frames:v"] = cfg.min_frames
        out_opts.update(_codec_options(cfg))
        if segmented:
            out_opts["force_key_frames"] = f"expr:gte(t,n_forced*{cfg.segment_seconds})"
    if segmented:
        out_opts.update({"f": "segment", "segment_time": cfg.segment_seconds, "reset_timestamps": 1,
                         "segment_format": MUXER[cfg.codec]})
        if mode == "transcode":  # forced keyframes land within half a frame of the cut time
            out_opts["segment_time_delta"] = round(0.5 / output_fps(info, cfg), 6)
        if MUXER[cfg.codec] == "mp4":
            out_opts["segment_format_options"] = "movflags=+faststart"
    elif MUXER[cfg.codec] == "mp4":
        out_opts["movflags"] = "+faststart"
    return ffmpeg_command(ffmpeg.output(video, target, **out_opts))


def ffmpeg_command(stream) -> list[str]:
    """The argv of an ffmpeg-python graph, quiet but for errors, never reading stdin."""
    args = stream.compile(cmd=ffmpeg_exe(), overwrite_output=True)
    return [args[0], "-nostdin", "-v", "error", *args[1:]]


def single_threaded(args: list[str], threads: int) -> list[str]:
    """Cap ffmpeg's filter threads too (decoder and encoder threads are per-stream options), so that N worker
    processes on N cores do not oversubscribe them."""
    return [args[0], "-filter_threads", str(threads), "-filter_complex_threads", str(threads), *args[1:]]


def _codec_options(cfg: ShardConfig) -> dict:
    gop = cfg.keyframe_interval
    if cfg.codec == "h264":
        opts = {"c:v": "libx264", "preset": cfg.preset, "crf": cfg.crf, "pix_fmt": "yuv420p", "profile:v": "high",
                "g": gop, "keyint_min": gop, "sc_threshold": 0, "flags": "+cgop+bitexact"}
        if cfg.bframes is not None:
            opts["bf"] = cfg.bframes
        if cfg.pframe_interval:  # I/P frames exactly every N frames, the B-frames between them unreferenced
            opts["bf"] = cfg.pframe_interval - 1
            opts["x264-params"] = "b-pyramid=none:b-adapt=0"
        return opts
    if cfg.codec == "hevc":  # tagged hvc1: the mp4 form players and demuxers expect
        return {"c:v": "libx265", "preset": cfg.preset, "crf": cfg.crf, "pix_fmt": "yuv420p", "tag:v": "hvc1",
                "x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0:log-level=error",
                "flags": "+bitexact"}
    if cfg.codec == "vp9":
        return {"c:v": "libvpx-vp9", "crf": cfg.crf, "b:v": 0, "g": gop, "keyint_min": gop, "deadline": "good",
                "cpu-used": 5, "row-mt": 0, "pix_fmt": "yuv420p", "flags": "+bitexact"}
    return {"c:v": "mjpeg", "q:v": min(31, max(2, round(cfg.crf / 7))), "pix_fmt": "yuvj420p",
            "flags": "+bitexact"}


def _run_ffmpeg(args: list[str], timeout: float) -> None:
    # No preexec_fn: it would force a full fork of the worker; without it Python starts ffmpeg with vfork.
    try:
        proc = subprocess.run(args, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RejectedInput("timeout", f"ffmpeg took longer than shards.timeout_seconds={timeout:g}") from None
    errors = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode < 0:
        raise RejectedInput("ffmpeg_killed", f"ffmpeg was killed by signal {-proc.returncode} (out of memory?)")
    if proc.returncode != 0:
        last = errors.splitlines()[-1] if errors else f"exit code {proc.returncode}"
        raise RejectedInput("ffmpeg_failed", f"ffmpeg could not convert it: {last}")
    if errors and _looks_truncated(errors):
        first = errors.splitlines()[0]
        raise RejectedInput("truncated", f"the video data ends early or is corrupt: {first}")


def _looks_truncated(stderr: str) -> bool:
    markers = ("partial file", "Invalid NAL", "error while decoding", "Invalid data found",
               "corrupt", "stream ends prematurely", "Packet corrupt", "missing picture")
    return any(m.lower() in stderr.lower() for m in markers)


def _describe_outputs(files: list[Path], info: VideoInfo, cfg: ShardConfig, pad: int,
                      target_frames: int) -> list[Encoded]:
    out = []
    start = 0.0
    fps = output_fps(info, cfg)
    for path in files:
        frames = scan_packets(path).packets
        out.append(Encoded(path=path, frames=frames, start_seconds=round(start, 3), padded_frames=pad))
        start += frames / fps if fps else 0.0
    return _check_count(out, target_frames, pad)


def _check_count(outputs: list[Encoded], target_frames: int, pad: int) -> list[Encoded]:
    """Containers lie about length: a file whose stream holds far fewer frames than it claims is truncated."""
    total = sum(e.frames for e in outputs)
    if not pad and target_frames > 0 and total < 0.9 * target_frames:
        raise RejectedInput("truncated", f"{total} frames in the stream, the container claims about "
                                         f"{target_frames}: the file ends early")
    return outputs


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)
