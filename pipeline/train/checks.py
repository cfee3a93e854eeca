"""What a training run refuses before any process group, model or loader is made: a missing dataset, an impossible
batch split, clips that tubelets do not tile, an unwritable run folder, classes that do not fit the head."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from vmae.pipeline.data.remote import is_url
from vmae.pipeline.data.shardset import dataset_locations, open_shards
from vmae.pipeline.train.checkpoint import checkpoint_root
from vmae.pipeline.train.config import TrainError, batch_split, videos_per_rank_step
from vmae.shards.format import MANIFEST

def start_checks(cfg, world_size: int, create: bool = True) -> list[tuple[str, Callable[[], str]]]:
    """What a run checks before it starts, in order: (name, check); a check returns what it found or raises
    TrainError/ValueError. ``create=False`` (a dry run) makes no folder: the nearest existing one is probed."""
    train, data = cfg.train, cfg.data
    out = Path(train.out)

    def dataset() -> str:
        if not train.dataset:
            raise TrainError("train.dataset is not set: pass --dataset DIR (a folder written by `vmae shards build`)")
        for location in dataset_locations(train.dataset):
            if not is_url(location):
                check_dataset_folder("train.dataset", location)
        shards = open_shards(train.dataset, data)  # a URL's manifest is fetched here: an unreachable one stops
        return f"{train.dataset}: {len(shards)} videos in {len(shards.classes)} classes"

    def split() -> str:
        if data.batch_size == "auto":
            per_rank = videos_per_rank_step(train, world_size)
            return (f"global batch {train.global_batch} videos = {world_size} rank(s) x {per_rank}; data.batch_size="
                    "auto: the micro-batch, a divisor of that, is found at start on the device")
        s = batch_split(train, data, world_size)  # raises on an impossible split
        return (f"global batch {s.global_batch} videos = {s.world_size} rank(s) x {s.micro_batch} "
                f"(data.batch_size) x {s.accumulation} accumulation")

    def grid() -> str:
        t, h, w = cfg.model.token_grid(data.frames, data.crop_size)  # raises when clips and tubelets do not fit
        tubelet = "x".join(map(str, cfg.model.architecture.tubelet))
        return f"{data.frames}x{data.crop_size}px clips in {tubelet} tubelets: {t}x{h}x{w} tokens"

    def size() -> str:
        samples = len(open_shards(train.dataset, data))
        if samples < train.global_batch:
            raise TrainError(f"train.global_batch={train.global_batch} is more than the {samples} videos of "
                             f"{train.dataset}: lower it")
        return f"{samples} videos >= train.global_batch={train.global_batch}"

    def schedule() -> str:
        per_rank = videos_per_rank_step(train, world_size)  # data.streams must suit the world size: refused here
        steps = open_shards(train.dataset, data).steps_per_epoch(world_size, per_rank, data.streams)
        return f"{steps} steps an epoch, {steps * train.epochs} in {train.epochs} epochs"

    def run_folder() -> str:
        folder = out if create else nearest_existing(out)
        check_writable_folder("train.out=", folder)
        return str(out) if folder == out else f"{out} (to be made in {folder}, which is writable)"

    def checkpoints() -> str:
        # the first checkpoint is written steps later: a checkpoints folder it cannot write must stop the run now
        check_writable_folder("the checkpoints folder ", checkpoint_root(out), create=False)
        return f"{checkpoint_root(out)} (made at the first checkpoint)"

    return [("dataset", dataset), ("batch split", split), ("clips and tubelets", grid), ("dataset size", size),
            ("schedule", schedule), ("run folder", run_folder), ("checkpoints", checkpoints)]


def check_before_start(cfg, world_size: int) -> None:
    """Refuse a config that cannot run, before any process group, model or loader is made."""
    for _, run_check in start_checks(cfg, world_size):
        run_check()


def nearest_existing(folder: Path) -> Path:
    """``folder``, or its nearest ancestor that exists (where a run would make it)."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_dataset_folder(key: str, location: str | Path) -> None:
    """Refuse a dataset folder without a manifest; a relative path that does not exist is named as it was looked
    for (relative to the current folder: presets' paths are too)."""
    path = Path(location)
    if (path / MANIFEST).is_file():
        return
    if not is_url(location) and not path.is_absolute() and not path.exists():
        raise TrainError(f"{key}={location}: no such folder, looked for at {path.absolute()}. Relative paths, "
                         f"presets' included, are read from the folder you run the command in ({Path.cwd()}): run "
                         f"it from the folder that holds {location}, or pass its path with "
                         f"--{key.split('.')[-1].replace('_', '-')}")
    raise TrainError(f"{key}={location}: no {MANIFEST} there; build it with `vmae shards build`")


def check_writable_folder(what: str, folder: Path, create: bool = True) -> None:
    """Refuse a folder (named as ``what`` + its path) that is a file or cannot be written, probed by writing a
    file (permission bits do not tell for root, ACLs or read-only mounts); ``create`` makes a missing one, else a
    missing one passes."""
    if folder.exists() and not folder.is_dir():
        raise TrainError(f"{what}{folder} is a file, not a folder: move it away, or pass another --out")
    if not create and not folder.exists():
        return  # made at the first checkpoint, inside a folder already probed
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"  # one per process: ranks probe at once
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise TrainError(f"{what}{folder} is not a writable folder ({err.strerror or err}): fix its permissions "
                         "or pass another --out") from None


def check_classes(classes: list[str], cfg, record_them: bool = True) -> None:
    """Refuse a dataset whose classes do not match the head: finetune.num_classes, or the classes of the run being
    resumed (OUT/classes.json); otherwise record them there."""
    wanted = cfg.finetune.num_classes
    if wanted and wanted != len(classes):
        raise TrainError(f"the head has finetune.num_classes={wanted} classes but {cfg.train.dataset} has "
                         f"{len(classes)}: set finetune.num_classes={len(classes)} (or 0) or use the dataset built for "
                         "this head")
    record = Path(cfg.train.out) / "classes.json"
    if record.is_file() and cfg.train.resume != "never":
        before = json.loads(record.read_text())
        if before != classes:
            changed = sorted(set(before) ^ set(classes))[:5]
            raise TrainError(f"{cfg.train.out} was fine-tuned on {len(before)} classes and {cfg.train.dataset} has "
                             f"{len(classes)} (differing: {changed or 'the order'}): resuming would put the wrong "
                             "head on them; use another train.out or train.resume=never")
    if record_them and int(os.environ.get("RANK", "0")) == 0:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(classes))


def check(cfg) -> None:
    """``check_before_start`` for the world size the launcher set, every refusal as a TrainError."""
    try:
        check_before_start(cfg, launched_world_size(os.environ))
    except ValueError as err:  # the sections' own checks name the key
        raise TrainError(str(err)) from None


def launched_world_size(env) -> int:
    """The number of ranks the launcher started (torchrun, deepspeed: WORLD_SIZE; srun: SLURM_NTASKS), 1 alone."""
    if "WORLD_SIZE" in env:
        return int(env["WORLD_SIZE"])
    if "SLURM_PROCID" in env:
        return int(env.get("SLURM_NTASKS", "1"))
    return 1


def finetune_classes(cfg, record: bool = True) -> list[str]:
    """The classes of the fine-tuning dataset, once it and the validation dataset are known to be usable;
    ``record`` writes them into the run folder (OUT/classes.json)."""
    if cfg.finetune.val_dataset:
        check_dataset_folder("finetune.val_dataset", cfg.finetune.val_dataset)
    classes = open_shards(cfg.train.dataset, cfg.data).classes
    if len(classes) < 2:
        raise TrainError(f"{cfg.train.dataset} has {len(classes)} class(es): fine-tuning needs labelled videos of "
                         "at least two (build the shards from class sub-folders or a CSV with labels)")
    check_classes(classes, cfg, record)
    return classes
