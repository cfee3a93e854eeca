"""Where a run's numbers go: a JSON-lines file, TensorBoard and a progress bar, from rank 0 only."""

from __future__ import annotations

import json
import logging
import resource
import sys
from pathlib import Path

import torch
from tqdm import tqdm

log = logging.getLogger(__name__)


class MetricsWriter:
    """metrics.jsonl + TensorBoard events + a tqdm bar; a resumed run drops what came after its checkpoint."""

    def __init__(self, out: Path, total_steps: int, start_step: int, enabled: bool, name: str = "pretrain"):
        self.enabled = enabled
        self.path = Path(out) / "metrics.jsonl"
        self.bar = None
        self.tb = None
        if not enabled:
            return
        _truncate_after(self.path, start_step)
        self.file = self.path.open("a")
        from torch.utils.tensorboard import SummaryWriter  # TensorBoard loads for rank 0's writer only

        self.tb = SummaryWriter(str(Path(out) / "tensorboard"), purge_step=start_step + 1)
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr,
                        mininterval=1.0, desc=name)

    def step(self, done: int, postfix: dict) -> None:
        if self.bar is not None:
            self.bar.update(done)
            self.bar.set_postfix(postfix, refresh=False)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.tb.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.file.close()
            self.tb.close()


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated accelerator memory, or on CPU the process's peak resident size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_after(path: Path, step: int) -> None:
    """Keep the lines of the first ``step`` steps (a resumed run writes the rest again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))
