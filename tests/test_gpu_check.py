"""The prepared GPU check (bench/gpu_check.py, `make gpu-check`): its dry run does every step but the CUDA calls on
this machine, so that a GPU lease is never spent on a typo; wheels brought in pieces are joined and checked."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from gpu_check import STEPS, assemble_wheels  # noqa: E402

WHEEL = "vmaeprobe-0.1-py3-none-any.whl"


def split_wheel(folder: Path, piece: int = 300) -> bytes:
    """A small real wheel in ``folder`` as pieces WHEEL.part-aa, -ab, … (as `split -b` cuts DALI's) and its
    sha256 file; the wheel's bytes."""
    folder.mkdir(parents=True)
    whole = folder / WHEEL
    with zipfile.ZipFile(whole, "w") as archive:
        archive.writestr("vmaeprobe/__init__.py", "VALUE = 1\n" + "# padding\n" * 100)
        archive.writestr("vmaeprobe-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: vmaeprobe\nVersion: 0.1\n")
        archive.writestr("vmaeprobe-0.1.dist-info/WHEEL",
                         "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    data = whole.read_bytes()
    (folder / f"{WHEEL}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {WHEEL}\n")
    for i in range(0, len(data), piece):
        (folder / f"{WHEEL}.part-a{chr(ord('a') + i // piece)}").write_bytes(data[i:i + piece])
    whole.unlink()
    assert len(list(folder.glob("*.part-*"))) > 1
    return data


def test_pieces_of_a_wheel_are_joined_in_order_and_checked(tmp_path):
    data = split_wheel(tmp_path / "whl")
    [wheel] = assemble_wheels(tmp_path / "whl", tmp_path / "joined")
    assert wheel.name == WHEEL and wheel.read_bytes() == data
    sorted(tmp_path.glob("whl/*.part-*"))[1].unlink()  # a piece lost on the way
    with pytest.raises(ValueError, match=f"{WHEEL}: sha256 .* is not .*bring the pieces again"):
        assemble_wheels(tmp_path / "whl", tmp_path / "joined-again")


@pytest.mark.slow
def test_the_dry_run_runs_every_step_of_the_gpu_check(tmp_path):
    pytest.importorskip("nvidia.dali")  # its loader step times the DALI graph on DALI's CPU decoder
    split_wheel(tmp_path / "whl")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--wheels", str(tmp_path / "whl"),
                           "--out", str(out), "--steps", ",".join(STEPS)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    steps = report["steps"]
    assert report["dry_run"] and list(steps) == list(STEPS) and all(s["ok"] for s in steps.values()), steps
    assert steps["wheels"]["wheels"] == [WHEEL] and not steps["wheels"]["installed"]
    assert steps["data"]["codec"] == "vp9" and steps["data"]["frames_per_video"] >= 80  # 3-second videos
    assert steps["data"]["hevc_mbit_per_s"] > 0  # the same videos as HEVC, for NVDEC's H.264 against HEVC
    assert "collected" in steps["tests"]["summary"]
    cases = steps["loader"]["cases"]
    assert set(cases) == {"cpu K=4", "dali 2 pipelines K=4", "hybrid K=4"}
    assert all(case["clips_per_s"] > 0 for case in cases.values())
    assert set(cases["dali 2 pipelines K=4"]["made_by"]) <= {"dali0", "dali1"} and cases["cpu K=4"]["made_by"] is None
    assert set(cases["hybrid K=4"]["made_by"]) <= {"dali0", "cpu"}
    [(name, row)] = steps["step"]["cases"].items()  # the tiny model in the engine `vmae pretrain` builds
    assert name.startswith("tiny zero-1") and row["clips_per_s"] > 0 and row["micro_batch"] in (1, 2, 4, 8)
    assert row["trials"] and row["limit"] and steps["step"]["summary"]["headline_clips_per_s"] == row["clips_per_s"]
    study = steps["study"]  # the smoke budget: every line of the study, its report read back
    assert study["budget"] == "smoke" and study["bars"] and (out / "study" / "report.md").is_file()
    assert any(bar["bar"].startswith("(d)") for bar in study["bars"]) and study["study_seconds"] > 0
    table = (out / "gpu-check.md").read_text()
    assert table.startswith("GPU check (dry run)") and all(f"| {name} | yes |" in table for name in STEPS)
    assert "dali 2 pipelines K=4: " in table and "hybrid K=4: " in table and " clips/s" in table


def test_make_gpu_check_runs_the_script_on_the_wheels_brought_along():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("\ngpu-check:") + 1:].splitlines()[1]
    assert "bench/gpu_check.py --wheels .whl --out gpu-check" in recipe
    study = makefile[makefile.index("\ngpu-study:") + 1:].splitlines()[1]
    assert "bench/gpu_check.py --wheels .whl --out gpu-study --steps wheels,study" in study
