"""`vmae loader-check`: look at and time the loader's views."""

from __future__ import annotations

import argparse
import json
import logging

from vmae.pipeline.data.check import contact_sheet, measure_loader
from vmae.tools.commands import command_config

log = logging.getLogger("vmae")


def loader_check_command(args: argparse.Namespace) -> int:
    cfg = command_config(args)
    sheet = contact_sheet(args.dataset, cfg.data, args.sheet)
    log.info("contact sheet: %s", sheet)
    figures = measure_loader(args.dataset, cfg.data, args.batches)
    print(json.dumps(figures))
    print(f"{figures['backend']} loader: {figures['clips_per_second']:.1f} clips/s "
          f"({cfg.data.views} views x {cfg.data.frames} frames, {cfg.data.crop_size}px), "
          f"{figures['decoded_frames_per_clip']:.1f} decoded frames per clip, failed samples: {figures['failed']}; "
          f"{timed_batches(figures)}")
    return 0


def timed_batches(figures: dict) -> str:
    """How many batches the clips/s rests on, and why fewer than asked where it is so."""
    said = (f"timed {figures['batches_timed']} of {figures['batches_asked']} batches asked "
            f"(after {figures['warmup_batches']} warm-up)")
    return f"{said}: {figures['fewer_because']}" if "fewer_because" in figures else said
