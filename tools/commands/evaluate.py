"""`vmae evaluate`, `visualize`, `export`, `linear-probe` and `extract-features`: what a trained checkpoint is worth."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml

from vmae.pipeline.data.shardset import ShardSet
from vmae.pipeline.evaluate.downstream import (PooledFeatures, evaluate_classifier, evaluation_data, extract_features,
                                               linear_probe, load_feature_model, sampling_statement, split_by_key,
                                               write_features, write_per_video, write_report)
from vmae.pipeline.evaluate.kind import FINETUNED, require_kind
from vmae.pipeline.evaluate.pretrained import load_pretrained, visualize_checkpoint
from vmae.pipeline.train.checkpoint import (config_text, export_weights, resolve_checkpoint, saved_config,
                                            weights_file)
from vmae.tools.config import VmaeConfig, load_config

log = logging.getLogger("vmae")


def evaluate_command(args: argparse.Namespace) -> int:
    require_kind(args.checkpoint, "evaluate")
    cfg = load_config(base=[("the run's config", yaml.safe_load(config_text(args.checkpoint)))])
    if args.out:  # before any weights are gathered
        output_folder(args.out, "--out")
    weights = weights_file(args.checkpoint, "finetuned.pt")
    out = output_folder(args.out or weights.parent / "eval", "--out")
    report = evaluate_classifier(weights, cfg, args.dataset, out, args.views, args.test_crops)
    k = min(5, len(report["confusion"]))
    how = report["evaluation"]
    print(f"{weights}: top-1 {report['top1']:.1%}, top-{k} {report[f'top{k}']:.1%} (single view "
          f"{report['top1_single_view']:.1%}, chance {report['chance']:.1%}) on {report['val_videos']} videos x "
          f"{how['clips_per_video']} clips ({how['windows']} windows x {how['crops']} crops, {how['sampling']} "
          "sampling)")
    return 0


def visualize_command(args: argparse.Namespace) -> int:
    folder, cfg = pretraining_checkpoint(args.checkpoint, "visualize")
    png = output_file(args.png or folder / "reconstruction.png", "--png")
    log_written(visualize_checkpoint(folder, cfg, args.dataset, png, args.clips, args.oracle))
    return 0


def export_command(args: argparse.Namespace) -> int:
    log_written(export_weights(resolve_checkpoint(args.checkpoint), output_file(args.out, "OUT")))
    return 0


def linear_probe_command(args: argparse.Namespace) -> int:
    folder, cfg = pretraining_checkpoint(args.checkpoint, "linear-probe")
    out = output_folder(args.out or folder / "linear-probe", "--out")
    encoder = PooledFeatures(load_pretrained(folder, cfg).encoder)
    data = evaluation_data(cfg.data, args.views, args.test_crops)
    features = extract_features(encoder, args.dataset, data)
    if args.val_dataset:
        train, val = features, extract_features(encoder, args.val_dataset, data)
    else:
        train, val = split_by_key(features, args.val_fraction)
    names = ShardSet(args.dataset).classes
    report, scores = linear_probe(train, val, len(names), epochs=args.epochs)
    report.update(checkpoint=str(folder), dataset=str(args.dataset), test_crops=args.test_crops,
                  evaluation=sampling_statement(data),
                  videos_with_identical_windows=train.identical_windows + val.identical_windows)
    written = write_report(report, names, out) + write_per_video(scores, val.labels, val.keys, names, out)
    print(f"linear probe of {folder.name}: top-1 {report['top1']:.1%} (single view {report['top1_single_view']:.1%}, "
          f"chance {report['chance']:.1%}) on {report['val_videos']} videos x {args.views} clips "
          f"({args.views // args.test_crops} windows x {args.test_crops} crops, {data.sampling} sampling); "
          f"train {report['train_top1']:.1%}")
    log_written(*written)
    return 0


def extract_features_command(args: argparse.Namespace) -> int:
    kind = require_kind(args.checkpoint, "extract-features")
    overrides = [f"data.frames={args.frames}"] if args.frames else []
    cfg = load_config(overrides=overrides, base=[("the run's config", yaml.safe_load(config_text(args.checkpoint)))])
    out = features_file(args.out)
    weights = weights_file(Path(args.checkpoint), "finetuned.pt" if kind == FINETUNED else "pretrained.pt")
    model = load_feature_model(weights, cfg)
    data = evaluation_data(cfg.data, args.views, args.test_crops)
    features = extract_features(model, args.dataset, data)
    path = write_features(features, ShardSet(args.dataset).classes, out)
    print(f"{len(features.keys)} videos x {features.views.shape[-1]} features ({args.views} views averaged: "
          f"{args.views // args.test_crops} windows x {args.test_crops} crops of {data.frames}x{data.crop_size}) "
          f"from {weights} -> {path.absolute()}")
    log_written(path)
    return 0


def output_folder(folder: Path, flag: str) -> Path:
    """``folder``, made if missing, before any work: an existing file there (or above it) is refused by name."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{flag} {folder} is a file (or inside one), not a folder: pass a folder (it is made if "
                         "missing) or move the file away") from None
    return folder


def output_file(path: Path, flag: str) -> Path:
    """``path`` for a file to write, its folder made before any work: a folder at ``path`` is refused by name."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder: name the file to write (in it, or elsewhere)")
    output_folder(path.parent, f"{flag}'s folder")
    return path


def features_file(path: Path) -> Path:
    """Where extract-features writes, checked before any video is read: FILE.npz or FILE.csv."""
    path = Path(path)
    if path.suffix not in (".npz", ".csv"):
        raise ValueError(f"--out {path}: features are written as .npz (numpy) or .csv (pandas); name a FILE.npz or "
                         "FILE.csv")
    return output_file(path, "--out")


def log_written(*paths: Path) -> None:
    """One line per file written, with its full path: several land in the checkpoint's folder unasked."""
    for path in paths:
        log.info("wrote %s", Path(path).absolute())


def pretraining_checkpoint(given: Path, command: str) -> tuple[Path, VmaeConfig]:
    """The checkpoint folder ``given`` names and the config it was trained with, once it is known to be the kind
    of checkpoint ``command`` takes."""
    require_kind(given, command)
    folder = resolve_checkpoint(given)
    return folder, load_config(str(saved_config(folder)))


def study_command(args: argparse.Namespace) -> int:
    from vmae.pipeline.study.run import run_study  # the study's arms pull in training and evaluation

    out = output_folder(args.out, "--out")
    report = run_study(args.budget, out, args.data)
    for bar in report["bars"]:
        holds = {True: "holds", False: "does NOT hold", None: "reported"}[bar["holds"]]
        figure = (f": {100 * bar['mean']:+.1f} points, 95 % CI [{100 * bar['ci95'][0]:+.1f}, "
                  f"{100 * bar['ci95'][1]:+.1f}]" if "mean" in bar else "")
        print(f"{bar['bar']}{figure}: {holds}")
    log_written(out / "report.md", out / "report.json", out / "accuracy.png", out / "psnr.png")
    return 0
