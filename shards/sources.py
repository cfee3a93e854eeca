"""Where the videos come from: a Kinetics-style folder, a CSV (path,label or the Kinetics columns), JSONL,
Something-Something V2's labels JSON, or a UCF-101 / HMDB-51 split file; each video a file or a folder of
extracted frames."""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vmae.shards.walk import FRAMES, FRAMES_BESIDE, MISSING, Found, VideoIndex, locate, walk_videos

KINETICS_COLUMNS = {"label", "youtube_id", "time_start", "time_end"}

log = logging.getLogger(__name__)


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

    def __init__(self, base: Path):
        self.base = base
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
        taken = InputTable(self.base)
        taken.label_names, taken.split_names, taken._ids = self.label_names, self.split_names, self._ids
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
        """The row's file or frame folder; None when it does not exist."""
        where = self.columns["where"][row]
        if where == MISSING:
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
        rows = np.flatnonzero(self.columns["where"] >= FRAMES)
        return self.source(rows[0]) if len(rows) else None

    def counts_per_split_and_label(self) -> dict[tuple[str | None, str | None], int]:
        pairs, counts = np.unique(np.stack([self.columns["split"], self.columns["label"]], axis=1), axis=0,
                                  return_counts=True)
        return {(self._name(self.split_names, s), self._name(self.label_names, lb)): int(n)
                for (s, lb), n in zip(pairs.tolist(), counts.tolist(), strict=True)}


HMDB_SPLIT = re.compile(r"^(?P<label>.+)_test_split(?P<n>\d)\.txt$")
HMDB_SUBSETS = {"1": "train", "2": "test", "0": "unused"}


def list_inputs(input_path: Path, root: Path | None = None, split: str | None = None) -> InputTable:
    """Every input with its label, in the order found; missing files are kept (marked MISSING) to be rejected later.
    With ``split``, only the inputs the list puts in that split."""
    items = _list_all(input_path, root)
    if split is None:
        if input_kind(input_path) == "hmdb51":
            raise SourceError(f"{input_path}: HMDB-51 split files hold train (1), test (2) and unused (0) videos: "
                              "pick one with --split train or --split test")
        return items
    splits = items.splits()
    if not splits:
        raise SourceError(f"{input_path} names no splits: drop --split {split}")
    chosen = items.split_of(split)
    if not len(chosen):
        raise SourceError(f"{input_path}: no input in split {split!r}; its splits are {', '.join(splits)}")
    return chosen


def input_kind(input_path: Path) -> str:
    """What kind of list ``input_path`` is (for the dataset card)."""
    if input_path.is_dir():
        return "folder"
    suffix = input_path.suffix.lower()
    if suffix == ".txt":
        return "hmdb51" if HMDB_SPLIT.match(input_path.name) else "ucf101"
    return {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "something-something-v2"}.get(suffix,
                                                                                                        suffix)


def _list_all(input_path: Path, root: Path | None) -> InputTable:
    if input_path.is_dir():
        return _from_folder(input_path)
    if not input_path.is_file():
        raise SourceError(f"{input_path}: no such folder or list file")
    base = root or input_path.parent
    suffix = input_path.suffix.lower()
    if suffix == ".csv":
        return _from_csv(input_path, base)
    if suffix in (".jsonl", ".ndjson"):
        return _from_jsonl(input_path, base)
    if suffix == ".json":
        return _from_ssv2(input_path, base)
    if suffix == ".txt":
        return _from_hmdb(input_path, base) if HMDB_SPLIT.match(input_path.name) else _from_ucf(input_path, base)
    raise SourceError(f"{input_path}: expected a folder, a .csv or .jsonl list, Something-Something V2's labels "
                      "JSON, or a UCF-101 / HMDB-51 split file (.txt)")


def _from_ssv2(list_file: Path, base: Path) -> InputTable:
    """Something-Something V2: [{"id", "template", ...}] with videos <id>.webm under ``base``; the class is the
    template without its brackets ("Putting [something] into [something]" → "Putting something into something",
    as its labels.json names the 174 classes). The test list has ids only: unlabeled."""
    try:
        rows = json.loads(list_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SourceError(f"{list_file}: not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "id" in r for r in rows):
        raise SourceError(f"{list_file}: Something-Something V2 lists are a JSON array of objects with an 'id'")
    index = VideoIndex(base)
    split = "train" if "train" in list_file.stem else "validation" if "valid" in list_file.stem else None
    table = InputTable(base)
    for row in rows:
        video = str(row["id"]).strip()
        template = row.get("template")
        label = re.sub(r"[\[\]]", "", template).strip() if template else None
        _add_indexed(table, index, video, f"{video}.webm", label, split)
    return table


def _from_ucf(list_file: Path, base: Path) -> InputTable:
    """UCF-101's trainlistNN.txt ("Class/v_Class_g08_c01.avi 1") or testlistNN.txt ("Class/v_Class_g01_c01.avi"):
    the class is the folder; paths are relative to the UCF-101 video folder (--root)."""
    table = InputTable(base)
    with list_file.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            listed = line.split()[0]
            if "/" not in listed:
                raise SourceError(f"{list_file}:{n}: a UCF-101 split line is CLASS/VIDEO.avi [INDEX]; got "
                                  f"{line.strip()!r}")
            _add_row(table, listed, listed.split("/")[0], list_file, n, list_file.stem)
    return table


def _from_hmdb(list_file: Path, base: Path) -> InputTable:
    """HMDB-51's CLASS_test_splitN.txt files (all 51 of split N, found beside the one given): "VIDEO.avi 1" (train),
    2 (test) or 0 (unused); videos under ``base`` (CLASS/VIDEO.avi, or found by name)."""
    number = HMDB_SPLIT.match(list_file.name).group("n")
    index = VideoIndex(base)
    table = InputTable(base)
    for split_file in sorted(list_file.parent.glob(f"*_test_split{number}.txt")):
        label = HMDB_SPLIT.match(split_file.name).group("label")
        for n, line in enumerate(split_file.read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in HMDB_SUBSETS:
                raise SourceError(f"{split_file}:{n}: an HMDB-51 split line is 'VIDEO.avi 0|1|2'; got {line!r}")
            _add_indexed(table, index, Path(parts[0]).stem, f"{label}/{parts[0]}", label, HMDB_SUBSETS[parts[1]])
    return table


def _from_folder(folder: Path) -> InputTable:
    """Kinetics layout: FOLDER/<label>/<video>; videos directly in FOLDER are unlabeled. A folder of extracted
    frames (FOLDER/<label>/<video>/img_00001.jpg, ...) is one video."""
    table = InputTable(folder)
    for found in walk_videos(folder):
        label, slash, _ = found.source.partition("/")
        table.add_found(found, found.source, label if slash else None)
    return table


def _from_csv(list_file: Path, base: Path) -> InputTable:
    """Rows are read one at a time into the table (a million-row list is never a list of rows)."""
    table = InputTable(base)
    with list_file.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {c.strip() for c in reader.fieldnames or []}
        if "path" in columns:
            for n, row in enumerate(reader, start=2):
                _add_row(table, row.get("path", ""), row.get("label"), list_file, n, row.get("split"))
            return table
        if KINETICS_COLUMNS <= columns:
            index = VideoIndex(base)
            for row in reader:
                # Kinetics downloaders name clips <youtube_id>_<start:06d>_<end:06d>.<ext>, in split or label folders
                stem = (f"{row['youtube_id'].strip()}_{int(float(row['time_start'])):06d}_"
                        f"{int(float(row['time_end'])):06d}")
                _add_indexed(table, index, stem, f"{stem}.mp4", (row.get("label") or "").strip() or None,
                             (row.get("split") or "").strip() or None)
            return table
    raise SourceError(f"{list_file}: a CSV needs a 'path' column (and optionally 'label'), or the Kinetics "
                      f"columns label,youtube_id,time_start,time_end[,split]; found {sorted(columns)}")


def _from_jsonl(list_file: Path, base: Path) -> InputTable:
    table = InputTable(base)
    with list_file.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SourceError(f"{list_file}:{n}: not JSON ({err.msg})") from None
            if not isinstance(row, dict) or "path" not in row:
                raise SourceError(f"{list_file}:{n}: each line needs an object with a 'path' key")
            _add_row(table, row["path"], row.get("label"), list_file, n, row.get("split"))
    return table


def _add_row(table: InputTable, listed: str, label, list_file: Path, line: int, split=None) -> None:
    listed = (listed or "").strip()
    if not listed:
        raise SourceError(f"{list_file}:{line}: empty path")
    label_name = None if label is None or str(label).strip() == "" else str(label).strip()
    table.add_listed(listed, label_name, str(split).strip() or None if split is not None else None)


def _add_indexed(table: InputTable, index: VideoIndex, name: str, missing_source: str, label: str | None,
                 split: str | None) -> None:
    """A row found by name in the base's index; ``missing_source`` names it when it is not there."""
    table.add_found(index.find(name), missing_source, label, split)
