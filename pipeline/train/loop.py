"""`vmae pretrain` and `vmae finetune`: the loader and a model in a DeepSpeed engine, read top to bottom.

One process per accelerator (or one CPU process). Each rank reads its own block of the epoch's shards
(``ShardSet.rank_part``); with ``data.streams`` fixed, every global step holds the same videos and the same masks for
any world size dividing it x micro-batch x accumulation with the same global batch, since a clip's random draws
(mask, mixup) are functions of (seed, step, its place in the global batch). A resumed run continues the loss curve
step for step. What is trained — MAE pretraining or classification — is a task (``vmae.pipeline.train.tasks``);
the loop is the same. What it refuses before starting is in ``checks``; its position and plan in ``state``; what it
reports in ``summary``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import signal
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.contrib.logging import logging_redirect_tqdm

from vmae.model.flops import device_peak_flops
from vmae.pipeline.data.loader import make_loader
from vmae.pipeline.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint, tag_of
from vmae.pipeline.train.engine import Launch, init_distributed, make_engine, pick_precision, set_lr
from vmae.pipeline.train.metrics import MetricsWriter, peak_memory_gb
from vmae.pipeline.train.tasks import FinetuneTask, PretrainTask, seed_of
from vmae.pipeline.train.checks import check, finetune_classes
from vmae.pipeline.train.config import (BatchSplit, TrainError, batch_split, batch_statement, batch_warning,
                                        describe_batch, lr_at)
from vmae.pipeline.train.state import Plan, Position, finish_step, make_plan, settled
from vmae.pipeline.train.tuning import prepare_model
from vmae.pipeline.train.summary import (SETTLE_STEPS, Summary, judge_sanity_check, public, truncate_sample_keys,
                                         write_sample_keys)

log = logging.getLogger(__name__)


def build_engine(task, launch: Launch, cfg, precision: str) -> tuple:
    """The task's model fitted to the device (kernels, micro-batch, checkpointing, compile: ``tuning``), its
    parameter groups and the DeepSpeed engine around them; (engine, batch split, what the fitting chose)."""
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = task.build_model(launch)
    chosen = prepare_model(model, task, cfg, launch.device, precision, launch.world_size)
    split = batch_split(cfg.train, cfg.data, launch.world_size)  # after data.batch_size=auto is settled
    engine = make_engine(model, task.param_groups(model), cfg.train, split, precision, launch.device)
    return engine, split, chosen


def pretrain_engine(cfg, precision: str) -> tuple:
    """(engine, task, launch, what fitting the step to the device chose) of MAE pretraining without a loader: what
    the benchmarks time."""
    launch = init_distributed()
    task = PretrainTask(cfg)
    engine, _, chosen = build_engine(task, launch, cfg, precision)
    return engine, task, launch, chosen


def pretrain(cfg, config_yaml: str) -> dict:
    """Run (or resume) MAE pretraining as ``cfg`` says; returns rank 0's summary."""
    check(cfg)
    return run(cfg, config_yaml, PretrainTask(cfg))


def finetune(cfg, config_yaml: str) -> dict:
    """Run (or resume) fine-tuning of the classifier as ``cfg`` says; returns rank 0's summary."""
    check(cfg)
    classes = finetune_classes(cfg)
    return run(cfg, config_yaml, FinetuneTask(cfg, classes))


def run(cfg, config_yaml: str, task) -> dict:
    """The training loop of any task: resume, steps, metrics, checkpoints, SIGTERM, non-finite steps."""
    launch = init_distributed()
    if launch.rank:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for all
    train, data = cfg.train, cfg.data
    out = Path(train.out)
    precision = pick_precision(train, launch.device)
    if precision == "bf16" and launch.device.type == "cpu":
        log.warning("bf16 on this CPU runs backward several times slower than fp32 (train.precision=fp32)")
    engine, split, chosen = build_engine(task, launch, cfg, precision)
    data = cfg.data  # data.batch_size=auto is a number now
    log.info("%s launch: %s, %d rank(s) on %s, ZeRO-%d, %s; global batch %d videos = %d ranks x %d x %d accumulation",
             task.name, launch.launcher, launch.world_size, launch.device, train.zero_stage, precision,
             split.global_batch, launch.world_size, split.micro_batch, split.accumulation)
    loader = make_loader(train.dataset, data, launch.rank, launch.world_size, str(launch.device),
                         split.accumulation)
    plan = make_plan(cfg, split, loader.per_epoch)
    position = resume_position(engine, cfg, out)
    if train.log_samples:
        truncate_sample_keys(out, launch.rank, position.step)
    log.info("schedule: %d steps per epoch, %d steps in all (%d warm-up); this run stops at step %d",
             plan.steps_per_epoch, plan.total_steps, plan.warmup_steps, plan.run_steps)
    state_batch(train, split, out, task.name, launch.rank, chosen)

    flops_per_clip = task.flops_per_clip()
    peak, peak_source = device_peak_flops(launch.device, train.peak_tflops)
    log.info("MFU against %.1f TFLOP/s (%s); %.1f GFLOP per clip forward+backward", peak / 1e12, peak_source,
             flops_per_clip / 1e9)
    metrics = MetricsWriter(out, plan.run_steps, position.step, enabled=launch.rank == 0, name=task.name)
    stopper = TermSignal()
    summary = Summary(task.name)
    last_batch = None
    recent: collections.deque = collections.deque(maxlen=SETTLE_STEPS)  # the last losses, for train.stop_loss
    quiet_bar = contextlib.ExitStack()
    if launch.rank == 0:  # log lines above the progress bar, not through it
        quiet_bar.enter_context(logging_redirect_tqdm())
    try:
        while position.step < plan.run_steps:
            loader.set_epoch(position.epoch, position.epoch_step * split.videos_per_rank_step)
            batches = iter(loader)
            while position.step < plan.run_steps and position.epoch_step < plan.steps_per_epoch:
                record, last_batch = train_step(engine, batches, position, plan, cfg, launch, task, stopper)
                summary.add(record)
                finish_step(position, plan, record, split)
                if settled(recent, record["loss"], train.stop_loss):
                    log.info("loss below train.stop_loss=%g for %d steps: stopping at step %d", train.stop_loss,
                             len(recent), position.step)
                    plan.run_steps = position.step
                if position.step % train.log_every == 0 or position.step == plan.run_steps or record["stop"]:
                    record.update(summary.window(flops_per_clip, peak, launch.world_size))
                    record["peak_memory_gb"] = round(peak_memory_gb(launch.device), 3)
                    metrics.write(public(record, position))
                metrics.step(1, {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}",
                                 "clips/s": f"{summary.clips_per_second():.1f}"})
                if record["skipped"]:
                    on_skipped_step(position, train.max_nonfinite, out)
                if record["stop"]:
                    log.warning("SIGTERM: writing a checkpoint at step %d, then exiting", position.step)
                    save(engine, out, position, config_yaml, train.keep_last)
                    summary.stopped = "SIGTERM"
                    return finish(summary, position, plan, out, launch, metrics, None)
                if position.step % train.checkpoint_every == 0 and position.step < plan.run_steps:
                    save(engine, out, position, config_yaml, train.keep_last)
                if train.visualize_every and position.step % train.visualize_every == 0 and launch.rank == 0:
                    task.picture(engine, last_batch, out / "pictures" / f"step{position.step:09d}.png",
                                 position.step)
            if position.epoch_step >= plan.steps_per_epoch:
                position.epoch, position.epoch_step = position.epoch + 1, 0
        done = latest_checkpoint(out)
        if summary.steps or done is None or done.name != tag_of(position.step):
            done = save(engine, out, position, config_yaml, train.keep_last)
        else:
            log.info("nothing to do: %s is already at step %d of %d", done, position.step, plan.run_steps)
        result = finish(summary, position, plan, out, launch, metrics, (task, engine, last_batch, done))
        if train.sanity_check:
            result["sanity_check"] = judge_sanity_check(summary, train.stop_loss, position.step)
        return result
    finally:
        stopper.restore()
        metrics.close()
        quiet_bar.close()


def state_batch(train, split: BatchSplit, out: Path, task: str, rank: int, fitted: dict | None = None) -> dict:
    """Say, and write to OUT/run.json, what the batch, lr and epochs amount to (and what fitting the step to the
    device chose: ``fitted``); warn off the recipe's batch."""
    statement = batch_statement(train, split)
    log.info(describe_batch(statement))
    warning = batch_warning(statement)
    if warning:
        log.warning(warning)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps({"task": task, "batch": statement, "warning": warning,
                                                  "device_fit": fitted or {}}, indent=1))
    return statement


def resume_position(engine, cfg, out: Path) -> Position:
    resume = cfg.train.resume
    if resume == "never":
        return Position()
    folder = latest_checkpoint(out) if resume == "auto" else Path(resume)
    if folder is None:
        log.info("no complete checkpoint in %s: starting at step 0", out / "checkpoints")
        return Position()
    position = Position(**load_checkpoint(engine, folder))
    log.info("resumed from %s: step %d, epoch %d (+%d steps), %d videos seen", folder, position.step,
             position.epoch, position.epoch_step, position.samples_seen)
    return position


def train_step(engine, batches, position: Position, plan: Plan, cfg, launch: Launch, task,
               stopper: TermSignal) -> tuple[dict, dict]:
    """One optimizer step: ``accumulation`` micro-batches forward and backward, then the update."""
    split, train = plan.split, cfg.train
    lr = lr_at(position.step, plan.total_steps, plan.warmup_steps, plan.peak_lr, train.min_lr)
    set_lr(engine, lr)
    wait = compute = 0.0
    loss_sum = torch.zeros((), device=launch.device)
    keys: list[str] = []
    for micro in range(split.accumulation):
        started = time.perf_counter()
        batch = next(batches)
        fetched = time.perf_counter()
        wait += fetched - started
        first_video = launch.rank * split.videos_per_rank_step + micro * split.micro_batch
        torch.manual_seed(seed_of(train.seed, position.step, launch.rank, micro))  # drop path: per step
        video = batch["video"].to(torch.bfloat16) if engine.bfloat16_enabled() else batch["video"]
        loss = task.loss(engine, video, batch, position.step, first_video * split.views)
        if position.step in train.inject_nonfinite:
            loss = loss * float("nan")
        engine.backward(loss)
        engine.step()
        loss_sum += loss.detach().float()
        keys += batch["key"]
        compute += time.perf_counter() - fetched
    # one all-reduce per step: mean loss over micro-batches and ranks, and whether any rank got SIGTERM. Its read
    # is the step's one wait for the device (the flag is filled there, not copied: no extra blocking copy)
    agreed = torch.stack([loss_sum / split.accumulation, torch.full_like(loss_sum, float(stopper.received))])
    dist.all_reduce(agreed)
    loss_total, stop = agreed.tolist()
    loss_mean = loss_total / launch.world_size
    grad_norm = engine.get_global_grad_norm()
    if train.log_samples:
        write_sample_keys(Path(train.out), launch.rank, position.step, keys)
    record = {"loss": loss_mean, "lr": lr, "grad_norm": float(grad_norm) if grad_norm is not None else None,
              "skipped": not engine.was_step_applied(), "stop": stop > 0, "data_wait": wait, "compute": compute,
              "clips": split.global_batch * split.views, "videos": split.global_batch,
              "tokens": split.global_batch * split.views * task.tokens_per_clip}
    return record, batch


def on_skipped_step(position: Position, limit: int, out: Path) -> None:
    log.warning("step %d skipped: non-finite loss or gradient (%d in a row, %d in all); weights unchanged",
                position.step, position.nonfinite_in_row, position.skipped_steps)
    if position.nonfinite_in_row >= limit:
        last = latest_checkpoint(out)
        raise TrainError(f"{position.nonfinite_in_row} steps in a row had a non-finite loss or gradient "
                         f"(train.max_nonfinite={limit}): stopping. The last good checkpoint is "
                         f"{last or 'none'}; lower train.base_lr, raise train.warmup_epochs or check the data")


def save(engine, out: Path, position: Position, config_yaml: str, keep_last: int) -> Path:
    started = time.perf_counter()
    try:
        folder = save_checkpoint(engine, out, asdict(position), config_yaml, keep_last)
    except CheckpointError as err:
        raise TrainError(str(err)) from None
    log.info("checkpoint %s (%.1f s)", folder, time.perf_counter() - started)
    return folder


def finish(summary: Summary, position: Position, plan: Plan, out: Path, launch: Launch, metrics: MetricsWriter,
           final) -> dict:
    result = summary.final(position, plan)
    result.update(task=summary.task, metrics=str(metrics.path), device=launch.device.type)
    if final is not None:
        task, engine, batch, folder = final
        result["checkpoint"] = str(folder)
        if launch.rank == 0:
            result.update(task.finish(engine, batch, folder, out, position.step))
        _barrier()
    return result


class TermSignal:
    """Remembers a SIGTERM (what SLURM sends before preemption) so the loop can checkpoint and exit."""

    def __init__(self):
        self.received = False
        self.previous = signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum, frame) -> None:
        self.received = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self.previous)


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
