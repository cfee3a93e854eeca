"""The study's datasets, fixed before anything is trained: the unlabelled pool (training-split items), the labelled
subsets of 1, 5 and 20 clips per class drawn from the pool per seed (nested: the 1 of a seed is in its 5, its 5
in its 20), the validation clips (other training-split items: the lr and the checkpoint are chosen on them, never
on the test) and the test clips (test-split items), each built into shards by the shard builder.

Which item makes which clip, and each clip's look and path, depend only on ``DATA_SEED`` and the counts; a build
that exists with the same inputs is reused (the builder says "nothing to do").
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vmae.pipeline.study.items import CLASSES, ClipJob, ClipSpec, load_items, make_clips, spec_card, write_card
from vmae.shards.build import build_shards
from vmae.shards.state import BuildError
from vmae.shards.config import ShardConfig

log = logging.getLogger(__name__)

DATA_SEED = 2026  # the items chosen and every clip's look and path: one data set for every seed of every arm
SUBSET_SIZES = (1, 5, 20)  # labelled clips per class


@dataclass
class StudyData:
    """Where the study's shards are: pool, test, and per seed the labelled subset of each size."""

    root: Path
    pool: Path
    val: Path
    test: Path
    subsets: dict[int, dict[int, Path]] = field(default_factory=dict)  # seed -> clips per class -> shards
    card: dict = field(default_factory=dict)


def build_study_data(root: Path, seeds: list[int], pool_per_class: int = 500, test_per_class: int = 100,
                     val_per_class: int = 20, spec: ClipSpec = ClipSpec(), sizes: tuple[int, ...] = SUBSET_SIZES,
                     workers: int = 0) -> StudyData:
    """Make (or reuse) every clip and shard set of the study under ``root``."""
    workers = workers or os.cpu_count() or 1
    pool_items = choose_items("train", pool_per_class)
    val_items = choose_items("train", val_per_class, skip=pool_per_class)  # the items after the pool's
    test_items = choose_items("test", test_per_class)
    videos = root / "videos"
    drop_other_looks(root, spec)
    pool_jobs = clip_jobs("train", pool_items, videos / "pool")
    val_jobs = clip_jobs("train", val_items, videos / "val")
    test_jobs = clip_jobs("test", test_items, videos / "test")
    for name, jobs in (("pool", pool_jobs), ("val", val_jobs), ("test", test_jobs)):
        prune(videos / name, {Path(job.path) for job in jobs})  # clips of other counts would join the build
    missing = [job for job in pool_jobs + val_jobs + test_jobs if not Path(job.path).is_file()]
    if missing:
        log.info("study data: rendering %d clips (%d x %d px, %d frames) into %s", len(missing), spec.size, spec.size,
                 spec.frames, videos)
        make_clips(missing, spec, workers)
    shard_cfg = ShardConfig(short_side=0, min_frames=spec.frames, samples_per_shard=256, workers=workers)
    data = StudyData(root, root / "shards" / "pool", root / "shards" / "val", root / "shards" / "test")
    for name in ("pool", "val", "test"):
        build(videos / name, root / "shards" / name, shard_cfg)
    for seed in seeds:
        data.subsets[seed] = {}
        for size, jobs in labelled_subsets(pool_jobs, seed, sizes).items():
            folder = videos / f"labelled-seed{seed}-{size}pc"
            link_clips(jobs, videos / "pool", folder)
            data.subsets[seed][size] = root / "shards" / folder.name
            build(folder, data.subsets[seed][size], shard_cfg)
    data.card = {**spec_card(spec), "data_seed": DATA_SEED, "pool_clips": len(pool_jobs), "val_clips": len(val_jobs),
                 "test_clips": len(test_jobs),
                 "subset_sizes": list(sizes), "seeds": list(seeds)}
    write_card(root, data.card)
    return data


def drop_other_looks(root: Path, spec: ClipSpec) -> None:
    """Remove the clips and shards under ``root`` unless its card records this clip spec (a clip's path names its
    item, not its look, so clips rendered with other settings would otherwise be reused as they are), then record
    the spec before any clip is rendered: a build cut short is finished by the next one with the same look."""
    card = root / "study-data.json"
    wanted = spec_card(spec)
    recorded = json.loads(card.read_text()) if card.is_file() else None
    if recorded is not None and all(recorded.get(key) == value for key, value in wanted.items()):
        return
    if recorded is not None or (root / "videos").exists():
        log.info("study data: %s holds clips of another or an unknown clip spec: rendering them again", root)
        for folder in (root / "videos", root / "shards"):
            shutil.rmtree(folder, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    write_card(root, wanted)


def build(videos: Path, shards: Path, cfg: ShardConfig) -> None:
    """``vmae shards build`` of ``videos`` into ``shards``; a finished build of other clips there (the study ran
    with other counts) is the study's own, so it is replaced rather than refused."""
    try:
        build_shards(videos, shards, cfg, progress=False)
    except BuildError as err:
        if "already holds a finished build" not in str(err):
            raise
        log.info("study data: %s holds other clips (other counts): rebuilding it", shards)
        shutil.rmtree(shards)
        build_shards(videos, shards, cfg, progress=False)


def choose_items(split: str, per_class: int, skip: int = 0) -> dict[int, list[int]]:
    """Per class, ``per_class`` item indices of ``split`` in a seeded order after its first ``skip`` (a larger
    count extends a smaller)."""
    _, labels = load_items(split)
    order = np.random.default_rng([DATA_SEED, 0 if split == "train" else 1]).permutation(len(labels))
    chosen: dict[int, list[int]] = {}
    for c in range(len(CLASSES)):
        of_class = order[labels[order] == c]
        if len(of_class) < skip + per_class:
            raise ValueError(f"Fashion-MNIST's {split} split has {len(of_class)} items of {CLASSES[c]}, fewer than "
                             f"the {skip + per_class} per class asked for")
        chosen[c] = of_class[skip:skip + per_class].tolist()
    return chosen


def clip_jobs(split: str, items: dict[int, list[int]], folder: Path) -> list[ClipJob]:
    """One clip per chosen item, in its class's folder, with a seed of its own."""
    return [ClipJob(split, index, c, int(np.random.SeedSequence([DATA_SEED, hash_split(split), index])
                                         .generate_state(1)[0]),
                    str(folder / CLASSES[c] / f"{split}{index:05d}.mp4"))
            for c, indices in items.items() for index in indices]


def hash_split(split: str) -> int:
    return {"train": 0, "test": 1}[split]


def labelled_subsets(pool: list[ClipJob], seed: int, sizes: tuple[int, ...]) -> dict[int, list[ClipJob]]:
    """Per size, that many pool clips per class, drawn by ``seed``; the smaller subsets are prefixes of the larger."""
    rng = np.random.default_rng([DATA_SEED, 7, seed])
    by_class: dict[int, list[ClipJob]] = {}
    for job in pool:
        by_class.setdefault(job.label, []).append(job)
    drawn = {c: [jobs[i] for i in rng.permutation(len(jobs))[:max(sizes)]] for c, jobs in sorted(by_class.items())}
    return {size: [job for jobs in drawn.values() for job in jobs[:size]] for size in sizes}


def link_clips(jobs: list[ClipJob], source_root: Path, folder: Path) -> None:
    """The subset's clips as hard links (copies where links fail) under ``folder``, class folders kept; nothing
    else left there (a folder from other counts would mix subsets)."""
    prune(folder, {folder / Path(job.path).relative_to(source_root) for job in jobs})
    for job in jobs:
        source = Path(job.path)
        target = folder / source.relative_to(source_root)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            target.write_bytes(source.read_bytes())


def prune(folder: Path, wanted: set[Path]) -> None:
    """Remove the clips under ``folder`` that are not ``wanted``."""
    for stale in [p for p in folder.rglob("*.mp4") if p not in wanted] if folder.is_dir() else []:
        stale.unlink()
