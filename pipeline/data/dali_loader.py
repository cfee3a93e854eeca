"""The DALI path: several DALI pipelines per rank (``dali_graph``), each with its own decoder, taking the rank's
batches as they free up (``tickets``) and merged into one stream in batch order.

One pipeline keeps about one NVDEC engine busy (each frame is decoded, mapped and synchronized in turn on its
stream), so a rank runs one per engine by default. Each pipeline is driven by its own thread; when it asks for a
batch, that thread takes the next ticket, reads the batch's encoded videos from their shards and draws their
views as the CPU path does (``sampling``). Batch g holds the same samples and views whoever makes it, so the
stream is the CPU path's stream, and resuming is starting again at a ticket.

DALI has no per-sample error handling: a sample that fails a pipeline leaves it unusable. The pipeline's thread
finds the sample by decoding the suspects one by one, leaves it out (counted, logged once with its key), gives
its unfinished batches back to be made again and builds a fresh pipeline; the other pipelines go on. A video
whose stored frame count is more than its stream holds is left out the same way, and a pipeline that delivers
nothing within its deadline is abandoned (its native threads cannot be stopped) and replaced.

nvidia.dali is imported only where a pipeline is built or run: it is optional, and a machine without it still
imports this module (the loader registry, the tests of the helpers).
"""

from __future__ import annotations

import atexit
import functools
import io
import logging
import math
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vmae.pipeline.data.backends import DALI_CPU_CODECS, NVDEC_CODECS, nvdec_engines
from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.dali_graph import build_pipeline, graph_inputs
from vmae.pipeline.data.protocol import Batch, Loader
from vmae.pipeline.data.sample_reader import BadSample, EncodedReader, EncodedSample
from vmae.pipeline.data.sampling import ViewPlan, plan_views, sample_rng
from vmae.pipeline.data.shardset import RankBatches, SampleRef, ShardSet, open_shards, upcoming_shards
from vmae.pipeline.data.stats import LoaderStats
from vmae.pipeline.data.tickets import Merge, Tickets, TicketsStopped
from vmae.pipeline.data.views import clip_dtype
from vmae.shards.probe import scan_packets

log = logging.getLogger(__name__)

BUILD_SECONDS = 60.0  # building a pipeline, on top of its first batch's decode deadline
POLL_SECONDS = 1.0  # how often the consumer looks for hung pipelines while it waits
CLOSE_SECONDS = 30.0  # the longest a closing stream waits for each pipeline to finish its run
PREFETCH_SHARDS = 2  # of a remote dataset, staged ahead of each pipeline's reading


def dataset_codec(shardset: ShardSet) -> str:
    """The codec the shards were built with (each part of a mix must agree)."""
    parts = getattr(shardset, "parts", [shardset])
    codecs = {part.manifest["build"].get("codec", "h264") for part in parts}
    return codecs.pop() if len(codecs) == 1 else "+".join(sorted(codecs))


def refuse_undecodable(shardset: ShardSet, decode_device: str) -> None:
    """Stop at start, with the reason and what to do, when the decoder cannot read this dataset's codec."""
    codec = dataset_codec(shardset)
    readable, who = (NVDEC_CODECS, "NVDEC") if decode_device == "mixed" else (DALI_CPU_CODECS, "DALI's CPU decoder")
    if any(c not in readable for c in codec.split("+")):
        raise ValueError(f"{shardset.dataset}: {who} cannot decode {codec} shards (it reads {', '.join(readable)}); "
                         "use data.backend=cpu, or rebuild the shards with `vmae shards build --codec "
                         f"{'h264' if decode_device == 'mixed' else 'vp9'}`")


def default_pipelines(cfg: DataConfig, device: torch.device) -> int:
    """``data.pipelines``, or one per NVDEC engine of the GPU (one with DALI's CPU decoder)."""
    if cfg.pipelines:
        return cfg.pipelines
    if device.type != "cuda":
        return 1
    name = torch.cuda.get_device_name(device)
    engines = nvdec_engines(name)
    if engines is None:
        log.info("loader: NVDEC engines of a %s are not in the table: 2 DALI pipelines (set data.pipelines)", name)
        return 2
    return engines


@dataclass
class FedBatch:
    """A batch handed to a pipeline and not yet out of it."""

    ticket: int
    refs: list[SampleRef]
    samples: list[EncodedSample]  # as fed, replacements included
    plans: list[ViewPlan]
    good: list[bool]  # which rows are the batch's own samples (not replacements)
    failed: Counter


class DaliLoader(Loader):
    """Batches from DALI pipelines in the loader contract; ``device`` picks NVDEC (cuda) or DALI's CPU decoder.

    Iterate it once per epoch (``set_epoch`` first, as with a DistributedSampler); consecutive epochs continue
    one stream of pipelines, a ``set_epoch`` that jumps elsewhere (a resume) starts a new one.
    """

    backend = "dali"
    max_hangs = 3  # abandoned pipelines keep their threads and memory: past this many, stop with advice

    def __init__(self, dataset: Path | str, cfg: DataConfig, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", accumulation: int = 1):
        if cfg.limit:
            raise ValueError("data.limit (and --overfit) runs on the CPU path: set data.backend=cpu")
        self.shardset = open_shards(dataset, cfg)
        self.cfg = cfg
        self.device = torch.device(device)
        self.decode_device = "mixed" if self.device.type == "cuda" else "cpu"
        refuse_undecodable(self.shardset, self.decode_device)
        self.batches = RankBatches(self.shardset, cfg, rank, world_size, accumulation)
        self.per_epoch = self.batches.per_epoch
        self.pipelines = default_pipelines(cfg, self.device)
        self.stats = LoaderStats()
        self.left_out: dict[SampleRef, str] = {}  # samples no pipeline could decode: their keys
        self.reported: set[str] = set()
        self.abandoned: list[DaliWorker] = []  # hung pipelines: kept, since destroying one would wait on its threads
        # the decode deadline is per sample; a pipeline's threads decode a batch's samples side by side
        threads = max(1, cfg.worker_count // self.pipelines)
        self.threads = threads
        self.batch_deadline = cfg.decode_deadline * math.ceil(cfg.batch_size / threads)
        self.epoch, self.start_batch = 0, 0
        self._stream: DaliStream | None = None
        log.info("loader: %d DALI pipeline(s) (%s decoder), %d thread(s) each", self.pipelines, self.decode_device,
                 threads)

    def set_epoch(self, epoch: int, samples_seen: int = 0) -> None:
        """Start ``epoch``; ``samples_seen`` (videos this rank already took in it) resumes mid-epoch."""
        self.epoch = epoch
        self.start_batch = samples_seen // self.cfg.batch_size

    def __len__(self) -> int:
        return self.per_epoch - self.start_batch

    def close(self) -> None:
        """Stop the pipelines now (the next iteration starts fresh ones)."""
        if self._stream is not None:
            self._stream.close()
        self._stream = None

    def __iter__(self) -> Iterator[Batch]:
        ticket = self.epoch * self.per_epoch + self.start_batch
        if self._stream is None or self._stream.merge.next_ticket != ticket:
            self.close()
            self._stream = self._open_stream(ticket)
        for _ in range(self.start_batch, self.per_epoch):
            waited = time.perf_counter()
            batch = self._stream.next()
            self.stats.add(batch.pop("stats"))
            batch["video"] = batch["video"].to(self.device, non_blocking=True)
            batch["label"] = batch["label"].to(self.device, non_blocking=True)
            self.stats.seconds += time.perf_counter() - waited
            yield batch
        self.epoch, self.start_batch = self.epoch + 1, 0

    def _open_stream(self, ticket: int) -> DaliStream:
        return DaliStream(self, ticket)

    def leave_out(self, ref: SampleRef, key: str, reason: str, detail: str) -> None:
        """Count a sample no pipeline can use and leave it out of every batch from now on."""
        if ref in self.left_out:
            return
        self.left_out[ref] = key
        self.stats.failed[reason] += 1
        log.warning("sample %s (%s) left out: %s; its batch is made again without it", key,
                    self.shardset.shards[ref.shard].name, detail)


_OPEN_STREAMS: weakref.WeakSet = weakref.WeakSet()


@functools.lru_cache(maxsize=None)
def close_streams_at_exit() -> None:
    """Close every open stream at exit, before DALI's own exit handler shuts its pipelines down (atexit runs
    handlers last registered first, so this is registered after DALI is imported): a pipeline thread still
    inside a run when DALI shuts down aborts the interpreter."""
    import nvidia.dali.pipeline  # noqa: F401 - its exit handler first, then this one

    atexit.register(lambda: [stream.close() for stream in list(_OPEN_STREAMS)])


class DaliStream:
    """The pipelines of one stream, the tickets they take and the merge they deliver into."""

    def __init__(self, loader: DaliLoader, start: int):
        close_streams_at_exit()
        _OPEN_STREAMS.add(self)
        self.loader = loader
        cfg = loader.cfg
        # how far producers may run ahead of the consumer: each one's prefetch and the batch it is making, twice
        self.tickets = Tickets(start, window=2 * self.producers() * (cfg.prefetch + 1))
        self.merge = Merge(self.tickets)
        self.workers = [self._start_worker(n) for n in range(loader.pipelines)]

    def producers(self) -> int:
        return self.loader.pipelines

    def _start_worker(self, number: int) -> DaliWorker:
        worker = DaliWorker(self.loader, self.tickets, self.merge, number)
        worker.thread.start()
        return worker

    def next(self) -> dict:
        """The stream's next batch; a pipeline past its deadline is abandoned and replaced on the way."""
        while True:
            batch = self.merge.next(timeout=POLL_SECONDS)
            if batch is not None:
                return batch
            if self.loader.batch_deadline:
                for n, worker in enumerate(self.workers):
                    if worker.overdue(self.loader.batch_deadline):
                        self._abandon(n)

    def _abandon(self, n: int) -> None:
        """Leave hung pipeline ``n`` behind (its threads cannot be stopped), give its batches back, start another."""
        loader, worker = self.loader, self.workers[n]
        worker.abandon()
        loader.abandoned.append(worker)
        loader.stats.failed["decode_timeout"] += 1
        keys = [s.key for fed in worker.fed for s in fed.samples]
        if len(loader.abandoned) > loader.max_hangs:
            raise RuntimeError(f"DALI pipelines hung {len(loader.abandoned)} times (data.decode_deadline="
                               f"{loader.cfg.decode_deadline:g} s per sample; the last one held {', '.join(keys)}): "
                               "run `vmae shards verify` on the dataset, or use data.backend=cpu, which abandons "
                               "and names each hung sample")
        log.warning("DALI pipeline %d delivered nothing in %.0f s (data.decode_deadline=%g s per sample) while "
                    "decoding %s: it is abandoned, its batches are made again and a fresh pipeline goes on", n,
                    loader.batch_deadline, loader.cfg.decode_deadline, ", ".join(keys))
        self.tickets.give_back([fed.ticket for fed in worker.fed])
        self.workers[n] = self._start_worker(n)

    def close(self) -> None:
        """Stop the pipelines: each ends at its next request for a batch. One still inside a run a batch's
        deadline later is hung and is left as it is (a daemon thread)."""
        self.tickets.stop()
        deadline = self.loader.batch_deadline
        wait = min(CLOSE_SECONDS, deadline + POLL_SECONDS) if deadline else CLOSE_SECONDS
        for worker in self.workers:
            worker.thread.join(timeout=wait)
        _OPEN_STREAMS.discard(self)


class DaliWorker:
    """One DALI pipeline and the thread that drives it: takes tickets, feeds the pipeline each batch's encoded
    videos and plans, and puts what comes out into the merge."""

    def __init__(self, loader: DaliLoader, tickets: Tickets, merge: Merge, number: int):
        self.loader, self.tickets, self.merge, self.number = loader, tickets, merge, number
        self.cfg = loader.cfg
        self.reader = EncodedReader(loader.shardset)
        self.fed: deque[FedBatch] = deque()
        self.spare: tuple[EncodedSample, SampleRef] | None = None  # a good sample, for a batch where all fail
        self.alive, self.waiting = True, False
        self.progress = time.monotonic() + BUILD_SECONDS  # when it last took or delivered a batch
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"vmae-dali-{number}")

    # ---------------------------------------------------------------- the thread

    def _run(self) -> None:
        if self.loader.device.type == "cuda":
            torch.cuda.set_device(self.loader.device)  # outputs are copied onto this thread's current device
        try:
            while self.alive:
                pipe = self._build(self._feed)
                try:
                    while self.alive:
                        outputs = self._outputs(pipe)
                        if self.alive:
                            self._deliver(outputs)
                except RuntimeError as err:
                    if not self.alive or isinstance(err.__cause__, TicketsStopped) or "TicketsStopped" in str(err):
                        return
                    self._recover(err)
                finally:
                    del pipe
        except TicketsStopped:
            return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, who raises it
            if self.alive:
                self.merge.fail(err)

    def _build(self, source, batch_size: int | None = None, prefetch: int | None = None):
        device_id = (self.loader.device.index or 0) if self.loader.device.type == "cuda" else None
        pipe = build_pipeline(source, self.cfg, self.loader.decode_device, device_id, self.loader.threads,
                              batch_size, prefetch)
        pipe.build()
        return pipe

    def _outputs(self, pipe) -> tuple:
        """The pipeline's next outputs (the first call also feeds its prefetch)."""
        return pipe.run()

    def abandon(self) -> None:
        self.alive = False

    def overdue(self, deadline: float) -> bool:
        """Whether it holds batches and has neither taken nor delivered one for ``deadline`` seconds (waiting for a
        ticket while the stream is a window ahead is not a hang)."""
        return self.alive and bool(self.fed) and not self.waiting and time.monotonic() - self.progress > deadline

    # ---------------------------------------------------------------- feeding

    def _feed(self) -> tuple[list, ...]:
        """The external source: the next batch's encoded videos and plans (called by DALI on this thread)."""
        if not self.alive:
            raise TicketsStopped
        self.waiting = True  # for a ticket: not hung, only ahead of the merge
        try:
            # DALI feeds its whole prefetch before it runs the first batch: a pipeline holding a batch the merge
            # needs before the window moves must not wait for the window
            head = self.merge.next_ticket + self.tickets.window
            ticket = self.tickets.take(wait=not any(fed.ticket < head for fed in self.fed))
        finally:
            self.waiting = False
        self.progress = time.monotonic()
        epoch, b, refs = self.loader.batches.batch(ticket)
        if self.loader.shardset.remote:  # stage the shards this pipeline reads next
            part, size = self.loader.batches.part(epoch), self.cfg.batch_size
            self.loader.shardset.prefetch(upcoming_shards(part, (b + 1) * size, PREFETCH_SHARDS))
        fed = self._prepare(ticket, epoch, refs)
        self.fed.append(fed)
        return graph_inputs([s.video for s in fed.samples], fed.plans, self.cfg)

    def _prepare(self, ticket: int, epoch: int, refs: list[SampleRef]) -> FedBatch:
        """Read and plan a batch's samples; one that cannot be read, or was left out, is replaced by another of
        the batch (every batch keeps its shape), as on the CPU path."""
        loader = self.loader
        samples: list[EncodedSample | None] = []
        failed: Counter = Counter()
        for ref in refs:
            try:
                if ref in loader.left_out:
                    raise BadSample("left_out", "")
                samples.append(self.reader.read(ref))
            except BadSample as err:
                samples.append(None)
                if err.reason != "left_out":
                    failed[err.reason] += 1
                    key = f"{loader.shardset.shards[ref.shard].name}#{ref.row}"
                    if key not in loader.reported:
                        loader.reported.add(key)
                        log.warning("sample %s replaced: %s: %s", key, err.reason, err)
        good = [i for i, s in enumerate(samples) if s is not None]
        if good and self.spare is None:
            self.spare = (samples[good[0]], refs[good[0]])
        elif not good and self.spare is None:
            raise RuntimeError(f"every sample of a batch failed to load and none loaded before it ({dict(failed)}); "
                               f"run `vmae shards verify {loader.shardset.dataset}`")
        filled, replaced = [], 0
        for sample in samples:
            if sample is None:
                sample = samples[good[replaced % len(good)]] if good else self.spare[0]
                replaced += 1
            filled.append(sample)
        align = loader.shardset.frame_alignment(self.cfg.stride)
        plans = [plan_views(s.frames, s.height, s.width, self.cfg, sample_rng(self.cfg.seed, epoch, s.key), align)
                 for s in filled]
        return FedBatch(ticket, list(refs), filled, plans, [s is not None for s in samples], failed)

    # ---------------------------------------------------------------- delivering

    def _deliver(self, outputs: tuple) -> None:
        """Hand one batch to the merge; a batch with a sample whose stored count lies is made again without it."""
        fed = self.fed.popleft()
        self.progress = time.monotonic()
        views, got, brightest = outputs
        got = np.array(got.as_cpu().as_tensor() if hasattr(got, "as_cpu") else got.as_tensor()).reshape(-1)
        if self._lying_counts(fed, got, brightest):
            self.tickets.give_back([fed.ticket])
            return
        video = to_torch(views, self.loader.device)  # [B, K, 3, T, S, S]
        padded = repeat_last_frames(video, torch.from_numpy(got), self.cfg)
        k, size = self.cfg.views, len(fed.refs)
        videos = sum(fed.good)
        stats = {"videos": videos, "clips": videos * k, "padded": padded, "failed": dict(fed.failed),
                 "made_by": f"dali{self.number}",
                 "decoded_frames": int(sum(g for g, ok in zip(got.tolist(), fed.good) if ok))}
        label = torch.tensor([s.label for s in fed.samples]).repeat_interleave(k)
        self.merge.put(fed.ticket, {"video": video.flatten(0, 1).to(clip_dtype(self.cfg)), "label": label,
                                    "key": [s.key for s in fed.samples][:size], "stats": stats})

    def _lying_counts(self, fed: FedBatch, got: np.ndarray, brightest) -> bool:
        """Leave out the samples whose stream holds fewer frames than their stored count: a run that came back
        short, or (frames asked by index) an all-black frame, confirmed by a demux (a black frame alone may be a
        real fade). Whether any was found."""
        if self.cfg.sampling == "segment":
            dark = np.array(brightest.as_cpu().as_tensor() if hasattr(brightest, "as_cpu")
                            else brightest.as_tensor()).reshape(-1) == 0
            suspects = np.flatnonzero(dark)
        else:
            suspects = np.flatnonzero(got < np.array([p.window.steps for p in fed.plans]))
        found = False
        for row in suspects.tolist():
            sample = fed.samples[row]
            held = scan_packets(io.BytesIO(sample.video)).packets
            if held < sample.frames:
                ref = fed.refs[row] if fed.good[row] else self._ref_of(sample, fed)
                self.loader.leave_out(ref, sample.key, "frame_count",
                                      f"its .frames says {sample.frames}, its stream holds {held}")
                found = True
        return found

    @staticmethod
    def _ref_of(sample: EncodedSample, fed: FedBatch) -> SampleRef:
        """The ref of a replacement row: the batch's own row holding the same sample."""
        return next(ref for ref, s, ok in zip(fed.refs, fed.samples, fed.good) if ok and s is sample)

    # ---------------------------------------------------------------- failing samples

    def _recover(self, err: RuntimeError) -> None:
        """The pipeline failed: find the samples it cannot decode among those it was fed (one by one through a
        one-sample pipeline), leave them out, and give its unfinished batches back to be made again."""
        outstanding = list(self.fed)
        self.fed.clear()
        culprits = self._culprits(outstanding)
        if not culprits:
            self.tickets.give_back([fed.ticket for fed in outstanding])
            raise RuntimeError(f"a DALI pipeline failed and no sample of its batches fails alone: {err}") from err
        for ref, sample in culprits:
            self.loader.leave_out(ref, sample.key, "decode_error", f"DALI could not decode it ({first_line(err)})")
        self.tickets.give_back([fed.ticket for fed in outstanding])
        self.progress = time.monotonic() + BUILD_SECONDS

    def _culprits(self, outstanding: list[FedBatch]) -> list[tuple[SampleRef, EncodedSample]]:
        """The fed samples a one-sample pipeline fails on."""
        suspects = {}
        for fed in outstanding:
            for ref, sample, plan, ok in zip(fed.refs, fed.samples, fed.plans, fed.good):
                if ok:
                    suspects.setdefault(ref, (sample, plan))
        found, probe, current = [], None, []
        for ref, (sample, plan) in suspects.items():
            current[:] = [graph_inputs([sample.video], [plan], self.cfg)]
            if probe is None:
                probe = self._build(lambda: current[0], batch_size=1, prefetch=1)
            try:
                probe.run()
            except RuntimeError:
                found.append((ref, sample))
                probe = None
        return found


def first_line(err: BaseException) -> str:
    """The first line of an error's message (DALI's run to many lines of C++ stack)."""
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__


def to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """A DALI output of uniform shape as a torch tensor of its own on ``device`` (DALI reuses its buffers)."""
    tensor = tensor_list.as_tensor()
    if device.type != "cuda":
        return torch.from_numpy(np.array(tensor))
    from nvidia.dali.plugin.pytorch import feed_ndarray  # optional: see the module's docstring

    out = torch.empty(tensor.shape(), dtype=torch.float32, device=device)
    feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(device))
    return out


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
