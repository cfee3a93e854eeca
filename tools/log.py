"""The one logging set-up of every vmae command: plain lines on stderr that read well in a terminal and a SLURM log."""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str = "INFO") -> None:
    level = os.environ.get("VMAE_LOG_LEVEL", level).upper()
    logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S", force=True)
    for noisy in ("libav", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
