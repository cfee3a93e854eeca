"""Packing: the processed inputs' results, in plan order, into tar shards, then ``rejects.jsonl`` and
``manifest.json``.

Every step can be killed and re-run: shards are written as ``.tmp`` and renamed once indexed; a record of each
sealed shard (which inputs it consumed) is written last; ``manifest.json`` is written after everything else and
marks the build complete. A rerun resumes after the last shard whose record and file agree.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vmae.shards.config import ShardConfig
from vmae.shards.engines import results
from vmae.shards.files import TEMPORARY, write_atomic
from vmae.shards.format import FORMAT, MANIFEST, REJECTS, VIDEO_EXTENSION, pack_sample, rejects_lines, shard_name
from vmae.shards.plan import Plan
from vmae.shards.progress import progress_bar
from vmae.shards.state import check_plan, items_dir, records_dir, state_dir
from vmae.shards.tars import ShardWriter

log = logging.getLogger(__name__)


@dataclass
class Totals:
    """What sealed shards hold, carried in their records so a resumed build can finish the manifest."""

    samples: int = 0
    frames: int = 0
    duration: float = 0.0
    source_bytes: int = 0
    copied: int = 0
    transcoded: int = 0
    classes: Counter = field(default_factory=Counter)

    def add(self, other: dict) -> None:
        for k in ("samples", "frames", "duration", "source_bytes", "copied", "transcoded"):
            setattr(self, k, getattr(self, k) + other[k])
        self.classes.update(other["classes"])

    def as_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = dict(sorted(self.classes.items()))
        return d


class Packer:
    """Writes one dataset folder from a plan: the shards, then the rejects and the manifest."""

    def __init__(self, out_dir: Path, cfg: ShardConfig, plan: Plan, params: dict, listed: dict):
        self.out_dir, self.cfg, self.plan, self.params = out_dir, cfg, plan, params
        self.listed = listed  # the dataset card's half that describes the input list
        self.items_dir = items_dir(out_dir)
        self.records_dir = records_dir(out_dir)
        self.entries: list[dict] = []  # manifest entries of sealed shards
        self.rejects: list[dict] = []  # rejects of items consumed so far (sealed ones and the open shard's)
        self.totals = Totals()
        self.pending = Totals()  # what the open shard holds
        self.pending_rejects: list[dict] = []
        self.writer: ShardWriter | None = None
        self.position = (0, 0)  # next (item, sample) to write
        self.cleared_to = 0  # the results of items before this one are removed

    def run(self, progress: bool) -> None:
        """Pack every planned input (processing those no earlier run or part did), then write the outputs."""
        self._resume()
        first_item, skip = self.position
        items = self.plan.items
        rejected = Counter(r["reason"] for r in self.rejects)
        with progress_bar(len(items), "shards", progress, initial=first_item) as bar:
            for index, result in results(items[first_item:], first_item, self.cfg, self.items_dir):
                self._pack(index, result, skip if index == first_item else 0)
                if result["status"] == "rejected":
                    rejected[result["reason"]] += 1
                bar.update(1)
                bar.set_postfix(samples=self.totals.samples + self.pending.samples, rejected=sum(rejected.values()),
                                refresh=False)
        if self.writer is not None:
            self._seal(next_position=(len(items), 0))
        self.rejects.extend(self.pending_rejects)
        self._write_outputs()
        shutil.rmtree(state_dir(self.out_dir), ignore_errors=True)

    def rejected_counts(self) -> dict[str, int]:
        """Inputs rejected so far (by the plan and by the workers), per reason."""
        plan_rejects = [r.as_dict() for r in self.plan.rejects]
        return dict(sorted(Counter(r["reason"] for r in plan_rejects + self.rejects).items()))

    def _resume(self) -> None:
        """Clear what killed runs left half-written, and carry on after the last shard still in place."""
        check_plan(self.out_dir, self.plan, self.params)
        for stray in self.out_dir.glob(TEMPORARY):
            stray.unlink()
        for stray in self.items_dir.glob(TEMPORARY):  # half-written results of killed workers
            shutil.rmtree(stray, ignore_errors=True)
        for record_path in sorted(self.records_dir.glob("*.json")):
            record = json.loads(record_path.read_text())
            tar = self.out_dir / record["entry"]["name"]
            if not tar.exists() or tar.stat().st_size != record["entry"]["bytes"]:
                log.warning("%s is missing or changed: rebuilding from it on", tar.name)
                for later in sorted(self.records_dir.glob("*.json")):
                    if later.name >= record_path.name:
                        later.unlink()
                break
            self.entries.append(record["entry"])
            self.rejects.extend(record["rejects"])
            self.totals.add(record["totals"])
            self.position = tuple(record["next"])
        if self.entries:
            log.info("resuming after %d finished shard(s)", len(self.entries))

    def _pack(self, index: int, result: dict, skip: int) -> None:
        if result["status"] == "rejected":
            log.info("rejected %s: %s (%s)", result["source"], result["reason"], result["detail"])
            self.pending_rejects.append({k: result[k] for k in ("source", "key", "reason", "detail")})
        samples = result.get("samples", [])
        for n, sample in enumerate(samples):
            if n < skip:
                continue
            self._rollover_if_full((index, n), sample["bytes"])
            video = (self.items_dir / result["key"] / sample["file"]).read_bytes()
            meta = sample["meta"]
            self.writer.write(sample["key"], pack_sample(meta, video, VIDEO_EXTENSION[self.cfg.codec]))
            self.pending.add({"samples": 1, "frames": meta["frames"], "duration": meta["duration"],
                              "source_bytes": result["source_bytes"] if n == 0 else 0,
                              "copied": int(n == 0 and meta["mode"] == "copy"),
                              "transcoded": int(n == 0 and meta["mode"] == "transcode"),
                              "classes": {str(meta["label_name"]): 1}})
        for dropped in result.get("dropped", []):
            self.pending_rejects.append({"source": result["source"], "key": dropped["key"],
                                         "reason": "segment_too_short", "detail": dropped["detail"]})

    def _rollover_if_full(self, position: tuple[int, int], size: int) -> None:
        if self.writer is not None:
            full = len(self.writer.keys) >= self.cfg.samples_per_shard
            too_big = self.writer.bytes_written + size + 4096 > self.cfg.max_shard_bytes
            if full or too_big:
                self._seal(next_position=position)
        if self.writer is None:
            self.writer = ShardWriter(self.out_dir / shard_name(len(self.entries)))

    def _seal(self, next_position: tuple[int, int]) -> None:
        entry = self.writer.seal()
        entry["frames"] = self.pending.frames
        record = {"entry": entry, "next": list(next_position), "rejects": self.pending_rejects,
                  "totals": self.pending.as_dict()}
        write_atomic(self.records_dir / f"{len(self.entries):06d}.json", json.dumps(record))
        self.entries.append(entry)
        self.rejects.extend(self.pending_rejects)
        self.totals.add(record["totals"])
        self.pending, self.pending_rejects, self.writer = Totals(), [], None
        # the results packed since the last seal are no longer needed (a million-input build seals thousands of times)
        for key in self.plan.items[self.cleared_to: next_position[0]].keys():
            shutil.rmtree(self.items_dir / key, ignore_errors=True)
        self.cleared_to = max(self.cleared_to, next_position[0])

    def _write_outputs(self) -> None:
        write_atomic(self.out_dir / REJECTS, rejects_lines([r.as_dict() for r in self.plan.rejects] + self.rejects))
        write_atomic(self.out_dir / MANIFEST, json.dumps(self._manifest(), indent=1, sort_keys=True) + "\n")

    def _manifest(self) -> dict:
        """The manifest of the finished build (its schema: vmae.shards.format)."""
        class_counts = {name: self.totals.classes.get(name, 0) for name in self.plan.classes}
        if self.totals.classes.get("None"):
            class_counts["(unlabeled)"] = self.totals.classes["None"]
        manifest = {
            "format": FORMAT,
            "build": self.params,
            "inputs_digest": self.plan.inputs_digest,
            "inputs": len(self.plan.items) + len(self.plan.rejects),
            "classes": self.plan.classes,
            "class_counts": class_counts,
            "samples": self.totals.samples,
            "frames": self.totals.frames,
            "duration_seconds": round(self.totals.duration, 3),
            "bytes": sum(e["bytes"] for e in self.entries),
            "video_extension": VIDEO_EXTENSION[self.cfg.codec],
            "shards": self.entries,
            "rejects": self.rejected_counts(),
        }
        manifest["card"] = {**self.listed, "inputs_digest": self.plan.inputs_digest, "videos": self.totals.samples,
                            "videos_per_class": class_counts, "rejected": sum(manifest["rejects"].values())}
        return manifest
