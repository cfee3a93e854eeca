"""Lists of videos as lines of text, each format told by its file name, never guessed from the lines:

- UCF-101's split files ``trainlistNN.txt`` / ``testlistNN.txt``: ``CLASS/v_CLASS_gNN_cNN.avi [INDEX]``, the class
  is the folder;
- HMDB-51's ``CLASS_test_splitN.txt``: ``VIDEO.avi 0|1|2`` (unused, train, test), the class is in the file name;
- any other ``.txt``: an mmaction2 list, ``PATH LABEL`` (videos) or ``FOLDER TOTAL_FRAMES LABEL`` (rawframes);
- a ``.csv`` without a header and without commas: PySlowFast's ``PATH LABEL``.

The LABEL of mmaction2 and PySlowFast lists is an integer class index: ``classes`` (the --classes file, line i
names class i) names it, else the index itself is the class name and the class list runs from 0 to the largest
index, so that a sample's label is the list's index either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from vmae.shards.table import InputTable, SourceError, add_indexed, add_row
from vmae.shards.walk import VIDEO_EXTENSIONS, VideoIndex

UCF_SPLIT = re.compile(r"^(train|test)list\d+\.txt$", re.IGNORECASE)
UCF_VIDEO = re.compile(r"^v_(?P<label>.+)_g\d+_c\d+\.\w+$")
HMDB_SPLIT = re.compile(r"^(?P<label>.+)_test_split(?P<n>\d)\.txt$")
HMDB_SUBSETS = {"1": "train", "2": "test", "0": "unused"}

MMACTION_VIDEOS = "mmaction2's video list: PATH LABEL a line (e.g. 'videos/a.mp4 3')"
MMACTION_RAWFRAMES = "mmaction2's rawframe list: FOLDER TOTAL_FRAMES LABEL a line (e.g. 'rawframes/a 120 3')"
PYSLOWFAST = "PySlowFast's CSV: PATH LABEL a line, separated by a space (e.g. '/data/k400/a.mp4 3')"
LABEL_IS_INDEX = "LABEL is an integer class index; --classes FILE names index i after the file's line i"


def text_list_kind(list_file: Path) -> str:
    """The kind of a .txt list, from its name: UCF-101 and HMDB-51 name their split files in their own way."""
    if UCF_SPLIT.match(list_file.name):
        return "ucf101"
    return "hmdb51" if HMDB_SPLIT.match(list_file.name) else "mmaction2"


def read_text_list(list_file: Path, base: Path, classes: list[str] | None) -> InputTable:
    kind = text_list_kind(list_file)
    if kind == "ucf101":
        return read_ucf(list_file, base)
    if kind == "hmdb51":
        return read_hmdb(list_file, base)
    return read_mmaction(list_file, base, classes)


def read_ucf(list_file: Path, base: Path) -> InputTable:
    """UCF-101's trainlistNN.txt ("Class/v_Class_g08_c01.avi 1") or testlistNN.txt ("Class/v_Class_g01_c01.avi"):
    the class is the folder; paths are relative to the UCF-101 video folder (--root). A line of any other shape is
    refused: a list of another format named like a UCF-101 split file would be mislabelled by its folders."""
    table = InputTable(base, "ucf101")
    for n, parts in _lines(list_file):
        folder, _, name = parts[0].partition("/")
        video = UCF_VIDEO.match(name)
        # the folder and the file name spell the class alike, but for case (HandstandPushups/v_HandStandPushups_…)
        if len(parts) > 2 or not video or video.group("label").lower() != folder.lower() or \
                (len(parts) == 2 and not parts[1].isdigit()):
            raise SourceError(f"{list_file}:{n}: a UCF-101 split line is CLASS/v_CLASS_gNN_cNN.avi [INDEX]; got "
                              f"{' '.join(parts)!r}. For an mmaction2 list ({MMACTION_VIDEOS}), give the file "
                              "a name other than trainlistNN.txt / testlistNN.txt")
        add_row(table, parts[0], folder, list_file, n, list_file.stem)
    return table


def read_hmdb(list_file: Path, base: Path) -> InputTable:
    """HMDB-51's CLASS_test_splitN.txt files (all 51 of split N, found beside the one given): "VIDEO.avi 1" (train),
    2 (test) or 0 (unused); videos under ``base`` (CLASS/VIDEO.avi, or found by name)."""
    number = HMDB_SPLIT.match(list_file.name).group("n")
    index = VideoIndex(base)
    table = InputTable(base, "hmdb51")
    for split_file in sorted(list_file.parent.glob(f"*_test_split{number}.txt")):
        label = HMDB_SPLIT.match(split_file.name).group("label")
        for n, parts in _lines(split_file):
            if len(parts) != 2 or parts[1] not in HMDB_SUBSETS:
                raise SourceError(f"{split_file}:{n}: an HMDB-51 split line is 'VIDEO.avi 0|1|2'; got "
                                  f"{' '.join(parts)!r}")
            add_indexed(table, index, Path(parts[0]).stem, f"{label}/{parts[0]}", label, HMDB_SUBSETS[parts[1]])
    return table


def read_mmaction(list_file: Path, base: Path, classes: list[str] | None) -> InputTable:
    """mmaction2's lists: the first line's field count says which (2: videos, 3: rawframes); every line must have
    it. Multi-label lists (several labels a line) are refused: a sample has one class."""
    table = InputTable(base, "mmaction2")
    largest, fields = -1, None
    for n, parts in _lines(list_file):
        fields = fields or len(parts)
        if fields not in (2, 3):
            raise SourceError(f"{list_file}:{n}: {len(parts)} field(s); expected {MMACTION_VIDEOS}, or "
                              f"{MMACTION_RAWFRAMES} ({LABEL_IS_INDEX}; multi-label lists are not read)")
        expected = MMACTION_VIDEOS if fields == 2 else MMACTION_RAWFRAMES
        if len(parts) != fields:
            raise SourceError(f"{list_file}:{n}: {len(parts)} field(s) where line 1 has {fields}; the list is "
                              f"{expected} (a path holding a space cannot be listed)")
        if fields == 3:
            _check_rawframe_line(list_file, n, parts)
        label = _index(list_file, n, parts[-1], expected, classes)
        largest = max(largest, label)
        add_row(table, parts[0], _class_name(label, classes), list_file, n)
    table.kind = "mmaction2-rawframes" if fields == 3 else "mmaction2-videos"
    table.classes = _index_classes(largest, classes)
    return table


def read_pyslowfast(list_file: Path, base: Path, classes: list[str] | None) -> InputTable:
    """PySlowFast's Kinetics / Something-Something CSV: "PATH LABEL", a space between, no header."""
    table = InputTable(base, "pyslowfast")
    largest = -1
    for n, parts in _lines(list_file, encoding="utf-8-sig"):
        if len(parts) != 2:
            raise SourceError(f"{list_file}:{n}: {len(parts)} field(s); a CSV without a header is {PYSLOWFAST} "
                              f"({LABEL_IS_INDEX}); a CSV with a header names a 'path' column")
        label = _index(list_file, n, parts[1], PYSLOWFAST, classes)
        largest = max(largest, label)
        add_row(table, parts[0], _class_name(label, classes), list_file, n)
    table.classes = _index_classes(largest, classes)
    return table


def _lines(list_file: Path, encoding: str = "utf-8") -> Iterator[tuple[int, list[str]]]:
    """(line number, its fields) of every non-blank line."""
    with list_file.open(encoding=encoding) as fh:
        for n, line in enumerate(fh, start=1):
            parts = line.split()
            if parts:
                yield n, parts


def _check_rawframe_line(list_file: Path, n: int, parts: list[str]) -> None:
    """A rawframe line names a folder and its frame count; a video file with two labels is a multi-label line."""
    if Path(parts[0]).suffix.lower() in VIDEO_EXTENSIONS:
        raise SourceError(f"{list_file}:{n}: {parts[0]} with two numbers after it: a multi-label video list, which "
                          f"is not read (one class a video: {MMACTION_VIDEOS}), or a rawframe list naming a video "
                          f"in place of its frame folder ({MMACTION_RAWFRAMES})")
    if not parts[1].isdigit():
        raise SourceError(f"{list_file}:{n}: TOTAL_FRAMES {parts[1]!r} is not a whole number; the list is "
                          f"{MMACTION_RAWFRAMES}")


def _index(list_file: Path, n: int, text: str, expected: str, classes: list[str] | None) -> int:
    """A line's class index, checked against the --classes list when there is one."""
    if not text.isdigit():
        raise SourceError(f"{list_file}:{n}: label {text!r} is not a class index; the list is {expected} "
                          f"({LABEL_IS_INDEX})")
    index = int(text)
    if classes is not None and index >= len(classes):
        raise SourceError(f"{list_file}:{n}: class index {index}, but the --classes file names {len(classes)} "
                          f"classes (0 to {len(classes) - 1}): give the class file the list was made with")
    return index


def _class_name(index: int, classes: list[str] | None) -> str:
    return classes[index] if classes is not None else str(index)


def _index_classes(largest: int, classes: list[str] | None) -> list[str]:
    """The class list of an index-labelled list: --classes, or the indices 0 to the largest as names."""
    return list(classes) if classes is not None else [str(i) for i in range(largest + 1)]
