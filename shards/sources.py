"""Where the videos come from: a Kinetics-style folder, a CSV (path,label or the Kinetics columns), or JSONL."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts"}
KINETICS_COLUMNS = {"label", "youtube_id", "time_start", "time_end"}


class SourceError(ValueError):
    """A list of inputs that cannot be read at all (as opposed to one bad row, which is rejected)."""


@dataclass(frozen=True)
class InputItem:
    source: str  # the path as the user listed it, relative to the input root where possible
    path: Path | None  # resolved file, None when the listed file does not exist
    label_name: str | None  # None: unlabeled (pretraining needs no labels)


def list_inputs(input_path: Path, root: Path | None = None) -> list[InputItem]:
    """Every input with its label, in the order found; missing files are kept (path None) to be rejected later."""
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
    raise SourceError(f"{input_path}: expected a folder, a .csv or a .jsonl list of videos")


def _from_folder(folder: Path) -> list[InputItem]:
    """Kinetics layout: FOLDER/<label>/<video>; videos directly in FOLDER are unlabeled."""
    items = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or path.suffix.lower() not in VIDEO_EXTENSIONS:
            continue
        if not path.is_file():
            continue
        label = rel.parts[0] if len(rel.parts) > 1 else None
        items.append(InputItem(source=rel.as_posix(), path=path, label_name=label))
    return items


def _from_csv(list_file: Path, base: Path) -> list[InputItem]:
    with list_file.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {c.strip() for c in reader.fieldnames or []}
        if "path" in columns:
            return [_item(row.get("path", ""), row.get("label"), base, list_file, n)
                    for n, row in enumerate(reader, start=2)]
        if KINETICS_COLUMNS <= columns:
            index = _index_videos(base)
            return [_kinetics_item(row, base, index) for row in reader]
    raise SourceError(f"{list_file}: a CSV needs a 'path' column (and optionally 'label'), or the Kinetics "
                      f"columns label,youtube_id,time_start,time_end[,split]; found {sorted(columns)}")


def _from_jsonl(list_file: Path, base: Path) -> list[InputItem]:
    items = []
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
            items.append(_item(row["path"], row.get("label"), base, list_file, n))
    return items


def _item(listed: str, label, base: Path, list_file: Path, line: int) -> InputItem:
    listed = (listed or "").strip()
    if not listed:
        raise SourceError(f"{list_file}:{line}: empty path")
    path = Path(listed) if Path(listed).is_absolute() else base / listed
    label_name = None if label is None or str(label).strip() == "" else str(label).strip()
    return InputItem(source=listed, path=path if path.is_file() else None, label_name=label_name)


def _kinetics_item(row: dict, base: Path, index: dict[str, Path]) -> InputItem:
    """Kinetics downloaders name clips <youtube_id>_<start:06d>_<end:06d>.<ext>, in split or label folders."""
    stem = f"{row['youtube_id'].strip()}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
    path = index.get(stem)
    label = (row.get("label") or "").strip() or None
    source = path.relative_to(base).as_posix() if path else f"{stem}.mp4"
    return InputItem(source=source, path=path, label_name=label)


def _index_videos(base: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in sorted(base.rglob("*")):
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
            index.setdefault(path.stem, path)
    return index
