"""The package layout changed; behaviour did not. Each test holds today's code to files written by the code before
the move (tests/data/before-move): the same shard bytes, and its checkpoints still load and resume, to the bit, on
the loss curve recorded for them (steps 3-4 recorded again when the loader's views became slices of one run per
video: see that folder's README)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vmae.pipeline.train.metrics import read_metrics
from vmae.shards.build import build_shards
from vmae.shards.config import ShardConfig, SynthConfig
from vmae.shards.synth import make_synthetic_videos

ROOT = Path(__file__).resolve().parent.parent
BEFORE = Path(__file__).resolve().parent / "data" / "before-move"
REFERENCE = json.loads((BEFORE / "reference.json").read_text())
# the micro run's model: the tiny preset shrunk so its checkpoint is small enough to keep in the repository
MICRO = ("import sys; from dataclasses import replace; import vmae.model.config as c; "
         "c.PRESETS['tiny'] = replace(c.PRESETS['tiny'], **{arch}); "
         "from vmae.tools.cli import main; sys.exit(main(sys.argv[1:]))")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """Every file of a dataset folder but rejects.jsonl (it carries FFmpeg's messages, not the data)."""
    return {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name not in ("rejects.jsonl",
                                                                                                     ".lock")}


def vmae(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "vmae.tools.cli", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl")]


@pytest.mark.slow
def test_the_same_inputs_give_the_shard_bytes_of_before_the_move(tmp_path, built):
    make_synthetic_videos(tmp_path / "videos", SynthConfig(**REFERENCE["synth"]))
    build_shards(tmp_path / "videos", tmp_path / "ds", ShardConfig(**REFERENCE["shards"]), progress=False)
    assert file_hashes(tmp_path / "ds") == REFERENCE["dataset_sha256"]
    assert file_hashes(built[0]) == REFERENCE["built_sha256"]  # real videos (stream copy) among them


@pytest.mark.slow
def test_a_checkpoint_of_before_the_move_resumes_on_its_loss_curve_to_the_bit(tmp_path):
    run = tmp_path / "micro-run"
    shutil.copytree(BEFORE / "micro-run" / "checkpoints", run / "checkpoints")
    cfg = REFERENCE["micro_config"]
    cfg["train"].update(dataset=str(BEFORE / "dataset"), out=str(run))
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(cfg))
    proc = vmae("pretrain", "--config", str(tmp_path / "micro.yaml"),
                code=MICRO.format(arch=REFERENCE["micro_architecture"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resum" in (proc.stdout + proc.stderr).lower()
    assert losses(run) == REFERENCE["micro_losses"][2:]  # steps 3 and 4, after the step-2 checkpoint
    before = torch.load(BEFORE / "micro-run" / "pretrained.pt", weights_only=True)["model"]
    after = torch.load(run / "pretrained.pt", weights_only=True)["model"]
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_dataset_of_before_the_move_loads(tmp_path):
    from vmae.pipeline.data.config import DataConfig
    from vmae.pipeline.data.loader import make_loader

    data = DataConfig(frames=4, stride=2, views=2, crop_size=32, batch_size=4, workers=1, backend="cpu")
    loader = make_loader(BEFORE / "dataset", data)
    batch = next(iter(loader))
    assert batch["video"].shape == (8, 3, 4, 32, 32)
    assert not loader.stats.failed
    loader.close()
