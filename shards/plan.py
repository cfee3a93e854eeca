"""The build plan: a pure function of the sorted input list, the class list and the seed, made before any work."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

from shards.sources import InputItem


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


@dataclass(frozen=True)
class Plan:
    items: list[PlannedItem]  # in the (seeded, shuffled) order samples are written
    rejects: list[Reject]  # inputs left out before any work
    classes: list[str]
    inputs_digest: str  # sha256 of the sorted (source, label) list: two users can compare their copies


def read_class_file(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{path}: class names listed twice: {', '.join(dupes)}")
    return names


def make_plan(inputs: list[InputItem], seed: int, classes: list[str] | None = None) -> Plan:
    ordered = sorted(inputs, key=lambda i: (i.source, i.label_name or ""))
    if classes is None:
        classes = sorted({i.label_name for i in ordered if i.label_name is not None})
    class_index = {name: n for n, name in enumerate(classes)}
    items, rejects, seen = [], [], {}
    for item in ordered:
        problem, identity = _check(item, class_index, seen)
        if problem:
            rejects.append(Reject(item.source, *problem))
            continue
        seen[identity] = item.source
        label = class_index[item.label_name] if item.label_name is not None else -1
        items.append(PlannedItem(make_key(item.source), item.source, str(item.path), label, item.label_name))
    digest = _inputs_digest(ordered)
    random.Random(seed).shuffle(items)
    return Plan(items=items, rejects=rejects, classes=list(classes), inputs_digest=digest)


def _inputs_digest(ordered: list[InputItem]) -> str:
    """sha256 of the JSON list of (source, label) pairs, hashed row by row (a million-row list is never one
    string)."""
    digest = hashlib.sha256(b"[")
    for n, item in enumerate(ordered):
        digest.update((", " if n else "").encode() + json.dumps([item.source, item.label_name]).encode())
    digest.update(b"]")
    return digest.hexdigest()


def _check(item: InputItem, class_index: dict[str, int],
           seen: dict[tuple[int, int], str]) -> tuple[tuple[str, str] | None, tuple[int, int] | None]:
    """(why the item is left out or None, the identity of its file: device and inode)."""
    if item.path is None:
        return ("missing_file", f"{item.source} does not exist (check the list's paths or --root)"), None
    if item.label_name is not None and item.label_name not in class_index:
        return ("unknown_label", f"label {item.label_name!r} is not in the class list"), None
    try:  # one stat, where resolving the path would take one per path component
        stat = os.stat(item.path)
    except OSError as err:
        return ("missing_file", f"{item.source} cannot be read: {err.strerror}"), None
    identity = (stat.st_dev, stat.st_ino)  # the same file under two names (a link) is one input
    if identity in seen:
        return ("duplicate", f"the same file as {seen[identity]}, which is kept"), identity
    return None, identity


def make_key(source: str) -> str:
    """A WebDataset key: ASCII letters, digits, '_' and '-' only (no dots), readable, and unique by a path hash."""
    stem = source.rsplit(".", 1)[0] if "." in Path(source).name else source
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_stem).strip("_-")[:64] or "video"
    return f"{slug}_{hashlib.sha1(source.encode('utf-8')).hexdigest()[:8]}"
