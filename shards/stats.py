"""`vmae shards inspect`: the figures of a built dataset, read from each sample's .json member via the index."""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from vmae.shards.format import index_path, load_manifest
from vmae.shards.tars import read_index, read_member


def iter_sample_meta(dataset: Path, manifest: dict):
    """Each sample's .json, reached through the DALI index (one seek per sample, no tar scan)."""
    for entry in manifest["shards"]:
        tar = dataset / entry["name"]
        for _, members in read_index(index_path(tar)):
            yield entry["name"], json.loads(read_member(tar, *members["json"]))


def dataset_stats(dataset: Path) -> dict:
    manifest = load_manifest(dataset)
    per_class: dict[str, list[float]] = defaultdict(list)
    resolutions, fps, codecs, modes = Counter(), Counter(), Counter(), Counter()
    durations, frames, padded = [], [], 0
    for _, meta in iter_sample_meta(dataset, manifest):
        name = meta["label_name"] if meta["label_name"] is not None else "(unlabeled)"
        per_class[name].append(meta["duration"] or 0.0)
        resolutions[f"{meta['width']}x{meta['height']}"] += 1
        fps[f"{meta['fps']:g}"] += 1
        codecs[meta["codec"]] += 1
        modes[meta["mode"]] += 1
        durations.append(meta["duration"] or 0.0)
        frames.append(meta["frames"])
        padded += bool(meta.get("padded_frames"))
    sizes = [e["bytes"] for e in manifest["shards"]]
    return {
        "dataset": str(dataset),
        "samples": manifest["samples"],
        "inputs": manifest["inputs"],
        "shards": len(manifest["shards"]),
        "bytes": manifest["bytes"],
        "shard_bytes": _spread(sizes),
        "classes": [{"name": n, "samples": len(per_class.get(n, [])), "seconds": round(sum(per_class.get(n, [])), 1)}
                    for n in manifest["classes"] + (["(unlabeled)"] if "(unlabeled)" in per_class else [])],
        "duration_seconds": _spread(durations),
        "frames": _spread(frames),
        "resolutions": dict(resolutions.most_common()),
        "fps": dict(fps.most_common()),
        "codecs": dict(codecs.most_common()),
        "modes": dict(modes.most_common()),
        "padded": padded,
        "rejects": manifest["rejects"],
        "build": manifest["build"],
        "card": manifest.get("card"),
    }


def _spread(values: list[float]) -> dict:
    if not values:
        return {"min": 0, "median": 0, "max": 0, "total": 0}
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "total": round(sum(values), 3)}
