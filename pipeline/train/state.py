"""Where a run is (its position, saved in every checkpoint) and where it is going (the step plan)."""

from __future__ import annotations

import collections
from dataclasses import dataclass

from vmae.pipeline.train.config import BatchSplit, peak_lr

@dataclass
class Position:
    """Where a run is; saved in every checkpoint."""

    step: int = 0  # optimizer steps taken, applied or skipped
    epoch: int = 0
    epoch_step: int = 0  # steps taken in this epoch
    samples_seen: int = 0  # videos, all ranks, since the start
    skipped_steps: int = 0
    nonfinite_in_row: int = 0


@dataclass
class Plan:
    split: BatchSplit
    steps_per_epoch: int
    total_steps: int  # what the schedule spans
    run_steps: int  # where this run stops
    warmup_steps: int
    peak_lr: float


def make_plan(cfg, split: BatchSplit, loader_batches_per_epoch: int) -> Plan:
    steps_per_epoch = loader_batches_per_epoch // split.accumulation
    total = cfg.train.epochs * steps_per_epoch
    run = min(cfg.train.max_steps, total) if cfg.train.max_steps else total
    return Plan(split, steps_per_epoch, total, run, round(cfg.train.warmup_epochs * steps_per_epoch),
                peak_lr(cfg.train, split))


def settled(recent: collections.deque, loss: float, stop_loss: float) -> bool:
    """Whether the last ``recent.maxlen`` losses, ``loss`` included, are all below ``stop_loss`` (> 0)."""
    recent.append(loss)
    return stop_loss > 0 and len(recent) == recent.maxlen and max(recent) < stop_loss


def finish_step(position: Position, plan: Plan, record: dict, split: BatchSplit) -> None:
    position.step += 1
    position.epoch_step += 1
    position.samples_seen += split.global_batch
    if record["skipped"]:
        position.skipped_steps += 1
        position.nonfinite_in_row += 1
    else:
        position.nonfinite_in_row = 0
