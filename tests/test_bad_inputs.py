"""Every kind of bad input named in the issue: a clear reason in rejects.jsonl, or a normalized sample."""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from vmae.shards.build import build_shards
from vmae.shards.config import ShardConfig
from vmae.shards.plan import make_key
from vmae.shards.probe import scan_packets
from vmae.shards.verify import count_decoded_frames
from vmae.tools.cli import main

from conftest import ffmpeg, make_video
from test_build import samples_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def odd_inputs(tmp_path_factory, real_videos) -> Path:
    root = tmp_path_factory.mktemp("odd")
    c = root / "cls"
    c.mkdir()
    good = make_video(c / "good.mp4")
    (c / "empty.mp4").write_bytes(b"")
    (c / "text.mp4").write_text("this is not a video\n" * 50)
    whole = real_videos[1].read_bytes()  # moov atom at the end: cutting it leaves no index
    (c / "truncated_moov.mp4").write_bytes(whole[: len(whole) // 2])
    faststart = make_video(root / "fs.mp4", 4, "320x240", 30, "-movflags", "+faststart")
    (c / "truncated_data.mp4").write_bytes(faststart.read_bytes()[: faststart.stat().st_size * 2 // 3])
    faststart.unlink()
    ffmpeg("-f", "lavfi", "-i", "sine=d=3", "-c:a", "aac", str(c / "audio_only.mp4"))
    mkv = make_video(root / "k.mkv")
    (c / "unknown_codec.mkv").write_bytes(mkv.read_bytes().replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/QQQ"))
    mkv.unlink()
    make_video(c / "short.mp4", 1.0)  # 30 frames < 64
    make_video(c / "vfr.mp4", 4, "320x240", 30, "-vf", "setpts='if(lt(N,60),N/30,2+(N-60)/10)/TB'",
               "-fps_mode", "vfr")  # 2 s at 30 fps, then 6 s at 10 fps
    ffmpeg("-display_rotation", "90", "-i", str(good), "-c", "copy", str(c / "rotated.mp4"))
    make_video(c / "odd_size.mp4", 3, "321x241")
    make_video(c / "huge.mp4", 2.2, "3840x2160")
    make_video(c / "my clip.v2 ünïcode.final.mp4", 3)
    return root


@pytest.fixture(scope="module")
def odd_build(odd_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("odd_out") / "ds"
    build_shards(odd_inputs, out, ShardConfig(workers=2), progress=False)
    rejects = {Path(r["source"]).name: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    samples = {}
    for key, meta, video, frames, _ in samples_of(out):
        samples[Path(meta["source"]).name] = (key, meta, video, frames)
    return out, rejects, samples


@pytest.mark.parametrize("name, reason, says", [
    ("empty.mp4", "empty_file", "0 bytes"),
    ("text.mp4", "unreadable", "not a readable video"),
    ("truncated_moov.mp4", "unreadable", "Invalid data"),
    ("truncated_data.mp4", "truncated", "ends early"),
    ("audio_only.mp4", "no_video_stream", "audio"),
    ("unknown_codec.mkv", "unsupported_codec", "re-encode"),
    ("short.mp4", "too_short", "short_policy=pad"),
])
def test_bad_input_is_rejected_with_its_reason(odd_build, name, reason, says):
    _, rejects, samples = odd_build
    assert name not in samples
    assert rejects[name]["reason"] == reason and says in rejects[name]["detail"]
    assert rejects[name]["key"] == make_key(f"cls/{name}")


def test_build_goes_on_and_writes_nothing_partial(odd_build):
    out, rejects, samples = odd_build
    assert set(samples) == {"good.mp4", "vfr.mp4", "rotated.mp4", "odd_size.mp4", "huge.mp4",
                            "my clip.v2 ünïcode.final.mp4"}
    assert len(rejects) == 7
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rejects"] == {"empty_file": 1, "no_video_stream": 1, "too_short": 1, "truncated": 1,
                                   "unreadable": 2, "unsupported_codec": 1}
    assert not list(out.glob("*.tmp")) and not (out / ".build").exists()


def test_variable_frame_rate_becomes_constant(odd_build, tmp_path):
    _, _, samples = odd_build
    key, meta, video, frames = samples["vfr.mp4"]
    assert meta["fps"] == 30 and abs(frames - 240) <= 3  # 8 s at 30 fps
    path = tmp_path / "v.mp4"
    path.write_bytes(video)
    assert scan_packets(path).constant_rate


def test_rotation_is_applied(odd_build):
    _, _, samples = odd_build
    meta = samples["rotated.mp4"][1]
    assert (meta["width"], meta["height"]) == (320, 426) and meta["source_info"]["rotation"] == 90


def test_odd_and_huge_sizes_become_even_at_the_short_side(odd_build):
    _, _, samples = odd_build
    assert (samples["odd_size.mp4"][1]["width"], samples["odd_size.mp4"][1]["height"]) == (426, 320)
    assert (samples["huge.mp4"][1]["width"], samples["huge.mp4"][1]["height"]) == (568, 320)


def test_names_with_spaces_unicode_and_dots_get_clean_unique_keys(odd_build):
    _, _, samples = odd_build
    key = samples["my clip.v2 ünïcode.final.mp4"][0]
    assert key.startswith("cls_my_clip_v2_unicode_final_") and "." not in key


def test_too_large_input_is_refused_by_option(odd_inputs, tmp_path):
    one = tmp_path / "in" / "c"
    one.mkdir(parents=True)
    shutil.copyfile(odd_inputs / "cls" / "huge.mp4", one / "huge.mp4")
    build_shards(one.parent, tmp_path / "out", ShardConfig(max_input_pixels=1920 * 1080), progress=False)
    [reject] = map(json.loads, (tmp_path / "out" / "rejects.jsonl").read_text().splitlines())
    assert reject["reason"] == "too_large" and "3840x2160" in reject["detail"]


def test_short_video_padded_by_option(odd_inputs, tmp_path):
    one = tmp_path / "in" / "c"
    one.mkdir(parents=True)
    shutil.copyfile(odd_inputs / "cls" / "short.mp4", one / "short.mp4")
    out = tmp_path / "out"
    build_shards(one.parent, out, ShardConfig(short_policy="pad"), progress=False)
    [(_, meta, video, frames, _)] = samples_of(out)
    assert frames == 64 == count_decoded_frames(video) and meta["padded_frames"] == 34


def test_csv_problems_are_rejected_not_fatal(odd_inputs, tmp_path):
    good = odd_inputs / "cls" / "good.mp4"
    (tmp_path / "list.csv").write_text(f"path,label\n{good},run\n{tmp_path}/nope.mp4,run\n{good},run\n"
                                       f"{odd_inputs}/cls/odd_size.mp4,dance\n")
    (tmp_path / "classes.txt").write_text("run\nwalk\n")
    out = tmp_path / "out"
    build_shards(tmp_path / "list.csv", out, ShardConfig(classes=str(tmp_path / "classes.txt")), progress=False)
    reasons = sorted(json.loads(r)["reason"] for r in (out / "rejects.jsonl").read_text().splitlines())
    assert reasons == ["duplicate", "missing_file", "unknown_label"]
    assert json.loads((out / "manifest.json").read_text())["samples"] == 1


def build_with_main(capsys, *args) -> tuple[int, str]:
    """`vmae shards build ...` as a user runs it: its exit code and what it said on stderr."""
    code = main(["shards", "build", *map(str, args)])
    return code, capsys.readouterr().err


@pytest.fixture
def one_input(tmp_path) -> Path:
    (tmp_path / "in" / "run").mkdir(parents=True)
    (tmp_path / "in" / "run" / "a.mp4").write_bytes(b"x")  # refused before any input is read
    return tmp_path / "in"


def test_a_file_given_as_the_output_folder_is_refused_and_kept(one_input, tmp_path, capsys):
    out = tmp_path / "shards.tar"
    out.write_text("precious")
    code, err = build_with_main(capsys, one_input, out)
    assert code == 1 and f"{out} is a file, not a folder" in err and "Traceback" not in err, err
    assert out.read_text() == "precious"
    code, err = build_with_main(capsys, one_input, out / "ds")
    assert code == 1 and f"{out / 'ds'} cannot be made: {out} is a file" in err and "Traceback" not in err, err


def test_an_unwritable_output_folder_is_named_with_what_to_do(one_input, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ro_test"
    out.mkdir()
    (out / "kept.txt").write_text("kept")
    real_open = Path.open

    def read_only_open(path, mode="r", *args, **kwargs):  # what a read-only folder does to the build's lock file
        if path.name == ".lock" and mode != "r":
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", read_only_open)
    code, err = build_with_main(capsys, one_input, out)
    assert code == 1 and "Traceback" not in err, err
    assert f"{out} is not writable (Operation not permitted): make it writable" in err
    assert (out / "kept.txt").read_text() == "kept"


def test_a_read_only_output_folder_is_named(one_input, tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop writes")
        code, err = build_with_main(capsys, one_input, out)
        assert code == 1 and f"{out} is not writable" in err and "Traceback" not in err, err
    finally:
        out.chmod(0o755)
