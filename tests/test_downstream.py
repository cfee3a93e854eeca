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

from vmae.model.load import CheckpointMismatch, load_strict
from vmae.model.mae import MaskedVideoAutoencoder, VideoClassifier, preset
from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.shardset import ShardSet
from vmae.pipeline.evaluate.downstream import (Features, PooledFeatures, evaluation_data, extract_features,
                                               linear_probe, sampling_statement, scores_report, split_by_key)
from vmae.tools.cli import main
from vmae.tools.config import load_config, to_yaml

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


# ------------------------------------------------------------------ which checkpoint, and where the files go

TINY = ["model.preset=tiny", "data.frames=4", "data.stride=2", "data.crop_size=32", "data.workers=1",
        "data.backend=cpu"]


def fake_run(folder: Path, dataset: Path, finetuned: bool) -> Path:
    """What `vmae pretrain` / `vmae finetune` leave (random weights of the tiny preset): the run's weights file,
    run.json and a complete checkpoint with its config and gathered weights."""
    cfg = load_config(None, [*TINY, f"train.dataset={dataset}", f"train.out={folder}"])
    if finetuned:
        model = VideoClassifier(cfg.model, len(ShardSet(dataset).classes), 4, 32)
    else:
        model = MaskedVideoAutoencoder(cfg.model, 4, 32)
    weights = {"model": model.state_dict(), "config": to_yaml(cfg)}
    step = folder / "checkpoints" / "step000000002"
    step.mkdir(parents=True)
    torch.save(weights, folder / ("finetuned.pt" if finetuned else "pretrained.pt"))
    torch.save(weights, step / "weights.fp32.pt")
    (step / "config.yaml").write_text(to_yaml(cfg))
    (step / "complete.json").write_text(json.dumps({"step": 2, "world_size": 1}))
    (folder / "run.json").write_text(json.dumps({"task": "finetune" if finetuned else "pretrain"}))
    return folder


@pytest.fixture(scope="module")
def runs(built, tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("runs")
    return fake_run(tmp / "pre", built[0], finetuned=False), fake_run(tmp / "ft", built[0], finetuned=True)


def failing(capfd, argv: list[str]) -> str:
    """The one-line error of a command that must refuse its input (exit 1, no traceback)."""
    capfd.readouterr()
    assert main(argv) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err and " missing: " not in err, err  # no traceback, no listing of keys
    return err


def test_evaluate_given_a_pretraining_run_says_so_and_names_the_commands_that_fit(runs, built, capfd):
    pre, _ = runs
    checkpoint = pre / "checkpoints" / "step000000002"
    for source in (pre, checkpoint, pre / "pretrained.pt"):
        err = failing(capfd, ["evaluate", str(source), "--dataset", str(built[0])])
        assert f"{source} is a pretraining run" in err and "`vmae evaluate` takes a fine-tuned classifier" in err
        assert f"vmae finetune --pretrained {source}" in err and f"vmae linear-probe {source}" in err
    assert not (pre / "eval").exists() and not (checkpoint / "eval").exists()
    # a checkpoint cut before the end (no pretrained.pt, no run.json) is told by its weights' keys
    (pre / "pretrained.pt").rename(pre / "kept.pt"), (pre / "run.json").rename(pre / "kept.json")
    try:
        err = failing(capfd, ["evaluate", str(checkpoint), "--dataset", str(built[0])])
        assert "is a pretraining run" in err and "decoder" in err
    finally:
        (pre / "kept.pt").rename(pre / "pretrained.pt"), (pre / "kept.json").rename(pre / "run.json")


def test_linear_probe_and_visualize_given_a_fine_tuned_classifier_point_to_evaluate(runs, built, capfd):
    _, ft = runs
    err = failing(capfd, ["linear-probe", str(ft), "--dataset", str(built[0])])
    assert f"{ft} is a fine-tuned classifier (it holds finetuned.pt)" in err
    assert "`vmae linear-probe` takes a pretraining run" in err and f"vmae evaluate {ft} --dataset" in err
    err = failing(capfd, ["visualize", str(ft), str(built[0])])
    assert "is a fine-tuned classifier" in err and "vmae evaluate" in err
    assert not (ft / "checkpoints" / "step000000002" / "linear-probe").exists()


def test_extract_features_given_neither_kind_says_what_it_takes(built, tmp_path, capfd):
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    for source, holds in ((built[0], "it holds neither pretrained.pt, finetuned.pt nor a complete checkpoint"),
                          (other, f"{other} holds 1 tensors, neither a classifier head")):
        err = failing(capfd, ["extract-features", str(source), str(built[0]), "--out", str(tmp_path / "f.npz")])
        assert f"{source} is neither a pretraining run nor a fine-tuned classifier ({holds}" in err
        assert "`vmae pretrain` or `vmae finetune` run" in err
    assert not (tmp_path / "f.npz").exists()


def test_a_file_given_as_output_folder_is_refused_by_name_before_any_work(runs, built, tmp_path, capfd):
    pre, ft = runs
    (tmp_path / "taken").write_text("mine")
    for argv in (["evaluate", str(ft), "--dataset", str(built[0]), "--out", str(tmp_path / "taken")],
                 ["linear-probe", str(pre), "--dataset", str(built[0]), "--out", str(tmp_path / "taken")],
                 ["linear-probe", str(pre), "--dataset", str(built[0]), "--out", str(tmp_path / "taken" / "probe")]):
        err = failing(capfd, argv)
        assert f"--out {argv[-1]} is a file (or inside one), not a folder" in err
    err = failing(capfd, ["extract-features", str(pre), str(built[0]), "--out", str(tmp_path)])
    assert f"--out {tmp_path}: features are written as .npz (numpy) or .csv" in err
    assert (tmp_path / "taken").read_text() == "mine"


def written(err: str) -> list[str]:
    return [line.split(" wrote ", 1)[1].split(" (")[0] for line in err.splitlines() if " wrote " in line]


def test_files_written_by_default_are_logged_with_their_full_path(runs, built, tmp_path, monkeypatch, capfd):
    pre, ft = runs
    checkpoint = pre / "checkpoints" / "step000000002"
    monkeypatch.chdir(tmp_path)
    capfd.readouterr()
    assert main(["extract-features", str(pre), str(built[0]), "--views", "2"]) == 0
    assert written(capfd.readouterr().err) == [str(tmp_path / "features.npz")]
    assert main(["evaluate", str(ft), "--dataset", str(built[0]), "--views", "2", "--test-crops", "1"]) == 0
    assert written(capfd.readouterr().err) == [str(ft / "eval" / name) for name in
                                               ("report.json", "confusion.png", "scores.npz", "per_video.csv")]
    assert main(["linear-probe", str(pre), "--dataset", str(built[0]), "--epochs", "5", "--val-fraction", "0.5"]) == 0
    assert written(capfd.readouterr().err) == [str(checkpoint / "linear-probe" / name) for name in
                                               ("report.json", "confusion.png", "scores.npz", "per_video.csv")]
    assert main(["visualize", str(pre), str(built[0]), "--clips", "2"]) == 0
    assert written(capfd.readouterr().err) == [str(checkpoint / "reconstruction.png")]
    assert all(Path(path).is_file() for path in [tmp_path / "features.npz", checkpoint / "reconstruction.png"])


def test_loading_the_other_kind_of_weights_says_which_kind_they_are():
    autoencoder = MaskedVideoAutoencoder(preset("tiny"), 4, 32)
    classifier = VideoClassifier(preset("tiny"), 3, 4, 32)
    with pytest.raises(CheckpointMismatch, match="does not fit VideoClassifier: 4 missing.*a pretrained autoencoder"):
        load_strict(classifier, autoencoder.state_dict(), "pre.pt")
    with pytest.raises(CheckpointMismatch, match="a fine-tuned classifier's weights.*no decoder"):
        load_strict(autoencoder, classifier.state_dict(), "ft.pt")
