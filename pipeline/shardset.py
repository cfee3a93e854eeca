"""A built dataset as the loader sees it: the shard table, each epoch's sample order, and each rank's part of it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from shards.tars import index_path, read_index
from shards.verify import load_manifest


@dataclass(frozen=True)
class SampleRef:
    shard: int  # position in the manifest's shard list
    row: int  # position of the sample inside its shard


class ShardSet:
    """The manifest's shard table; each shard's index file is parsed only when one of its samples is read."""

    def __init__(self, dataset: Path, limit: int = 0):
        """``limit``: only the first that many samples, in shard order (0: all)."""
        self.dataset = Path(dataset)
        self.manifest = load_manifest(self.dataset)
        self.shards = [self.dataset / e["name"] for e in self.manifest["shards"]]
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
        return _cached_index(index_path(self.shards[ref.shard]))[ref.row]

    def epoch_order(self, epoch: int, seed: int, shuffle_buffer: int) -> list[SampleRef]:
        """Every sample once: shards in a fresh order each epoch, samples mixed within a sliding buffer."""
        rng = np.random.default_rng([seed, epoch, 0x5EED])
        order = [SampleRef(int(s), r) for s in rng.permutation(len(self.shards)) for r in range(self.counts[s])]
        if shuffle_buffer > 1:
            for start in range(0, len(order), shuffle_buffer):
                block = order[start:start + shuffle_buffer]
                order[start:start + shuffle_buffer] = [block[i] for i in rng.permutation(len(block))]
        return order

    def rank_part(self, epoch: int, seed: int, shuffle_buffer: int, rank: int, world_size: int,
                  chunk: int = 1) -> list[SampleRef]:
        """This rank's share of the epoch: of every ``world_size × chunk`` consecutive samples (one global
        optimizer step when ``chunk`` is the videos a rank takes per step), the rank-th ``chunk``. A global step
        thus holds the same videos for any world size × micro-batch × accumulation with the same global batch;
        the tail that fills no whole step is left out, so every rank runs the same number of steps."""
        order = self.epoch_order(epoch, seed, shuffle_buffer)
        block = world_size * chunk
        if len(order) < block:
            raise ValueError(f"{self.dataset}: {len(order)} samples cannot fill one step of {world_size} rank(s) "
                             f"x {chunk} videos")
        return [order[start + rank * chunk + i] for start in range(0, len(order) - block + 1, block)
                for i in range(chunk)]


@lru_cache(maxsize=64)
def _cached_index(idx: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    return read_index(idx)
