"""What `pip install` puts into site-packages: one package, `vmae`, holding every module of the tree and the config
presets, and nothing generic (no top-level `model`, `tools`, `pipeline` or `shards`)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("shards", "pipeline", "model", "tools")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                           str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return zipfile.ZipFile(next(out.glob("vmae-*.whl")))


def test_the_wheel_installs_one_top_level_name(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"vmae"}


def test_every_module_of_the_tree_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    modules = [p.relative_to(ROOT) for part in PARTS for p in (ROOT / part).rglob("*.py")]
    missing = [str(m) for m in modules if f"vmae/{m.as_posix()}" not in names]
    assert not missing, f"not packaged (add their folder to pyproject.toml's packages): {missing}"
    presets = {p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert presets and {f"vmae/configs/{p}" for p in presets} <= names
    assert not [n for n in names if n.startswith(("vmae/tests/", "vmae/bench/"))]
