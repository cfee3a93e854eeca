"""`vmae shards build`: inputs → plan → (probe, stream-copy or transcode) in worker processes → tar shards.

Every step can be killed and re-run: workers write each input's result under a temporary name and rename it;
shards are written as ``.tmp`` and renamed once indexed; a record of each sealed shard (which inputs it
consumed) is written last; ``manifest.json`` is written after everything else and marks the build complete.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import struct
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import tqdm as tqdm_module
from tqdm import tqdm

from vmae.shards.config import ShardConfig
from vmae.shards.encode import EXTENSION, Encoded, die_with_parent, encode, ffmpeg_exe, output_fps, output_size
from vmae.shards.frames import folder_bytes, probe_frames
from vmae.shards.plan import Plan, PlannedItem, make_plan, read_class_file, read_keys
from vmae.shards.probe import RejectedInput, VideoInfo, probe
from vmae.shards.sources import VIDEO_EXTENSIONS, InputTable, SourceError, input_kind, list_inputs
from vmae.shards.tars import ShardWriter

log = logging.getLogger(__name__)
tqdm_module.tqdm.monitor_interval = 0  # no monitor thread: the worker pool forks

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
STATE = ".build"
PLAN_KEYS = "plan-keys.txt"  # in STATE: the planned keys in write order
FORMAT = "vmae-shards/1"
# Options that change the bytes written; the others (workers, timeouts, root) may differ between runs.
BYTE_SHAPING = ("short_side", "fps", "frames_fps", "codec", "keyframe_interval", "crf", "preset", "bframes",
                "pframe_interval", "stream_copy", "segment_seconds", "min_frames", "short_policy", "max_input_pixels",
                "samples_per_shard", "max_shard_bytes", "seed", "threads_per_worker")


# failures another try may not meet: storage that failed a read, ffmpeg killed from outside (OOM killer)
TRANSIENT_REASONS = ("io_error", "missing_file", "ffmpeg_killed")


class BuildError(RuntimeError):
    """The build cannot start or finish; the message says what to do."""


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
    params = {k: getattr(cfg, k) for k in BYTE_SHAPING}
    params["classes"] = classes
    params["ffmpeg"] = ffmpeg_version()
    return params


def ffmpeg_version() -> str:
    import subprocess

    out = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout
    return out.split("\n", 1)[0].replace("ffmpeg version ", "").split(" Copyright")[0]


def listed_card(input_path: Path, inputs: InputTable, split: str | None) -> dict:
    """What the input list holds, per split and class: with the digest and the counts in the shards, the dataset
    card two users compare to see whether they hold the same copy (VideoMAE issue 94)."""
    per_split: dict[str, Counter] = {}
    for (split_name, label), count in inputs.counts_per_split_and_label().items():
        per_split.setdefault(split_name or "(no split)", Counter())[label or "(unlabeled)"] += count
    return {"input_kind": input_kind(input_path), "split": split,
            "listed_per_split": {name: {"videos": sum(c.values()), "per_class": dict(sorted(c.items()))}
                                 for name, c in sorted(per_split.items())}}


def build_shards(input_path: Path, out_dir: Path, cfg: ShardConfig, progress: bool = True,
                 part: tuple[int, int] | None = None) -> BuildSummary:
    """Build ``out_dir`` from ``input_path``. With ``part=(i, n)``: only process (probe, encode) the i-th of n
    shares of the inputs into the build's state, side by side with the other parts (SLURM array tasks, nodes);
    the run without ``part`` then packs the shards, processing whatever no part did: the same bytes as one
    machine's build."""
    started = time.perf_counter()
    inputs = list_inputs(input_path, Path(cfg.root) if cfg.root else None, cfg.split)
    if not inputs:
        raise SourceError(f"{input_path}: no videos found (looked for {', '.join(sorted(VIDEO_EXTENSIONS))} and "
                          "folders of .jpg/.png frames); nothing was written")
    frame_folder = inputs.first_frame_folder()
    if frame_folder is not None and cfg.frames_fps <= 0:
        raise SourceError(f"{frame_folder} is a folder of extracted frames: give the rate they were taken at "
                          "with --frames-fps (e.g. 30); nothing was written")
    plan = make_plan(inputs, cfg.seed, read_class_file(Path(cfg.classes)) if cfg.classes else None)
    params = build_params(cfg, plan.classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    if part is not None:
        return _build_part(input_path, out_dir, cfg, plan, params, inputs, part, progress, started)
    with _exclusive(out_dir):
        finished = _finished_manifest(out_dir, params, plan)
        if finished is not None:
            log.info("%s already holds this build (same inputs and options): nothing to do", out_dir)
            return _summary_from_manifest(finished, len(inputs))
        for reject in plan.rejects:
            log.info("rejected %s: %s (%s)", reject.source, reject.reason, reject.detail)
        builder = _Builder(out_dir, cfg, plan, params, listed_card(input_path, inputs, cfg.split))
        summary = builder.run(progress)
    summary.inputs = len(inputs)
    summary.seconds = time.perf_counter() - started
    return summary


def _build_part(input_path: Path, out_dir: Path, cfg: ShardConfig, plan: Plan, params: dict, inputs: InputTable,
                part: tuple[int, int], progress: bool, started: float) -> BuildSummary:
    """Process every n-th planned input, from the i-th on, into the shared state; nothing is packed."""
    index, count = part
    if not 0 <= index < count:
        raise BuildError(f"--part {index}/{count}: the part is 0 to {count - 1} of {count}")
    with _exclusive(out_dir, shared=True):
        if _finished_manifest(out_dir, params, plan) is not None:
            log.info("%s already holds this build: nothing to do", out_dir)
            return BuildSummary(inputs=len(inputs), up_to_date=True)
        builder = _Builder(out_dir, cfg, plan, params, {})
        builder.check_plan()
        mine = plan.items[index::count]  # the plan's order is shuffled: every part gets a like mix of inputs
        bar = tqdm(total=len(mine), unit="video", disable=not progress, mininterval=0.5 if _is_tty() else 10.0,
                   dynamic_ncols=True, desc=f"part {index}/{count}")
        summary, rejected = BuildSummary(inputs=len(mine)), Counter()
        with bar:
            for _, result in builder.results(mine, 0):
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


@dataclass
class Progress:
    """How far a build has come, over every part and node writing to its folder."""

    total: int = 0  # planned inputs
    done: int = 0  # inputs processed (a result kept)
    rejected: Counter = field(default_factory=Counter)
    finished: bool = False  # manifest.json written: packed

    def line(self) -> str:
        rejects = ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected.items())) or "none"
        state = "packed" if self.finished else "processing" if self.done < self.total else "ready to pack"
        return f"{self.done}/{self.total} inputs processed, rejected {rejects}; {state}"


def build_progress(out_dir: Path, known: dict[str, str] | None = None) -> Progress:
    """Count the inputs that every part has processed so far; ``known`` (key → status) carries what an earlier
    call read, so watching a million-input build reads each result once."""
    known = {} if known is None else known
    if (out_dir / MANIFEST).exists():
        manifest = json.loads((out_dir / MANIFEST).read_text())
        return Progress(total=manifest["inputs"], done=manifest["inputs"], finished=True,
                        rejected=Counter(manifest["rejects"]))
    keys_file = out_dir / STATE / PLAN_KEYS
    if not keys_file.exists():
        raise BuildError(f"{out_dir}: no build has started there (no {STATE}/{PLAN_KEYS})")
    items, total = out_dir / STATE / "items", 0
    for key in read_keys(keys_file):
        total += 1
        if key not in known and (result := kept_result(items, key)) is not None:
            known[key] = result.get("reason", "ok") if result["status"] == "rejected" else "ok"
    rejected = Counter(status for status in known.values() if status != "ok")
    return Progress(total=total, done=len(known), rejected=rejected)


@contextlib.contextmanager
def _exclusive(out_dir: Path, shared: bool = False) -> Iterator[None]:
    """The build's lock on ``out_dir``: parts share it, the packing run holds it alone."""
    with (out_dir / ".lock").open("a") as fh:
        try:
            fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            what = "the packing run" if shared else "another build or part"
            raise BuildError(f"{what} is writing to {out_dir}; wait for it or choose another folder") from None
        yield


def _finished_manifest(out_dir: Path, params: dict, plan: Plan) -> dict | None:
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


@dataclass
class _Totals:
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


class _Builder:
    def __init__(self, out_dir: Path, cfg: ShardConfig, plan: Plan, params: dict, listed: dict):
        self.out_dir, self.cfg, self.plan, self.params = out_dir, cfg, plan, params
        self.listed = listed  # the dataset card's half that describes the input list
        self.state = out_dir / STATE
        self.items_dir = self.state / "items"
        self.records_dir = self.state / "shards"
        self.entries: list[dict] = []  # manifest entries of sealed shards
        self.rejects: list[dict] = []  # rejects of items consumed so far (sealed ones and the open shard's)
        self.totals = _Totals()
        self.pending = _Totals()  # what the open shard holds
        self.pending_rejects: list[dict] = []
        self.writer: ShardWriter | None = None
        self.position = (0, 0)  # next (item, sample) to write
        self.cleared_to = 0  # the results of items before this one are removed

    # -------------------------------------------------------------- state on disk
    def check_plan(self) -> None:
        """Make the state folders; refuse a state left by a build of other inputs or options."""
        self.items_dir.mkdir(parents=True, exist_ok=True)
        self.records_dir.mkdir(parents=True, exist_ok=True)
        plan_file = self.state / "plan.json"
        # the plan is stored beside the work: its keys in write order (a line each), and what they were made from
        plan_id = {"build": self.params, "inputs_digest": self.plan.inputs_digest, "inputs": len(self.plan.items),
                   "keys_sha256": self.plan.write_keys(self.state / PLAN_KEYS)}
        stored = json.loads(plan_file.read_text()) if plan_file.exists() else None
        if stored is not None and "keys" in stored:  # a state written when plan.json held the keys themselves
            keys = stored.pop("keys")
            stored.update(inputs=len(keys), keys_sha256=hashlib.sha256("".join(k + "\n" for k in keys).encode()
                                                                         ).hexdigest())
        if stored is not None and stored != plan_id:
            raise BuildError(f"{self.out_dir} holds an unfinished build with other inputs or options; re-run it "
                             f"with those, or delete {self.out_dir} to start over")
        _write_atomic(plan_file, json.dumps(plan_id))

    def _prepare_state(self) -> None:
        self.check_plan()
        for stray in self.out_dir.glob("*.tmp*"):
            stray.unlink()
        for stray in self.items_dir.glob("*.tmp*"):  # half-written results of killed workers
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

    # -------------------------------------------------------------- the run
    def run(self, progress: bool) -> BuildSummary:
        self._prepare_state()
        first_item, skip = self.position
        items = self.plan.items
        bar = tqdm(total=len(items), initial=first_item, unit="video", disable=not progress,
                   mininterval=0.5 if _is_tty() else 10.0, dynamic_ncols=True, desc="shards")
        rejected = Counter(r["reason"] for r in self.rejects)
        with bar:
            for index, result in self.results(items[first_item:], first_item):
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
        shutil.rmtree(self.state, ignore_errors=True)
        all_rejects = Counter(r["reason"] for r in [r.as_dict() for r in self.plan.rejects] + self.rejects)
        return BuildSummary(samples=self.totals.samples, shards=len(self.entries),
                            bytes=sum(e["bytes"] for e in self.entries), source_bytes=self.totals.source_bytes,
                            copied=self.totals.copied, transcoded=self.totals.transcoded,
                            rejected=dict(sorted(all_rejects.items())))

    def results(self, items: list[PlannedItem], offset: int) -> Iterator[tuple[int, dict]]:
        """Results in plan order, from workers kept a bounded window ahead of the packer; an input processed
        before (by a killed run, or by a --part) is read back, not processed again."""
        with (self._ray_tasks() if self.cfg.engine == "ray" else self._local_pool()) as (submit, wait, width):

            def start(item: PlannedItem) -> tuple[bool, object]:
                kept = kept_result(self.items_dir, item.key)
                return (True, kept) if kept is not None else (False, submit(item))

            todo = iter(enumerate(items, start=offset))
            window: deque[tuple[int, tuple[bool, object]]] = deque()
            for index, item in todo:
                window.append((index, start(item)))
                if len(window) >= width:
                    break
            while window:
                index, (ready, handle) = window.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    window.append((nxt[0], start(nxt[1])))
                yield index, handle if ready else wait(handle)

    @contextlib.contextmanager
    def _local_pool(self) -> Iterator[tuple[Callable, Callable, int]]:
        """A process pool, started only when an input needs processing: (submit, wait, window width)."""
        workers = self.cfg.workers or os.cpu_count() or 1
        with contextlib.ExitStack() as stack:
            pool: list[ProcessPoolExecutor] = []

            def submit(item: PlannedItem) -> Future:
                if not pool:
                    # forkserver: workers start lean (no torch, no open shard files) whatever this process imported
                    ctx = multiprocessing.get_context("forkserver")
                    ctx.set_forkserver_preload(["vmae.shards.build"])  # imported once in the server, not in every worker
                    pool.append(stack.enter_context(ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                                                        initializer=die_with_parent)))
                return pool[0].submit(process_item, item, self.cfg, self.items_dir)

            yield submit, Future.result, 2 * workers + 2

    @contextlib.contextmanager
    def _ray_tasks(self) -> Iterator[tuple[Callable, Callable, int]]:
        """One Ray task per input (Ray reschedules those of a lost node) on the cluster at $RAY_ADDRESS, else a
        local Ray: (submit, wait, window width). Workers on other nodes need the output folder on a shared
        filesystem."""
        import ray

        address = os.environ.get("RAY_ADDRESS")
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=address, num_cpus=None if address else self.cfg.workers or os.cpu_count(),
                     include_dashboard=False, log_to_driver=False)
        try:
            task = ray.remote(num_cpus=self.cfg.threads_per_worker, max_retries=3)(process_item)
            width = 2 * int(ray.cluster_resources().get("CPU", 1)) + 2
            yield (lambda item: task.remote(item, self.cfg, self.items_dir)), ray.get, width
        finally:
            if started_here:
                ray.shutdown()

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
            self.writer.write(sample["key"], {
                EXTENSION[self.cfg.codec]: video,
                "json": json.dumps(meta, sort_keys=True).encode(),
                "cls": str(meta["label"]).encode(),
                # int32 LE copies of the frame count and the label: a DALI graph reads them with dtypes=INT32
                "frames": struct.pack("<i", meta["frames"]),
                "label": struct.pack("<i", meta["label"]),
            })
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
            name = f"shard-{len(self.entries):06d}.tar"
            self.writer = ShardWriter(self.out_dir / name)

    def _seal(self, next_position: tuple[int, int]) -> None:
        entry = self.writer.seal()
        entry["frames"] = self.pending.frames
        record = {"entry": entry, "next": list(next_position), "rejects": self.pending_rejects,
                  "totals": self.pending.as_dict()}
        _write_atomic(self.records_dir / f"{len(self.entries):06d}.json", json.dumps(record))
        self.entries.append(entry)
        self.rejects.extend(self.pending_rejects)
        self.totals.add(record["totals"])
        self.pending, self.pending_rejects, self.writer = _Totals(), [], None
        # the results packed since the last seal are no longer needed (a million-input build seals thousands of times)
        for key in self.plan.items[self.cleared_to: next_position[0]].keys():
            shutil.rmtree(self.items_dir / key, ignore_errors=True)
        self.cleared_to = max(self.cleared_to, next_position[0])

    def _write_outputs(self) -> None:
        plan_rejects = [r.as_dict() for r in self.plan.rejects]
        lines = [json.dumps(r, sort_keys=True) for r in plan_rejects + self.rejects]
        _write_atomic(self.out_dir / REJECTS, "".join(line + "\n" for line in lines))
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
            "video_extension": EXTENSION[self.cfg.codec],
            "shards": self.entries,
            "rejects": dict(sorted(Counter(r["reason"] for r in plan_rejects + self.rejects).items())),
        }
        manifest["card"] = {**self.listed, "inputs_digest": self.plan.inputs_digest, "videos": self.totals.samples,
                            "videos_per_class": class_counts, "rejected": sum(manifest["rejects"].values())}
        _write_atomic(self.out_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


# ------------------------------------------------------------------ worker side

def process_item(item: PlannedItem, cfg: ShardConfig, items_dir: Path) -> dict:
    """Probe and encode one input into ``items_dir/<key>/``; the result (samples or a reject) is returned and kept.
    A transient failure (a read error on a network path, ffmpeg killed) is tried again after a growing wait."""
    kept = kept_result(items_dir, item.key)
    if kept is not None:
        return kept
    final = items_dir / item.key
    tmp = items_dir / f"{item.key}.tmp{os.getpid()}"
    for attempt in range(cfg.retries + 1):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        result = _attempt(item, cfg, tmp)
        if result.get("reason") not in TRANSIENT_REASONS or attempt == cfg.retries:
            break
        log.warning("%s: %s; trying again in %.0f s", item.source, result["detail"], cfg.retry_seconds * 2 ** attempt)
        time.sleep(cfg.retry_seconds * 2 ** attempt)
    if attempt:
        result["attempts"] = attempt + 1
        if result["status"] == "rejected":
            result["detail"] += f" ({attempt + 1} tries)"
    (tmp / "result.json").write_text(json.dumps(result))
    try:
        os.rename(tmp, final)
    except OSError:  # an earlier, killed run's worker finished the same input first: keep its identical result
        shutil.rmtree(tmp, ignore_errors=True)
    return kept_result(items_dir, item.key)


def kept_result(items_dir: Path, key: str) -> dict | None:
    """The result an input was given when it was processed (by this run, a killed one, or a --part), or None."""
    path = items_dir / key / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def _attempt(item: PlannedItem, cfg: ShardConfig, tmp: Path) -> dict:
    """One try at an input: its samples written into ``tmp``, or a reject (``tmp`` left empty)."""
    path = Path(item.path)
    base = {"key": item.key, "source": item.source, "source_bytes": 0}
    try:
        base["source_bytes"] = folder_bytes(path) if path.is_dir() else path.stat().st_size
        info = probe_frames(path, cfg.frames_fps) if path.is_dir() else probe(path)
        if info.width * info.height > cfg.max_input_pixels:
            raise RejectedInput("too_large", f"{info.width}x{info.height} is over shards.max_input_pixels="
                                             f"{cfg.max_input_pixels}; raise it to accept such videos")
        mode, outputs = encode(path, info, cfg, tmp)
        samples, dropped = _samples(item, info, cfg, mode, outputs)
        return {**base, "status": "ok", "samples": samples, "dropped": dropped}
    except RejectedInput as rej:
        result = {**base, "status": "rejected", "reason": rej.reason, "detail": rej.detail}
    except OSError as err:  # the file vanished or its (network) storage failed: worth another try
        reason = "missing_file" if err.errno == errno.ENOENT else "io_error"
        result = {**base, "status": "rejected", "reason": reason,
                  "detail": f"reading it failed: {err.strerror or err} (errno {err.errno})"}
    except Exception as err:  # noqa: BLE001 - one broken input must not stop a build of thousands
        log.exception("unexpected error on %s", item.source)
        result = {**base, "status": "rejected", "reason": "internal_error", "detail": f"{type(err).__name__}: {err}"}
    shutil.rmtree(tmp)
    tmp.mkdir()
    return result


def _samples(item: PlannedItem, info: VideoInfo, cfg: ShardConfig, mode: str,
             outputs: list[Encoded]) -> tuple[list[dict], list[dict]]:
    """Sample records of the kept outputs, and the trailing segments too short to keep (reported as rejects)."""
    fps = output_fps(info, cfg) if mode == "transcode" else info.fps
    width, height = output_size(info, cfg.short_side) if mode == "transcode" else (info.width, info.height)
    samples = []
    for n, out in enumerate(outputs):
        if out.frames < cfg.min_frames:
            continue
        key = item.key if len(outputs) == 1 else f"{item.key}_s{n:03d}"
        meta = {
            "key": key, "label": item.label, "label_name": item.label_name, "source": item.source,
            "segment": n if len(outputs) > 1 else None, "start_seconds": out.start_seconds,
            "frames": out.frames, "fps": fps, "duration": round(out.frames / fps, 3) if fps else None,
            "width": width, "height": height, "codec": cfg.codec, "mode": mode,
            "padded_frames": out.padded_frames,
            "source_info": {k: v for k, v in info.as_dict().items() if k != "size_bytes"},
            "build": {k: getattr(cfg, k) for k in ("short_side", "fps", "frames_fps", "codec", "keyframe_interval",
                                                     "crf", "preset", "bframes", "pframe_interval", "segment_seconds")},
        }
        samples.append({"key": key, "file": out.path.name, "bytes": out.path.stat().st_size, "meta": meta})
    if not samples:
        total = sum(o.frames for o in outputs)
        raise RejectedInput("too_short", f"{total} frames, fewer than shards.min_frames={cfg.min_frames}; "
                                         "set shards.short_policy=pad to keep it padded")
    dropped = [{"key": f"{item.key}_s{n:03d}", "detail": f"segment {n} has {o.frames} frames, fewer than "
                f"shards.min_frames={cfg.min_frames}"} for n, o in enumerate(outputs) if o.frames < cfg.min_frames]
    return samples, dropped


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # parts of one build may write the same file at once
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _is_tty() -> bool:
    import sys

    return sys.stderr.isatty()
