"""How far a build has come: counted over every part and node writing to its folder (`vmae shards progress`),
and the progress bar a running build shows."""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import tqdm as tqdm_module
from tqdm import tqdm

from vmae.shards.format import MANIFEST
from vmae.shards.plan import read_keys
from vmae.shards.state import PLAN_KEYS, STATE, BuildError, items_dir, kept_result

tqdm_module.tqdm.monitor_interval = 0  # no monitor thread: the worker pool forks


@dataclass
class Progress:
    """How far a build has come, over every part and node writing to its folder."""

    total: int = 0  # planned inputs
    done: int = 0  # inputs processed (a result kept)
    rejected: Counter = field(default_factory=Counter)
    finished: bool = False  # manifest.json written: packed

    def line(self) -> str:
        rejects = ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected.items())) or "none"
        state = "packed" if self.finished else "processing" if self.done < self.total else "ready to pack"
        return f"{self.done}/{self.total} inputs processed, rejected {rejects}; {state}"


def build_progress(out_dir: Path, known: dict[str, str] | None = None) -> Progress:
    """Count the inputs that every part has processed so far; ``known`` (key → status) carries what an earlier
    call read, so watching a million-input build reads each result once."""
    known = {} if known is None else known
    if (out_dir / MANIFEST).exists():
        manifest = json.loads((out_dir / MANIFEST).read_text())
        return Progress(total=manifest["inputs"], done=manifest["inputs"], finished=True,
                        rejected=Counter(manifest["rejects"]))
    keys_file = out_dir / STATE / PLAN_KEYS
    if not keys_file.exists():
        raise BuildError(f"{out_dir}: no build has started there (no {STATE}/{PLAN_KEYS})")
    items, total = items_dir(out_dir), 0
    for key in read_keys(keys_file):
        total += 1
        if key not in known and (result := kept_result(items, key)) is not None:
            known[key] = result.get("reason", "ok") if result["status"] == "rejected" else "ok"
    rejected = Counter(status for status in known.values() if status != "ok")
    return Progress(total=total, done=len(known), rejected=rejected)


def progress_bar(total: int, desc: str, show: bool, initial: int = 0) -> tqdm:
    """The bar of a running build (or part), counting inputs; redrawn less often when stderr is a log file."""
    return tqdm(total=total, initial=initial, unit="video", disable=not show,
                mininterval=0.5 if sys.stderr.isatty() else 10.0, dynamic_ncols=True, desc=desc)
