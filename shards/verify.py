"""`vmae shards verify`: every shard against the manifest, and every video decoded and counted."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av

from vmae.shards.files import TEMPORARY
from vmae.shards.format import MANIFEST, META_MEMBERS, REJECTS, index_path, int32_member, load_manifest
from vmae.shards.tars import make_index, read_member, sample_members


@dataclass(frozen=True)
class Problem:
    where: str  # shard name, or shard/key
    what: str


@dataclass
class VerifyReport:
    dataset: Path
    shards: int = 0
    samples: int = 0
    frames_decoded: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dataset(dataset: Path, decode: bool = True, workers: int = 0) -> VerifyReport:
    started = time.perf_counter()
    report = VerifyReport(dataset=dataset)
    manifest = load_manifest(dataset)
    report.problems += _check_folder(dataset, manifest)
    jobs = [(dataset, entry, manifest["classes"], manifest["video_extension"], decode) for entry in manifest["shards"]]
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1, mp_context=ctx) as pool:
        for problems, samples, frames in pool.map(_check_shard_job, jobs):
            report.problems += problems
            report.samples += samples
            report.frames_decoded += frames
    report.shards = len(manifest["shards"])
    if report.samples != manifest["samples"] and not any(p.what.startswith("missing") for p in report.problems):
        report.problems.append(Problem(MANIFEST, f"{report.samples} samples in the shards, "
                                                 f"the manifest says {manifest['samples']}"))
    report.seconds = time.perf_counter() - started
    return report


def _check_folder(dataset: Path, manifest: dict) -> list[Problem]:
    problems = []
    listed = {e["name"] for e in manifest["shards"]}
    for tar in sorted(dataset.glob("*.tar")):
        if tar.name not in listed:
            problems.append(Problem(tar.name, "a shard not in the manifest (left from another build?)"))
    for tmp in sorted(dataset.glob(TEMPORARY)):
        problems.append(Problem(tmp.name, "a leftover of an unfinished write"))
    rejects = dataset / REJECTS
    if not rejects.exists():
        problems.append(Problem(REJECTS, "missing"))
    else:
        for n, line in enumerate(rejects.read_text().splitlines(), start=1):
            try:
                json.loads(line)
            except json.JSONDecodeError:
                problems.append(Problem(f"{REJECTS}:{n}", "not JSON"))
    return problems


def _check_shard_job(job: tuple) -> tuple[list[Problem], int, int]:
    return check_shard(*job)


def check_shard(dataset: Path, entry: dict, classes: list[str], video_ext: str,
                decode: bool) -> tuple[list[Problem], int, int]:
    """Problems found in one shard, its sample count and the frames decoded."""
    tar = dataset / entry["name"]
    if not tar.exists():
        return [Problem(entry["name"], "missing: the shard file is gone")], 0, 0
    problems = []
    size = tar.stat().st_size
    if size != entry["bytes"]:
        problems.append(Problem(entry["name"], f"{size} bytes, the manifest says {entry['bytes']}"))
    if _sha256(tar) != entry["sha256"]:
        problems.append(Problem(entry["name"], "checksum differs from the manifest (the file changed or is corrupt)"))
    try:
        samples = sample_members(tar)
    except Exception as err:  # noqa: BLE001 - any unreadable tar is a finding, not a crash
        return problems + [Problem(entry["name"], f"not a readable tar: {err}")], 0, 0
    problems += _check_index(tar, entry)
    if len(samples) != entry["samples"]:
        problems.append(Problem(entry["name"], f"{len(samples)} samples, the manifest says {entry['samples']}"))
    frames_decoded = 0
    for key, members in samples:
        found, decoded = _check_sample(tar, key, {ext: (off, size) for ext, off, size in members}, classes,
                                       video_ext, decode)
        problems += [Problem(f"{entry['name']}/{key}", what) for what in found]
        frames_decoded += decoded
    return problems, len(samples), frames_decoded


def _check_index(tar: Path, entry: dict) -> list[Problem]:
    idx = index_path(tar)
    if not idx.exists():
        return [Problem(entry["name"], f"index file {idx.name} is missing")]
    try:
        expected = make_index(tar)
    except ValueError as err:
        return [Problem(entry["name"], str(err))]
    if idx.read_text() != expected:
        return [Problem(entry["name"], f"index file {idx.name} does not match the tar (rebuild it)")]
    return []


def _check_sample(tar: Path, key: str, members: dict[str, tuple[int, int]], classes: list[str], video_ext: str,
                  decode: bool) -> tuple[list[str], int]:
    missing = [ext for ext in (video_ext, *META_MEMBERS) if ext not in members]
    if missing:
        return [f"missing member(s) {', '.join('.' + m for m in missing)}"], 0
    found = []
    try:
        meta = json.loads(read_member(tar, *members["json"]))
    except json.JSONDecodeError:
        return ["the .json member is not JSON"], 0
    label = meta.get("label")
    if read_member(tar, *members["cls"]).decode(errors="replace") != str(label):
        found.append(f".cls does not match the label {label} in .json")
    if not isinstance(label, int) or not -1 <= label < len(classes):
        found.append(f"label {label!r} is outside the {len(classes)} classes")
    elif label >= 0 and meta.get("label_name") != classes[label]:
        found.append(f"label name {meta.get('label_name')!r} is not class {label} ({classes[label]!r})")
    for member in ("frames", "label"):
        value = int32_member(read_member(tar, *members[member]))
        if value != meta.get(member):
            found.append(f".{member} holds {value}, .json says {meta.get(member)}")
    decoded = 0
    if decode:
        try:
            decoded = count_decoded_frames(read_member(tar, *members[video_ext]))
        except av.error.FFmpegError as err:
            found.append(f"the video does not decode: {err}")
        else:
            if decoded != meta.get("frames"):
                found.append(f"{decoded} frames decode, the sample says {meta.get('frames')}")
    return found, decoded


def count_decoded_frames(video: bytes) -> int:
    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
