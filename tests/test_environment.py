"""The set-up files agree: one set of pins for pip, conda, CI and the README."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def pins(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_conda_environment_matches_pip_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip_section == pins(ROOT / "requirements.txt")
    assert "python=3.11" in env["dependencies"] and "ffmpeg" in env["dependencies"]
    for pin in pins(ROOT / "requirements-source.txt"):
        assert pin in (ROOT / "environment.yml").read_text()


def test_every_pin_is_exact_and_torch_matches_torchvision():
    reqs = dict(p.split("==") for p in pins(ROOT / "requirements.txt"))
    assert reqs["torch"] == "2.14.1" and reqs["torchvision"] == "0.29.1"
    assert all(v for v in reqs.values())


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    for name, pinned in (p.split("==") for p in pins(ROOT / "requirements.txt")):
        assert version(name) == pinned, f"{name} {version(name)} installed, {pinned} pinned: run `make setup`"
