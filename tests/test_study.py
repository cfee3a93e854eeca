"""`vmae study`'s data: Fashion-MNIST items moving over textured backgrounds, the pool, the nested labelled subsets
drawn per seed and the test clips, built into shards the project's loader reads."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.loader import make_loader
from vmae.pipeline.data.shardset import open_shards
from vmae.pipeline.study.data import build_study_data, labelled_subsets
from vmae.pipeline.study.items import CLASSES, ClipSpec, StudyDataError, load_items, read_idx, render_clip


@pytest.fixture(scope="module")
def study_data(tmp_path_factory):
    return build_study_data(tmp_path_factory.mktemp("study"), seeds=[0, 1], pool_per_class=21, test_per_class=2,
                            val_per_class=2, workers=2)


def test_fashion_mnist_is_read_from_debians_package():
    images, labels = load_items("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10 and images.mean() > 50  # real pictures, not zeros


def test_missing_or_broken_files_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("VMAE_FASHION_MNIST", str(tmp_path))
    with pytest.raises(StudyDataError, match="apt-get install dataset-fashion-mnist.*VMAE_FASHION_MNIST"):
        load_items("train")
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + b"\x00" * 8))
    with pytest.raises(StudyDataError, match="not an idx file of unsigned bytes"):
        read_idx(bad)
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09" + b"\x01" * 4))
    with pytest.raises(StudyDataError, match="truncated"):
        read_idx(bad)


def test_a_clip_moves_the_item_over_a_textured_background():
    images, labels = load_items("test")
    spec = ClipSpec()
    clip = render_clip(images[0], np.random.default_rng(0), spec)
    assert clip.shape == (spec.frames, spec.size, spec.size, 3) and clip.dtype == np.uint8
    moved = np.abs(clip[1:].astype(int) - clip[:-1].astype(int)).sum(axis=(1, 2, 3))
    assert (moved > 0).all()  # something moves in every frame
    changed = (np.abs(clip[-1].astype(int) - clip[0].astype(int)).max(axis=-1) > 30).mean()
    assert 0.05 < changed < 0.6  # the item moved; most of the background stayed
    assert clip[0].std() > 10  # no flat background
    again = render_clip(images[0], np.random.default_rng(0), spec)
    assert np.array_equal(clip, again)


def test_the_pool_subsets_and_test_are_fixed_nested_and_apart(study_data):
    pool, test = open_shards(study_data.pool, DataConfig()), open_shards(study_data.test, DataConfig())
    assert sorted(pool.classes) == sorted(CLASSES) and len(pool) == 210 and len(test) == 20
    assert len(open_shards(study_data.val, DataConfig())) == 20
    videos = study_data.root / "videos"
    subsets = {seed: {size: sorted(p.name for p in (videos / path.name).rglob("*.mp4"))
                      for size, path in sizes.items()} for seed, sizes in study_data.subsets.items()}
    for seed, sizes in subsets.items():
        assert [len(keys) for keys in sizes.values()] == [10, 50, 200]
        assert [len(open_shards(path, DataConfig())) for path in study_data.subsets[seed].values()] == [10, 50, 200]
        assert set(sizes[1]) <= set(sizes[5]) <= set(sizes[20])  # nested
    assert subsets[0][5] != subsets[1][5]  # each seed draws its own
    assert study_data.card["pool_clips"] == 210 and study_data.card["source"] == "Fashion-MNIST"
    # subsets are pool clips; test clips are made from the other split's items
    pool_names = {p.name for p in (videos / "pool").rglob("*.mp4")}
    val_names = {p.name for p in (videos / "val").rglob("*.mp4")}
    assert all(n.startswith("train") for n in pool_names | val_names) and not pool_names & val_names
    assert all(p.name.startswith("test") for p in (videos / "test").rglob("*.mp4"))


def test_the_subset_draw_depends_on_the_seed_only():
    from vmae.pipeline.study.data import ClipJob

    pool = [ClipJob("train", i, i % 10, i, f"/x/{i}.mp4") for i in range(300)]
    first = labelled_subsets(pool, 3, (1, 5))
    assert first == labelled_subsets(pool, 3, (1, 5))
    assert all(sum(job.label == c for job in first[5]) == 5 for c in range(10))


def test_the_loader_reads_the_study_shards_with_their_labels(study_data):
    data = DataConfig(frames=8, stride=2, views=2, crop_size=48, batch_size=5, workers=1, backend="cpu")
    batch = next(iter(make_loader(study_data.subsets[0][5], data, device="cpu")))
    assert tuple(batch["video"].shape) == (10, 3, 8, 48, 48) and len(batch["key"]) == 5
    names = open_shards(study_data.subsets[0][5], DataConfig()).classes
    assert all(0 <= int(label) < len(names) for label in batch["label"])


def test_a_rebuild_reuses_every_clip_and_shard(study_data, caplog):
    before = {p: p.stat().st_mtime_ns for p in Path(study_data.root, "shards").rglob("*.tar")}
    with caplog.at_level("INFO"):
        build_study_data(study_data.root, seeds=[0, 1], pool_per_class=21, test_per_class=2, val_per_class=2,
                         workers=2)
    assert "rendering" not in caplog.text and "nothing to do" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in Path(study_data.root, "shards").rglob("*.tar")} == before


# ------------------------------------------------------------------ arm (d): reconstruction against trivial predictors


def square_clip(frames: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    """[1, 3, T, S, S] 0-255: a still random texture with a bright 8 x 8 square moving 2 px a frame to the right."""
    g = torch.Generator().manual_seed(seed)
    video = (torch.rand(1, 3, 1, size, size, generator=g) * 200).expand(1, 3, frames, size, size).clone()
    for t in range(frames):
        video[:, :, t, 12:20, 2 * t:2 * t + 8] = 250.0
    return video


def test_the_trivial_predictors_fill_hidden_patches_from_visible_ones_only():
    from vmae.model.mae import patchify
    from vmae.model.masking import make_mask
    from vmae.pipeline.study.reconstruction import TRIVIAL, moving_patches, psnr_by_kind, trivial_predictions

    video = square_clip()
    tubelet, grid = (2, 8, 8), (4, 4, 4)
    patches = patchify(video, tubelet, 1)  # [1, 64, 192]: one frame per temporal patch (MAE-ST's slice target)
    mask = make_mask("random", 1, grid, 0.75, torch.Generator().manual_seed(0))
    predicted = trivial_predictions(patches, mask.masked, grid)
    assert set(predicted) == set(TRIVIAL)
    for name, values in predicted.items():  # visible patches untouched; hidden ones made without looking at them
        assert torch.equal(values[~mask.masked], patches[~mask.masked]), name
        hidden_changed = patches.clone()
        hidden_changed[mask.masked] = 0
        again = trivial_predictions(hidden_changed, mask.masked, grid)[name]
        assert torch.allclose(again[mask.masked], values[mask.masked]), name
    moving = moving_patches(video, tubelet)
    assert moving.view(4, 4, 4)[:, :, :].any() and not moving.view(4, 4, 4)[:, 0].any()  # row 0 stays still
    scores = psnr_by_kind({**predicted, "truth": patches}, patches, mask.masked, moving)
    assert scores["truth"]["all"] == 100.0  # capped: no error
    # on still patches the copy from the nearest visible time is exact wherever one exists at that place
    assert scores["nearest time"]["still"] > scores["visible mean"]["still"]


def test_tube_masks_leave_nearest_time_nothing_to_copy():
    from vmae.model.mae import patchify
    from vmae.model.masking import make_mask
    from vmae.pipeline.study.reconstruction import trivial_predictions

    video = square_clip()
    patches = patchify(video, (2, 8, 8), 1)
    mask = make_mask("tube", 1, (4, 4, 4), 0.75, torch.Generator().manual_seed(0))
    predicted = trivial_predictions(patches, mask.masked, (4, 4, 4))
    # a tube hides a place at every time: the copy falls back to the visible mean there
    assert torch.allclose(predicted["nearest time"][mask.masked], predicted["visible mean"][mask.masked])


# ------------------------------------------------------------------ arm (c): frozen features


def clustered(n_per_class: int, classes: int = 3, dims: int = 8, spread: float = 0.1, seed: int = 0):
    from vmae.pipeline.evaluate.downstream import Features

    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dims, generator=g)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    views = centres[labels][:, None] + spread * torch.randn(len(labels), 2, dims, generator=g)
    return Features(views, labels, [f"v{i}" for i in range(len(labels))])


def test_knn_and_the_probe_score_separable_features_and_chance_for_noise():
    from vmae.pipeline.study.features import knn_top1, probe_top1

    train = clustered(5)
    assert knn_top1(train, clustered(20, seed=0)) == 1.0
    assert probe_top1(train, clustered(20, seed=0), 3, seed=0) == 1.0
    noise = clustered(20, spread=100.0, seed=2)
    assert knn_top1(clustered(20, spread=100.0, seed=3), noise) < 0.6  # chance is 1/3


def test_raw_pixels_reduced_by_pca_keep_the_variance(study_data):
    from vmae.pipeline.study.features import PCA_DIMS, pca_projection, raw_pixels

    data = DataConfig(frames=8, stride=2, views=2, crop_size=48, augment=False, batch_size=1, workers=1,
                      backend="cpu", test_crops=1)
    pixels = raw_pixels(study_data.subsets[0][5], data)
    assert pixels.views.shape == (50, 2, 3 * 8 * 12 * 12) and len(set(pixels.labels.tolist())) == 10
    projected = pca_projection(pixels, dims=16)(pixels)
    assert projected.views.shape == (50, 2, 16) and PCA_DIMS == 64
    total = (pixels.views - pixels.views.reshape(-1, pixels.views.shape[-1]).mean(0)).square().sum()
    assert projected.views.square().sum() / total > 0.5  # 16 components hold most of the variance


# ------------------------------------------------------------------ the report


def test_the_paired_interval_resamples_clips_keeping_the_pairs():
    from vmae.pipeline.study.report import paired_interval

    keys = [f"k{i}" for i in range(40)]
    rng = np.random.default_rng(0)
    always = [{"correct": {k: 1 for k in keys}}] * 3
    never = [{"correct": {k: 0 for k in keys}}] * 3
    assert paired_interval(always, never, 200, rng) == (1.0, 1.0)
    # the same half of the clips right in both arms: every resample's difference is zero, however unequal the draw
    half = [{"correct": {k: i % 2 for i, k in enumerate(keys)}}] * 3
    assert paired_interval(half, half, 200, rng) == (0.0, 0.0)
    # a difference on a quarter of the clips: the interval holds the observed 0.25 and is not a point
    better = [{"correct": {k: int(i % 4 == 0) for i, k in enumerate(keys)}}] * 3
    low, high = paired_interval(better, never, 500, rng)
    assert low < 0.25 < high and high - low < 0.35


def test_a_build_with_other_counts_drops_the_clips_it_no_longer_holds(study_data, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(study_data.root / "videos", root / "videos")
    shutil.copy(study_data.root / "study-data.json", root)  # the same look: the clips are kept, then pruned
    smaller = build_study_data(root, seeds=[0], pool_per_class=21, test_per_class=1, val_per_class=1, workers=2)
    assert len(open_shards(smaller.test, DataConfig())) == 10 and len(open_shards(smaller.val, DataConfig())) == 10


def test_a_build_with_another_look_renders_every_clip_again(tmp_path):
    import hashlib

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    spec = ClipSpec(frames=16)
    first = build_study_data(tmp_path, seeds=[0], pool_per_class=1, test_per_class=1, val_per_class=1, spec=spec,
                             sizes=(1,), workers=2)
    clip = next((tmp_path / "videos" / "test").rglob("*.mp4"))
    shard = sorted(first.test.glob("*.tar"))[0]
    before = digest(clip), digest(shard)
    again = build_study_data(tmp_path, seeds=[0], pool_per_class=1, test_per_class=1, val_per_class=1, spec=spec,
                             sizes=(1,), workers=2)
    assert (digest(clip), digest(sorted(again.test.glob("*.tar"))[0])) == before  # same look: reused
    darker = ClipSpec(frames=16, contrast=60.0, grain=0.0)
    after = build_study_data(tmp_path, seeds=[0], pool_per_class=1, test_per_class=1, val_per_class=1, spec=darker,
                             sizes=(1,), workers=2)
    assert digest(clip) != before[0] and digest(sorted(after.test.glob("*.tar"))[0]) != before[1]
    assert after.card["contrast"] == 60.0 and len(open_shards(after.test, DataConfig())) == 10
    # clips with no card (a build of unknown look) are not trusted either
    (tmp_path / "study-data.json").unlink()
    darkest = build_study_data(tmp_path, seeds=[0], pool_per_class=1, test_per_class=1, val_per_class=1, spec=spec,
                               sizes=(1,), workers=2)
    assert digest(clip) == before[0] and darkest.card["contrast"] == spec.contrast


def test_scratch_gets_the_seconds_given_at_the_logged_step_time(tmp_path):
    import json

    from vmae.pipeline.study.arms import logged_step_seconds
    from vmae.pipeline.study.run import scratch_steps

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in (
        {"loss": 2.0, "step_time": 0.25, "step": 10}, {"loss": 1.5, "step_time": 0.35, "step": 20},
        {"val_top1": 0.5, "step": 20})) + "\n")
    assert logged_step_seconds(metrics) == pytest.approx(0.3)
    assert logged_step_seconds(tmp_path / "absent.jsonl") is None  # a run too short to log: seconds / steps instead
    # (a): 60 steps in 30 s of wall time, 0.3 s a step, so 12 s of start-up and checkpoints
    tuned = {"seconds": 30.0, "steps": 60, "step_seconds": 0.3, "start_seconds": 30.0 - 60 * 0.3}
    steps = scratch_steps(80.0, tuned, least=2)
    assert steps == 227 and 12 + steps * 0.3 == pytest.approx(80.0, abs=0.2)  # (b) pays the same start-up
    assert scratch_steps(5.0, tuned, least=2) == 2  # never fewer than the curve's points
