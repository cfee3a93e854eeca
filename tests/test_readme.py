"""The README's front door holds: its loader example runs as written, its contents links land, no stale references."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from vmae.model.config import preset
from vmae.model.mae import MaskedVideoAutoencoder

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section, up to the next heading of the same level."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def python_block(text: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "no ```python block"
    return blocks[0]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_the_loader_example_runs_as_written(built, tmp_path, monkeypatch):
    """The block under "Use the loader in your own training loop", executed unchanged from a folder where
    `runs/demo/shards` is a built dataset: it must build the loader, take its batches, report and close."""
    code = python_block(section(README.read_text(), "Use the loader in your own training loop"))
    dataset, _ = built
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "shards").symlink_to(dataset, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, str(README), "exec"), namespace)

    loader, video, label, key = (namespace[name] for name in ("loader", "video", "label", "key"))
    cfg = loader.cfg
    clips = cfg.batch_size * cfg.views
    assert tuple(video.shape) == (clips, 3, cfg.frames, cfg.crop_size, cfg.crop_size)
    assert video.dtype.is_floating_point and tuple(label.shape) == (clips,) and len(key) == cfg.batch_size
    assert loader.stats.batches >= 1
    # the shapes the README's comments promise are the ones the loader gave
    promised = re.search(r"video = .*?= \[([\d, ]+)\]", code)
    assert promised, "the README's video line lost its shape comment"
    assert [int(n) for n in promised.group(1).split(",")] == list(video.shape)


@pytest.mark.parametrize("name", ["README.md", "BENCHMARKS.md"])
def test_the_links_inside_a_page_land_on_its_headings(name):
    text = (ROOT / name).read_text()
    anchors = {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{2,3} ", line)}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links
    assert sorted(set(links) - anchors) == []


def test_every_command_has_its_heading():
    headings = [line[4:] for line in README.read_text().splitlines() if line.startswith("### ")]
    for command in ("vmae synth", "vmae shards build", "vmae shards progress", "vmae shards verify and inspect",
                    "vmae loader-check", "vmae pretrain", "vmae visualize", "vmae export", "vmae finetune",
                    "vmae evaluate", "vmae linear-probe", "vmae extract-features", "vmae profile", "vmae study",
                    "vmae config"):
        assert command in headings


@pytest.mark.parametrize("name", ["README.md", "BENCHMARKS.md"])
def test_the_docs_name_no_issue_numbers_and_no_outside_files(name):
    text = (ROOT / name).read_text()
    assert not re.findall(r"\bissues? \d", text, flags=re.I)
    assert "DESIGN.md" not in text


def test_the_python_api_example_runs_as_written(tmp_path, monkeypatch):
    """The block under "Python API", executed unchanged from a folder holding what `make demo` leaves in
    runs/demo/pretrain: the tiny preset's pretrained.pt, written as a pretraining run exports it (8x64 clips)."""
    code = python_block(section(README.read_text(), "Python API"))
    run = tmp_path / "runs" / "demo" / "pretrain"
    run.mkdir(parents=True)
    demo = MaskedVideoAutoencoder(preset("tiny"), frames=8, size=64)
    torch.save({"model": demo.state_dict(), "config": "model:\n  preset: tiny\n"}, run / "pretrained.pt")
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), names)
    assert names["pred"].shape[:2] == (2, 1568) and torch.isfinite(names["loss"])
    assert torch.equal(names["classifier"].encoder.blocks[0].attn.qkv.weight, demo.encoder.blocks[0].attn.qkv.weight)
