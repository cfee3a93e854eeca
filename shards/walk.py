"""Finding videos on disk: a walk of a folder's directory entries (video files and folders of extracted frames),
an index of what it found looked up by name, and where one listed path's input is."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vmae.shards.frames import is_frame_image

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts"}
# where a row's input is, relative to the table's base folder. FRAMES_BESIDE: a list names X.avi, the frames are
# in X/; NOT_VIDEO: a folder that is neither a video nor a folder of frames (said so, not called missing)
MISSING, FILE, FRAMES, FRAMES_BESIDE, NOT_VIDEO = 0, 1, 2, 3, 4



log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Found:
    """A video file or frame folder a walk found: its path relative to the walked folder (POSIX) and identity."""
    source: str
    where: int  # FILE or FRAMES
    dev: int
    inode: int


def walk_videos(folder: Path) -> list[Found]:
    """Video files and frame folders under ``folder`` (hidden ones left out) in path order, from the directory
    entries themselves (one stat per folder, not per video): a million-video folder is listed as strings, never
    as a million Paths."""
    found: list[Found] = []
    pending = [("", os.fspath(folder))]
    while pending:
        prefix, top = pending.pop()
        try:
            here = os.stat(top)
            with os.scandir(top) as listing:
                entries = list(listing)
        except OSError as err:  # left out, as pathlib's walk left it out, but said
            log.warning("%s: cannot be listed (%s); the videos in it are left out", top, err.strerror or err)
            continue
        videos, frames = 0, False
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                pending.append((f"{prefix}{entry.name}/", entry.path))
                continue
            if os.path.splitext(entry.name)[1].lower() in VIDEO_EXTENSIONS:
                if entry.is_symlink():  # its identity is the target's, as a listed path's would be
                    info = _stat_or_none(entry.path)
                    if info is None or not stat.S_ISREG(info.st_mode):
                        continue
                    found.append(Found(prefix + entry.name, FILE, info.st_dev, info.st_ino))
                elif entry.is_file():
                    found.append(Found(prefix + entry.name, FILE, here.st_dev, entry.inode()))
                else:
                    continue
                videos += 1
            elif prefix and not frames:
                frames = is_frame_image(Path(entry.name)) and entry.is_file()
        # a folder that holds videos is a class folder, not frames (a stray poster.jpg beside the clips)
        if frames and not videos:
            found.append(Found(prefix[:-1], FRAMES, here.st_dev, here.st_ino))
    # the order of pathlib's Paths (part by part), so plans stay as they were: no name holds a NUL
    found.sort(key=lambda f: f.source.replace("/", "\0"))
    return found


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


class VideoIndex:
    """The videos and frame folders under a folder, looked up by name (a file's stem, a frame folder's name; the
    first in path order wins): sorted arrays searched by bisection, not a dict of a million Paths."""

    def __init__(self, folder: Path):
        self.found = walk_videos(folder)
        names = np.array([_index_name(f) for f in self.found], dtype=np.bytes_)
        self.names, self.rows = np.unique(names, return_index=True)  # sorted names, each one's first row

    def find(self, name: str) -> Found | None:
        key = name.encode("utf-8")
        i = int(np.searchsorted(self.names, key))
        return self.found[self.rows[i]] if i < len(self.names) and self.names[i] == key else None


def _index_name(found: Found) -> bytes:
    base = found.source.rpartition("/")[2]
    return (os.path.splitext(base)[0] if found.where == FILE else base).encode("utf-8")


def is_frame_folder(path: Path) -> bool:
    """A folder of extracted frames: frame images, and no video file to take instead."""
    if not path.is_dir():
        return False
    names = [child for child in path.iterdir() if child.is_file()]
    return any(is_frame_image(p) for p in names) and not any(p.suffix.lower() in VIDEO_EXTENSIONS for p in names)


def locate(path: Path) -> tuple[int, tuple[int, int]]:
    """Where a listed path's input is (MISSING, FILE, FRAMES, FRAMES_BESIDE, NOT_VIDEO) and its identity (device,
    inode), with one stat in the common case; a list of videos (UCF-101's X.avi) also finds frames extracted beside
    them as X/."""
    try:
        info = os.stat(path)
    except OSError:
        info = None
    if info is not None and stat.S_ISREG(info.st_mode):
        return FILE, (info.st_dev, info.st_ino)
    if info is not None and is_frame_folder(path):
        return FRAMES, (info.st_dev, info.st_ino)
    if path.suffix.lower() in VIDEO_EXTENSIONS and is_frame_folder(path.with_suffix("")):
        info = os.stat(path.with_suffix(""))
        return FRAMES_BESIDE, (info.st_dev, info.st_ino)
    if info is not None and stat.S_ISDIR(info.st_mode):
        return NOT_VIDEO, (0, 0)
    return MISSING, (0, 0)
