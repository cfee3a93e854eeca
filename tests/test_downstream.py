"""Evaluation features and the linear probe: views, averaging, splits, and the command end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from vmae.model.mae import MaskedVideoAutoencoder, preset
from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.shardset import ShardSet
from vmae.pipeline.evaluate.downstream import (Features, PooledFeatures, evaluation_data, extract_features,
                                               linear_probe, sampling_statement, scores_report, split_by_key)
from vmae.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent


def clusters(n: int, classes: int, views: int = 3, dim: int = 16, seed: int = 0) -> Features:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=g) * 4
    x = centres[labels][:, None, :] + torch.randn(n, views, dim, generator=g)
    return Features(x, labels, [f"video{i:04d}" for i in range(n)])


def test_linear_probe_separates_separable_features():
    features = clusters(160, 4)
    train, val = split_by_key(features, 0.25)
    report, scores = linear_probe(train, val, classes=4, epochs=200)
    assert scores.shape == (len(val.keys), 3, 4)
    assert report["top1"] == 1.0 and report["train_top1"] == 1.0 and report["chance"] == 0.25
    assert sum(map(sum, report["confusion"])) == report["val_videos"] == len(val.keys)


def test_split_by_key_is_fixed_and_disjoint():
    features = clusters(200, 2)
    train, val = split_by_key(features, 0.3)
    again, _ = split_by_key(features.subset(list(reversed(range(200)))), 0.3)
    assert set(train.keys) == set(again.keys) and not set(train.keys) & set(val.keys)
    assert 40 <= len(val.keys) <= 80
    with pytest.raises(ValueError, match="--val-dataset"):
        split_by_key(clusters(3, 2), 0.0)


def test_views_are_averaged_in_softmax_space():
    labels = torch.tensor([0, 1])
    scores = torch.tensor([[[0.4, 0.6], [0.9, 0.1], [0.8, 0.2]],   # first view wrong, the average right
                           [[0.1, 0.9], [0.3, 0.7], [0.6, 0.4]]])
    report = scores_report(scores, labels, classes=2)
    assert report["top1"] == 1.0 and report["top1_single_view"] == 0.5 and report["views"] == 3
    assert report["confusion"] == [[1, 0], [0, 1]]


def test_features_cover_every_video_with_every_view(built):
    data = evaluation_data(DataConfig(frames=4, stride=2, crop_size=32, workers=1), views=6, test_crops=3)
    encoder = PooledFeatures(MaskedVideoAutoencoder(preset("tiny"), frames=4, size=32).encoder)
    features = extract_features(encoder, built[0], data)
    shardset = ShardSet(built[0])
    assert features.views.shape == (len(shardset), 6, 192)
    assert len(set(features.keys)) == len(shardset) and torch.isfinite(features.views).all()
    assert set(features.labels.tolist()) == set(range(len(shardset.classes)))
    assert features.identical_windows == 0


def test_windows_that_coincide_in_short_videos_are_counted_and_segment_sampling_separates_them(built):
    """A clip longer than the video puts every dense window at frame 0 (as PySlowFast's dense sampling does)."""
    encoder = PooledFeatures(MaskedVideoAutoencoder(preset("tiny"), frames=4, size=32).encoder)
    videos = len(ShardSet(built[0]))
    long_clips = evaluation_data(DataConfig(frames=4, stride=200, crop_size=32, workers=1), views=2, test_crops=1)
    assert extract_features(encoder, built[0], long_clips).identical_windows == videos
    segments = evaluation_data(DataConfig(frames=4, stride=200, crop_size=32, workers=1, sampling="segment"),
                               views=2, test_crops=1)
    assert extract_features(encoder, built[0], segments).identical_windows == 0
    statement = sampling_statement(segments)
    assert statement["clips_per_video"] == 2 and statement["windows"] == 2 and statement["crops"] == 1
    assert statement["sampling"] == "segment" and "segments" in statement["temporal"]


@pytest.mark.slow
def test_linear_probe_command_on_a_pretraining_checkpoint(built, tmp_path, capfd):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"frames": 4, "stride": 2, "views": 2, "crop_size": 32, "batch_size": 2, "workers": 1,
                 "backend": "cpu"},
        "model": {"preset": "tiny"},
        "train": {"dataset": str(built[0]), "out": str(tmp_path / "run"), "epochs": 5, "max_steps": 2,
                  "global_batch": 2, "warmup_epochs": 1, "peak_tflops": 1.0}}))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "vmae.tools.cli", "pretrain", "--config", str(config)], cwd=ROOT,
                          env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    capfd.readouterr()
    assert main(["linear-probe", str(tmp_path / "run"), "--dataset", str(built[0]), "--views", "2",
                 "--val-fraction", "0.5", "--epochs", "20", "--out", str(tmp_path / "probe")]) == 0
    report = json.loads((tmp_path / "probe" / "report.json").read_text())
    assert 0 <= report["top1"] <= 1 and report["views"] == 2 and report["class_names"]
    assert (tmp_path / "probe" / "confusion.png").stat().st_size > 5_000
    assert "linear probe of step000000002" in capfd.readouterr().out

    # per-video embeddings of the same run, for numpy and for pandas; 8 frames resizes its temporal positions
    videos = len(ShardSet(built[0]))
    assert main(["extract-features", str(tmp_path / "run"), str(built[0]), "--out", str(tmp_path / "f.npz"),
                 "--views", "2"]) == 0
    saved = np.load(tmp_path / "f.npz")
    assert saved["features"].shape == (videos, 192) and saved["view_features"].shape == (videos, 2, 192)
    np.testing.assert_allclose(saved["features"], saved["view_features"].mean(axis=1), rtol=1e-5, atol=1e-6)
    assert len(set(saved["keys"])) == videos and set(saved["label_names"]) == set(ShardSet(built[0]).classes)
    assert main(["extract-features", str(tmp_path / "run"), str(built[0]), "--out", str(tmp_path / "f.csv"),
                 "--views", "2", "--frames", "8"]) == 0
    table = pd.read_csv(tmp_path / "f.csv")
    assert table.shape == (videos, 3 + 192) and sorted(table["key"]) == sorted(saved["keys"])
    assert not np.allclose(table.set_index("key").loc[saved["keys"], "f0"], saved["features"][:, 0])  # 8 frames
    assert "videos x 192 features" in capfd.readouterr().out
