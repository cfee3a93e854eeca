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
from vmae.pipeline.evaluate.pretrained import load_pretrained, visualize_checkpoint
from vmae.pipeline.train.checkpoint import (config_text, export_weights, resolve_checkpoint, saved_config,
                                            weights_file)
from vmae.tools.config import load_config

log = logging.getLogger("vmae")


def evaluate_command(args: argparse.Namespace) -> int:
    cfg = load_config(base=[("the run's config", yaml.safe_load(config_text(args.checkpoint)))])
    weights = weights_file(args.checkpoint, "finetuned.pt")
    report = evaluate_classifier(weights, cfg, args.dataset, args.out or weights.parent / "eval", args.views,
                                 args.test_crops)
    k = min(5, len(report["confusion"]))
    how = report["evaluation"]
    print(f"{weights}: top-1 {report['top1']:.1%}, top-{k} {report[f'top{k}']:.1%} (single view "
          f"{report['top1_single_view']:.1%}, chance {report['chance']:.1%}) on {report['val_videos']} videos x "
          f"{how['clips_per_video']} clips ({how['windows']} windows x {how['crops']} crops, {how['sampling']} "
          "sampling)")
    return 0


def visualize_command(args: argparse.Namespace) -> int:
    folder = resolve_checkpoint(args.checkpoint)
    cfg = load_config(str(saved_config(folder)))
    png = visualize_checkpoint(folder, cfg, args.dataset, args.png or folder / "reconstruction.png", args.clips,
                               args.oracle)
    log.info("wrote %s", png)
    return 0


def export_command(args: argparse.Namespace) -> int:
    written = export_weights(resolve_checkpoint(args.checkpoint), args.out)
    log.info("wrote %s", written)
    return 0


def linear_probe_command(args: argparse.Namespace) -> int:
    folder = resolve_checkpoint(args.checkpoint)
    cfg = load_config(str(saved_config(folder)))
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
    out = args.out or folder / "linear-probe"
    written = write_report(report, names, out) + write_per_video(scores, val.labels, val.keys, names, out)
    print(f"linear probe of {folder.name}: top-1 {report['top1']:.1%} (single view {report['top1_single_view']:.1%}, "
          f"chance {report['chance']:.1%}) on {report['val_videos']} videos x {args.views} clips "
          f"({args.views // args.test_crops} windows x {args.test_crops} crops, {data.sampling} sampling); "
          f"train {report['train_top1']:.1%}")
    log.info("wrote %s", ", ".join(map(str, written)))
    return 0


def extract_features_command(args: argparse.Namespace) -> int:
    overrides = [f"data.frames={args.frames}"] if args.frames else []
    cfg = load_config(overrides=overrides, base=[("the run's config", yaml.safe_load(config_text(args.checkpoint)))])
    source = Path(args.checkpoint)
    run_file = "finetuned.pt" if (source / "finetuned.pt").is_file() else "pretrained.pt"
    weights = weights_file(source, run_file)
    model = load_feature_model(weights, cfg)
    data = evaluation_data(cfg.data, args.views, args.test_crops)
    features = extract_features(model, args.dataset, data)
    path = write_features(features, ShardSet(args.dataset).classes, args.out)
    print(f"{len(features.keys)} videos x {features.views.shape[-1]} features ({args.views} views averaged: "
          f"{args.views // args.test_crops} windows x {args.test_crops} crops of {data.frames}x{data.crop_size}) "
          f"from {weights} -> {path}")
    return 0
