"""Where the videos come from: a Kinetics-style folder, a CSV (path,label, the Kinetics columns, or PySlowFast's
"PATH LABEL"), JSONL, Something-Something V2's labels JSON, a UCF-101 / HMDB-51 split file or an mmaction2 list
(``vmae.shards.textlists``); each video a file or a folder of extracted frames."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

from vmae.shards.table import InputItem, InputTable, SourceError, add_indexed, add_row
from vmae.shards.textlists import PYSLOWFAST, read_pyslowfast, read_text_list
from vmae.shards.walk import VideoIndex, walk_videos

__all__ = ["InputItem", "InputTable", "SourceError", "list_inputs"]

KINETICS_COLUMNS = {"label", "youtube_id", "time_start", "time_end"}

log = logging.getLogger(__name__)


def list_inputs(input_path: Path, root: Path | None = None, split: str | None = None,
                classes: list[str] | None = None) -> InputTable:
    """Every input with its label, in the order found; missing files are kept (marked MISSING) to be rejected later.
    With ``split``, only the inputs the list puts in that split. ``classes`` (the --classes file) names the class
    indices of an index-labelled list (mmaction2, PySlowFast)."""
    items = _list_all(input_path, root, classes)
    if split is None:
        if items.kind == "hmdb51":
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


def _list_all(input_path: Path, root: Path | None, classes: list[str] | None) -> InputTable:
    if input_path.is_dir():
        return _from_folder(input_path)
    if not input_path.is_file():
        raise SourceError(f"{input_path}: no such folder or list file")
    base = root or input_path.parent
    suffix = input_path.suffix.lower()
    if suffix == ".csv":
        return _from_csv(input_path, base, classes)
    if suffix in (".jsonl", ".ndjson"):
        return _from_jsonl(input_path, base)
    if suffix == ".json":
        return _from_ssv2(input_path, base)
    if suffix == ".txt":
        return read_text_list(input_path, base, classes)
    raise SourceError(f"{input_path}: expected a folder, a .csv or .jsonl list, Something-Something V2's labels "
                      "JSON, a UCF-101 / HMDB-51 split file or an mmaction2 list (.txt)")


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
    table = InputTable(base, "something-something-v2")
    for row in rows:
        video = str(row["id"]).strip()
        template = row.get("template")
        label = re.sub(r"[\[\]]", "", template).strip() if template else None
        add_indexed(table, index, video, f"{video}.webm", label, split)
    return table


def _from_folder(folder: Path) -> InputTable:
    """Kinetics layout: FOLDER/<label>/<video>; videos directly in FOLDER are unlabeled. A folder of extracted
    frames (FOLDER/<label>/<video>/img_00001.jpg, ...) is one video."""
    table = InputTable(folder)
    for found in walk_videos(folder):
        label, slash, _ = found.source.partition("/")
        table.add_found(found, found.source, label if slash else None)
    return table


def _from_csv(list_file: Path, base: Path, classes: list[str] | None) -> InputTable:
    """A CSV with a header (a 'path' column, or the Kinetics columns), or PySlowFast's headerless "PATH LABEL":
    told apart by the first line, a header when it names those columns, PySlowFast's when it holds no comma. Rows
    are read one at a time into the table (a million-row list is never a list of rows)."""
    with list_file.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {c.strip() for c in reader.fieldnames or []}
        if "path" in columns:
            table = InputTable(base, "csv")
            for n, row in enumerate(reader, start=2):
                add_row(table, row.get("path", ""), row.get("label"), list_file, n, row.get("split"))
            return table
        if KINETICS_COLUMNS <= columns:
            return _from_kinetics_csv(reader, base)
        if reader.fieldnames and len(reader.fieldnames) == 1:  # no comma in the first line
            return read_pyslowfast(list_file, base, classes)
    raise SourceError(f"{list_file}: a CSV needs a header with a 'path' column (and optionally 'label', 'split'), "
                      "or the Kinetics columns label,youtube_id,time_start,time_end[,split], or no header and no "
                      f"comma: {PYSLOWFAST}; found the columns {sorted(columns)}")


def _from_kinetics_csv(reader: csv.DictReader, base: Path) -> InputTable:
    """Kinetics' own CSV: label,youtube_id,time_start,time_end[,split], the clips found by name under ``base``."""
    table = InputTable(base, "csv")
    index = VideoIndex(base)
    for row in reader:
        # Kinetics downloaders name clips <youtube_id>_<start:06d>_<end:06d>.<ext>, in split or label folders
        stem = (f"{row['youtube_id'].strip()}_{int(float(row['time_start'])):06d}_"
                f"{int(float(row['time_end'])):06d}")
        add_indexed(table, index, stem, f"{stem}.mp4", (row.get("label") or "").strip() or None,
                    (row.get("split") or "").strip() or None)
    return table


def _from_jsonl(list_file: Path, base: Path) -> InputTable:
    table = InputTable(base, "jsonl")
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
            add_row(table, row["path"], row.get("label"), list_file, n, row.get("split"))
    return table
