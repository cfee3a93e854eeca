"""What a run reports: running totals and the rates of each logging window, the JSON line of a step, and the audit
log of the sample keys each rank trained on."""

from __future__ import annotations

import json
import time
from pathlib import Path

from vmae.pipeline.train.state import Plan, Position

SETTLE_STEPS = 5  # train.stop_loss holds once this many losses in a row are below it


class Summary:
    """Running totals of a run, and the rates of the last logging window."""

    def __init__(self, task: str = "pretrain"):
        self.task = task
        self.steps = self.clips = self.videos = self.tokens = 0
        self.wait = self.compute = 0.0
        self.window_start = (0, 0.0, 0.0, 0, 0, 0)
        self.losses: list[float] = []
        self.started = time.perf_counter()
        self.stopped = None

    def add(self, record: dict) -> None:
        self.steps += 1
        self.clips += record["clips"]
        self.videos += record["videos"]
        self.tokens += record["tokens"]
        self.wait += record["data_wait"]
        self.compute += record["compute"]
        if not record["skipped"]:
            self.losses.append(record["loss"])

    def clips_per_second(self) -> float:
        busy = self.wait + self.compute
        return self.clips / busy if busy else 0.0

    def window(self, flops_per_clip: float, peak: float, world_size: int) -> dict:
        now = (self.steps, self.wait, self.compute, self.clips, self.tokens, self.videos)
        steps, wait, compute, clips, tokens, videos = (a - b for a, b in zip(now, self.window_start, strict=True))
        self.window_start = now
        seconds = max(wait + compute, 1e-9)
        return {"step_time": seconds / max(steps, 1), "data_wait_pct": 100 * wait / seconds,
                "clips_per_s": clips / seconds, "videos_per_s": videos / seconds, "tokens_per_s": tokens / seconds,
                "mfu": flops_per_clip * clips / seconds / (peak * world_size)}

    def final(self, position: Position, plan: Plan) -> dict:
        busy = self.wait + self.compute
        tail = self.losses[-max(1, min(10, len(self.losses))):] if self.losses else [float("nan")]
        return {"steps": position.step, "run_steps": plan.run_steps, "epoch": position.epoch,
                "steps_this_run": self.steps, "skipped_steps": position.skipped_steps,
                "clips_per_s": self.clips / busy if busy else 0.0,
                "data_wait_pct": 100 * self.wait / busy if busy else 0.0,
                "final_loss": sum(tail) / len(tail), "first_loss": self.losses[0] if self.losses else None,
                "seconds": time.perf_counter() - self.started, "stopped": self.stopped}


def judge_sanity_check(summary: Summary, threshold: float, step: int) -> dict:
    """The --overfit verdict: passed when the last SETTLE_STEPS losses of this run were all below ``threshold``
    (train.stop_loss, which ends the run as soon as they are); ``loss`` is the highest of them."""
    last = summary.losses[-SETTLE_STEPS:]
    passed = len(last) == SETTLE_STEPS and max(last) < threshold
    return {"passed": passed, "loss": max(last) if last else None, "threshold": threshold, "step": step,
            "settle_steps": SETTLE_STEPS}


def exit_code(result: dict) -> int:
    """1 when the run was a sanity check (--overfit) that failed, else 0."""
    return 1 if result.get("sanity_check", {}).get("passed") is False else 0


def public(record: dict, position: Position) -> dict:
    """The JSON line of a step: numbers only, rounded for reading."""
    keep = {k: v for k, v in record.items() if k != "stop"}
    keep.update(step=position.step, epoch=position.epoch, samples_seen=position.samples_seen,
                skipped_steps=position.skipped_steps)
    for key in ("data_wait", "compute", "step_time", "data_wait_pct", "clips_per_s", "videos_per_s",
                "tokens_per_s", "mfu"):
        if key in keep:
            keep[key] = round(keep[key], 5)
    return keep


def write_sample_keys(out: Path, rank: int, step: int, keys: list[str]) -> None:
    folder = out / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"rank{rank:05d}.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": step, "keys": keys}) + "\n")


def truncate_sample_keys(out: Path, rank: int, step: int) -> None:
    """Drop the keys of steps a resumed run takes again."""
    path = out / "samples" / f"rank{rank:05d}.jsonl"
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] < step]
        path.write_text("".join(line + "\n" for line in kept))
