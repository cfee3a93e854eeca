"""`vmae shards build`: inputs → plan → (probe, stream-copy or transcode) in worker processes → tar shards.

The steps, each in its module: the plan (``vmae.shards.plan``); each input's work in a worker process
(``vmae.shards.worker``), run by a local pool or Ray (``vmae.shards.engines``); packing the results into shards,
``rejects.jsonl`` and ``manifest.json`` (``vmae.shards.pack``, in the format of ``vmae.shards.format``). What a
killed build resumes from is kept in ``OUT/.build`` (``vmae.shards.state``).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vmae.shards.config import ShardConfig, set_only
from vmae.shards.encode import ffmpeg_version
from vmae.shards.engines import results
from vmae.shards.format import MANIFEST
from vmae.shards.pack import Packer
from vmae.shards.plan import Plan, make_plan, read_class_file
from vmae.shards.progress import progress_bar
from vmae.shards.sources import InputTable, SourceError, list_inputs
from vmae.shards.walk import VIDEO_EXTENSIONS
from vmae.shards.state import BuildError, check_out_dir, check_plan, exclusive, items_dir, make_out_dir

log = logging.getLogger(__name__)

# Options that change the bytes written; the others (workers, timeouts, root) may differ between runs.
BYTE_SHAPING = ("short_side", "fps", "frames_fps", "codec", "keyframe_interval", "crf", "preset", "bframes",
                "pframe_interval", "stream_copy", "segment_seconds", "min_frames", "short_policy", "max_input_pixels",
                "samples_per_shard", "max_shard_bytes", "seed", "threads_per_worker")


@dataclass
class BuildSummary:
    inputs: int = 0
    samples: int = 0
    shards: int = 0
    bytes: int = 0
    source_bytes: int = 0
    copied: int = 0
    transcoded: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    up_to_date: bool = False

    @property
    def videos_per_second(self) -> float:
        return (self.copied + self.transcoded) / self.seconds if self.seconds else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.source_bytes / 1e6 / self.seconds if self.seconds else 0.0


def build_params(cfg: ShardConfig, classes: list[str]) -> dict:
    """What the build's bytes depend on: the byte-shaping options, the class list and the ffmpeg version."""
    params = {**{k: getattr(cfg, k) for k in BYTE_SHAPING}, **set_only(cfg)}
    params["classes"] = classes
    params["ffmpeg"] = ffmpeg_version()
    return params


def listed_card(inputs: InputTable, split: str | None) -> dict:
    """What the input list holds, per split and class: with the digest and the counts in the shards, the dataset
    card two users compare to see whether they hold the same copy."""
    per_split: dict[str, Counter] = {}
    for (split_name, label), count in inputs.counts_per_split_and_label().items():
        per_split.setdefault(split_name or "(no split)", Counter())[label or "(unlabeled)"] += count
    return {"input_kind": inputs.kind, "split": split,
            "listed_per_split": {name: {"videos": sum(c.values()), "per_class": dict(sorted(c.items()))}
                                 for name, c in sorted(per_split.items())}}


def build_shards(input_path: Path, out_dir: Path, cfg: ShardConfig, progress: bool = True,
                 part: tuple[int, int] | None = None) -> BuildSummary:
    """Build ``out_dir`` from ``input_path``. With ``part=(i, n)``: only process (probe, encode) the i-th of n
    shares of the inputs into the build's state, side by side with the other parts (SLURM array tasks, nodes);
    the run without ``part`` then packs the shards, processing whatever no part did: the same bytes as one
    machine's build."""
    started = time.perf_counter()
    check_out_dir(out_dir)  # before the inputs are listed, which may take long
    classes = read_class_file(Path(cfg.classes)) if cfg.classes else None
    inputs = list_inputs(input_path, Path(cfg.root) if cfg.root else None, cfg.split, classes)
    if not inputs:
        raise SourceError(f"{input_path}: no videos found (looked for {', '.join(sorted(VIDEO_EXTENSIONS))} and "
                          "folders of .jpg/.png frames); nothing was written")
    frame_folder = inputs.first_frame_folder()
    if frame_folder is not None and cfg.frames_fps <= 0:
        raise SourceError(f"{frame_folder} is a folder of extracted frames: give the rate they were taken at "
                          "with --frames-fps (e.g. 30); nothing was written")
    plan = make_plan(inputs, cfg.seed, classes)
    params = build_params(cfg, plan.classes)
    make_out_dir(out_dir)
    if part is not None:
        return _build_part(out_dir, cfg, plan, params, inputs, part, progress, started)
    with exclusive(out_dir):
        finished = _finished_manifest(out_dir, params, plan)
        if finished is not None:
            log.info("%s already holds this build (same inputs and options): nothing to do", out_dir)
            return _summary_from_manifest(finished, len(inputs))
        for reject in plan.rejects:
            log.info("rejected %s: %s (%s)", reject.source, reject.reason, reject.detail)
        packer = Packer(out_dir, cfg, plan, params, listed_card(inputs, cfg.split))
        packer.run(progress)
    summary = _summary_of(packer)
    summary.inputs = len(inputs)
    summary.seconds = time.perf_counter() - started
    return summary


def _build_part(out_dir: Path, cfg: ShardConfig, plan: Plan, params: dict, inputs: InputTable,
                part: tuple[int, int], progress: bool, started: float) -> BuildSummary:
    """Process every n-th planned input, from the i-th on, into the shared state; nothing is packed."""
    index, count = part
    if not 0 <= index < count:
        raise BuildError(f"--part {index}/{count}: the part is 0 to {count - 1} of {count}")
    with exclusive(out_dir, shared=True):
        if _finished_manifest(out_dir, params, plan) is not None:
            log.info("%s already holds this build: nothing to do", out_dir)
            return BuildSummary(inputs=len(inputs), up_to_date=True)
        check_plan(out_dir, plan, params)
        mine = plan.items[index::count]  # the plan's order is shuffled: every part gets a like mix of inputs
        summary, rejected = BuildSummary(inputs=len(mine)), Counter()
        with progress_bar(len(mine), f"part {index}/{count}", progress) as bar:
            for _, result in results(mine, 0, cfg, items_dir(out_dir)):
                if result["status"] == "rejected":
                    rejected[result["reason"]] += 1
                else:
                    summary.samples += len(result["samples"])
                    summary.source_bytes += result["source_bytes"]
                bar.update(1)
    summary.rejected = dict(sorted(rejected.items()))
    summary.seconds = time.perf_counter() - started
    log.info("part %d/%d done: %d inputs processed; pack the shards with the same command without --part, once "
             "every part is done", index, count, len(mine))
    return summary


def _finished_manifest(out_dir: Path, params: dict, plan: Plan) -> dict | None:
    """The manifest of a finished build of these inputs and options in ``out_dir``; None when there is none yet,
    BuildError when a finished build of others is there."""
    path = out_dir / MANIFEST
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    # an option added since that build was made had its default then
    recorded = {**{k: getattr(ShardConfig(), k) for k in BYTE_SHAPING}, **manifest.get("build", {})}
    if recorded == params and manifest.get("inputs_digest") == plan.inputs_digest:
        return manifest
    changed = sorted(k for k in set(params) | set(recorded) if params.get(k) != recorded.get(k))
    what = f"options differ ({', '.join(changed)})" if changed else "the input list differs"
    raise BuildError(f"{out_dir} already holds a finished build and {what}; write to a new folder, "
                     "or delete this one to rebuild")


def _summary_from_manifest(manifest: dict, inputs: int) -> BuildSummary:
    return BuildSummary(inputs=inputs, samples=manifest["samples"], shards=len(manifest["shards"]),
                        bytes=manifest["bytes"], rejected=manifest["rejects"], up_to_date=True)


def _summary_of(packer: Packer) -> BuildSummary:
    """What a packing run wrote (the input count and the time are the caller's to add)."""
    totals = packer.totals
    return BuildSummary(samples=totals.samples, shards=len(packer.entries),
                        bytes=sum(e["bytes"] for e in packer.entries), source_bytes=totals.source_bytes,
                        copied=totals.copied, transcoded=totals.transcoded, rejected=packer.rejected_counts())
