"""The ``train`` and ``finetune`` config sections of `vmae pretrain` and `vmae finetune`, and the rules that tie
them to a launch: the batch split over ranks, the lr scaling and the schedule. (The ``model`` section is
``vmae.model.config.ModelConfig``.)"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from vmae.pipeline.data.config import DataConfig
from vmae.shards.config import field_help

PRECISIONS = ("auto", "bf16", "fp32")
# AdamW's kernels in torch: one fused kernel over every parameter, or foreach (a few kernels per group); auto: fused
# on CUDA, foreach on CPU
OPTIMIZER_KERNELS = ("auto", "fused", "foreach")
LR_BATCH_UNITS = ("videos", "clips")
RESUME = ("auto", "never")


class TrainError(RuntimeError):
    """Training cannot start or go on for a reason the user can act on; the message says which."""


@dataclass
class TrainConfig:
    dataset: str | None = field(default=None, metadata=field_help("dataset folder written by `vmae shards build`"))
    out: str = field(default="runs/pretrain", metadata=field_help(
        "run folder: checkpoints, metrics.jsonl, TensorBoard events, pictures"))
    # how much, in what batches
    epochs: int = field(default=800, metadata=field_help("passes over the dataset"))
    max_steps: int = field(default=0, metadata=field_help(
        "stop after this many optimizer steps (0: epochs x steps per epoch); the schedule still spans the epochs"))
    global_batch: int = field(default=512, metadata=field_help(
        "videos per optimizer step over all ranks (each gives data.views clips); = ranks x data.batch_size x "
        "gradient accumulation"))
    reference_batch: int = field(default=2048, metadata=field_help(
        "effective batch in clips (global_batch x data.views) this recipe's lr and schedule were tuned at; a run "
        "at another one is warned about (0: no reference). MAE-ST: 512 videos x 4 views"))
    # optimizer and schedule (MAE-ST's recipe)
    base_lr: float = field(default=1.6e-3, metadata=field_help("lr per lr_batch_unit 256 (lr = base_lr x batch/256)"))
    lr_batch_unit: str = field(default="videos", metadata=field_help(
        "what the lr rule counts: videos (MAE-ST: repeated clips do not raise the lr) or clips",
        choices=LR_BATCH_UNITS))
    min_lr: float = field(default=0.0, metadata=field_help("lr at the end of the half-cosine"))
    warmup_epochs: float = field(default=120.0, metadata=field_help("linear warm-up length, stepped per step"))
    weight_decay: float = field(default=0.05, metadata=field_help("AdamW weight decay (none on biases, norms, "
                                                                   "positions and mask tokens)"))
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95], metadata=field_help("AdamW betas"))
    gradient_clipping: float = field(default=0.02, metadata=field_help(
        "max global gradient norm (MAE-ST: 0.02; 0: off); set explicitly since DeepSpeed defaults to 1.0"))
    # DeepSpeed
    zero_stage: int = field(default=1, metadata=field_help("ZeRO stage 0-3"))
    precision: str = field(default="auto", metadata=field_help(
        "bf16 or fp32 (auto: bf16 on CUDA, fp32 on CPU, where bf16 backward is ~5x slower); fp16 is not offered",
        choices=PRECISIONS))
    optimizer_kernel: str = field(default="auto", metadata=field_help(
        "AdamW's kernel: fused (one kernel for every parameter) or foreach; auto: fused on CUDA, foreach on CPU",
        choices=OPTIMIZER_KERNELS))
    memory_limit_gb: float = field(default=0.0, metadata=field_help(
        "GiB the trial steps of data.batch_size=auto and model.checkpoint=auto may fill on one device, optimizer "
        "states included (0: 90 % of the GPU's memory; on CPU of the memory available)"))
    # checkpoints, metrics, faults
    checkpoint_every: int = field(default=1000, metadata=field_help("steps between checkpoints (one at the end too)"))
    keep_last: int = field(default=3, metadata=field_help("complete checkpoints kept (older ones are deleted)"))
    resume: str = field(default="auto", metadata=field_help(
        "auto: continue from the newest complete checkpoint in out, if any; never; or a checkpoint folder"))
    log_every: int = field(default=10, metadata=field_help("steps between metric lines (console, JSONL, TensorBoard)"))
    visualize_every: int = field(default=0, metadata=field_help(
        "steps between reconstruction pictures (0: only at the end)"))
    stop_loss: float = field(default=0.0, metadata=field_help(
        "stop early once the loss has stayed below this for 5 steps in a row (0: never; --overfit sets it)"))
    sanity_check: bool = field(default=False, metadata=field_help(
        "the --overfit check (--overfit sets it): the same masks every step, and a run whose loss does not get "
        "below train.stop_loss says FAILED and exits 1"))
    max_nonfinite: int = field(default=20, metadata=field_help(
        "stop after this many skipped (non-finite loss or gradient) steps in a row"))
    peak_tflops: float = field(default=0.0, metadata=field_help(
        "the device's peak for MFU (0: known GPUs by name; on CPU a matmul measured at start)"))
    seed: int = field(default=0, metadata=field_help("seed of the initial weights and the masks"))
    log_samples: bool = field(default=False, metadata=field_help(
        "write each step's sample keys per rank to samples.jsonl (audits resume: none twice, none skipped)"))
    inject_nonfinite: list[int] = field(default_factory=list, metadata=field_help(
        "testing aid: steps whose loss is made NaN"))

    def __post_init__(self) -> None:
        for key in ("epochs", "global_batch", "checkpoint_every", "keep_last", "log_every", "max_nonfinite"):
            if getattr(self, key) <= 0:
                raise ValueError(f"train.{key} must be > 0, got {getattr(self, key)}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"train.zero_stage must be 0, 1, 2 or 3; got {self.zero_stage}")
        if self.precision not in PRECISIONS:
            hint = " (fp16 needs loss scaling and is not offered: use bf16)" if self.precision == "fp16" else ""
            raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}{hint}")
        if self.optimizer_kernel not in OPTIMIZER_KERNELS:
            raise ValueError(f"train.optimizer_kernel must be one of {', '.join(OPTIMIZER_KERNELS)}; got "
                             f"{self.optimizer_kernel!r}")
        if self.memory_limit_gb < 0:
            raise ValueError(f"train.memory_limit_gb must be >= 0 (0: 90 % of the device), got {self.memory_limit_gb}")
        if self.lr_batch_unit not in LR_BATCH_UNITS:
            raise ValueError(f"train.lr_batch_unit must be videos or clips; got {self.lr_batch_unit!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.betas must be two values in [0, 1), got {self.betas}")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"train.warmup_epochs={self.warmup_epochs} must be less than train.epochs={self.epochs}")
        if self.base_lr <= 0 or self.min_lr < 0 or self.warmup_epochs < 0 or self.gradient_clipping < 0:
            raise ValueError("train.base_lr must be > 0; train.min_lr, warmup_epochs and gradient_clipping >= 0")


@dataclass
class FinetuneConfig:
    """What `vmae finetune` adds to the train section: where the encoder comes from and the fine-tuning
    regularizers of MAE-ST / VideoMAE (repeated augmentation is data.views: K clips of each video per batch)."""

    pretrained: str | None = field(default=None, metadata=field_help(
        "pretraining run folder, checkpoint folder or exported .pt whose encoder starts the classifier "
        "(unset: from scratch)"))
    num_classes: int = field(default=0, metadata=field_help(
        "classes of the head; the dataset must have exactly as many (0: the dataset's count)"))
    layer_decay: float = field(default=0.75, metadata=field_help(
        "layer-wise lr decay: block i of L gets lr x decay^(L-i), the embeddings decay^(L+1) (1: off)"))
    label_smoothing: float = field(default=0.1, metadata=field_help("label smoothing of the cross-entropy"))
    mixup: float = field(default=0.8, metadata=field_help("mixup Beta(alpha, alpha) (0: off)"))
    cutmix: float = field(default=1.0, metadata=field_help(
        "cutmix Beta(alpha, alpha), one box through all frames of a clip (0: off)"))
    mixup_prob: float = field(default=1.0, metadata=field_help("share of batches mixed when mixup or cutmix is on"))
    mixup_switch_prob: float = field(default=0.5, metadata=field_help(
        "share of mixed batches that use cutmix rather than mixup when both are on"))
    val_dataset: str | None = field(default=None, metadata=field_help(
        "labelled dataset scored at the end with the multi-view test (unset: none)"))
    test_views: int = field(default=4, metadata=field_help(
        "evaluation clips per video: temporal windows x test_crops (MAE-ST Kinetics: 7 x 3 = 21)"))
    test_crops: int = field(default=1, metadata=field_help("spatial crops per temporal window at evaluation"))

    def __post_init__(self) -> None:
        if self.num_classes < 0:
            raise ValueError(f"finetune.num_classes must be >= 0 (0: the dataset's count), got {self.num_classes}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"finetune.layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"finetune.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.mixup < 0 or self.cutmix < 0 or not 0 <= self.mixup_prob <= 1 or not 0 <= self.mixup_switch_prob <= 1:
            raise ValueError("finetune.mixup and finetune.cutmix must be >= 0, the probabilities in [0, 1]")
        if self.test_views < 1 or self.test_crops < 1 or self.test_views % self.test_crops:
            raise ValueError(f"finetune.test_views={self.test_views} must be a positive multiple of "
                             f"finetune.test_crops={self.test_crops}")

    @property
    def mixes(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0


@dataclass(frozen=True)
class BatchSplit:
    """How one global batch is cut over ranks and micro-batches."""

    world_size: int
    micro_batch: int  # videos per rank per forward (data.batch_size)
    accumulation: int
    views: int

    @property
    def global_batch(self) -> int:
        return self.world_size * self.micro_batch * self.accumulation

    @property
    def videos_per_rank_step(self) -> int:
        return self.micro_batch * self.accumulation


def videos_per_rank_step(train: TrainConfig, world_size: int) -> int:
    """Videos each rank takes per optimizer step (micro-batch x accumulation), or an error naming the keys."""
    if train.global_batch % world_size:
        raise ValueError(f"train.global_batch={train.global_batch} is not a multiple of the {world_size} ranks: "
                         "pick a global batch they divide")
    return train.global_batch // world_size


def batch_split(train: TrainConfig, data: DataConfig, world_size: int) -> BatchSplit:
    """The accumulation that makes ``train.global_batch``, or an error naming the keys when none does. An ``auto``
    micro-batch must have been settled first (``vmae.pipeline.train.micro_batch``)."""
    if data.batch_size == "auto":
        raise ValueError("data.batch_size=auto is found at start, on the device: settle it before splitting the batch")
    per_forward = world_size * data.batch_size
    if train.global_batch % per_forward:
        raise ValueError(f"train.global_batch={train.global_batch} is not a multiple of {world_size} rank(s) x "
                         f"data.batch_size={data.batch_size}: pick a global batch or micro-batch that divides")
    return BatchSplit(world_size, data.batch_size, train.global_batch // per_forward, data.views)


def peak_lr(train: TrainConfig, split: BatchSplit) -> float:
    """base_lr x effective batch / 256, the batch counted in videos (MAE-ST) or clips."""
    batch = split.global_batch * (split.views if train.lr_batch_unit == "clips" else 1)
    return train.base_lr * batch / 256


def batch_statement(train: TrainConfig, split: BatchSplit) -> dict:
    """What one optimizer step and the whole run amount to, as VideoMAE V2 counts them: per-device batch x
    devices x accumulation x views = effective batch (clips), the lr rule and its result, epochs and effective
    epochs (epochs x views: each video is seen ``views`` times per epoch)."""
    counted = split.global_batch * (split.views if train.lr_batch_unit == "clips" else 1)
    return {"per_device_batch": split.micro_batch, "devices": split.world_size, "accumulation": split.accumulation,
            "views": split.views, "global_batch_videos": split.global_batch,
            "effective_batch_clips": split.global_batch * split.views,
            "lr_rule": f"lr = base_lr {train.base_lr:g} x {counted} {train.lr_batch_unit} / 256",
            "lr": peak_lr(train, split), "epochs": train.epochs, "effective_epochs": train.epochs * split.views,
            "reference_batch_clips": train.reference_batch or None}


def describe_batch(statement: dict) -> str:
    s = statement
    return (f"effective batch {s['effective_batch_clips']} clips = {s['per_device_batch']} videos per device x "
            f"{s['devices']} device(s) x {s['accumulation']} accumulation x {s['views']} views; {s['lr_rule']} = "
            f"{s['lr']:.3g}; {s['epochs']} epochs = {s['effective_epochs']} effective epochs (x {s['views']} views)")


def batch_warning(statement: dict) -> str | None:
    """A warning when the effective batch is not the recipe's reference, else None."""
    reference = statement["reference_batch_clips"]
    if not reference or statement["effective_batch_clips"] == reference:
        return None
    return (f"effective batch {statement['effective_batch_clips']} clips differs from this recipe's reference "
            f"{reference} (train.reference_batch): the lr follows the linear rule, but a paper's figures are "
            f"only expected at its own batch (VideoMAE users lost 1-2.5 points this way). Set "
            f"train.reference_batch={statement['effective_batch_clips']} once this batch is the one you mean")


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float) -> float:
    """Linear warm-up from 0 over ``warmup_steps``, then a half-cosine from ``peak`` down to ``floor``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
