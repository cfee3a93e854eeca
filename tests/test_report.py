"""The console reports: a training run's closing summary says why a CPU run waits for data."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from vmae.tools import report


def summary(device: str | None) -> dict:
    out = {"task": "pretrain", "stopped": None, "steps": 60, "run_steps": 60, "steps_this_run": 60,
           "skipped_steps": 0, "epoch": 12, "clips_per_s": 41.5, "data_wait_pct": 39.2, "first_loss": 1.15,
           "final_loss": 0.81, "seconds": 180.0, "metrics": "runs/demo/pretrain/metrics.jsonl"}
    if device is not None:
        out["device"] = device
    return out


def printed(monkeypatch, run: dict) -> str:
    buffer = io.StringIO()
    monkeypatch.setattr(report, "console", Console(file=buffer, width=400))
    report.print_train_summary(run)
    return " ".join(buffer.getvalue().split())


def test_a_cpu_run_says_why_it_waits_for_data(monkeypatch):
    text = printed(monkeypatch, summary("cpu"))
    assert "waiting for data 39.2 %" in text
    assert "share the same cores" in text and "expected here, not a fault" in text and "vmae profile" in text


@pytest.mark.parametrize("device", ["cuda", None])
def test_a_gpu_run_or_an_older_summary_gets_no_cpu_note(monkeypatch, device):
    text = printed(monkeypatch, summary(device))
    assert "waiting for data 39.2 %" in text and "share the same cores" not in text


def test_the_loop_puts_the_device_into_its_summary(tmp_path):
    """`finish` is where the training loop hands its summary to the command; it names the device it ran on."""
    from vmae.pipeline.train.loop import finish
    from vmae.pipeline.train.summary import Summary

    position = SimpleNamespace(step=3, epoch=0, skipped_steps=0)
    plan = SimpleNamespace(run_steps=3)
    launch = SimpleNamespace(device=torch.device("cpu"), rank=0)
    metrics = SimpleNamespace(path=Path(tmp_path / "metrics.jsonl"))
    result = finish(Summary("pretrain"), position, plan, tmp_path, launch, metrics, None)
    assert result["device"] == "cpu"
