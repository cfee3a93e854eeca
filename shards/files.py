"""Files that are either whole or absent: written under a temporary name beside their place, then renamed."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# what the unfinished files of atomic_path (and of a shard being written) match: a killed writer leaves them
TEMPORARY = "*.tmp*"


def temporary_name(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: one name per process, because the parts of one
    build may write the same file at once."""
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to (for writers that take a path, such as torch.save):
    when the block ends it is synced to disk and renamed over ``path`` in one step, so a reader (or a killed
    writer's rerun) sees the old file or the new one, never a part. It is removed if the block raises."""
    tmp = temporary_name(path)
    try:
        yield tmp
        _sync(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w", encoding: str | None = None) -> Iterator[IO]:
    """An open file (``mode`` "w" or "wb") that becomes ``path`` when the block ends, as atomic_path says."""
    with atomic_path(path) as tmp, tmp.open(mode, encoding=encoding) as fh:
        yield fh


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text or bytes) to ``path`` through atomic_file."""
    with atomic_file(path, "wb" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)


def _sync(path: Path) -> None:
    """Have the file's data on disk before it is renamed into place (else a crash may leave it empty)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
