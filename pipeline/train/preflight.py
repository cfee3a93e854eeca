"""`--dry-run`: what a launch would check and plan, printed before any process group, weights or step.

Run on a login node, or under the launcher itself, it reads the world size the launcher sets, makes every start
check (each one, not only up to the first that fails), and prints the schedule, the model's size and DeepSpeed's
estimate of the model states each rank holds under the configured ZeRO stage.
"""

from __future__ import annotations

import logging
import os

import torch

from vmae.model.mae import MaskedVideoAutoencoder, VideoClassifier
from vmae.pipeline.data.shardset import open_shards
from vmae.pipeline.train.checks import finetune_classes, launched_world_size, start_checks
from vmae.pipeline.train.config import (TrainError, batch_split, batch_statement, describe_batch,
                                        videos_per_rank_step)
from vmae.pipeline.train.engine import detect_launcher
from vmae.tools.log import library_output

log = logging.getLogger(__name__)

GB = 1e9


def dry_run(cfg, command: str) -> int:
    """Print the checks and the plan of ``vmae COMMAND`` with ``cfg``; 0 when it would start, 1 when not."""
    world = launched_world_size(os.environ)
    launcher = detect_launcher(os.environ)
    where = "CUDA" if torch.cuda.is_available() else "no CUDA on this machine"
    print(f"dry run of vmae {command}, nothing trained: {launcher} launch, {world} rank(s), {where}")
    failed = run_checks(cfg, world)
    if command == "finetune" and "dataset" not in failed:
        failed |= report("classes", lambda: f"{len(finetune_classes(cfg, record=False))} classes")
    if not {"dataset", "batch split", "dataset size", "schedule"} & failed:
        print_schedule(cfg, world)
    if not {"batch split", "clips and tubelets", "classes"} & failed:
        print_model(cfg, command, world)
    if failed:
        print(f"dry run: {len(failed)} check(s) failed ({', '.join(sorted(failed))}): this launch would stop")
        return 1
    print("dry run: every check passed; the same command without --dry-run starts training")
    return 0


def run_checks(cfg, world: int) -> set[str]:
    """Every start check, each reported; the names of those that failed (a check whose input failed is left
    out)."""
    failed: set[str] = set()
    needs = {"dataset size": {"dataset"}, "schedule": {"dataset", "batch split", "dataset size"}}
    for name, check in start_checks(cfg, world, create=False):
        if needs.get(name, set()) & failed:
            continue
        failed |= report(name, check)
    return failed


def report(name: str, check) -> set[str]:
    """Run one check and print its line; {name} when it failed."""
    try:
        found = check()
    except (TrainError, ValueError) as err:
        print(f"  FAIL  {name:<19} {err}")
        return {name}
    print(f"  ok    {name:<19} {found}")
    return set()


def print_schedule(cfg, world: int) -> None:
    if cfg.data.batch_size == "auto":
        print(f"  batch: {cfg.train.global_batch} videos per step; data.batch_size=auto: the micro-batch and the "
              "accumulation are found at start on the device")
    else:
        split = batch_split(cfg.train, cfg.data, world)
        print(f"  batch: {describe_batch(batch_statement(cfg.train, split))}")
    shards = open_shards(cfg.train.dataset, cfg.data)
    per_epoch = shards.steps_per_epoch(world, videos_per_rank_step(cfg.train, world), cfg.data.streams)
    total = per_epoch * cfg.train.epochs
    stops = min(cfg.train.max_steps, total) if cfg.train.max_steps else total
    print(f"  steps: {round(cfg.train.warmup_epochs * per_epoch)} of warm-up; this run stops at step {stops} of "
          f"{total}")


def print_model(cfg, command: str, world: int) -> None:
    """The model's parameters (built on the meta device: no memory) and its states per rank under ZeRO."""
    with torch.device("meta"):
        if command == "finetune":
            classes = cfg.finetune.num_classes or 2  # the head's size barely counts next to the encoder
            model = VideoClassifier(cfg.model, classes, cfg.data.frames, cfg.data.crop_size)
        else:
            model = MaskedVideoAutoencoder(cfg.model, cfg.data.frames, cfg.data.crop_size)
    params = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    per_rank = model_states_per_rank(params, largest, world, cfg.train.zero_stage)
    print(f"  model: {cfg.model.preset}, {params / 1e6:.1f} M parameters; model states per rank under "
          f"ZeRO-{cfg.train.zero_stage} on {world} rank(s): {per_rank / GB:.2f} GB (DeepSpeed's estimate, "
          "activations not included)")


def model_states_per_rank(params: int, largest_layer: int, world: int, stage: int) -> float:
    """Bytes of weights, gradients and AdamW state one accelerator holds: DeepSpeed's own estimators (no
    offload); stage 0 keeps everything on every rank, which is stage 1-2's formula on one rank."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed picks one
    with library_output("DeepSpeed"):  # heavy and chatty: imported only here, its lines at DEBUG
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if stage == 3:
        return estimate_zero3_model_states_mem_needs(params, largest_layer, world, cpu_offload=False,
                                                     cpu_offload_params=False)[1]
    return estimate_zero2_model_states_mem_needs(params, world if stage else 1, cpu_offload=False)[1]
