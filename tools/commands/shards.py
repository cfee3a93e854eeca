"""`vmae synth` and `vmae shards build|verify|progress|inspect`: videos in, a checked dataset out."""

from __future__ import annotations

import argparse
import json
import logging
import time

from tqdm import tqdm

from vmae.shards.build import build_shards
from vmae.shards.progress import build_progress
from vmae.shards.stats import dataset_stats
from vmae.shards.synth import make_synthetic_videos
from vmae.shards.verify import verify_dataset
from vmae.tools.commands import command_config
from vmae.tools.report import print_build_summary, print_dataset_stats, print_verify_report

log = logging.getLogger("vmae")


def build_command(args: argparse.Namespace) -> int:
    cfg = command_config(args)
    summary = build_shards(args.input, args.out, cfg.shards, progress=True, part=args.part)
    if args.part is not None:
        print(f"part {args.part[0]}/{args.part[1]}: {summary.inputs} inputs, {summary.samples} samples, rejected "
              f"{summary.rejected or 'none'}, {summary.seconds:.0f} s")
        return 0
    print_build_summary(summary, args.out)
    if summary.samples == 0:
        log.error("no usable video: every input was rejected (see %s)", args.out / "rejects.jsonl")
        return 1
    return 0


def verify_command(args: argparse.Namespace) -> int:
    cfg = command_config(args)
    report = verify_dataset(args.dataset, decode=not args.no_decode, workers=cfg.shards.workers)
    print_verify_report(report)
    return 0 if report.ok else 1


def progress_command(args: argparse.Namespace) -> int:
    known: dict[str, str] = {}
    state = build_progress(args.out, known)
    if args.watch:
        with tqdm(total=state.total, initial=state.done, unit="video", desc="all parts", dynamic_ncols=True) as bar:
            while state.done < state.total and not state.finished:
                time.sleep(args.watch)
                state = build_progress(args.out, known)
                bar.update(state.done - bar.n)
                bar.set_postfix(rejected=sum(state.rejected.values()), refresh=False)
    print(state.line())
    return 0


def inspect_command(args: argparse.Namespace) -> int:
    from vmae.pipeline.data.backends import suited_backends  # the loading side knows its decoders

    stats = dataset_stats(args.dataset)
    stats["backends"] = suited_backends(stats["codecs"], stats["resolutions"], stats["build"].get("pframe_interval"))
    if args.json:
        print(json.dumps(stats, indent=1))
    else:
        print_dataset_stats(stats)
    return 0


def synth_command(args: argparse.Namespace) -> int:
    cfg = command_config(args)
    paths = make_synthetic_videos(args.out, cfg.synth)
    # a class is a folder, --real-samples' one included
    log.info("wrote %d videos in %d classes to %s", len(paths), len({p.parent for p in paths}), args.out)
    return 0
