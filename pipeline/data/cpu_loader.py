"""The CPU path: torch DataLoader workers read, decode and cut samples (``SampleReader``) into whole batches.

Each worker builds whole batches (worker w makes batches w, w + W, ...), so the DataLoader's in-order
round-robin yields the rank's batches in order and the stream does not depend on the number of workers.

A decode that never returns cannot hang the run: the trainer's process, while it waits for a batch, finds a
sample past ``data.decode_deadline`` (``WorkerWatch``), kills the workers, and restarts them at the same batch
with that sample abandoned (counted and replaced like any bad sample).

Workers write batches into a pool of shared memory that the trainer's process made (``BatchPool``) and send only
which buffer they filled.
"""

from __future__ import annotations

import collections
import functools
import gc
import logging
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vmae.pipeline.data.batch_pool import BatchPool
from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.protocol import Batch, Loader
from vmae.pipeline.data.sample_reader import SampleReader, sample_key
from vmae.pipeline.data.shardset import RankBatches, SampleRef, ShardSet, open_shards, upcoming_shards
from vmae.pipeline.data.stats import LoaderStats
from vmae.pipeline.data.tickets import Tickets, TicketsStopped
from vmae.pipeline.data.views import clip_dtype, normalize_clips
from vmae.pipeline.data.workers import WorkerWatch, init_worker, kill_workers

log = logging.getLogger(__name__)
PREFETCH_SHARDS = 2  # of a remote dataset, staged ahead of each worker's reading


class BatchStream(IterableDataset):
    """One rank's batches, epoch after epoch, from (``epoch``, ``start_batch``) on, without end.

    Batch g of the stream (counted from the start point) goes to worker g mod W, so the DataLoader's in-order
    round-robin hands them out in order across epoch boundaries too, and the workers live for the whole run
    (no start-up, no decoder initialisation per epoch).
    """

    def __init__(self, shardset: ShardSet, cfg: DataConfig, rank: int, world_size: int, epoch: int,
                 start_batch: int = 0, accumulation: int = 1, watch: WorkerWatch | None = None,
                 abandoned: frozenset[SampleRef] = frozenset(), pool: BatchPool | None = None,
                 tickets: Tickets | None = None, uint8: bool = False):
        self.shardset, self.cfg = shardset, cfg
        self.batches = RankBatches(shardset, cfg, rank, world_size, accumulation)
        self.start = epoch * self.batches.per_epoch + start_batch  # the ticket of the first batch
        self.watch, self.abandoned, self.pool = watch, abandoned, pool
        self.tickets = tickets  # shared with other producers (the hybrid loader): take them instead
        self.uint8 = uint8  # clips cut, not normalized: the trainer's process normalizes them on the GPU

    def batches_per_epoch(self) -> int:
        """Micro-batches in one epoch: whole optimizer steps of ``accumulation`` batches each."""
        return self.batches.per_epoch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        reader, reader_epoch = None, None
        ticket = self.start + worker
        while True:
            if self.tickets is not None:
                try:
                    ticket = self.tickets.take()
                except TicketsStopped:
                    return
            epoch, b, refs = self.batches.batch(ticket)
            if epoch != reader_epoch:
                reader = SampleReader(self.shardset, self.cfg, epoch, reader, self.watch, self.abandoned,
                                      self.pool, self.uint8)
                reader_epoch = epoch
            if self.shardset.remote:  # stage the shards this worker reads next
                size = self.cfg.batch_size
                self.shardset.prefetch(upcoming_shards(self.batches.part(epoch), (b + 1) * size, PREFETCH_SHARDS))
            yield {**reader.batch(refs), "ticket": ticket}
            ticket += workers


class CpuLoader(Loader):
    """The CPU path; iterate it once per epoch (``set_epoch`` first, as with a DistributedSampler).

    One DataLoader and its workers serve the whole run: consecutive epochs continue the same stream; a
    ``set_epoch`` that jumps elsewhere (a resume) starts a new one. With ``accumulation``, each rank takes its
    micro-batch x accumulation videos of every global step (see ``ShardSet.rank_part``).
    """

    backend = "cpu"

    def __init__(self, dataset: Path | str, cfg: DataConfig, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", accumulation: int = 1):
        self.shardset = open_shards(dataset, cfg)
        if self.shardset.frame_alignment(cfg.stride) > 1:
            log.info("loader: shards have a P-frame every %d frames: clips start on them and the decoder (PyAV) "
                     "skips every B-frame", self.shardset.pframe_interval)
        self.cfg, self.rank, self.world_size, self.accumulation = cfg, rank, world_size, accumulation
        self.device = torch.device(device)
        self.epoch, self.start_batch = 0, 0
        self.stats = LoaderStats()
        # the workers' iterator and the (epoch, batch) it yields next
        self._stream: tuple[Iterator[dict], tuple[int, int]] | None = None
        self.watch: WorkerWatch | None = None
        self.pool: BatchPool | None = None
        self.abandoned: dict[SampleRef, str] = {}  # samples whose load missed the deadline: their keys
        self._stop_workers: weakref.finalize | None = None
        self.tickets: Tickets | None = None  # set by a hybrid loader: the workers take batches as they free up
        # for a GPU, workers send uint8 clips (a quarter of the bytes to pin and copy) from a pinned pool, and
        # they are normalized there; the host memory of a copy in flight is held until it is done
        self.uint8_clips = self.device.type == "cuda"
        self._in_flight: collections.deque = collections.deque()
        self.per_epoch = RankBatches(self.shardset, cfg, rank, world_size, accumulation).per_epoch

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

    def __iter__(self) -> Iterator[Batch]:
        position = (self.epoch, self.start_batch)
        if self._stream is None or self._stream[1] != position:
            self._stream = (self._start(position), position)
        waited = time.perf_counter()
        for b in range(self.start_batch, self.per_epoch):
            batch = self.on_device(self.received(self._next_batch()))
            batch.pop("ticket")
            self.stats.add(batch.pop("stats"))
            self.stats.seconds += time.perf_counter() - waited
            self._stream = (self._stream[0], (self.epoch, b + 1) if b + 1 < self.per_epoch else (self.epoch + 1, 0))
            yield batch
            waited = time.perf_counter()
        self.epoch, self.start_batch = self.epoch + 1, 0  # unless set_epoch says otherwise, the next epoch

    def received(self, batch: dict) -> dict:
        """A batch as a worker sent it → the contract's tensors (on the CPU), its ticket and stats beside them."""
        buffer = batch.pop("buffer")
        if buffer is not None:
            batch["video"] = self.pool.hand_out(buffer)
        batch["label"] = torch.tensor(batch["label"]).repeat_interleave(self.cfg.views)
        return batch

    def on_device(self, batch: dict) -> dict:
        """The batch's tensors on the loader's device; uint8 clips normalized there."""
        video = batch["video"]
        batch["label"] = batch["label"].to(self.device, non_blocking=True)
        if video.dtype != torch.uint8:
            batch["video"] = video.to(self.device, non_blocking=True)
            return batch
        batch["video"] = normalize_clips(video.to(self.device, non_blocking=True), self.cfg)
        if self.device.type == "cuda":  # the pool may hand this memory out again only once the copy is done
            done = torch.cuda.Event()
            done.record()
            self._in_flight.append((done, video))
            while self._in_flight and self._in_flight[0][0].query():
                self._in_flight.popleft()
        return batch

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
            key = self.abandoned[ref] = sample_key(self.shardset, ref)
            log.warning("sample %s (%s) abandoned: its load has run %.0f s, past data.decode_deadline=%g s; the "
                        "decode workers restart at the same batch and the sample is replaced", key,
                        self.shardset.shards[ref.shard].name, seconds, self.cfg.decode_deadline)
        position = self._stream[1]
        self._stream = (self._start(position), position)

    def _start(self, position: tuple[int, int]) -> Iterator[dict]:
        """A new stream of workers at ``position``; the previous one's workers are stopped.

        Workers are killed rather than left to torch's shutdown: they ignore SIGTERM (see ``init_worker``), and
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
        """A DataLoader over the rank's batch stream from (``epoch``, ``start_batch``), with a fresh watch and pool."""
        workers = self.cfg.worker_count
        # batches come back as named shared-memory files: torch's default passes each tensor's file descriptor
        # through a thread of the worker that made it, and a worker stuck in C with the GIL held after sending a
        # batch would then block this process in the middle of receiving it, past any deadline
        torch.multiprocessing.set_sharing_strategy("file_system")
        self.watch = WorkerWatch(workers) if self.cfg.decode_deadline else None
        # a worker's batches in flight: the DataLoader's prefetch, the one it is making, the trainer's two. For a
        # GPU the batches are pinned by the DataLoader's thread instead (a copy from a pool buffer would not be)
        # uint8 clips for a GPU come from a pool registered as pinned memory: copied straight from where the
        # worker wrote them
        shape = (self.cfg.batch_size * self.cfg.views, 3, self.cfg.frames, self.cfg.crop_size, self.cfg.crop_size)
        pooled = workers and (self.device.type == "cpu" or self.uint8_clips)
        dtype = torch.uint8 if self.uint8_clips else clip_dtype(self.cfg)
        self.pool = BatchPool(workers, self.cfg.prefetch + 3, shape, dtype) if pooled else None
        if self.pool is not None and self.device.type == "cuda":
            self.pool.pin()
        stream = BatchStream(self.shardset, self.cfg, self.rank, self.world_size, epoch, start_batch,
                             self.accumulation, self.watch, frozenset(self.abandoned), self.pool, self.tickets,
                             self.uint8_clips)
        poll = min(5.0, max(0.2, self.cfg.decode_deadline / 4)) if self.cfg.decode_deadline else 0
        return DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=self.cfg.prefetch,
                          multiprocessing_context="fork" if workers else None,  # the pool and watch are shared by fork
                          pin_memory=self.device.type == "cuda" and not pooled, persistent_workers=False,
                          timeout=poll,
                          in_order=self.tickets is None,  # with shared tickets, the merge puts batches in order
                          worker_init_fn=functools.partial(init_worker, nice=self.cfg.worker_nice))

