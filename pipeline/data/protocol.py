"""What every loader backend is: its constructor, the batches it yields, what it counts, how it resumes.

``make_loader`` builds any registered backend (``vmae.pipeline.data.backends.LOADERS``) from the same arguments
and the training loop uses only what ``Loader`` lists, so a backend is swapped by name alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, TypedDict

import torch

from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.stats import LoaderStats


class Batch(TypedDict):
    """One batch of B videos, K views each, on the loader's device."""

    video: torch.Tensor  # float32 or bfloat16 (data.dtype) [B·K, 3, T, S, S], normalized; a video's K clips adjacent
    label: torch.Tensor  # long [B·K]: each video's label, repeated for its K clips
    key: list[str]  # [B]: each video's sample key, in batch order


class Loader(Protocol):
    """A rank's batches, one epoch per iteration; call ``set_epoch`` before each (as with a DistributedSampler).

    Every batch has the same shape: a sample that cannot be loaded is counted in ``stats.failed`` and replaced.
    """

    backend: str  # its name in the registry (data.backend)
    stats: LoaderStats  # what it did since it was made
    per_epoch: int  # batches in a whole epoch

    def set_epoch(self, epoch: int, samples_seen: int = 0) -> None:
        """Start ``epoch``; ``samples_seen`` (videos this rank already took in it) resumes mid-epoch."""

    def __len__(self) -> int:
        """Batches the next iteration yields: ``per_epoch`` less those a resume skips."""

    def __iter__(self) -> Iterator[Batch]:
        """The epoch's batches from the position ``set_epoch`` gave; the next epoch follows unless told otherwise."""

    def close(self) -> None:
        """Stop the loader's workers or pipeline now and free their memory (also done when it is dropped)."""


class LoaderFactory(Protocol):
    """The one constructor signature of every backend; ``make_loader`` passes these to whichever is chosen."""

    def __call__(self, dataset: Path | str, cfg: DataConfig, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", accumulation: int = 1) -> Loader:
        """``accumulation`` micro-batches make one optimizer step (a backend may cut its epoch by it)."""
