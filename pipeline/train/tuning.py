"""The step fitted to the device before the DeepSpeed engine is built: attention kernels settled, the micro-batch
found (``data.batch_size=auto``), activation checkpointing switched on only where memory needs it
(``model.checkpoint=auto``), and the blocks compiled (``model.compile``).

The micro-batch search runs trial steps (forward and backward on random clips) at growing micro-batches, each a
divisor of the videos a rank takes per optimizer step, so the accumulation that keeps ``train.global_batch`` is a
whole number. A size is taken while it fits (its measured peak plus the optimizer states DeepSpeed will add, under
``train.memory_limit_gb``) and raises clips/s by at least ``MIN_GAIN`` over the last one taken. Every rank takes
the smallest size any rank found, so all ranks step alike. The trials run eagerly: compiling each size would cost
a compilation per trial, and the compiled step needs no more memory than the eager one.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from vmae.model.mae import compile_blocks
from vmae.pipeline.train.config import TrainError, videos_per_rank_step

log = logging.getLogger(__name__)

MIN_GAIN = 0.05  # a larger micro-batch is taken only if it raises clips/s by this share
MEMORY_SHARE = 0.9  # of the device's memory when train.memory_limit_gb is 0: the rest for fragmentation, NCCL's
# buffers and the loader's batches in flight
WARMUP_STEPS, TIMED_STEPS = 1, 2
GIB = 2**30


@dataclass
class Trial:
    """One trial micro-batch: its peak memory (with the optimizer states to come), clips/s, or why it was refused."""

    videos: int
    checkpoint: bool
    peak_gib: float | None = None
    clips_per_s: float | None = None
    problem: str | None = None

    @property
    def fits(self) -> bool:
        return self.problem is None


class BareEngine:
    """What a task's loss calls on the DeepSpeed engine (calling it, ``.module``), over the bare model: the trial
    steps run before the engine exists."""

    def __init__(self, model: nn.Module):
        self.module = model

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def prepare_model(model: nn.Module, task, cfg, device: torch.device, precision: str, world_size: int) -> dict:
    """Fit the step to the device, in place: the model on ``device`` in the training dtype, its attention kernels
    settled, ``data.batch_size`` and ``model.checkpoint`` resolved in ``cfg``, the blocks compiled. Returns what
    was chosen and why (for the log and run.json)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model.to(device=device, dtype=dtype)  # what DeepSpeed does first (bf16: the module cast; masters made after)
    chosen: dict = {"attention": model.settle_attention(dtype, device)}
    log.info("attention kernels: %s", ", ".join(f"{part} {kernel}" for part, kernel in chosen["attention"].items()))
    chosen.update(settle_micro_batch(model, task, cfg, device, dtype, world_size))
    mode = compile_mode(cfg.model.compile, device, cfg.train.zero_stage)
    chosen["compile"] = mode
    if mode != "off":
        log.info("torch.compile (%s) of %d transformer blocks: the first steps compile", mode,
                 compile_blocks(model, mode))
    return chosen


def fit_config(cfg, device: torch.device, precision: str) -> dict:
    """``data.batch_size=auto`` and ``model.checkpoint=auto`` resolved in ``cfg`` as a one-rank `vmae pretrain` on
    ``device`` would (what `vmae profile` measures with); {} when neither is auto."""
    if cfg.data.batch_size != "auto" and cfg.model.checkpoint != "auto":
        return {}
    from vmae.pipeline.train.tasks import PretrainTask  # the task imports the evaluation code: only when needed

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    task = PretrainTask(cfg)
    model = task.build_model(None).to(device=device, dtype=dtype)
    model.settle_attention(dtype, device)
    return settle_micro_batch(model, task, cfg, device, dtype, 1)


def compile_mode(setting: str, device: torch.device, zero_stage: int) -> str:
    """The torch.compile mode of ``model.compile``: auto compiles on CUDA except under ZeRO-3, whose parameter
    gathering runs inside each block's hooks and would break the graphs."""
    if setting != "auto":
        return setting
    return "default" if device.type == "cuda" and zero_stage < 3 else "off"


def settle_micro_batch(model: nn.Module, task, cfg, device: torch.device, dtype: torch.dtype,
                       world_size: int) -> dict:
    """Resolve ``data.batch_size=auto`` and ``model.checkpoint=auto`` by trial steps (see the module's text)."""
    data, auto_batch, auto_checkpoint = cfg.data, cfg.data.batch_size == "auto", cfg.model.checkpoint == "auto"
    if not auto_batch and (not auto_checkpoint or device.type != "cuda"):
        # an explicit micro-batch wins; on CPU checkpointing stays off unless asked for (RAM is not what limits it)
        checkpoint = cfg.model.checkpoint is True
        model.set_checkpointing(checkpoint)
        why = f"model.checkpoint={str(checkpoint).lower()}"
        if auto_checkpoint:
            why = "on CPU it stays off unless asked for"
        cfg.model = replace(cfg.model, checkpoint=checkpoint)
        return {"checkpoint": checkpoint, "checkpoint_why": why}
    sizes = (candidate_sizes(videos_per_rank_step(cfg.train, world_size), task.fits_micro_batch) if auto_batch
             else [data.batch_size])
    limit = memory_limit(cfg.train.memory_limit_gb, device)
    states = optimizer_state_bytes(model, cfg.train.zero_stage, world_size)

    def trial(videos: int, checkpoint: bool) -> Trial:
        return run_trial(model, task, cfg, videos, checkpoint, device, dtype, states, limit)

    trials: list[Trial] = []
    best = None
    for checkpoint in ((False, True) if auto_checkpoint else (cfg.model.checkpoint is True,)):
        best, tried = search(trial, sizes, checkpoint)
        trials += tried
        if best is not None:
            break
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if best is None:
        raise TrainError(too_large(sizes[0], trials, limit, auto_batch))
    videos, checkpoint = agree(best.videos, best.checkpoint, device)
    model.set_checkpointing(checkpoint)
    cfg.data = replace(data, batch_size=videos)
    cfg.model = replace(cfg.model, checkpoint=checkpoint)
    log.info("%s: %s", "data.batch_size=auto" if auto_batch else f"data.batch_size={videos}",
             describe_trials(trials, videos, limit))
    why = f"model.checkpoint={str(checkpoint).lower()}"
    if auto_checkpoint:
        why = (f"memory needs it: without it {without_checkpointing(trials)}" if checkpoint
               else "the micro-batch fits without it")
        log.info("activation checkpointing %s (model.checkpoint=auto): %s", "on" if checkpoint else "off", why)
    return {"micro_batch": videos, "checkpoint": checkpoint, "checkpoint_why": why,
            "memory_limit_gib": round(limit / GIB, 2), "trials": [asdict(t) for t in trials]}


def candidate_sizes(per_rank: int, allowed: Callable[[int], bool] = lambda videos: True) -> list[int]:
    """Divisors of ``per_rank`` (so the accumulation is whole) that ``allowed`` accepts, each at least twice the
    one before, ending at ``per_rank`` itself when allowed."""
    divisors = [d for d in range(1, per_rank + 1) if per_rank % d == 0 and allowed(d)]
    sizes: list[int] = []
    for d in divisors:
        if not sizes or d >= 2 * sizes[-1] or d == divisors[-1]:
            sizes.append(d)
    return sizes


def search(trial: Callable[[int, bool], Trial], sizes: list[int], checkpoint: bool) -> tuple[Trial | None, list]:
    """Walk up ``sizes``: the last trial that fit and raised clips/s by ``MIN_GAIN``, and every trial made."""
    best, trials = None, []
    for videos in sizes:
        result = trial(videos, checkpoint)
        trials.append(result)
        if not result.fits:
            break
        if best is not None and result.clips_per_s < best.clips_per_s * (1 + MIN_GAIN):
            result.problem = f"+{100 * (result.clips_per_s / best.clips_per_s - 1):.0f} % clips/s only"
            break
        best = result
    return best, trials


def run_trial(model: nn.Module, task, cfg, videos: int, checkpoint: bool, device: torch.device, dtype: torch.dtype,
              states: int, limit: int) -> Trial:
    """Forward and backward of ``videos`` x data.views random clips: peak memory and clips/s."""
    data = cfg.data
    clips = videos * data.views
    model.set_checkpointing(checkpoint)
    engine = BareEngine(model)
    times = []
    try:
        with PeakMemory(model, device) as memory:
            video = torch.randn(clips, 3, data.frames, data.crop_size, data.crop_size, device=device, dtype=dtype)
            batch = task.trial_batch(clips, device)
            for step in range(WARMUP_STEPS + TIMED_STEPS):
                _sync(device)
                started = time.perf_counter()
                task.loss(engine, video, batch, step, 0).backward()
                _sync(device)
                times.append(time.perf_counter() - started)
                model.zero_grad(set_to_none=False)  # gradients stay allocated, as in training
            del video, batch
    except torch.OutOfMemoryError:
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return Trial(videos, checkpoint, problem="out of memory")
    peak = memory.peak + states
    trial = Trial(videos, checkpoint, round(peak / GIB, 4), round(clips / statistics.median(times[WARMUP_STEPS:]), 2))
    if peak > limit:
        trial.problem = f"needs {peak / GIB:.3g} GiB of {limit / GIB:.3g}"
    return trial


class PeakMemory:
    """Peak bytes of the block it wraps: the CUDA allocator's peak; on CPU the weights and gradients plus every
    tensor saved for backward (the activations, the part that grows with the micro-batch)."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model, device
        self.peak = 0
        self._saved: dict[int, int] = {}
        self._hooks = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
            self._hooks.__enter__()
        return self

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self._saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        self._hooks.__exit__(*exc)
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.peak = 2 * weights + sum(self._saved.values())  # weights, their gradients, the saved activations


def optimizer_state_bytes(model: nn.Module, zero_stage: int, world_size: int) -> int:
    """Bytes DeepSpeed will add per rank beyond the weights and gradients the trial already holds: its estimate
    of the model states under ``zero_stage`` (no offload), less those two."""
    from vmae.pipeline.train.preflight import model_states_per_rank  # imports DeepSpeed: only when searching

    params = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    held = 2 * sum(p.numel() * p.element_size() for p in model.parameters())
    return max(0, int(model_states_per_rank(params, largest, world_size, zero_stage)) - held)


def memory_limit(limit_gb: float, device: torch.device) -> int:
    """Bytes a trial may peak at: ``train.memory_limit_gb``, else ``MEMORY_SHARE`` of the GPU's memory (on CPU of
    the memory available, shared among this machine's ranks)."""
    if limit_gb:
        return int(limit_gb * GIB)
    if device.type == "cuda":
        return int(MEMORY_SHARE * torch.cuda.get_device_properties(device).total_memory)
    import psutil

    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return int(MEMORY_SHARE * psutil.virtual_memory().available / ranks)


def agree(videos: int, checkpoint: bool, device: torch.device) -> tuple[int, bool]:
    """Every rank's choice made one: the smallest micro-batch, checkpointing if any rank needs it."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return videos, checkpoint
    smallest = torch.tensor([videos, -int(checkpoint)], device=device)
    dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
    return int(smallest[0]), bool(-smallest[1])


def describe_trials(trials: list[Trial], chosen: int | None, limit: int) -> str:
    """The trials as one line: size, clips/s and peak, or why refused; the size taken (if any)."""
    parts = []
    for t in trials:
        figures = f"{t.clips_per_s:.1f} clips/s, {t.peak_gib:.3g} GiB" if t.clips_per_s is not None else ""
        parts.append(f"{t.videos}{' (checkpointed)' if t.checkpoint else ''}: " +
                     "; ".join(p for p in (figures, t.problem) if p))
    taken = f" -> {chosen} videos per micro-batch" if chosen else ""
    return f"{' | '.join(parts)}{taken} (limit {limit / GIB:.3g} GiB)"


def without_checkpointing(trials: list[Trial]) -> str:
    first = next((t for t in trials if not t.checkpoint), None)
    return f"{first.videos} video(s) per micro-batch: {first.problem}" if first else "nothing fit"


def too_large(smallest: int, trials: list[Trial], limit: int, auto_batch: bool) -> str:
    """The message when not even the smallest micro-batch fits."""
    what = "the smallest micro-batch" if auto_batch else "data.batch_size"
    tried = describe_trials(trials, None, limit)
    return (f"{what} ({smallest} video(s)) does not fit in {limit / GIB:.3g} GiB: {tried}. Use a smaller "
            "model.preset, fewer data.frames or a smaller data.crop_size, model.checkpoint=true, a higher "
            "train.zero_stage, more ranks, or raise train.memory_limit_gb if the device has the room")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
