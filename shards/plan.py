"""The build plan: a pure function of the sorted input list, the class list and the seed, made before any work."""

from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vmae.shards.files import atomic_file
from vmae.shards.table import InputTable, SourceError
from vmae.shards.walk import MISSING, NOT_VIDEO


@dataclass(frozen=True, slots=True)
class PlannedItem:
    key: str  # dot-free, unique, stable: the same source always gets the same key
    source: str
    path: str
    label: int  # index into the class list, -1 when unlabeled
    label_name: str | None


@dataclass(frozen=True)
class Reject:
    source: str
    reason: str
    detail: str
    key: str | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class PlannedItems(Sequence):
    """The planned inputs in write order: rows of the input table, made into PlannedItems only when read."""

    def __init__(self, table: InputTable, rows: np.ndarray, labels: np.ndarray, classes: list[str]):
        self._table, self._rows, self._labels, self._classes = table, rows, labels, classes

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index):  # an int gives a PlannedItem, a slice the planned items it selects
        if isinstance(index, slice):
            return PlannedItems(self._table, self._rows[index], self._labels[index], self._classes)
        row, label = self._rows[index], int(self._labels[index])
        source = self._table.source(row)
        return PlannedItem(make_key(source), source, str(self._table.path(row)), label,
                           self._classes[label] if label >= 0 else None)

    def keys(self) -> Iterator[str]:
        return (make_key(self._table.source(row)) for row in self._rows)


@dataclass(frozen=True)
class Plan:
    items: PlannedItems  # in the (seeded, shuffled) order samples are written
    rejects: list[Reject]  # inputs left out before any work
    classes: list[str]
    inputs_digest: str  # sha256 of the sorted (source, label) list: two users can compare their copies

    def write_keys(self, path: Path) -> str:
        """Store the planned keys, one per line in write order (how far a build has come is counted from them);
        the sha256 of the file."""
        digest = hashlib.sha256()
        with atomic_file(path, "w", encoding="ascii") as fh:
            for key in self.items.keys():
                line = key + "\n"
                fh.write(line)
                digest.update(line.encode("ascii"))
        return digest.hexdigest()


def read_keys(path: Path) -> Iterator[str]:
    with path.open(encoding="ascii") as fh:
        for line in fh:
            yield line.rstrip("\n")


def read_class_file(path: Path) -> list[str]:
    """The --classes file: one class name a line, in label order (line i names class i)."""
    what = "a text file with one class name per line, in label order"
    if path.is_dir():
        raise SourceError(f"--classes {path} is a folder: give {what}")
    if not path.is_file():
        raise SourceError(f"--classes {path}: no such file; give {what}")
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise SourceError(f"--classes {path} is not UTF-8 text: give {what}") from None
    if not names:
        raise SourceError(f"--classes {path} names no class: give {what}")
    dupes = sorted(name for name, count in Counter(names).items() if count > 1)
    if dupes:
        raise SourceError(f"--classes {path}: class names listed twice: {', '.join(dupes)}")
    return names


def make_plan(inputs: InputTable, seed: int, classes: list[str] | None = None) -> Plan:
    """Sort the inputs by (source, label), leave out the missing, the folders that are no video, the
    unknown-labelled and second listings of one file (device and inode: links too), and shuffle the rest with
    ``seed``; column-wise, without an object per input. The class list: ``classes``, else the one the input list
    fixes (an index-labelled list's), else the sorted labels."""
    columns, names = inputs.columns, inputs.label_names
    if classes is None:
        classes = inputs.classes
    if classes is None:
        classes = sorted({names[i] for i in np.unique(columns["label"]) if i >= 0})
    class_index = {name: n for n, name in enumerate(classes)}
    # per row: its class (-1 unlabeled, -2 not in the class list) and its label's rank among the names ('' first)
    row_class = np.array([class_index.get(n, -2) for n in names] + [-1], np.int64)[columns["label"]]
    rank = {name: r for r, name in enumerate(sorted(names))}
    label_rank = np.array([rank[n] for n in names] + [-1], np.int64)[columns["label"]]
    order = np.lexsort((label_rank, columns["source"]))
    missing = columns["where"] == MISSING
    not_video = columns["where"] == NOT_VIDEO
    unknown = ~missing & ~not_video & (row_class == -2)
    candidates = order[~(missing | not_video | unknown)[order]]
    duplicate_of = _earlier_listing_of_the_same_file(columns["dev"][candidates], columns["inode"][candidates])
    kept = candidates[duplicate_of < 0]
    rejected = {row: ("missing_file", f"{inputs.source(row)} does not exist (check the list's paths or --root)")
                for row in np.flatnonzero(missing).tolist()}
    rejected.update({row: ("not_a_video", f"{inputs.source(row)} is a folder that is neither a video file nor a "
                                          "folder of extracted frames (numbered JPEG/PNG images such as "
                                          "img_00001.jpg): list a video file or a frame folder in its place")
                     for row in np.flatnonzero(not_video).tolist()})
    rejected.update({row: ("unknown_label", f"label {names[columns['label'][row]]!r} is not in the class list")
                     for row in np.flatnonzero(unknown).tolist()})
    rejected.update({int(candidates[n]): ("duplicate", f"the same file as {inputs.source(candidates[first])}, "
                                                       "which is kept")
                     for n, first in enumerate(duplicate_of.tolist()) if first >= 0})
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order))
    rejects = [Reject(inputs.source(row), *rejected[row]) for row in sorted(rejected, key=lambda r: position[r])]
    shuffled = list(range(len(kept)))  # the permutation shuffling a list of the kept inputs would make
    random.Random(seed).shuffle(shuffled)
    rows = kept[np.array(shuffled, np.int64)]
    return Plan(items=PlannedItems(inputs, rows, row_class[rows], list(classes)), rejects=rejects,
                classes=list(classes), inputs_digest=_inputs_digest(inputs, order))


def _earlier_listing_of_the_same_file(devices: np.ndarray, inodes: np.ndarray) -> np.ndarray:
    """For each row (in list order), the first row with the same (device, inode) if that is an earlier one, else
    -1."""
    n = len(devices)
    by_file = np.lexsort((np.arange(n), inodes, devices))
    d, i = devices[by_file], inodes[by_file]
    starts = np.ones(n, bool)
    starts[1:] = (d[1:] != d[:-1]) | (i[1:] != i[:-1])
    group_first = by_file[np.maximum.accumulate(np.where(starts, np.arange(n), 0))] if n else by_file
    earlier = np.full(n, -1, np.int64)
    earlier[by_file[~starts]] = group_first[~starts]
    return earlier


def _inputs_digest(inputs: InputTable, order: np.ndarray) -> str:
    """sha256 of the JSON list of (source, label) pairs in sorted order, hashed row by row (a million-row list is
    never one string)."""
    digest = hashlib.sha256(b"[")
    labels, names = inputs.columns["label"], inputs.label_names
    for n, row in enumerate(order.tolist()):
        label = names[labels[row]] if labels[row] >= 0 else None
        digest.update((", " if n else "").encode() + json.dumps([inputs.source(row), label]).encode())
    digest.update(b"]")
    return digest.hexdigest()


def make_key(source: str) -> str:
    """A WebDataset key: ASCII letters, digits, '_' and '-' only (no dots), readable, and unique by a path hash."""
    stem = source.rsplit(".", 1)[0] if "." in Path(source).name else source
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_stem).strip("_-")[:64] or "video"
    return f"{slug}_{hashlib.sha1(source.encode('utf-8')).hexdigest()[:8]}"
