"""A built dataset as the loader sees it: the shard table, each epoch's sample order, and each rank's part of it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from vmae.pipeline.data.remote import ShardCache, is_url
from vmae.shards.format import DatasetError, index_path, load_manifest
from vmae.shards.tars import read_index


@dataclass(frozen=True)
class SampleRef:
    shard: int  # position in the manifest's shard list
    row: int  # position of the sample inside its shard


class ShardSet:
    """The manifest's shard table; each shard's index file is parsed only when one of its samples is read.

    ``dataset`` is a folder, or the http(s) URL of one: its shards are then staged into a local cache
    (``vmae.pipeline.data.remote``) as they are needed; ``local`` gives a shard's local file either way."""

    def __init__(self, dataset: Path | str, limit: int = 0, cache_dir: str | None = None, cache_gb: float = 50.0):
        """``limit``: only the first that many samples, in shard order (0: all)."""
        self.cache = None
        if is_url(dataset):
            self.cache = ShardCache(str(dataset), Path(cache_dir) if cache_dir else None, int(cache_gb * 2**30))
        self.dataset = self.cache.fetch_manifest().parent if self.cache else Path(dataset)
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

    @property
    def remote(self) -> bool:
        return self.cache is not None

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

    def epoch_pieces(self, epoch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch as pieces laid end to end, each the first rows of one shard: (shards, rows). Here: every
        shard, whole, in a fresh order."""
        order = self.shard_order(epoch, seed)
        return order, self.counts[order]

    def stream(self, pieces: tuple[np.ndarray, np.ndarray], epoch: int, seed: int, shuffle_buffer: int, index: int,
               length: int) -> list[SampleRef]:
        """Samples [index·length, (index+1)·length) of the epoch's ``pieces`` laid end to end, mixed within a
        sliding buffer: a run of whole shards (cut at its two ends), so that whoever reads it opens only those."""
        shards, rows = pieces
        ends = np.cumsum(rows)
        low, high = index * length, (index + 1) * length
        refs = []
        for k in range(int(np.searchsorted(ends, low, side="right")), len(shards)):
            start = int(ends[k] - rows[k])
            if start >= high:
                break
            refs.extend(SampleRef(int(shards[k]), row)
                        for row in range(max(low, start) - start, min(high, int(ends[k])) - start))
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
        pieces = self.epoch_pieces(epoch, seed)  # once: a mix's are a loop over every shard
        mine = [self.stream(pieces, epoch, seed, shuffle_buffer, s, length)
                for s in range(rank * block, (rank + 1) * block)]
        return [ref for at in range(0, length, per_stream) for part in mine for ref in part[at:at + per_stream]]

    def steps_per_epoch(self, world_size: int, chunk: int, streams: int = 0) -> int:
        _, per_stream, length = self.layout(world_size, chunk, streams)
        return length // per_stream


class RankBatches:
    """A rank's stream of batches, epoch after epoch: batch g of it (a ticket, counted from epoch 0) holds the same
    samples whichever loader, worker or pipeline makes it. ``chunk`` = micro-batch x accumulation videos per
    optimizer step (see ``ShardSet.rank_part``)."""

    def __init__(self, shardset: ShardSet, cfg, rank: int, world_size: int, accumulation: int = 1):
        self.shardset, self.cfg, self.rank, self.world_size = shardset, cfg, rank, world_size
        self.chunk = cfg.batch_size * accumulation
        self.per_epoch = shardset.steps_per_epoch(world_size, self.chunk, cfg.streams) * accumulation
        self._parts: dict[int, list[SampleRef]] = {}

    def part(self, epoch: int) -> list[SampleRef]:
        """The rank's samples of ``epoch``, in order (the last two epochs asked for are kept)."""
        if epoch not in self._parts:
            self._parts = {e: p for e, p in self._parts.items() if e == epoch - 1}
            self._parts[epoch] = self.shardset.rank_part(epoch, self.cfg.seed, self.cfg.shuffle_buffer, self.rank,
                                                         self.world_size, self.chunk, self.cfg.streams)
        return self._parts[epoch]

    def batch(self, ticket: int) -> tuple[int, int, list[SampleRef]]:
        """(epoch, batch in it, its samples) of batch ``ticket`` of the stream."""
        epoch, b = divmod(ticket, self.per_epoch)
        size = self.cfg.batch_size
        return epoch, b, self.part(epoch)[b * size:(b + 1) * size]


def upcoming_shards(part: list[SampleRef], start: int, count: int) -> list[int]:
    """The first ``count`` distinct shards of ``part`` from position ``start`` on."""
    shards: list[int] = []
    for ref in itertools.islice(part, start, None):
        if ref.shard not in shards:
            shards.append(ref.shard)
            if len(shards) == count:
                break
    return shards


@lru_cache(maxsize=64)
def _cached_index(idx: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    return read_index(idx)


class MixedShardSet(ShardSet):
    """Several datasets read as one, each giving its weight's share of every epoch (VideoMAE V2's hybrid).

    Epochs keep the total size of the datasets; dataset d gives round(w_d x size) samples an epoch: a fresh
    selection of its shards when that is fewer than it holds, its shards again (in another order) when more.
    Whole shards stay the unit, so ranks still open only their own; shard numbers run on from one dataset to the
    next."""

    def __init__(self, parts: list[ShardSet], weights: list[float] | None):
        if len({p.video_ext for p in parts}) > 1:
            found = ", ".join(f"{p.source}: .{p.video_ext}" for p in parts)
            raise DatasetError(f"a mix needs shards of one video format ({found}): rebuild one with --codec")
        self.parts = parts
        sizes = np.array([len(p) for p in parts], dtype=np.float64)
        shares = np.array(weights, dtype=np.float64) if weights else sizes
        targets = np.floor(shares / shares.sum() * sizes.sum()).astype(np.int64)
        targets[np.argmax(shares)] += int(sizes.sum()) - int(targets.sum())  # rounding: the sizes' total
        self.targets = targets
        self.offsets = np.concatenate([[0], np.cumsum([len(p.shards) for p in parts])[:-1]]).astype(np.int64)
        self.source = self.dataset = ",".join(p.source for p in parts)  # for messages: no one folder holds a mix
        self.cache = None
        self.entries = [e for p in parts for e in p.entries]
        self.shards = [s for p in parts for s in p.shards]
        self.counts = np.concatenate([p.counts for p in parts])
        self.video_ext = parts[0].video_ext
        intervals = {p.pframe_interval for p in parts}
        self.pframe_interval = intervals.pop() if len(intervals) == 1 else 0  # skip B-frames only if all allow

    @property
    def remote(self) -> bool:
        return any(p.remote for p in self.parts)

    @property
    def classes(self) -> list[str]:
        names = [p.classes for p in self.parts]
        if any(n != names[0] for n in names):
            found = "; ".join(f"{p.source}: {len(p.classes)}" for p in self.parts)
            raise DatasetError(f"the datasets of a mix have different classes ({found}): classify on one, or build "
                               "them with one --classes file")
        return names[0]

    def __len__(self) -> int:
        return int(self.targets.sum())

    def _part(self, shard: int) -> tuple[ShardSet, int]:
        d = int(np.searchsorted(self.offsets, shard, side="right") - 1)
        return self.parts[d], shard - int(self.offsets[d])

    def local(self, shard: int) -> Path:
        part, own = self._part(shard)
        return part.local(own)

    def prefetch(self, shards: list[int]) -> None:
        per_part: dict[int, list[int]] = {}  # one call per dataset: each call replaces what it had queued
        for shard in shards:
            part, own = self._part(shard)
            per_part.setdefault(id(part), [part]).append(own)
        for part, *own in per_part.values():
            part.prefetch(own)

    def epoch_pieces(self, epoch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Each dataset's share of the epoch as whole shards (the last one cut), all pieces in a fresh order."""
        shards, rows = [], []
        for d, (part, target) in enumerate(zip(self.parts, self.targets, strict=True)):
            taken, round_ = 0, 0
            while taken < target:  # a dataset asked for more than it holds goes round again, in another order
                order = np.random.default_rng([seed, epoch, d, round_, 0x313]).permutation(len(part.shards))
                for shard in order:
                    n = int(min(part.counts[shard], target - taken))
                    shards.append(int(self.offsets[d]) + int(shard))
                    rows.append(n)
                    taken += n
                    if taken == target:
                        break
                round_ += 1
        mixed = np.random.default_rng([seed, epoch, 0x5EED]).permutation(len(shards))
        return np.array(shards, dtype=np.int64)[mixed], np.array(rows, dtype=np.int64)[mixed]

    def describe(self) -> str:
        return ", ".join(f"{p.source}: {t} of {len(p)} videos an epoch ({t / len(p):.2f}x)"
                         for p, t in zip(self.parts, self.targets, strict=True))


def is_mix(dataset: Path | str) -> bool:
    return isinstance(dataset, str) and ("," in dataset or "@" in dataset)


def dataset_locations(dataset: Path | str) -> list[Path | str]:
    """The folders and URLs a dataset argument names (several for a mix)."""
    return [location for location, _ in parse_mix(dataset)] if is_mix(dataset) else [dataset]


def parse_mix(value: str) -> list[tuple[str, float | None]]:
    """"A@0.7,B@0.3" (or "A,B": weighted by size) → [(A, 0.7), (B, 0.3)]."""
    items = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        location, _, weight = part.rpartition("@") if "@" in part else (part, "", "")
        try:
            items.append((location, float(weight) if weight else None))
        except ValueError:
            raise DatasetError(f"{part!r}: a dataset of a mix is PATH or PATH@WEIGHT (a number)") from None
    given = [w for _, w in items if w is not None]
    if given and len(given) != len(items):
        raise DatasetError(f"{value}: give a weight to every dataset of the mix, or to none (then by size)")
    if any(w <= 0 for w in given):
        raise DatasetError(f"{value}: weights must be > 0")
    return items


def open_shards(dataset: Path | str, cfg) -> ShardSet:
    """The dataset as ``cfg`` (a DataConfig) reads it: its sample limit and, for a URL, its cache; several,
    comma-separated with optional @weights, are one MixedShardSet."""
    if is_mix(dataset):
        if cfg.limit:
            raise DatasetError("data.limit (and --overfit) takes one dataset, not a mix")
        mix = parse_mix(dataset)
        parts = [ShardSet(location, 0, cfg.cache_dir or None, cfg.cache_gb) for location, _ in mix]
        weights = [w for _, w in mix] if mix[0][1] is not None else None
        return MixedShardSet(parts, weights)
    return ShardSet(dataset, cfg.limit, cfg.cache_dir or None, cfg.cache_gb)
