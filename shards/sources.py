"""Where the videos come from: a Kinetics-style folder, a CSV (path,label or the Kinetics columns), JSONL,
Something-Something V2's labels JSON, or a UCF-101 / HMDB-51 split file; each video a file or a folder of
extracted frames."""

from __future__ import annotations

import csv
import json
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from shards.frames import is_frame_image

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts"}
KINETICS_COLUMNS = {"label", "youtube_id", "time_start", "time_end"}


class SourceError(ValueError):
    """A list of inputs that cannot be read at all (as opposed to one bad row, which is rejected)."""


@dataclass(frozen=True, slots=True)
class InputItem:
    source: str  # the path as the user listed it, relative to the input root where possible
    path: Path | None  # resolved file, None when the listed file does not exist
    label_name: str | None  # None: unlabeled (pretraining needs no labels)
    split: str | None = None  # the split the list puts it in (Kinetics' split column, UCF/HMDB split files)


HMDB_SPLIT = re.compile(r"^(?P<label>.+)_test_split(?P<n>\d)\.txt$")
HMDB_SUBSETS = {"1": "train", "2": "test", "0": "unused"}


def list_inputs(input_path: Path, root: Path | None = None, split: str | None = None) -> list[InputItem]:
    """Every input with its label, in the order found; missing files are kept (path None) to be rejected later.
    With ``split``, only the inputs the list puts in that split."""
    items = _list_all(input_path, root)
    if split is None:
        if input_kind(input_path) == "hmdb51":
            raise SourceError(f"{input_path}: HMDB-51 split files hold train (1), test (2) and unused (0) videos: "
                              "pick one with --split train or --split test")
        return items
    splits = sorted({i.split for i in items if i.split is not None})
    if not splits:
        raise SourceError(f"{input_path} names no splits: drop --split {split}")
    chosen = [i for i in items if i.split == split]
    if not chosen:
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


def _list_all(input_path: Path, root: Path | None) -> list[InputItem]:
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


def _from_ssv2(list_file: Path, base: Path) -> list[InputItem]:
    """Something-Something V2: [{"id", "template", ...}] with videos <id>.webm under ``base``; the class is the
    template without its brackets ("Putting [something] into [something]" → "Putting something into something",
    as its labels.json names the 174 classes). The test list has ids only: unlabeled."""
    try:
        rows = json.loads(list_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SourceError(f"{list_file}: not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "id" in r for r in rows):
        raise SourceError(f"{list_file}: Something-Something V2 lists are a JSON array of objects with an 'id'")
    index = _index_videos(base)
    split = "train" if "train" in list_file.stem else "validation" if "valid" in list_file.stem else None
    items = []
    for row in rows:
        video = str(row["id"]).strip()
        path = index.get(video)
        template = row.get("template")
        label = re.sub(r"[\[\]]", "", template).strip() if template else None
        source = path.relative_to(base).as_posix() if path else f"{video}.webm"
        items.append(InputItem(source=source, path=path, label_name=label, split=split))
    return items


def _from_ucf(list_file: Path, base: Path) -> list[InputItem]:
    """UCF-101's trainlistNN.txt ("Class/v_Class_g08_c01.avi 1") or testlistNN.txt ("Class/v_Class_g01_c01.avi"):
    the class is the folder; paths are relative to the UCF-101 video folder (--root)."""
    items = []
    for n, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        listed = line.split()[0]
        if "/" not in listed:
            raise SourceError(f"{list_file}:{n}: a UCF-101 split line is CLASS/VIDEO.avi [INDEX]; got {line!r}")
        items.append(replace(_item(listed, listed.split("/")[0], base, list_file, n), split=list_file.stem))
    return items


def _from_hmdb(list_file: Path, base: Path) -> list[InputItem]:
    """HMDB-51's CLASS_test_splitN.txt files (all 51 of split N, found beside the one given): "VIDEO.avi 1" (train),
    2 (test) or 0 (unused); videos under ``base`` (CLASS/VIDEO.avi, or found by name)."""
    number = HMDB_SPLIT.match(list_file.name).group("n")
    index = _index_videos(base)
    items = []
    for split_file in sorted(list_file.parent.glob(f"*_test_split{number}.txt")):
        label = HMDB_SPLIT.match(split_file.name).group("label")
        for n, line in enumerate(split_file.read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in HMDB_SUBSETS:
                raise SourceError(f"{split_file}:{n}: an HMDB-51 split line is 'VIDEO.avi 0|1|2'; got {line!r}")
            path = index.get(Path(parts[0]).stem)
            source = path.relative_to(base).as_posix() if path else f"{label}/{parts[0]}"
            items.append(InputItem(source=source, path=path, label_name=label, split=HMDB_SUBSETS[parts[1]]))
    return items


def _from_folder(folder: Path) -> list[InputItem]:
    """Kinetics layout: FOLDER/<label>/<video>; videos directly in FOLDER are unlabeled. A folder of extracted
    frames (FOLDER/<label>/<video>/img_00001.jpg, ...) is one video."""
    items = []
    for path in _videos_under(folder):
        rel = path.relative_to(folder)
        label = rel.parts[0] if len(rel.parts) > 1 else None
        items.append(InputItem(source=rel.as_posix(), path=path, label_name=label))
    return items


def _videos_under(folder: Path) -> list[Path]:
    """Video files and frame folders under ``folder`` (hidden ones left out), sorted."""
    files, frame_dirs = [], set()
    for path in folder.rglob("*"):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            files.append(path)
        elif is_frame_image(path) and path.parent != folder:
            frame_dirs.add(path.parent)
    # a folder that holds videos is a class folder, not frames (a stray poster.jpg beside the clips)
    frame_dirs -= {path.parent for path in files}
    return sorted(files + list(frame_dirs))


def is_frame_folder(path: Path) -> bool:
    """A folder of extracted frames: frame images, and no video file to take instead."""
    if not path.is_dir():
        return False
    names = [child for child in path.iterdir() if child.is_file()]
    return any(is_frame_image(p) for p in names) and not any(p.suffix.lower() in VIDEO_EXTENSIONS for p in names)


def _from_csv(list_file: Path, base: Path) -> list[InputItem]:
    with list_file.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {c.strip() for c in reader.fieldnames or []}
        if "path" in columns:
            return [_item(row.get("path", ""), row.get("label"), base, list_file, n, row.get("split"))
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
            items.append(_item(row["path"], row.get("label"), base, list_file, n, row.get("split")))
    return items


def _item(listed: str, label, base: Path, list_file: Path, line: int, split=None) -> InputItem:
    listed = (listed or "").strip()
    if not listed:
        raise SourceError(f"{list_file}:{line}: empty path")
    path = Path(listed) if Path(listed).is_absolute() else base / listed
    # interned: a million rows share a few hundred label and split strings
    label_name = None if label is None or str(label).strip() == "" else sys.intern(str(label).strip())
    split = sys.intern(str(split).strip()) or None if split is not None else None
    return InputItem(source=listed, path=_existing_input(path), label_name=label_name, split=split)


def _existing_input(path: Path) -> Path | None:
    """The video file or frame folder a listed path names; a list of videos (UCF-101's X.avi) also finds the frames
    extracted beside them as X/."""
    if path.is_file() or is_frame_folder(path):
        return path
    if path.suffix.lower() in VIDEO_EXTENSIONS and is_frame_folder(path.with_suffix("")):
        return path.with_suffix("")
    return None


def _kinetics_item(row: dict, base: Path, index: dict[str, Path]) -> InputItem:
    """Kinetics downloaders name clips <youtube_id>_<start:06d>_<end:06d>.<ext>, in split or label folders."""
    stem = f"{row['youtube_id'].strip()}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
    path = index.get(stem)
    label = (row.get("label") or "").strip() or None
    source = path.relative_to(base).as_posix() if path else f"{stem}.mp4"
    return InputItem(source=source, path=path, label_name=label, split=(row.get("split") or "").strip() or None)


def _index_videos(base: Path) -> dict[str, Path]:
    """Videos and frame folders under ``base`` by name (a file's stem, a frame folder's name)."""
    index: dict[str, Path] = {}
    for path in _videos_under(base):
        index.setdefault(path.stem if path.is_file() else path.name, path)
    return index
