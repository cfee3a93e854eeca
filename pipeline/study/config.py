"""The study's budgets, each fixed before any run: data sizes, seeds, model, steps and the lr grid. ``BUDGETS`` is the
registry `vmae study --budget` reads; every figure of a report names the budget it came from.

What is fixed for every budget (stated here, before running):
- arms (a) and (b) share the architecture, clip spec, augmentation, head, schedule shape and lr grid; each arm's lr
  is chosen on the validation clips (never the test) for each subset size, on the first seed, and kept for the
  others; each fine-tuning run is scored on the validation clips at ``curve_points`` points of its curve and the
  best point's checkpoint is the one tested: the same rule for both arms;
- (b) from scratch gets the seconds (a) spent pretraining plus fine-tuning at that subset size: as many steps as
  fit at (a)'s logged step time once a run's fixed seconds (start-up, checkpoints: (a)'s wall time less its steps)
  are paid; the seconds it took are reported beside the seconds given;
- (c) and (d) use the pretrained encoder of each seed's (a) and the same architecture at its initial weights;
- the intervals are 95 % bootstrap intervals over test clips of the seed-mean paired difference.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StudyBudget:
    """How much of everything one study run does."""

    pool_per_class: int
    val_per_class: int
    test_per_class: int
    seeds: tuple[int, ...]
    pretrain_steps: int
    finetune_steps: int
    preset: str = "tiny"
    tubelet: tuple[int, int, int] = (2, 8, 8)
    frames: int = 8
    stride: int = 2
    crop_size: int = 48
    batch: int = 32  # videos per pretraining step
    finetune_batch: int = 16  # videos per fine-tuning step (fewer when the subset is smaller)
    pretrain_lr: float = 4e-3  # base lr per 256 videos (5e-4 at 32 videos a step)
    finetune_lrs: tuple[float, ...] = (4e-3, 1.6e-2)  # the grid (a) and (b) each search, base lr per 256 videos
    curve_points: int = 4  # validation scores along each fine-tuning run
    bootstrap: int = 2000  # resamples of the test clips
    subset_sizes: tuple[int, ...] = (1, 5, 20)
    note: str = ""


BUDGETS: dict[str, StudyBudget] = {
    # `make learn`: three seeds within 30 minutes on a 2-core CPU
    # measured on the 2-core Xeon: pretraining 2 steps/s at 32 videos, fine-tuning 1-3 steps/s, a test pass of
    # 1,000 clips about 12 s; (b) costs 3 x (pretraining + fine-tuning) per seed, so a single lr (no search), a
    # short pretraining and two validation points per curve are what fit
    "cpu": StudyBudget(pool_per_class=500, val_per_class=10, test_per_class=100, seeds=(0, 1, 2),
                       pretrain_steps=100, finetune_steps=60, finetune_lrs=(1.6e-2,), curve_points=2,
                       note="2-core CPU, 30 minutes"),
    # `make gpu-study`, a section of the prepared GPU check: one H200 for 8 minutes. Not yet run on a GPU: a seed
    # costs 4 pretrainings + 6 fine-tunings (scratch gets pretraining + fine-tuning, at each of 3 sizes), so three
    # seeds in 480 s need about 60 steps/s at these counts; the first GPU run sets them to what it measures
    "gpu": StudyBudget(pool_per_class=500, val_per_class=20, test_per_class=100, seeds=(0, 1, 2),
                       pretrain_steps=2000, finetune_steps=300, preset="vit-s", batch=64,
                       note="one H200, 8 minutes (steps not yet calibrated on a GPU)"),
    # what the tests run: every line of the study in about a minute, no figure to read anything into
    "smoke": StudyBudget(pool_per_class=4, val_per_class=1, test_per_class=2, seeds=(0, 1), pretrain_steps=4,
                         finetune_steps=4, batch=4, finetune_batch=4, curve_points=2, bootstrap=50, subset_sizes=(1,),
                         note="the tests' run: no figure to read anything into"),
}

