"""Byte-reproducible WebDataset tars, written atomically, with DALI's index (format v1.2) beside each."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

from vmae.shards.files import write_atomic
from vmae.shards.format import index_path

TAR_MTIME = 946684800  # 2000-01-01: a fixed stamp, so the same samples give the same bytes
INDEX_VERSION = "v1.2"


class _HashingFile:
    """A write-only file that also feeds a sha256 and counts bytes, so sealing a shard needs no re-read."""

    def __init__(self, path: Path):
        self._fh = path.open("wb")
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._fh.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


class ShardWriter:
    """One shard: samples go to ``<name>.tar.tmp``; ``seal`` writes the index and renames both into place.

    Members are written as webdataset's TarWriter writes them (``<key>.<ext>``, extensions sorted, read-only,
    owner vmae) but with the standard library's tarfile: webdataset imports torch, which a shard-building node
    should not need (and which costs each build seconds of start-up).
    """

    def __init__(self, tar_path: Path):
        self.tar_path = tar_path
        self.tmp_path = tar_path.with_name(tar_path.name + ".tmp")
        self._file = _HashingFile(self.tmp_path)
        self._tar = tarfile.open(fileobj=self._file, mode="w|", format=tarfile.GNU_FORMAT)
        self.keys: list[str] = []

    def write(self, key: str, members: dict[str, bytes]) -> None:
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o444
            info.uname = info.gname = "vmae"
            self._tar.addfile(info, io.BytesIO(data))
        self.keys.append(key)

    @property
    def bytes_written(self) -> int:
        return self._file.size

    def seal(self) -> dict:
        """Close, index and rename; returns the shard's manifest entry."""
        self._tar.close()
        self._file.close()
        idx_path = index_path(self.tar_path)
        write_atomic(idx_path, make_index(self.tmp_path))  # the index first: a shard in place always has one
        os.replace(self.tmp_path, self.tar_path)
        return {"name": self.tar_path.name, "index": idx_path.name, "samples": len(self.keys),
                "bytes": self._file.size, "sha256": self._file.sha256.hexdigest()}


def sample_members(tar_path: Path) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """Samples of a tar in order: (key, [(extension, data offset, size), ...]); names split at the first dot."""
    samples: list[tuple[str, list[tuple[str, int, int]]]] = []
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            if "." not in base or base.startswith("."):
                continue
            key, ext = split_name(member.name)
            if not samples or samples[-1][0] != key:
                samples.append((key, []))
            samples[-1][1].append((ext, member.offset_data, member.size))
    return samples


def make_index(tar_path: Path) -> str:
    """DALI's webdataset index: a header line, then per sample 'ext offset size name' for each member."""
    samples = sample_members(tar_path)
    if not samples:
        raise ValueError(f"{tar_path}: no samples to index")
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for key, members in samples:
        lines.append(" ".join(f"{ext} {offset} {size} {key}.{ext}" for ext, offset, size in members))
    return "\n".join(lines) + "\n"


def read_index(idx_path: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """An index file's samples in order: (key, {extension: (data offset, size)})."""
    rows = []
    for line in idx_path.read_text().splitlines()[1:]:
        fields = line.split()
        members = {fields[i]: (int(fields[i + 1]), int(fields[i + 2])) for i in range(0, len(fields), 4)}
        rows.append((fields[3].split(".", 1)[0], members))
    return rows


def read_member(tar_path: Path, offset: int, size: int) -> bytes:
    with tar_path.open("rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def split_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key ends at the first dot of the file's base name."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    return name[:dot], name[dot + 1:]
