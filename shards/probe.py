"""What a video file holds: stream facts from the container, checked by decoding its first frame."""

from __future__ import annotations

import errno
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av

# read errors of storage rather than of the file (network filesystems): another try may succeed
TRANSIENT_ERRNOS = {errno.EIO, errno.ETIMEDOUT, errno.ESTALE, errno.EAGAIN, errno.ECONNRESET, errno.EINTR}


class RejectedInput(Exception):
    """An input that cannot become a sample; ``reason`` is a short code, the message says why and what to do."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class VideoInfo:
    container: str
    codec: str
    profile: str | None
    pix_fmt: str
    width: int  # as coded
    height: int
    display_width: int  # after rotation and pixel aspect ratio: what a viewer sees
    display_height: int
    rotation: int  # degrees counter-clockwise, as the display matrix says
    fps: float  # average rate
    duration: float  # seconds
    frames: int  # as the container reports it, or duration x fps; a claim, not a count
    has_audio: bool
    size_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PacketScan:
    """What demuxing every packet of the video stream shows, without decoding."""

    packets: int
    max_keyframe_gap: int  # most packets from one keyframe to the next (or to the end)
    constant_rate: bool  # every timestamp step is the same
    starts_with_keyframe: bool


def probe(path: Path) -> VideoInfo:
    """Read a video's facts; raise RejectedInput naming the reason when it is not a usable video."""
    size = path.stat().st_size
    if size == 0:
        raise RejectedInput("empty_file", "the file has 0 bytes")
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.video:
                kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
                raise RejectedInput("no_video_stream", f"no video stream (the file holds {kinds})")
            stream = container.streams.video[0]
            codec_name = stream.codec_context.name if stream.codec_context else None
            if not codec_name or codec_name == "none":
                raise RejectedInput("unsupported_codec", "FFmpeg has no decoder for this video codec; "
                                                        "re-encode the file (e.g. to H.264) first")
            first = _first_frame(container, stream)
            info = _describe(container, stream, first, size)
    except RejectedInput:
        raise
    except (av.error.FFmpegError, ValueError, OSError, UnicodeDecodeError) as err:
        if isinstance(err, OSError) and err.errno in TRANSIENT_ERRNOS:
            raise  # the storage failed, not the file: the caller may try again
        raise RejectedInput("unreadable", f"not a readable video: {err}") from None
    if info.width <= 0 or info.height <= 0:
        raise RejectedInput("unreadable", f"the video stream reports a {info.width}x{info.height} frame size")
    return info


class PacketCounter:
    """Accumulates a PacketScan one demuxed packet at a time (shared by the scan and the in-process stream copy)."""

    def __init__(self) -> None:
        self.count = self.gap = self.max_gap = 0
        self.steps: set[int] = set()
        self.last_dts: int | None = None
        self.first_key: bool | None = None

    def add(self, packet) -> bool:
        """Count one packet; False for the demuxer's empty end-of-stream packet, which carries no frame."""
        if packet.size == 0:
            return False
        if self.first_key is None:
            self.first_key = bool(packet.is_keyframe)
        if packet.is_keyframe and self.count:
            self.max_gap, self.gap = max(self.max_gap, self.gap), 0
        self.count, self.gap = self.count + 1, self.gap + 1
        if packet.dts is not None and self.last_dts is not None:
            self.steps.add(packet.dts - self.last_dts)
        self.last_dts = packet.dts
        return True

    def result(self) -> PacketScan:
        return PacketScan(packets=self.count, max_keyframe_gap=max(self.max_gap, self.gap),
                          constant_rate=len(self.steps) <= 1, starts_with_keyframe=bool(self.first_key))


def scan_packets(path: Path | BinaryIO) -> PacketScan:
    """Demux every packet of the first video stream (no decoding): the true frame count and the GOP structure."""
    counter = PacketCounter()
    with av.open(path if hasattr(path, "read") else str(path), metadata_errors="ignore") as container:
        for packet in container.demux(container.streams.video[0]):
            counter.add(packet)
    return counter.result()


def _first_frame(container, stream) -> av.VideoFrame:
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as err:
        raise RejectedInput("undecodable", f"the first frame does not decode: {err}") from None
    raise RejectedInput("undecodable", "the video stream holds no decodable frame")


def _describe(container, stream, first: av.VideoFrame, size: int) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    duration = _duration_seconds(container, stream)
    frames = stream.frames or (int(round(duration * fps)) if fps else 0)
    rotation = int(round(first.rotation or 0)) % 360
    sar = stream.sample_aspect_ratio or Fraction(1, 1)
    display_w = int(round(first.width * float(sar))) if sar and float(sar) > 0 else first.width
    display_h = first.height
    if rotation in (90, 270):
        display_w, display_h = display_h, display_w
    return VideoInfo(
        container=container.format.name,
        codec=stream.codec_context.name,
        profile=stream.codec_context.profile,
        pix_fmt=first.format.name,
        width=first.width,
        height=first.height,
        display_width=display_w,
        display_height=display_h,
        rotation=rotation,
        fps=fps,
        duration=duration,
        frames=int(frames),
        has_audio=bool(container.streams.audio),
        size_bytes=size,
    )


def _duration_seconds(container, stream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return 0.0  # unknown: callers fall back on the frame count
