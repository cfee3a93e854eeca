"""The CPU path: torch DataLoader workers read samples straight from the shards (one seek each, through the
DALI index), decode the union of the K views' frames once, and cut the views.

Each worker builds whole batches (worker w makes batches w, w + W, ...), so the DataLoader's in-order
round-robin yields the rank's batches in order and the stream does not depend on the number of workers.

A decode that never returns (decord spins forever, holding the GIL, on a container that over-reports its frame
count) cannot hang the run: each worker notes in shared memory which sample it is loading and since when; the
trainer's process, while it waits for a batch, finds a sample past ``data.decode_deadline``, kills the workers,
and restarts them at the same batch with that sample abandoned (counted and replaced like any bad sample).

Workers write batches into a pool of shared memory that the trainer's process made (``BatchPool``) and send only
which buffer they filled: no shared-memory file per batch (first writes to fresh pages cost as much as cropping
and resizing the clip), and nothing left behind when a worker is killed.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import mmap
import os
import signal
import struct
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data._utils import signal_handling

from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.decode import DecodeError, decode_frames
from vmae.pipeline.data.sampling import ViewPlan, plan_views, sample_rng
from vmae.pipeline.data.shardset import SampleRef, ShardSet, open_shards, upcoming_shards
from vmae.pipeline.data.stats import LoaderStats
from vmae.pipeline.data.views import make_views

log = logging.getLogger(__name__)
PREFETCH_SHARDS = 2  # of a remote dataset, staged ahead of each worker's reading


@dataclass
class LoadedSample:
    key: str
    label: int
    plan: ViewPlan
    decoded: np.ndarray  # the distinct frame indices decoded
    work: int  # frames the decoder produced to get them (keyframe runs included)
    inverse: np.ndarray  # [K, T] row of each view frame in ``frames``
    frames: list[np.ndarray]  # uint8 [H, W, 3] each, the distinct frames decoded
    clips: torch.Tensor  # [K, 3, T, S, S]
    seconds: float  # spent in the decoder


class BadSample(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class BatchStream(IterableDataset):
    """One rank's batches, epoch after epoch, from (``epoch``, ``start_batch``) on, without end.

    Batch g of the stream (counted from the start point) goes to worker g mod W, so the DataLoader's in-order
    round-robin hands them out in order across epoch boundaries too, and the workers live for the whole run
    (no start-up, no decoder initialisation per epoch).
    """

    def __init__(self, shardset: ShardSet, cfg: DataConfig, rank: int, world_size: int, epoch: int,
                 start_batch: int = 0, accumulation: int = 1, watch: "WorkerWatch | None" = None,
                 abandoned: frozenset[SampleRef] = frozenset(), pool: "BatchPool | None" = None):
        self.shardset, self.cfg = shardset, cfg
        self.rank, self.world_size, self.epoch, self.start_batch = rank, world_size, epoch, start_batch
        self.chunk = cfg.batch_size * accumulation  # videos this rank takes per optimizer step
        self.watch, self.abandoned, self.pool = watch, abandoned, pool

    def batches_per_epoch(self) -> int:
        steps = self.shardset.steps_per_epoch(self.world_size, self.chunk, self.cfg.streams)
        return steps * (self.chunk // self.cfg.batch_size)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        per_epoch, size = self.batches_per_epoch(), self.cfg.batch_size
        part, reader, part_epoch = None, None, None
        g = worker
        while True:
            epoch, b = divmod(self.start_batch + g, per_epoch)
            epoch += self.epoch
            if epoch != part_epoch:
                part = self.shardset.rank_part(epoch, self.cfg.seed, self.cfg.shuffle_buffer, self.rank,
                                               self.world_size, self.chunk, self.cfg.streams)
                reader = SampleReader(self.shardset, self.cfg, epoch, reader, self.watch, self.abandoned,
                                      self.pool)
                part_epoch = epoch
            if self.shardset.remote:  # stage the shards this worker reads next
                self.shardset.prefetch(upcoming_shards(part, (b + 1) * size, PREFETCH_SHARDS))
            yield reader.batch(part[b * size:(b + 1) * size])
            g += workers


class SampleReader:
    """Reads, decodes and cuts samples inside one worker; counts and replaces the ones that fail."""

    def __init__(self, shardset: ShardSet, cfg: DataConfig, epoch: int, previous: "SampleReader | None" = None,
                 watch: "WorkerWatch | None" = None, abandoned: frozenset[SampleRef] = frozenset(),
                 pool: "BatchPool | None" = None):
        self.shardset, self.cfg, self.epoch = shardset, cfg, epoch
        self.watch, self.abandoned, self.pool = watch, abandoned, pool
        # open shard files, keys already reported and the spare clips carry over from the previous epoch
        self.files: dict[int, object] = previous.files if previous else {}
        self.reported: set[str] = previous.reported if previous else set()
        self.spare: tuple[torch.Tensor, int] | None = previous.spare if previous else None
        self.align = shardset.frame_alignment(cfg.stride)

    def batch(self, refs: list[SampleRef]) -> dict:
        stats = {"videos": 0, "clips": 0, "decoded_frames": 0, "padded": 0, "failed": Counter(),
                 "decode_seconds": 0.0}
        k = self.cfg.views
        shape = (len(refs) * k, 3, self.cfg.frames, self.cfg.crop_size, self.cfg.crop_size)
        dtype = clip_dtype(self.cfg)
        video, buffer = self.pool.take(shape, dtype) if self.pool else (shared_empty(shape, dtype), None)
        labels, keys, bad = [], [], []
        for i, ref in enumerate(refs):
            rows = video[i * k:(i + 1) * k]
            try:
                if ref in self.abandoned:
                    raise BadSample("decode_timeout", f"abandoned: it took longer than data.decode_deadline="
                                                      f"{self.cfg.decode_deadline:g} s before")
                with self.watch.loading(ref) if self.watch else contextlib.nullcontext():
                    loaded = self.load(ref, out=rows)
            except BadSample as err:
                key = _key_of(self.shardset, ref)
                stats["failed"][err.reason] += 1
                if key not in self.reported:
                    self.reported.add(key)
                    log.warning("sample %s (%s) replaced: %s: %s", key, self.shardset.shards[ref.shard].name,
                                err.reason, err)
                bad.append(i)
                labels.append(-1), keys.append(key)
                continue
            labels.append(loaded.label), keys.append(loaded.key)
            stats["decoded_frames"] += loaded.work
            stats["padded"] += int(loaded.plan.padded)
            stats["decode_seconds"] += loaded.seconds
        good = [i for i in range(len(refs)) if i not in bad]
        if good and self.spare is None:  # kept once: only a batch where every sample fails needs it
            self.spare = (video[good[0] * k:(good[0] + 1) * k].clone(), labels[good[0]])
        elif self.spare is None:
            raise RuntimeError(f"every sample of a batch failed to load and none loaded before it "
                               f"({dict(stats['failed'])}); run `vmae shards verify {self.shardset.dataset}`")
        for n, i in enumerate(bad):  # replaced from the same batch, so every batch keeps its shape
            if good:
                source = good[n % len(good)]
                video[i * k:(i + 1) * k] = video[source * k:(source + 1) * k]
                labels[i] = labels[source]
            else:
                video[i * k:(i + 1) * k], labels[i] = self.spare
        stats["videos"] = len(refs) - len(bad)
        stats["clips"] = stats["videos"] * k
        # a plain dict: torch's default_convert copies a Counter with update(), which would double its counts
        stats["failed"] = dict(stats["failed"])
        # a pool buffer is not sent, only named; labels go as a list: a tensor would travel as a shared-memory file
        return {"video": None if buffer else video, "buffer": buffer, "label": labels, "key": keys, "stats": stats}

    def load(self, ref: SampleRef, out: torch.Tensor | None = None) -> "LoadedSample":
        """Read, decode and cut one sample; raises BadSample with a reason when it cannot."""
        try:
            key, members = self.shardset.members(ref)
        except (OSError, IndexError, ValueError) as err:
            raise BadSample("unreadable_shard", f"index of {self.shardset.shards[ref.shard].name}: {err}") from None
        ext = self.shardset.video_ext
        missing = [m for m in (ext, "json", "frames", "label") if m not in members]
        if missing:
            raise BadSample("missing_member", f"no .{', .'.join(missing)} member")
        blob, base = self._read_span(ref, members)
        part = {m: blob[o - base:o - base + n] for m, (o, n) in members.items()}
        try:
            meta = json.loads(part["json"])
            height, width = int(meta["height"]), int(meta["width"])
            num_frames = struct.unpack("<i", part["frames"])[0]
            label = struct.unpack("<i", part["label"])[0]
        except (ValueError, KeyError, TypeError, struct.error) as err:
            raise BadSample("bad_metadata", f"{type(err).__name__}: {err}") from None
        if num_frames <= 0:
            raise BadSample("bad_metadata", f"frame count {num_frames}")
        rng = sample_rng(self.cfg.seed, self.epoch, key)
        plan = plan_views(num_frames, height, width, self.cfg, rng, self.align)
        unique, inverse = plan.union()
        started, produced = time.perf_counter(), []
        try:
            frames = decode_frames(part[ext], unique, self.cfg.cpu_decoder, decoded=produced)
        except DecodeError as err:
            raise BadSample("decode_error", str(err)) from None
        decode_seconds = time.perf_counter() - started
        if frames[0].shape[:2] != (height, width):
            raise BadSample("bad_metadata", f"frames are {tuple(frames[0].shape[:2])}, the sample says "
                                            f"{height}x{width}")
        clips = make_views(frames, plan, inverse, self.cfg, out=out)
        work = len(produced) or len(unique)  # torchcodec does not say what it decoded
        return LoadedSample(key, label, plan, unique, work, inverse, frames, clips, decode_seconds)

    def _read_span(self, ref: SampleRef, members: dict) -> tuple[bytes, int]:
        """One read covering every member: they are adjacent in the tar."""
        start = min(o for o, _ in members.values())
        end = max(o + n for o, n in members.values())
        try:
            fh = self.files.get(ref.shard)
            if fh is None:
                fh = self.files[ref.shard] = self.shardset.local(ref.shard).open("rb")
            fh.seek(start)
            blob = fh.read(end - start)
        except OSError as err:
            self.files.pop(ref.shard, None)
            raise BadSample("unreadable_shard", str(err)) from None
        if len(blob) != end - start:
            raise BadSample("truncated_shard", f"read {len(blob)} of {end - start} bytes")
        return blob, start


class BatchPool:
    """Batch buffers in shared memory, made by the trainer's process for its workers, written again once it has
    dropped what it handed out.

    A worker takes a free buffer, writes a batch into it and sends only the buffer's number; the trainer's process
    hands out a tensor over that memory and marks the buffer free when the last reference to it dies (a finalizer
    on the storage, which views and numpy arrays of the batch keep alive too). Against a fresh shared-memory tensor
    per batch this saves the page faults of first writes (4.5 ms for one 9.6 MB float clip on the 2-core machine,
    as much as its crop and resize) and sends nothing through a file: the memory is anonymous and shared by fork,
    so a worker killed mid-batch leaves nothing in /dev/shm. When every buffer of a worker is held, it makes a
    shared tensor as before. Pages are only allocated when first written.
    """

    def __init__(self, workers: int, per_worker: int, shape: tuple[int, ...], dtype: torch.dtype):
        self.shape, self.dtype = shape, dtype
        nbytes = int(np.prod(shape)) * dtype.itemsize
        self.memory = [[mmap.mmap(-1, nbytes) for _ in range(per_worker)] for _ in range(workers)]
        self.busy = np.frombuffer(mmap.mmap(-1, workers * per_worker), dtype=np.uint8).reshape(workers, per_worker)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """In a worker: a tensor to write a batch into, and the (worker, buffer) it is (None: not from the pool)."""
        info = get_worker_info()
        if info is not None and shape == self.shape and dtype == self.dtype:
            for n, busy in enumerate(self.busy[info.id]):
                if not busy:
                    self.busy[info.id, n] = 1
                    return self.tensor((info.id, n)), (info.id, n)
        return shared_empty(shape, dtype), None

    def tensor(self, buffer: tuple[int, int]) -> torch.Tensor:
        worker, n = buffer
        return torch.frombuffer(self.memory[worker][n], dtype=self.dtype).view(self.shape)

    def hand_out(self, buffer: tuple[int, int]) -> torch.Tensor:
        """In the trainer's process: the batch in ``buffer``, which its worker may fill again once this is dropped."""
        worker, n = buffer  # a list by now: the DataLoader's conversion of what workers send makes tuples lists
        tensor = self.tensor((worker, n))
        weakref.finalize(tensor.untyped_storage(), _mark_free, self.busy, worker, n)
        return tensor


def _mark_free(busy: np.ndarray, worker: int, n: int) -> None:
    busy[worker, n] = 0


def clip_dtype(cfg: DataConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32


def shared_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A tensor in shared memory when made in a DataLoader worker, so handing it to the main process copies
    nothing (what torch's default collate does for its batches)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty(0, dtype=dtype).new(storage).view(shape)


class CpuLoader:
    """The CPU path; iterate it once per epoch (``set_epoch`` first, as with a DistributedSampler).

    One DataLoader and its workers serve the whole run: consecutive epochs continue the same stream; a
    ``set_epoch`` that jumps elsewhere (a resume) starts a new one.
    """

    backend = "cpu"

    def __init__(self, dataset: Path, cfg: DataConfig, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", accumulation: int = 1):
        self.shardset = open_shards(dataset, cfg)
        self.cfg, self.rank, self.world_size, self.accumulation = cfg, rank, world_size, accumulation
        self.device = torch.device(device)
        self.epoch, self.start_batch = 0, 0
        self.stats = LoaderStats()
        self._stream = None  # (iterator, the (epoch, batch) it yields next)
        self.watch: WorkerWatch | None = None
        self.pool: BatchPool | None = None
        self.abandoned: dict[SampleRef, str] = {}  # samples whose load missed the deadline: their keys
        self._stop_workers: weakref.finalize | None = None
        self.per_epoch = BatchStream(self.shardset, cfg, rank, world_size, 0, 0, accumulation).batches_per_epoch()

    def close(self) -> None:
        """Stop the decode workers now (they also stop when the loader is dropped, or at exit)."""
        if self._stop_workers is not None:
            self._stop_workers()
        self._stream = None

    def set_epoch(self, epoch: int, samples_seen: int = 0) -> None:
        """Start ``epoch``; ``samples_seen`` (videos this rank already took in it) resumes mid-epoch."""
        self.epoch = epoch
        self.start_batch = samples_seen // self.cfg.batch_size

    def __len__(self) -> int:
        return self.per_epoch - self.start_batch

    def __iter__(self):
        position = (self.epoch, self.start_batch)
        if self._stream is None or self._stream[1] != position:
            self._stream = (self._start(position), position)
        waited = time.perf_counter()
        for b in range(self.start_batch, self.per_epoch):
            batch = self._next_batch()
            self.stats.add(batch.pop("stats"))
            buffer = batch.pop("buffer")
            if buffer is not None:
                batch["video"] = self.pool.hand_out(buffer)
            batch["label"] = torch.tensor(batch["label"]).repeat_interleave(self.cfg.views)
            batch["video"] = batch["video"].to(self.device, non_blocking=True)
            batch["label"] = batch["label"].to(self.device, non_blocking=True)
            self.stats.seconds += time.perf_counter() - waited
            self._stream = (self._stream[0], (self.epoch, b + 1) if b + 1 < self.per_epoch else (self.epoch + 1, 0))
            yield batch
            waited = time.perf_counter()
        self.epoch, self.start_batch = self.epoch + 1, 0  # unless set_epoch says otherwise, the next epoch

    def _next_batch(self) -> dict:
        """The stream's next batch; a sample past the decode deadline is abandoned on the way (the DataLoader
        times out every poll interval so that this process can look at what the workers are doing)."""
        while True:
            try:
                return next(self._stream[0])
            except RuntimeError as err:
                if not str(err).startswith("DataLoader timed out"):
                    raise
            overdue = self.watch.overdue(self.cfg.decode_deadline) if self.watch else []
            if overdue:
                self._abandon(overdue)

    def _abandon(self, overdue: list[tuple[SampleRef, float]]) -> None:
        """Kill the workers (one of them is stuck) and restart the stream at the batch it owes."""
        for ref, seconds in overdue:
            key = self.abandoned[ref] = _key_of(self.shardset, ref)
            log.warning("sample %s (%s) abandoned: its load has run %.0f s, past data.decode_deadline=%g s; the "
                        "decode workers restart at the same batch and the sample is replaced", key,
                        self.shardset.shards[ref.shard].name, seconds, self.cfg.decode_deadline)
        position = self._stream[1]
        self._stream = (self._start(position), position)

    def _start(self, position: tuple[int, int]):
        """A new stream of workers at ``position``; the previous one's workers are stopped.

        Workers are killed rather than left to torch's shutdown: they ignore SIGTERM (see ``_init_worker``), and
        an iterator that only the garbage collector reaches, or one still alive at exit, would otherwise leave
        them running and multiprocessing's exit handler joining them forever."""
        self.close()
        # the workers are forked: garbage of this process (say a PyAV converter in a reference cycle, with its
        # FFmpeg slice threads) must not be collected in them, where those threads do not exist (seen hanging in
        # pthread_cond_destroy); collected here, and what is left frozen out of the children's collections
        gc.collect()
        gc.freeze()
        try:
            iterator = iter(self._dataloader(*position))
        finally:
            gc.unfreeze()
        self._stop_workers = weakref.finalize(self, kill_workers, iterator)
        return iterator

    def _dataloader(self, epoch: int, start_batch: int) -> DataLoader:
        workers = self.cfg.worker_count
        # batches come back as named shared-memory files: torch's default passes each tensor's file descriptor
        # through a thread of the worker that made it, and a worker stuck in C with the GIL held after sending a
        # batch would then block this process in the middle of receiving it, past any deadline
        torch.multiprocessing.set_sharing_strategy("file_system")
        self.watch = WorkerWatch(workers) if self.cfg.decode_deadline else None
        # a worker's batches in flight: the DataLoader's prefetch, the one it is making, the trainer's two. For a
        # GPU the batches are pinned by the DataLoader's thread instead (a copy from a pool buffer would not be)
        shape = (self.cfg.batch_size * self.cfg.views, 3, self.cfg.frames, self.cfg.crop_size, self.cfg.crop_size)
        pooled = workers and self.device.type == "cpu"
        self.pool = BatchPool(workers, self.cfg.prefetch + 3, shape, clip_dtype(self.cfg)) if pooled else None
        stream = BatchStream(self.shardset, self.cfg, self.rank, self.world_size, epoch, start_batch,
                             self.accumulation, self.watch, frozenset(self.abandoned), self.pool)
        poll = min(5.0, max(0.2, self.cfg.decode_deadline / 4)) if self.cfg.decode_deadline else 0
        return DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=self.cfg.prefetch,
                          multiprocessing_context="fork" if workers else None,  # the pool and watch are shared by fork
                          pin_memory=self.device.type == "cuda", persistent_workers=False, timeout=poll,
                          worker_init_fn=functools.partial(_init_worker, nice=self.cfg.worker_nice))


class WorkerWatch:
    """Which sample each decode worker is loading and since when (pid, shard, row, start), in shared memory.

    A decoder stuck in C with the GIL held leaves nothing inside its worker able to notice; the trainer's
    process reads these slots instead."""

    def __init__(self, workers: int):
        # anonymous shared memory, inherited by the forked workers: nothing in /dev/shm to outlive them
        self.slots = np.frombuffer(mmap.mmap(-1, workers * 4 * 8), dtype=np.float64).reshape(workers, 4)

    @contextlib.contextmanager
    def loading(self, ref: SampleRef):
        info = get_worker_info()
        slot = self.slots[info.id] if info else None
        if slot is not None:
            slot[:3] = os.getpid(), ref.shard, ref.row
            slot[3] = time.monotonic()  # written last and cleared first: a reader never sees a half-made slot
        try:
            yield
        finally:
            if slot is not None:
                slot[3] = 0.0

    def overdue(self, deadline: float) -> list[tuple[SampleRef, float]]:
        """Samples whose load has run longer than ``deadline`` seconds, with how long."""
        now = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
        return [(SampleRef(int(shard), int(row)), now - started) for _, shard, row, started in self.slots.tolist()
                if started and now - started > deadline]


def kill_workers(iterator) -> None:
    """SIGKILL every worker of a DataLoader iterator: one stuck in C ignores anything milder (and they ignore
    SIGTERM on purpose, see ``_init_worker``). Their pids are first taken off torch's SIGCHLD watch, which would
    otherwise raise the deaths in this process at a random point (torch's private API: tests/test_loader.py
    pins the behaviour).

    torch's own ``_shutdown_workers`` is not called after the kill: it sets a multiprocessing Event whose lock a
    worker killed inside ``is_set()`` still holds, and would wait on it forever (seen in CI). Its other steps are
    done here: the pin-memory thread stopped before the kill (it reads what the workers write), the queues closed
    without joining their feeder threads after it."""
    if getattr(iterator, "_shutdown", True):
        return
    if getattr(iterator, "_worker_pids_set", False):
        signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False
    if hasattr(iterator, "_pin_memory_thread"):
        iterator._pin_memory_thread_done_event.set()  # a threading.Event: no lock a worker could hold
        iterator._worker_result_queue.put((None, None))  # wake it if it waits for a batch
        iterator._pin_memory_thread.join(timeout=10)
    workers = getattr(iterator, "_workers", [])
    for worker in workers:
        if worker.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
    for worker in workers:
        worker.join(timeout=10)
    iterator._shutdown = True  # torch's __del__ then leaves it alone
    for queue in [*getattr(iterator, "_index_queues", []), iterator._worker_result_queue]:
        queue.cancel_join_thread()
        queue.close()


def _key_of(shardset: ShardSet, ref: SampleRef) -> str:
    try:
        return shardset.members(ref)[0]
    except (OSError, IndexError, ValueError):
        return f"{shardset.shards[ref.shard].name}#{ref.row}"


def _init_worker(worker_id: int, nice: int) -> None:
    # SLURM signals every process of a job before preemption: the workers keep serving batches while the
    # trainer writes its checkpoint, and leave when it shuts the DataLoader down
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if nice:  # on a CPU-only machine the model's threads then preempt decoding that is ahead of them
        os.nice(nice)
