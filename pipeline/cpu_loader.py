"""The CPU path: torch DataLoader workers read samples straight from the shards (one seek each, through the
DALI index), decode the union of the K views' frames once, and cut the views.

Each worker builds whole batches (worker w makes batches w, w + W, ...), so the DataLoader's in-order
round-robin yields the rank's batches in order and the stream does not depend on the number of workers.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.config import DataConfig
from pipeline.decode import DecodeError, decode_frames
from pipeline.sampling import ViewPlan, plan_views, sample_rng
from pipeline.shardset import SampleRef, ShardSet
from pipeline.views import make_views

log = logging.getLogger(__name__)


@dataclass
class LoadedSample:
    key: str
    label: int
    plan: ViewPlan
    decoded: np.ndarray  # the distinct frame indices decoded
    inverse: np.ndarray  # [K, T] row of each view frame in ``frames``
    frames: torch.Tensor  # uint8 [F, 3, H, W]
    clips: torch.Tensor  # [K, 3, T, S, S]
    seconds: float  # decode and cut


class BadSample(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class BatchStream(IterableDataset):
    """One rank's batches of one epoch, from ``start_batch`` on."""

    def __init__(self, shardset: ShardSet, cfg: DataConfig, rank: int, world_size: int, epoch: int,
                 start_batch: int = 0):
        self.shardset, self.cfg = shardset, cfg
        self.rank, self.world_size, self.epoch, self.start_batch = rank, world_size, epoch, start_batch

    def batches(self) -> int:
        return len(self._part()) // self.cfg.batch_size

    def _part(self) -> list[SampleRef]:
        return self.shardset.rank_part(self.epoch, self.cfg.seed, self.cfg.shuffle_buffer, self.rank, self.world_size)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        part = self._part()
        size = self.cfg.batch_size
        reader = _SampleReader(self.shardset, self.cfg, self.epoch)
        for b in range(self.start_batch + worker, len(part) // size, workers):
            yield reader.batch(part[b * size:(b + 1) * size])


class _SampleReader:
    """Reads, decodes and cuts samples inside one worker; counts and replaces the ones that fail."""

    def __init__(self, shardset: ShardSet, cfg: DataConfig, epoch: int):
        self.shardset, self.cfg, self.epoch = shardset, cfg, epoch
        self.files: dict[int, object] = {}
        self.reported: set[str] = set()
        self.spare: tuple[torch.Tensor, int] | None = None  # a good video's clips, for a batch where all fail

    def batch(self, refs: list[SampleRef]) -> dict:
        stats = {"videos": 0, "clips": 0, "decoded_frames": 0, "padded": 0, "failed": Counter(),
                 "decode_seconds": 0.0}
        clips, labels, keys, bad = [], [], [], []
        for ref in refs:
            try:
                key, video_clips, label, decoded, padded, seconds = self.sample(ref)
            except BadSample as err:
                key = self.shardset.members(ref)[0] if _index_readable(self.shardset, ref) else f"shard{ref.shard}"
                stats["failed"][err.reason] += 1
                if key not in self.reported:
                    self.reported.add(key)
                    log.warning("sample %s (%s) replaced: %s: %s", key, self.shardset.shards[ref.shard].name,
                                err.reason, err)
                bad.append(len(clips))
                clips.append(None), labels.append(-1), keys.append(key)
                continue
            clips.append(video_clips), labels.append(label), keys.append(key)
            stats["decoded_frames"] += decoded
            stats["padded"] += padded
            stats["decode_seconds"] += seconds
        good = [i for i in range(len(clips)) if clips[i] is not None]
        if good:
            self.spare = (clips[good[0]], labels[good[0]])
        elif self.spare is None:
            raise RuntimeError(f"every sample of a batch failed to load and none loaded before it "
                               f"({dict(stats['failed'])}); run `vmae shards verify {self.shardset.dataset}`")
        for n, i in enumerate(bad):  # replaced from the same batch, so every batch keeps its shape
            clips[i], labels[i] = (clips[good[n % len(good)]], labels[good[n % len(good)]]) if good else self.spare
        k = self.cfg.views
        stats["videos"] = len(refs) - len(bad)
        # a plain dict: torch's default_convert copies a Counter with update(), which would double its counts
        stats["failed"] = dict(stats["failed"])
        stats["clips"] = stats["videos"] * k
        return {"video": torch.cat(clips), "label": torch.tensor(labels).repeat_interleave(k), "key": keys,
                "stats": stats}

    def sample(self, ref: SampleRef):
        loaded = self.load(ref)
        return (loaded.key, loaded.clips, loaded.label, len(loaded.decoded), int(loaded.plan.padded),
                loaded.seconds)

    def load(self, ref: SampleRef) -> "LoadedSample":
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
            num_frames = struct.unpack("<i", part["frames"])[0]
            label = struct.unpack("<i", part["label"])[0]
        except (ValueError, struct.error) as err:
            raise BadSample("bad_metadata", str(err)) from None
        if num_frames <= 0:
            raise BadSample("bad_metadata", f"frame count {num_frames}")
        rng = sample_rng(self.cfg.seed, self.epoch, key)
        plan = plan_views(num_frames, meta["height"], meta["width"], self.cfg, rng)
        unique, inverse = plan.union()
        started = time.perf_counter()
        try:
            frames = decode_frames(part[ext], unique, self.cfg.cpu_decoder)
        except DecodeError as err:
            raise BadSample("decode_error", str(err)) from None
        if frames.shape[2:] != (meta["height"], meta["width"]):
            raise BadSample("bad_metadata", f"frames are {tuple(frames.shape[2:])}, the sample says "
                                            f"{meta['height']}x{meta['width']}")
        clips = make_views(frames, plan, inverse, self.cfg)
        if self.cfg.dtype == "bfloat16":
            clips = clips.to(torch.bfloat16)
        return LoadedSample(key, label, plan, unique, inverse, frames, clips, time.perf_counter() - started)

    def _read_span(self, ref: SampleRef, members: dict) -> tuple[bytes, int]:
        """One read covering every member: they are adjacent in the tar."""
        start = min(o for o, _ in members.values())
        end = max(o + n for o, n in members.values())
        try:
            fh = self.files.get(ref.shard)
            if fh is None:
                fh = self.files[ref.shard] = Path(self.shardset.shards[ref.shard]).open("rb")
            fh.seek(start)
            blob = fh.read(end - start)
        except OSError as err:
            self.files.pop(ref.shard, None)
            raise BadSample("unreadable_shard", str(err)) from None
        if len(blob) != end - start:
            raise BadSample("truncated_shard", f"read {len(blob)} of {end - start} bytes")
        return blob, start


def _index_readable(shardset: ShardSet, ref: SampleRef) -> bool:
    try:
        shardset.members(ref)
        return True
    except (OSError, IndexError):
        return False
