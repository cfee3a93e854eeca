"""A built dataset as the loader sees it: the shard table, each epoch's sample order, and each rank's part of it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.remote import ShardCache, is_url
from shards.tars import index_path, read_index
from shards.verify import load_manifest


@dataclass(frozen=True)
class SampleRef:
    shard: int  # position in the manifest's shard list
    row: int  # position of the sample inside its shard


class ShardSet:
    """The manifest's shard table; each shard's index file is parsed only when one of its samples is read.

    ``dataset`` is a folder, or the http(s) URL of one: its shards are then staged into a local cache
    (``pipeline.remote``) as they are needed; ``local`` gives a shard's local file either way."""

    def __init__(self, dataset: Path | str, limit: int = 0, cache_dir: str | None = None, cache_gb: float = 50.0):
        """``limit``: only the first that many samples, in shard order (0: all)."""
        self.cache = None
        if is_url(dataset):
            self.cache = ShardCache(str(dataset), Path(cache_dir) if cache_dir else None, int(cache_gb * 2**30))
            self.manifest = self.cache.manifest()
            self.dataset = self.cache.folder
        else:
            self.dataset = Path(dataset)
            self.manifest = load_manifest(self.dataset)
        self.source = str(dataset)  # as the user gave it: a folder or a URL
        self.entries = self.manifest["shards"]
        self.shards = [self.dataset / e["name"] for e in self.entries]
        self.counts = np.array([e["samples"] for e in self.manifest["shards"]], dtype=np.int64)
        if limit:
            kept = np.minimum(self.counts, np.maximum(limit - np.concatenate([[0], np.cumsum(self.counts)[:-1]]), 0))
            used = int(np.count_nonzero(kept))
            self.shards, self.counts = self.shards[:used], kept[:used]
        self.video_ext = self.manifest["video_extension"]
        self.classes = self.manifest["classes"]
        self.pframe_interval = int(self.manifest["build"].get("pframe_interval") or 0)

    def frame_alignment(self, stride: int) -> int:
        """Sample on multiples of the shards' P-frame interval when the stride allows: then no B-frame is needed."""
        n = self.pframe_interval
        return n if n > 1 and stride % n == 0 else 1

    def __len__(self) -> int:
        return int(self.counts.sum())

    def members(self, ref: SampleRef) -> tuple[str, dict[str, tuple[int, int]]]:
        """The key and the members {extension: (offset, size)} of one sample."""
        return _cached_index(index_path(self.local(ref.shard)))[ref.row]

    def local(self, shard: int) -> Path:
        """The shard's local tar (its index beside it): a remote dataset's is downloaded first if not cached."""
        return self.cache.local(self.entries[shard]) if self.cache else self.shards[shard]

    def prefetch(self, shards: list[int]) -> None:
        """Stage these shards of a remote dataset in the background, in order (nothing for a local one)."""
        if self.cache:
            self.cache.prefetch([self.entries[s] for s in shards])

    def shard_order(self, epoch: int, seed: int) -> np.ndarray:
        """The epoch's order of whole shards: the same on every rank, fresh each epoch."""
        return np.random.default_rng([seed, epoch, 0x5EED]).permutation(len(self.shards))

    def stream(self, epoch: int, seed: int, shuffle_buffer: int, index: int, length: int) -> list[SampleRef]:
        """Samples [index·length, (index+1)·length) of the epoch's shards laid end to end, mixed within a sliding
        buffer: a run of whole shards (cut at its two ends), so that whoever reads it opens only those."""
        order = self.shard_order(epoch, seed)
        ends = np.cumsum(self.counts[order])
        low, high = index * length, (index + 1) * length
        refs = []
        for k in range(int(np.searchsorted(ends, low, side="right")), len(order)):
            shard, start = int(order[k]), int(ends[k] - self.counts[order[k]])
            if start >= high:
                break
            refs.extend(SampleRef(shard, row) for row in range(max(low, start) - start, min(high, ends[k]) - start))
        if shuffle_buffer > 1:
            rng = np.random.default_rng([seed, epoch, index, 0xB0F])
            for at in range(0, len(refs), shuffle_buffer):
                block = refs[at:at + shuffle_buffer]
                refs[at:at + shuffle_buffer] = [block[i] for i in rng.permutation(len(block))]
        return refs

    def layout(self, world_size: int, chunk: int, streams: int = 0) -> tuple[int, int, int]:
        """(streams, videos each stream gives a global step, samples per stream) for ``world_size`` ranks taking
        ``chunk`` videos each per step; streams 0: one per rank."""
        streams = streams or world_size
        if streams % world_size:
            raise ValueError(f"data.streams={streams} must be a multiple of the world size {world_size}")
        if (world_size * chunk) % streams:
            raise ValueError(f"a global step of {world_size} rank(s) x {chunk} videos cannot be shared by "
                             f"data.streams={streams} streams: make the global batch a multiple of it")
        per_stream = world_size * chunk // streams
        length = len(self) // streams // per_stream * per_stream
        if length == 0:
            raise ValueError(f"{self.dataset}: {len(self)} samples cannot fill one step of {world_size} rank(s) "
                             f"x {chunk} videos")
        return streams, per_stream, length

    def rank_part(self, epoch: int, seed: int, shuffle_buffer: int, rank: int, world_size: int,
                  chunk: int = 1, streams: int = 0) -> list[SampleRef]:
        """This rank's share of the epoch, ``chunk`` videos per global step (the micro-batch × accumulation).

        The epoch's shards, laid end to end in a fresh order, are cut into ``streams`` equal runs (one per rank
        by default); rank r reads the r-th block of streams, so it opens only about 1/world_size of the shards,
        and every step takes the same number of videos from every stream. With ``streams`` fixed, a global step
        holds the same videos, in the same places, for any world size dividing it. The samples past the last
        whole step of a stream (fewer than streams × (videos per stream and step + 1)) wait for another epoch's
        order: every rank runs the same number of steps."""
        streams, per_stream, length = self.layout(world_size, chunk, streams)
        block = streams // world_size
        mine = [self.stream(epoch, seed, shuffle_buffer, s, length) for s in range(rank * block, (rank + 1) * block)]
        return [ref for at in range(0, length, per_stream) for part in mine for ref in part[at:at + per_stream]]

    def steps_per_epoch(self, world_size: int, chunk: int, streams: int = 0) -> int:
        _, per_stream, length = self.layout(world_size, chunk, streams)
        return length // per_stream


@lru_cache(maxsize=64)
def _cached_index(idx: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    return read_index(idx)


def open_shards(dataset: Path | str, cfg) -> ShardSet:
    """The dataset as ``cfg`` (a DataConfig) reads it: its sample limit and, for a URL, its cache."""
    return ShardSet(dataset, cfg.limit, cfg.cache_dir or None, cfg.cache_gb)
