"""Folders of extracted frames as video inputs: one image per frame (mmaction's rawframes ``img_00001.jpg``,
Something-Something's frame dumps), taken at a rate the user gives (``shards.frames_fps``).

A folder becomes one numbered image sequence that ffmpeg reads like a video (image2 demuxer through numbered
links), so it is normalized, resized and encoded exactly as a video file is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import av

from vmae.shards.probe import RejectedInput, VideoInfo

FRAME_EXTENSIONS = {".jpg", ".jpeg", ".png"}
NUMBERED = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)$")  # on the file stem: "img_00012" → "img_", 12
LINK_PATTERN = "%07d"  # names of the numbered links handed to ffmpeg
JPEG_END, PNG_END = b"\xff\xd9", b"IEND\xaeB`\x82"
TAIL_BYTES = 64


def is_frame_image(path: Path) -> bool:
    return path.suffix.lower() in FRAME_EXTENSIONS


def frame_sequence(folder: Path) -> list[Path]:
    """The folder's frames in number order; RejectedInput when they are not one gap-free numbered sequence."""
    groups: dict[tuple[str, str], dict[int, Path]] = {}
    for path in folder.iterdir():
        match = NUMBERED.match(path.stem)
        if not is_frame_image(path) or not match or not path.is_file():
            continue
        group = groups.setdefault((match["prefix"], path.suffix.lower()), {})
        number = int(match["number"])
        if number in group:
            raise RejectedInput("frame_numbering", f"{group[number].name} and {path.name} are both frame {number}: "
                                                   "keep one file per frame number")
        group[number] = path
    # mmaction's rawframes keep optical flow (flow_x_00001.jpg, flow_y_...) beside the RGB frames
    rgb = {key: frames for key, frames in groups.items() if not key[0].lower().startswith("flow")}
    if not rgb:
        raise RejectedInput("no_frames", "no numbered frame images (NAME0001.jpg, .png) in the folder")
    if len(rgb) > 1:
        kinds = ", ".join(f"{len(frames)} as {frames[min(frames)].name}" for frames in rgb.values())
        raise RejectedInput("ambiguous_frames", f"frames named in {len(rgb)} ways ({kinds}): keep one sequence "
                                                "per folder")
    (prefix, ext), frames = next(iter(rgb.items()))
    numbers = sorted(frames)
    missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if missing:
        width = len(frames[numbers[0]].stem) - len(prefix)
        raise RejectedInput("missing_frames", f"{len(missing)} frame(s) missing from the numbering, the first "
                                              f"{prefix}{missing[0]:0{width}d}{ext}: time would jump there; "
                                              "extract the frames again")
    return [frames[n] for n in numbers]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if is_frame_image(p) and p.is_file())


def probe_frames(folder: Path, fps: float) -> VideoInfo:
    """A frame folder's facts, as ``probe`` gives a video's: size and format from its first frame, the length from
    the frame count at ``fps``. Every frame is checked to be whole (FFmpeg decodes a cut JPEG without a word)."""
    frames = frame_sequence(folder)
    for frame in frames:
        check_whole(frame)
    try:
        with av.open(str(frames[0])) as container:
            stream = container.streams.video[0]
            first = next(container.decode(stream))
            codec = stream.codec_context.name
    except (av.error.FFmpegError, StopIteration, ValueError, OSError) as err:
        raise RejectedInput("unreadable", f"its first frame {frames[0].name} does not decode: {err}") from None
    return VideoInfo(container="frames", codec=codec, profile=None, pix_fmt=first.format.name, width=first.width,
                     height=first.height, display_width=first.width, display_height=first.height, rotation=0,
                     fps=fps, duration=len(frames) / fps, frames=len(frames), has_audio=False,
                     size_bytes=sum(p.stat().st_size for p in frames))


def check_whole(frame: Path) -> None:
    """RejectedInput unless the image ends as its format says it must: JPEG's end-of-image marker (padding after
    it allowed), PNG's IEND chunk. A file cut short (an interrupted extraction or copy) ends without them."""
    with frame.open("rb") as fh:
        fh.seek(max(0, frame.stat().st_size - TAIL_BYTES))
        tail = fh.read()
    whole = PNG_END in tail if frame.suffix.lower() == ".png" else JPEG_END in tail.rstrip(b"\0")[-2:]
    if not whole:
        raise RejectedInput("truncated_frame", f"{frame.name} is cut short (no end-of-image marker): extract the "
                                               "frames again")


def link_frames(folder: Path, workdir: Path) -> Path:
    """Number the folder's frames 0, 1, 2, ... as links in ``workdir/frames``; the image2 pattern that reads them.

    Links rather than the originals' own pattern: names may be unpadded (1.jpg, 10.jpg) or start anywhere."""
    frames = frame_sequence(folder)
    links = workdir / "frames"
    links.mkdir()
    ext = frames[0].suffix.lower()
    for n, frame in enumerate(frames):
        os.symlink(frame.resolve(), links / f"{LINK_PATTERN % n}{ext}")
    return links / f"{LINK_PATTERN}{ext}"
