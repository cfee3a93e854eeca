"""What a training run refuses before any process group, model or loader is made: a missing dataset, an impossible
batch split, clips that tubelets do not tile, an unwritable run folder, classes that do not fit the head."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vmae.pipeline.data.remote import is_url
from vmae.pipeline.data.shardset import dataset_locations, open_shards
from vmae.pipeline.train.checkpoint import checkpoint_root
from vmae.pipeline.train.config import TrainError, batch_split
from vmae.shards.format import MANIFEST

def check_before_start(cfg, world_size: int) -> None:
    """Refuse a config that cannot run, before any process group, model or loader is made."""
    if not cfg.train.dataset:
        raise TrainError("train.dataset is not set: pass --dataset DIR (a folder written by `vmae shards build`)")
    dataset = cfg.train.dataset
    for location in dataset_locations(dataset):
        if not is_url(location):
            check_dataset_folder("train.dataset", location)
    batch_split(cfg.train, cfg.data, world_size)  # raises on an impossible split
    cfg.model.token_grid(cfg.data.frames, cfg.data.crop_size)  # raises when clips and tubelets do not fit
    samples = len(open_shards(dataset, cfg.data))  # a URL's manifest is fetched here: an unreachable one stops
    if samples < cfg.train.global_batch:
        raise TrainError(f"train.global_batch={cfg.train.global_batch} is more than the {samples} videos of "
                         f"{dataset}: lower it")
    check_writable_folder("train.out=", Path(cfg.train.out))
    # the first checkpoint is written steps later: a checkpoints folder it cannot write must stop the run now
    check_writable_folder("the checkpoints folder ", checkpoint_root(Path(cfg.train.out)), create=False)


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


def check_classes(classes: list[str], cfg) -> None:
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
    if int(os.environ.get("RANK", "0")) == 0:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(classes))


def check(cfg) -> None:
    """``check_before_start`` for this process's world size, every refusal as a TrainError."""
    try:
        check_before_start(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError as err:  # the sections' own checks name the key
        raise TrainError(str(err)) from None



def finetune_classes(cfg) -> list[str]:
    """The classes of the fine-tuning dataset, once it and the validation dataset are known to be usable."""
    if cfg.finetune.val_dataset:
        check_dataset_folder("finetune.val_dataset", cfg.finetune.val_dataset)
    classes = open_shards(cfg.train.dataset, cfg.data).classes
    if len(classes) < 2:
        raise TrainError(f"{cfg.train.dataset} has {len(classes)} class(es): fine-tuning needs labelled videos of "
                         "at least two (build the shards from class sub-folders or a CSV with labels)")
    check_classes(classes, cfg)
    return classes
