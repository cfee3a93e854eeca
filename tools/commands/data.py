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
          f"{figures['decoded_frames_per_clip']:.1f} decoded frames per clip, failed samples: {figures['failed']}")
    return 0
