"""The DALI path: the DALI graph (``dali_graph``) driven for the loader contract, with the per-sample error
handling DALI lacks: a sample that fails or hangs the graph is left out and the graph rebuilt.

nvidia.dali is imported only where the graph is built or iterated: it is optional, and a machine without it
still imports this module (the loader registry, the tests of the helpers).
"""

from __future__ import annotations

import io
import logging
import math
import queue
import re
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.dali_graph import build_pipeline
from vmae.pipeline.data.protocol import Batch, Loader
from vmae.pipeline.data.shardset import SampleRef, ShardSet, open_shards, upcoming_shards
from vmae.pipeline.data.stats import LoaderStats
from vmae.pipeline.data.views import clip_dtype
from vmae.shards.format import index_path
from vmae.shards.probe import scan_packets
from vmae.shards.tars import INDEX_VERSION, read_index, read_member

log = logging.getLogger(__name__)

CPU_DECODABLE = {"webm", "mkv"}  # DALI's CPU video decoder reads VP8, VP9 and MJPEG only
BUILD_SECONDS = 60.0  # building a pipeline, on top of its first batches' decode deadline


class DecoderHang(RuntimeError):
    """The DALI graph has not handed over a batch within its deadline."""


class DeadlineCaller:
    """Runs calls on one daemon thread (a DALI pipeline is driven from one thread) and waits for each at most a
    deadline. A call past it is left running: a decoder stuck in native code cannot be interrupted, only abandoned
    (a daemon thread does not hold up the interpreter's exit)."""

    def __init__(self, device: torch.device):
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, args=(self.requests, device), daemon=True,
                                       name="vmae-dali")
        self.thread.start()
        weakref.finalize(self, self.requests.put, None)  # the thread ends with its caller (unless stuck in a call)

    @staticmethod
    def _serve(requests: queue.SimpleQueue, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.set_device(device)  # the iterator copies onto this thread's current device
        while (request := requests.get()) is not None:
            call, box, done = request
            try:
                box.append((True, call()))
            except BaseException as err:  # noqa: BLE001 - handed to the caller, who re-raises it
                box.append((False, err))
            done.set()
            del request, call, box, done  # hold nothing of the caller's while waiting for the next call

    def __call__(self, call: Callable, deadline: float):
        box: list = []
        done = threading.Event()
        self.requests.put((call, box, done))
        if not done.wait(deadline or None):
            raise DecoderHang(f"no batch after {deadline:.0f} s")
        ok, value = box[0]
        if ok:
            return value
        raise value


class DaliLoader(Loader):
    """Batches from the DALI graph in the loader contract; ``device`` picks NVDEC (cuda) or DALI's CPU decoder.

    DALI has no per-sample error handling: an undecodable sample fails the pipeline, which is then unusable.
    The loader reads the failing member from DALI's message, counts it, leaves it out of a private copy of its
    shard's index, rebuilds the pipeline (with a new seed, so the epoch goes on with other samples) and fetches
    the batch again: every epoch keeps its number of steps and every batch its shape. A sample whose stored frame
    count is more than its stream holds (DALI would decode black frames past the end) is left out the same way,
    and so is a batch the graph does not deliver within its deadline (the hung pipeline is abandoned).

    The rank's part of each epoch is cut per batch: ``accumulation`` is accepted, for the one loader signature,
    and does not change it.
    """

    backend = "dali"
    max_hangs = 3  # abandoned pipelines keep their threads and memory: past this many, stop with advice

    def __init__(self, dataset: Path | str, cfg: DataConfig, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", accumulation: int = 1):
        if cfg.limit:
            raise ValueError("data.limit (and --overfit) runs on the CPU path: set data.backend=cpu")
        self.shardset = open_shards(dataset, cfg)
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.device = torch.device(device)
        self.decode_device = "mixed" if self.device.type == "cuda" else "cpu"
        if self.decode_device == "cpu" and self.shardset.video_ext not in CPU_DECODABLE:
            raise ValueError(f"{dataset}: DALI's CPU decoder cannot read .{self.shardset.video_ext} (H.264) shards; "
                             "use the cpu backend (data.backend=cpu), or build shards with --codec vp9")
        if cfg.test_crops > 1 and not cfg.augment:
            raise ValueError("data.test_crops > 1 is cut by the CPU path only: use data.backend=cpu for evaluation")
        self.stats = LoaderStats()
        self.outputs = [f"view{k}" for k in range(cfg.views)] + ["label", "source", "frames", "asked", "decoded",
                                                                  "brightest"]
        self.quarantine: dict[str, set[int]] = {}  # tar path → data offsets of members left out
        self._private = tempfile.TemporaryDirectory(prefix="vmae-dali-index-")  # this rank's index copies
        self.rebuilds = 0
        self.abandoned: list = []  # hung pipelines: kept, since destroying one would wait for its stuck threads
        self.per_epoch = self.shardset.steps_per_epoch(world_size, cfg.batch_size, cfg.streams)
        self.epoch, self.built_epoch, self.skip = 0, None, 0
        self.pipe = self.iterator = None  # the DALI pipeline of this epoch and its iterator, once built
        # the decode deadline is per sample; DALI's threads decode a batch's samples side by side
        self.batch_deadline = cfg.decode_deadline * math.ceil(cfg.batch_size / max(1, cfg.worker_count))
        self.call = DeadlineCaller(self.device)
        self._build()

    def _build(self) -> None:
        self.built_epoch = self.epoch
        # 0: no deadline (data.decode_deadline=0)
        deadline = BUILD_SECONDS + self.batch_deadline * (self.cfg.prefetch + 1) if self.batch_deadline else 0
        while True:
            try:  # the iterator runs the pipeline at once to prefetch: a bad or hung sample can fail it here
                self.call(self._make_iterator, deadline)
                return
            except DecoderHang as hang:
                self._abandon(hang)
            except RuntimeError as err:
                self._leave_out(err)

    def _make_iterator(self) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy  # optional: see the module

        device_id = (self.device.index or 0) if self.device.type == "cuda" else None
        cfg = replace(self.cfg, seed=self.cfg.seed + 1_000_003 * self.epoch + 1000 * self.rebuilds)
        files, indexes = self._epoch_files()
        # only this rank's files: DALI's reader opens and parses every file it is given before its first batch
        self.pipe = build_pipeline(files, indexes, self.shardset.video_ext, cfg, self.decode_device, 0, 1, device_id,
                                   threads=self.cfg.worker_count, align=self.shardset.frame_alignment(cfg.stride))
        self.pipe.build()
        # The reader drops the last partial batch; auto_reset starts the next epoch when one ends.
        self.iterator = DALIGenericIterator([self.pipe], self.outputs, reader_name="reader",
                                            last_batch_policy=LastBatchPolicy.DROP, auto_reset=True)

    def _epoch_files(self) -> tuple[list[str], list[str]]:
        """This rank's shards this epoch, each with an index copy listing only the samples it takes."""
        part = self.shardset.rank_part(self.epoch, self.cfg.seed, 0, self.rank, self.world_size, self.cfg.batch_size,
                                       self.cfg.streams)
        files = rank_index_copies(self.shardset, part, Path(self._private.name), self.quarantine)
        if self.shardset.remote:
            self._prefetch_next_epoch({ref.shard for ref in part})
        return files

    def _prefetch_next_epoch(self, current: set[int]) -> None:
        """A remote dataset's shards of the next epoch download while this one trains, as many as data.cache_gb
        leaves room for beside this epoch's (DALI reads this epoch's files from the cache until it ends)."""
        upcoming = self.shardset.rank_part(self.epoch + 1, self.cfg.seed, 0, self.rank, self.world_size,
                                           self.cfg.batch_size, self.cfg.streams)
        room = self.cfg.cache_gb * 2**30 - sum(self.shardset.entries[s]["bytes"] for s in current)
        ahead = []
        for shard in upcoming_shards(upcoming, 0, len(upcoming)):
            if shard in current:
                continue
            room -= self.shardset.entries[shard]["bytes"]
            if room < 0:
                break
            ahead.append(shard)
        self.shardset.prefetch(ahead)

    def set_epoch(self, epoch: int, samples_seen: int = 0) -> None:
        """Start ``epoch`` (its own shards and order); a resumed run skips ``samples_seen`` videos."""
        self.epoch = epoch
        self.skip = samples_seen // self.cfg.batch_size

    def close(self) -> None:
        """Drop this epoch's pipeline now, as the CPU path stops its workers (the next iteration builds a fresh one)."""
        self.pipe = self.iterator = self.built_epoch = None

    def __len__(self) -> int:
        return self.per_epoch - self.skip

    def __iter__(self) -> Iterator[Batch]:
        k, size = self.cfg.views, self.cfg.batch_size
        if self.built_epoch != self.epoch:
            self._build()
        for step in range(self.per_epoch):
            waited = time.perf_counter()
            batch = self._next_batch()
            if step < self.skip:
                continue
            # [B, K, 3, T, S, S] → [B·K, ...]: the clips of one video stay adjacent
            video = torch.stack([batch[name] for name in self.outputs[:k]], dim=1)
            decoded = batch["decoded"].view(-1).cpu()
            padded = repeat_last_frames(video, decoded, self.cfg)
            video = video.flatten(0, 1).to(clip_dtype(self.cfg))
            label = batch["label"].view(-1).long().repeat_interleave(k)
            self.stats.seconds += time.perf_counter() - waited
            self.stats.add({"videos": size, "clips": size * k, "decoded_frames": int(decoded.sum()),
                            "padded": padded, "failed": {}})
            yield {"video": video.to(self.device, non_blocking=True), "label": label.to(self.device),
                   "key": [_key_of(row) for row in batch["source"].cpu().numpy()]}
        self.skip = 0
        self.epoch += 1

    def _next_batch(self) -> dict:
        while True:
            try:
                batch = self.call(lambda: next(self.iterator), self.batch_deadline)[0]
            except StopIteration:
                continue  # auto_reset: the reader has started its next epoch
            except DecoderHang as hang:
                self._abandon(hang)
                self._build()
                continue
            except RuntimeError as err:
                self._leave_out(err)
                self._build()
                continue
            overcounted = self._overcounted(batch)
            if not overcounted:
                return batch
            for tar, offset, key, detail in overcounted:
                self._quarantine(tar, offset, key, "frame_count", detail)
            self._build()

    def _overcounted(self, batch: dict) -> list[tuple[str, int, str, str]]:
        """Samples whose stream holds fewer frames than their stored count: a run that came back short, or (frames
        asked by index) an all-black decoded frame, confirmed by a demux of the member (a black frame alone may be
        a real fade)."""
        found = []
        short = (batch["decoded"].view(-1) < batch["asked"].view(-1)).cpu()
        black = (batch["brightest"].view(self.cfg.batch_size, -1) == 0).any(dim=1).cpu()
        for row in np.flatnonzero((short | black).numpy()):
            tar, offset, member = _source_of(batch["source"][row].cpu().numpy())
            stored = int(batch["frames"][row].view(-1)[0])
            held = _stream_frames(tar, offset)
            if held < stored:
                found.append((tar, offset, member.split(".", 1)[0], f"its .frames says {stored}, its stream holds "
                                                                     f"{held}"))
        return found

    def _abandon(self, hang: DecoderHang) -> None:
        """Leave a hung pipeline behind (its threads cannot be stopped), count it, and start a fresh one."""
        self.abandoned.append((self.pipe, self.call))
        self.stats.failed["decode_timeout"] += 1
        if len(self.abandoned) > self.max_hangs:
            raise RuntimeError(f"the DALI graph hung {len(self.abandoned)} times ({hang}; data.decode_deadline="
                               f"{self.cfg.decode_deadline:g} s per sample): DALI hands over whole batches, so the "
                               "sample is not known. Run `vmae shards verify` on the dataset, or use data.backend=cpu, "
                               "which abandons and names each hung sample") from hang
        log.warning("the DALI graph has not delivered a batch in %.0f s (data.decode_deadline=%g s per sample): "
                    "its pipeline is abandoned and a fresh one goes on; the sample is not known (DALI hands over "
                    "whole batches)", self.batch_deadline, self.cfg.decode_deadline)
        self.rebuilds += 1
        self.call = DeadlineCaller(self.device)

    def _leave_out(self, err: RuntimeError) -> None:
        """Take the sample DALI names in ``err`` out of this loader's copy of its shard index (or re-raise)."""
        failed = FAILED_MEMBER.search(str(err))
        if failed is None:
            raise err
        key = failed.group("member").split(".", 1)[0]
        self._quarantine(failed.group("tar"), int(failed.group("offset")), key, "decode_error",
                         "DALI could not decode it", cause=err)

    def _quarantine(self, tar: str, offset: int, key: str, reason: str, detail: str,
                    cause: Exception | None = None) -> None:
        """Count a bad sample and leave it out of a private copy of its shard's index; the next build skips it."""
        if offset in self.quarantine.get(tar, set()):
            raise RuntimeError(f"{key} in {tar} failed again after it was left out") from cause
        self.quarantine.setdefault(tar, set()).add(offset)
        self.stats.failed[reason] += 1
        log.warning("sample %s (%s) left out: %s; the batch is fetched again", key, Path(tar).name, detail)
        self.rebuilds += 1


def repeat_last_frames(video: torch.Tensor, decoded: torch.Tensor, cfg: DataConfig) -> int:
    """A video shorter than one clip decodes fewer than T frames of its run (its views all start at 0); each view's
    frames past them repeat the last one, as the CPU path's plan does. In place on [B, K, 3, T, S, S]; the number
    of such videos."""
    if cfg.sampling == "segment":
        return 0  # segment sampling asks for T frames by index, repeating the last itself
    short = torch.nonzero(decoded < cfg.frames).view(-1).tolist()
    for row in short:
        held = int(decoded[row])
        video[row, :, :, held:] = video[row, :, :, held - 1:held]
    return len(short)


def rank_index_copies(shardset: ShardSet, part: list[SampleRef], folder: Path,
                      left_out: dict[str, set[int]] | None = None) -> tuple[list[str], list[str]]:
    """The shards holding ``part`` and, in ``folder``, a copy of each one's index listing only the samples of
    ``part`` (less the data offsets in ``left_out``): what DALI's reader is given, so it parses nothing else."""
    rows: dict[int, set[int]] = {}
    for ref in part:
        rows.setdefault(ref.shard, set()).add(ref.row)
    files, indexes = [], []
    for shard, wanted in rows.items():
        tar = shardset.local(shard)  # a remote dataset's shard is staged here first
        skip = (left_out or {}).get(str(tar), set())
        if len(wanted) == shardset.counts[shard] and not skip:  # the whole shard: its own index serves
            files.append(str(tar))
            indexes.append(str(index_path(tar)))
            continue
        kept = [line for row, line in enumerate(index_path(tar).read_text().splitlines()[1:])
                if row in wanted and not any(int(offset) in skip for offset in line.split()[1::4])]
        if not kept:  # every sample it would give was left out
            continue
        index = folder / f"{shard:06d}.idx"
        index.write_text(f"{INDEX_VERSION} {len(kept)}\n" + "".join(line + "\n" for line in kept))
        files.append(str(tar))
        indexes.append(str(index))
    return files, indexes


def _stream_frames(tar: str, offset: int) -> int:
    """Frames the video member at ``offset`` of ``tar`` holds, by demuxing it (no decode)."""
    sizes = {o: size for _, members in read_index(index_path(Path(tar))) for o, size in members.values()}
    return scan_packets(io.BytesIO(read_member(Path(tar), offset, sizes[offset]))).packets


def _source_of(source: np.ndarray) -> tuple[str, int, str]:
    """(tar, data offset, member) from DALI's zero-padded "<tar>:<offset>:<key>.<ext>"."""
    tar, offset, member = bytes(source).rstrip(b"\0").decode(errors="replace").rsplit(":", 2)
    return tar, int(offset), member


def _key_of(source: np.ndarray) -> str:
    """The sample key in DALI's zero-padded "<tar>:<offset>:<key>.<ext>"."""
    return _source_of(source)[2].split(".", 1)[0]


# DALI names the failing sample as "<tar>:<data offset>:<member>" in its error message.
FAILED_MEMBER = re.compile(r'"(?P<tar>[^"]+\.tar):(?P<offset>\d+):(?P<member>[^"]+)"')
