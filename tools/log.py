"""The one logging set-up of every vmae command: plain lines on stderr that read well in a terminal and a SLURM log.

Third-party libraries speak through it too, and only when it matters on this machine: their chatter (torch's
"No CUDA runtime is found, using CUDA_HOME" on every CPU run, DeepSpeed's op-builder lines) shows at
``--log-level DEBUG`` only; their warnings and errors always show.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Iterator

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# loggers whose lines are not this project's and not actionable at their usual level, and the level they start at
QUIET = {"libav": logging.WARNING, "PIL": logging.WARNING, "matplotlib": logging.WARNING,
         # torch warns that it found a CUDA toolkit but no GPU whenever DeepSpeed builds its CPU ops
         "torch.utils.cpp_extension": logging.ERROR}

# a line a library prints that is a problem, not progress
TROUBLE = re.compile(r"warn|error|fail|unable|not found|cannot|exception", re.IGNORECASE)


def setup_logging(level: str = "INFO") -> None:
    level = os.environ.get("VMAE_LOG_LEVEL", level).upper()
    logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S", force=True)
    for name, quiet_level in QUIET.items():
        logging.getLogger(name).setLevel(logging.NOTSET if level == "DEBUG" else quiet_level)


@contextlib.contextmanager
def library_output(name: str) -> Iterator[None]:
    """Around a call into a library that prints to stdout and logs through a handler of its own (DeepSpeed: "...
    op built successfully", its "[INFO] [logging.py...]" lines): its logger ``name`` goes through this set-up (its
    warnings shown, its info at DEBUG), and what it prints becomes log lines of ``name``: DEBUG for progress,
    WARNING for a line that reports a problem, and all of it as WARNING if the call fails."""
    adopt_logger(name)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    except BaseException:
        _log_printed(name, printed.getvalue(), failed=True)
        raise
    _log_printed(name, printed.getvalue(), failed=False)


def adopt_logger(name: str) -> None:
    """Route a library logger that writes through its own handler (DeepSpeed's writes to stdout) through ours."""
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.DEBUG if logging.getLogger().level <= logging.DEBUG else logging.WARNING)


def _log_printed(name: str, text: str, failed: bool) -> None:
    logger = logging.getLogger(name)
    for line in filter(None, (line.strip() for line in text.splitlines())):
        logger.log(logging.WARNING if failed or TROUBLE.search(line) else logging.DEBUG, "%s", line)
