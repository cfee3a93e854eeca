"""The dataset format: what `vmae shards build` writes into a dataset folder, and what the loader reads there.

A dataset folder holds:

- ``shard-000000.tar``, ``shard-000001.tar``, ...: WebDataset tars of samples, in the manifest's order.
- ``shard-000000.idx``, ...: DALI's webdataset index of each tar (written and read by ``vmae.shards.tars``).
- ``rejects.jsonl``: one JSON object per line for each input (or trailing segment) left out, with the keys
  ``source`` (the input as listed), ``key`` (its sample key; absent for inputs left out before any work),
  ``reason`` (a short code such as ``truncated``) and ``detail`` (what was wrong and what to do).
- ``manifest.json``: written last, so the build is complete when it exists. Its keys:

  - ``format``: ``FORMAT``; a reader refuses any other.
  - ``build``: the options that shape the bytes (short_side, fps, codec, crf, seed, ...), the class list
    (``classes``) and the ffmpeg version (``ffmpeg``).
  - ``inputs_digest``: sha256 of the sorted (source, label) list of the inputs.
  - ``inputs``: how many inputs were listed (kept and rejected).
  - ``classes``: the class names; a sample's label is an index into this list (-1: unlabeled).
  - ``class_counts``: samples per class name (``(unlabeled)`` for label -1, when there are any).
  - ``samples``, ``frames``, ``duration_seconds``, ``bytes``: totals over all shards.
  - ``video_extension``: the video member's extension in every sample (a value of ``VIDEO_EXTENSION``).
  - ``shards``: one entry per tar, in order: ``name``, ``index`` (its index file's name), ``samples``, ``bytes``,
    ``sha256`` and ``frames``.
  - ``rejects``: reason → how many inputs were rejected for it.
  - ``card``: the dataset card two users compare their copies by: ``input_kind``, ``split``,
    ``listed_per_split`` (per split: ``videos`` and ``per_class``), ``inputs_digest``, ``videos``,
    ``videos_per_class`` and ``rejected``. Builds made before the card existed have none.

A sample ``<key>`` is the tar members ``<key>.<ext>`` for each of: the video (``mp4``, ``webm`` or ``mkv``),
``json`` (its metadata: key, label, label_name, source, segment, start_seconds, frames, fps, duration, width,
height, codec, mode (copy or transcode), padded_frames, source_info and the build options), ``cls`` (the label as
decimal text), and ``frames`` and ``label`` (the frame count and the label as int32 little-endian, which a
DALI graph reads with dtypes=INT32). Keys hold no dots: WebDataset splits a member's name at the first one.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

FORMAT = "vmae-shards/1"
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
VIDEO_EXTENSION = {"h264": "mp4", "hevc": "mp4", "vp9": "webm", "mjpeg": "mkv"}  # codec → the video member's extension
META_MEMBERS = ("json", "cls", "frames", "label")  # the members every sample holds beside its video
INT32 = struct.Struct("<i")  # the .frames and .label members


class DatasetError(ValueError):
    """A dataset folder that is not (or no longer) a readable build output; the message says what to do."""


def shard_name(number: int) -> str:
    """The file name of the ``number``-th shard (from 0)."""
    return f"shard-{number:06d}.tar"


def index_path(tar_path: Path) -> Path:
    """The DALI index file beside a shard."""
    return tar_path.with_suffix(".idx")


def pack_sample(meta: dict, video: bytes, video_extension: str) -> dict[str, bytes]:
    """The members one sample is stored as (extension → bytes), from its metadata and its video file's bytes."""
    return {
        video_extension: video,
        "json": json.dumps(meta, sort_keys=True).encode(),
        "cls": str(meta["label"]).encode(),
        "frames": INT32.pack(meta["frames"]),
        "label": INT32.pack(meta["label"]),
    }


def int32_member(raw: bytes) -> int | None:
    """The value of a ``.frames`` or ``.label`` member; None when it is not 4 bytes."""
    return INT32.unpack(raw)[0] if len(raw) == INT32.size else None


def rejects_lines(rejects: list[dict]) -> str:
    """The text of ``rejects.jsonl``: one JSON object a line, keys sorted."""
    return "".join(json.dumps(reject, sort_keys=True) + "\n" for reject in rejects)


def load_manifest(dataset: Path) -> dict:
    """A finished dataset's manifest; DatasetError when it is missing, damaged or of another format."""
    path = dataset / MANIFEST
    if dataset.is_file():
        raise DatasetError(_a_file_not_a_dataset(dataset))
    if not dataset.exists():
        raise DatasetError(f"{dataset}: no such dataset folder; give the folder `vmae shards build` wrote")
    if not path.exists():
        unfinished = (dataset / ".build").is_dir()  # vmae.shards.state.STATE: a build not yet packed
        raise DatasetError(f"{path} not found: {dataset} is not a finished `vmae shards build` output ("
                           + ("re-run the build to finish it)" if unfinished else
                              "give the folder `vmae shards build` wrote, which holds manifest.json)"))
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path} is not JSON ({err}): the dataset's manifest is damaged; rebuild the dataset") \
            from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DatasetError(f"{path}: format {found!r}, expected {FORMAT!r} (written by another tool or version?)")
    return manifest


def _a_file_not_a_dataset(path: Path) -> str:
    """What to say when a file (a shard, the manifest) is given where the dataset folder is expected."""
    said = f"{path} is a file: give the dataset folder (the one holding {MANIFEST} and the shards)"
    if (path.parent / MANIFEST).is_file():
        return f"{said}, here {path.parent}"
    return said
