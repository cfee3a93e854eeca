"""The CPU path's work inside a decode worker: read a sample straight from its shard (one seek, through the
DALI index), decode the union of its K views' frames once, cut the views; a batch of them, with every sample that
fails counted and replaced so the batch keeps its shape.
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from vmae.pipeline.data.batch_pool import BatchPool, shared_empty
from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.decode import DecodeError, decode_frames
from vmae.pipeline.data.sampling import ViewPlan, plan_views, sample_rng
from vmae.pipeline.data.shardset import SampleRef, ShardSet
from vmae.pipeline.data.views import clip_dtype, make_views
from vmae.pipeline.data.workers import WorkerWatch

log = logging.getLogger(__name__)


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
    """A sample that cannot be loaded; ``reason`` is the key it is counted under in ``LoaderStats.failed``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class SampleReader:
    """Reads, decodes and cuts samples inside one worker; counts and replaces the ones that fail."""

    def __init__(self, shardset: ShardSet, cfg: DataConfig, epoch: int, previous: SampleReader | None = None,
                 watch: WorkerWatch | None = None, abandoned: frozenset[SampleRef] = frozenset(),
                 pool: BatchPool | None = None, uint8: bool = False):
        self.shardset, self.cfg, self.epoch = shardset, cfg, epoch
        self.uint8 = uint8  # clips cut but not normalized (the trainer's process normalizes them on the GPU)
        self.watch, self.abandoned, self.pool = watch, abandoned, pool
        # open shard files, keys already reported and the spare clips carry over from the previous epoch
        self.encoded = EncodedReader(shardset, previous.encoded.files if previous else None)
        self.reported: set[str] = previous.reported if previous else set()
        self.spare: tuple[torch.Tensor, int] | None = previous.spare if previous else None
        self.align = shardset.frame_alignment(cfg.stride)

    def batch(self, refs: list[SampleRef]) -> dict:
        """The batch of ``refs`` as a worker sends it: clips (or the pool buffer holding them), labels, keys and
        the batch's stats; a sample that fails is replaced by another of the batch."""
        stats = {"videos": 0, "clips": 0, "decoded_frames": 0, "padded": 0, "failed": Counter(),
                 "decode_seconds": 0.0}
        k = self.cfg.views
        shape = (len(refs) * k, 3, self.cfg.frames, self.cfg.crop_size, self.cfg.crop_size)
        dtype = torch.uint8 if self.uint8 else clip_dtype(self.cfg)
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
                key = sample_key(self.shardset, ref)
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

    def load(self, ref: SampleRef, out: torch.Tensor | None = None) -> LoadedSample:
        """Read, decode and cut one sample; raises BadSample with a reason when it cannot."""
        sample = self.encoded.read(ref)
        rng = sample_rng(self.cfg.seed, self.epoch, sample.key)
        plan = plan_views(sample.frames, sample.height, sample.width, self.cfg, rng, self.align)
        unique, inverse = plan.union()
        started, produced = time.perf_counter(), []
        try:
            frames = decode_frames(sample.video, unique, self.cfg.cpu_decoder, decoded=produced)
        except DecodeError as err:
            raise BadSample("decode_error", str(err)) from None
        decode_seconds = time.perf_counter() - started
        if frames[0].shape[:2] != (sample.height, sample.width):
            raise BadSample("bad_metadata", f"frames are {tuple(frames[0].shape[:2])}, the sample says "
                                            f"{sample.height}x{sample.width}")
        clips = make_views(frames, plan, inverse, self.cfg, out=out)
        work = len(produced) or len(unique)  # torchcodec does not say what it decoded
        return LoadedSample(sample.key, sample.label, plan, unique, work, inverse, frames, clips, decode_seconds)


@dataclass
class EncodedSample:
    """A sample as its shard holds it: the encoded video and what its other members say."""

    key: str
    label: int
    frames: int  # the stored frame count
    height: int
    width: int
    video: bytes


class EncodedReader:
    """Reads samples straight from their shards (one seek and one read each, through the index), keeping the
    shard files open; both decode paths read through it."""

    def __init__(self, shardset: ShardSet, files: dict[int, object] | None = None):
        self.shardset = shardset
        self.files: dict[int, object] = {} if files is None else files

    def read(self, ref: SampleRef) -> EncodedSample:
        """The sample at ``ref``; raises BadSample with a reason when it cannot be read."""
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
        return EncodedSample(key, label, num_frames, height, width, part[ext])

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


def sample_key(shardset: ShardSet, ref: SampleRef) -> str:
    """The key of the sample at ``ref``, or "<shard>#<row>" where its shard's index cannot be read."""
    try:
        return shardset.members(ref)[0]
    except (OSError, IndexError, ValueError):
        return f"{shardset.shards[ref.shard].name}#{ref.row}"
