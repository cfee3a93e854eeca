"""The listed inputs as a table: each row a path (found on disk, or marked missing), its label and its split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vmae.shards.walk import FRAMES, FRAMES_BESIDE, MISSING, NOT_VIDEO, Found, VideoIndex, locate


class SourceError(ValueError):
    """A list of inputs that cannot be read at all (as opposed to one bad row, which is rejected)."""


@dataclass(frozen=True, slots=True)
class InputItem:
    source: str  # the path as the user listed it, relative to the input root where possible
    path: Path | None  # resolved file, None when the listed file does not exist
    label_name: str | None  # None: unlabeled (pretraining needs no labels)
    split: str | None = None  # the split the list puts it in (Kinetics' split column, UCF/HMDB split files)


class InputTable(Sequence):
    """The listed inputs as columns: a million rows are a few arrays, not a million objects (a build of
    WebVid-10M plans on one node). Indexing and iterating give InputItems; rows are added as the list is read."""

    CHUNK = 1 << 16  # rows gathered as Python objects before they become arrays

    def __init__(self, base: Path, kind: str = "folder"):
        self.base = base
        self.kind = kind  # the kind of list the rows come from (the dataset card names it)
        # the class list the input list itself fixes (an index-labelled list: class i is its index i), or None
        self.classes: list[str] | None = None
        self.label_names: list[str] = []  # a row's label is an index into these, -1 when unlabeled
        self.split_names: list[str] = []
        self._ids: dict[tuple[str, str], int] = {}
        self._open: list[tuple[bytes, int, int, int, int, int]] = []  # rows not yet in arrays
        self._chunks: list[dict[str, np.ndarray]] = []
        self._columns: dict[str, np.ndarray] | None = None

    # -------------------------------------------------------------- filling
    def add_listed(self, listed: str, label: str | None, split: str | None) -> None:
        """A row as a list gives it: a path relative to the base (or absolute), found here or marked missing."""
        where, identity = locate(self.base / listed)
        self._add(listed, where, label, split, identity)

    def add_found(self, found: Found | None, missing_source: str, label: str | None, split: str | None = None) -> None:
        """A row whose input was found by a walk of the base (None: not there, named ``missing_source``)."""
        if found is None:
            self._add(missing_source, MISSING, label, split, (0, 0))
        else:
            self._add(found.source, found.where, label, split, (found.dev, found.inode))

    def _add(self, source: str, where: int, label: str | None, split: str | None, identity: tuple[int, int]) -> None:
        self._open.append((source.encode("utf-8"), where, self._id("label", label), self._id("split", split),
                           *identity))
        if len(self._open) >= self.CHUNK:
            self._close_chunk()

    def _id(self, kind: str, name: str | None) -> int:
        if name is None:
            return -1
        names = self.label_names if kind == "label" else self.split_names
        if (kind, name) not in self._ids:
            self._ids[kind, name] = len(names)
            names.append(name)
        return self._ids[kind, name]

    def _close_chunk(self) -> None:
        if self._open:
            sources, where, labels, splits, devs, inodes = zip(*self._open, strict=True)
            self._chunks.append({"source": np.array(sources, dtype=np.bytes_), "where": np.array(where, np.int8),
                                 "label": np.array(labels, np.int32), "split": np.array(splits, np.int32),
                                 "dev": np.array(devs, np.uint64), "inode": np.array(inodes, np.uint64)})
            self._open = []

    @property
    def columns(self) -> dict[str, np.ndarray]:
        """source (UTF-8 bytes), where (MISSING/FILE/...), label, split (indices), dev and inode of each row."""
        if self._columns is None:
            self._close_chunk()
            if not self._chunks:
                self._chunks = [{"source": np.array([], np.bytes_), "where": np.array([], np.int8),
                                 "label": np.array([], np.int32), "split": np.array([], np.int32),
                                 "dev": np.array([], np.uint64), "inode": np.array([], np.uint64)}]
            width = max(c["source"].dtype.itemsize for c in self._chunks) or 1
            self._columns = {name: np.concatenate([c[name].astype(f"S{width}") if name == "source" else c[name]
                                                   for c in self._chunks])
                             for name in self._chunks[0]}
            self._chunks = []
        return self._columns

    def take(self, rows: np.ndarray) -> InputTable:
        """A table of the given rows (indices or a boolean mask), sharing the names."""
        taken = InputTable(self.base, self.kind)
        taken.label_names, taken.split_names, taken._ids = self.label_names, self.split_names, self._ids
        taken.classes = self.classes
        taken._columns = {name: column[rows] for name, column in self.columns.items()}
        return taken

    # -------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self.columns["source"])

    def __getitem__(self, row):  # an int gives an InputItem, a slice a table
        if isinstance(row, slice):
            return self.take(np.arange(len(self))[row])
        c = self.columns
        return InputItem(source=self.source(row), path=self.path(row), label_name=self._name(self.label_names,
                         c["label"][row]), split=self._name(self.split_names, c["split"][row]))

    def source(self, row: int) -> str:
        return self.columns["source"][row].decode("utf-8")

    def path(self, row: int) -> Path | None:
        """The row's file or frame folder; None when it does not exist or is no video."""
        where = self.columns["where"][row]
        if where in (MISSING, NOT_VIDEO):
            return None
        path = self.base / self.source(row)
        return path.with_suffix("") if where == FRAMES_BESIDE else path

    @staticmethod
    def _name(names: list[str], index: int) -> str | None:
        return names[index] if index >= 0 else None

    def split_of(self, name: str) -> InputTable:
        return self.take(self.columns["split"] == self._ids.get(("split", name), -2))

    def splits(self) -> list[str]:
        """The splits rows are in, sorted."""
        return sorted(self.split_names[i] for i in np.unique(self.columns["split"]) if i >= 0)

    def first_frame_folder(self) -> str | None:
        """The source of the first row that is a folder of extracted frames, or None."""
        rows = np.flatnonzero(np.isin(self.columns["where"], (FRAMES, FRAMES_BESIDE)))
        return self.source(rows[0]) if len(rows) else None

    def counts_per_split_and_label(self) -> dict[tuple[str | None, str | None], int]:
        pairs, counts = np.unique(np.stack([self.columns["split"], self.columns["label"]], axis=1), axis=0,
                                  return_counts=True)
        return {(self._name(self.split_names, s), self._name(self.label_names, lb)): int(n)
                for (s, lb), n in zip(pairs.tolist(), counts.tolist(), strict=True)}


def add_row(table: InputTable, listed: str, label, list_file: Path, line: int, split=None) -> None:
    """A row of a list: ``listed`` relative to the table's base (or absolute); an empty path refuses the list."""
    listed = (listed or "").strip()
    if not listed:
        raise SourceError(f"{list_file}:{line}: empty path")
    label_name = None if label is None or str(label).strip() == "" else str(label).strip()
    table.add_listed(listed, label_name, str(split).strip() or None if split is not None else None)


def add_indexed(table: InputTable, index: VideoIndex, name: str, missing_source: str, label: str | None,
                split: str | None) -> None:
    """A row found by name in the base's index; ``missing_source`` names it when it is not there."""
    table.add_found(index.find(name), missing_source, label, split)
