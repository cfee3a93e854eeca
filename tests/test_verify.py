"""`vmae shards verify` catches what can go wrong with shards on disk; `inspect` tabulates them."""

import json
import shutil
import subprocess
import sys

import pytest

from vmae.shards.stats import dataset_stats
from vmae.shards.tars import sample_members
from vmae.shards.verify import verify_dataset

pytestmark = pytest.mark.slow


@pytest.fixture
def copy(built, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(built[0], out)
    return out


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "vmae.tools.cli", *args], capture_output=True, text=True)


def test_a_clean_build_verifies(built):
    report = verify_dataset(built[0], workers=2)
    assert report.ok, report.problems
    assert (report.shards, report.samples, report.frames_decoded) == (3, 10, sum(
        json.loads((built[0] / "manifest.json").read_text())["frames"] for _ in [0]))
    proc = run_cli("shards", "verify", str(built[0]))
    assert proc.returncode == 0 and "OK" in proc.stdout


def flip_byte_in_video(tar, nth_sample=0):
    key, members = sample_members(tar)[nth_sample]
    offset, size = next((o, s) for ext, o, s in members if ext == "mp4")
    data = bytearray(tar.read_bytes())
    for i in range(offset + size // 3, offset + size // 3 + 2000, 7):  # scramble coded picture data
        data[i] ^= 0xFF
    tar.write_bytes(bytes(data))
    return key


def test_corrupted_video_bytes_are_found(copy):
    key = flip_byte_in_video(copy / "shard-000001.tar")
    report = verify_dataset(copy, workers=2)
    whats = {p.where: p.what for p in report.problems}
    assert "checksum" in whats["shard-000001.tar"]
    sample_problems = [w for w in whats if w.startswith(f"shard-000001.tar/{key}")]
    assert sample_problems, report.problems  # decoding it shows the damage too
    proc = run_cli("shards", "verify", str(copy))
    assert proc.returncode == 1 and "shard-000001.tar" in proc.stdout


def test_missing_shard_index_and_extra_files_are_found(copy):
    (copy / "shard-000002.tar").unlink()
    (copy / "shard-000000.idx").write_text("v1.2 1\n")
    shutil.copyfile(copy / "shard-000001.tar", copy / "shard-000009.tar")
    (copy / "shard-000001.tar.tmp").write_bytes(b"")
    whats = {p.where: p.what for p in verify_dataset(copy, decode=False, workers=1).problems}
    assert whats["shard-000002.tar"].startswith("missing")
    assert "does not match" in whats["shard-000000.tar"]
    assert "not in the manifest" in whats["shard-000009.tar"]
    assert "unfinished" in whats["shard-000001.tar.tmp"]


def test_wrong_frame_count_and_label_are_found(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["classes"] = manifest["classes"][:1]  # labels 1 and 2 now point outside the class list
    (copy / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_dataset(copy, decode=False, workers=1).problems
    assert any("outside the 1 classes" in p.what for p in problems)


def test_not_a_dataset(tmp_path):
    proc = run_cli("shards", "verify", str(tmp_path))
    assert proc.returncode == 1 and "manifest.json not found" in proc.stderr
    (tmp_path / "manifest.json").write_text("{not json")
    proc = run_cli("shards", "inspect", str(tmp_path))
    assert proc.returncode == 1 and "damaged" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "manifest.json").write_text('{"format": "other/9"}')
    proc = run_cli("shards", "verify", str(tmp_path))
    assert proc.returncode == 1 and "other/9" in proc.stderr


def test_inspect_tabulates_the_dataset(built):
    stats = dataset_stats(built[0])
    assert stats["samples"] == 10 and stats["shards"] == 3
    assert [c["samples"] for c in stats["classes"]] == [3, 3, 4]
    assert stats["codecs"] == {"h264": 10} and stats["fps"] == {"30": 10}
    assert "426x320" in stats["resolutions"] and stats["duration_seconds"]["max"] == 10.0
    proc = run_cli("shards", "inspect", str(built[0]))
    assert proc.returncode == 0 and "drift_east" in proc.stdout and "426x320" in proc.stdout
    as_json = json.loads(run_cli("shards", "inspect", str(built[0]), "--json").stdout)
    assert as_json["samples"] == 10
    # H.264 in several frame sizes: the CPU path, and DALI on a GPU with a decoder made per size; no DALI CPU decoder
    cpu, gpu = as_json["backends"]
    assert cpu.startswith("cpu (data.backend=cpu)") and gpu.startswith("dali on a GPU (NVDEC): ")
    assert f"{len(stats['resolutions'])} frame sizes" in gpu and "suits" in proc.stdout


def test_the_backends_a_dataset_suits_follow_its_codecs_and_sizes():
    from vmae.pipeline.data.backends import suited_backends

    vp9 = suited_backends({"vp9": 4}, {"426x320": 4}, pframe_interval=0)
    assert len(vp9) == 3 and "one frame size" in vp9[1] and vp9[2].startswith("dali without a GPU")
    mixed = suited_backends({"h264": 3, "mjpeg": 1}, {"426x320": 4}, pframe_interval=4)
    assert "multiple of 4" in mixed[0] and mixed[1] == "not dali on a GPU: NVDEC does not decode mjpeg"
    assert len(mixed) == 2


def test_a_shard_given_in_place_of_its_dataset_folder_names_the_folder(built, tmp_path):
    proc = run_cli("shards", "verify", str(built[0] / "shard-000000.tar"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"shard-000000.tar is a file: give the dataset folder (the one holding manifest.json and the " \
           f"shards), here {built[0]}" in proc.stderr and "re-run the build" not in proc.stderr
    (tmp_path / "x.tar").write_bytes(b"")
    proc = run_cli("shards", "inspect", str(tmp_path / "x.tar"))
    assert proc.returncode == 1 and "x.tar is a file: give the dataset folder" in proc.stderr
    assert ", here" not in proc.stderr
    proc = run_cli("shards", "verify", str(tmp_path / "nowhere"))
    assert proc.returncode == 1 and "nowhere: no such dataset folder" in proc.stderr
