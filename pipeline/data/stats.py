"""What a loader did: rates, decode work and every replaced sample by reason (both paths fill it)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoaderStats:
    """What the loader did since it was made: rates, decode work and every replaced sample by reason."""

    batches: int = 0
    videos: int = 0
    clips: int = 0
    decoded_frames: int = 0  # the decoder's work: keyframe runs included (frames returned where it cannot tell)
    padded: int = 0
    decode_seconds: float = 0.0  # summed over workers: decoder time alone
    failed: Counter = field(default_factory=Counter)
    made_by: Counter = field(default_factory=Counter)  # batches per producer (a DALI pipeline, the CPU workers)
    seconds: float = 0.0  # wall time spent inside the iterator, waiting included

    def add(self, batch_stats: dict) -> None:
        self.batches += 1
        for key in ("videos", "clips", "decoded_frames", "padded", "decode_seconds"):
            setattr(self, key, getattr(self, key) + batch_stats.get(key, 0))
        self.failed.update(batch_stats["failed"])
        if "made_by" in batch_stats:
            self.made_by[batch_stats["made_by"]] += 1

    @property
    def clips_per_second(self) -> float:
        return self.clips / self.seconds if self.seconds else 0.0

    @property
    def decoded_frames_per_clip(self) -> float:
        return self.decoded_frames / self.clips if self.clips else 0.0

    def as_dict(self) -> dict:
        return {"batches": self.batches, "videos": self.videos, "clips": self.clips,
                "decoded_frames": self.decoded_frames, "padded": self.padded,
                "decode_seconds": round(self.decode_seconds, 3), "failed": dict(self.failed),
                "made_by": dict(self.made_by),
                "seconds": round(self.seconds, 3), "clips_per_second": round(self.clips_per_second, 2),
                "decoded_frames_per_clip": round(self.decoded_frames_per_clip, 2)}
