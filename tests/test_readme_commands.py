"""Every command line of README.md runs as written, and does what the README says next to it.

The lines run in README order, block by block, each block in one bash (a block's lines share variables: `jobid`).
`make demo` runs first, from a copy of the repository root (tracked files, the same .venv); its `runs/demo` is what
the later lines read. The blocks that name files of the repository (`tools/slurm_shards.sh`, the GPU launches'
`tools/hostfile.example`) run from that root; every other block from an empty temporary folder; `vmae config`,
which reads a preset by name, from both, since presets name paths relative to the folder a command runs in. The
datasets the README names (a Kinetics CSV, an mmaction2 list, Something-Something V2's JSON, HMDB-51 split files,
UCF-101 frame folders) are laid out small, in their real formats. Cluster launchers are the stand-ins of
tests/cluster (real parsers, one process as rank 0 of the world the line describes); the lines for GPUs run with
`--dry-run`, as the README says they can, against a six-video stand-in for Kinetics, so exactly one check must
fail there: the dataset holds fewer videos than the recipe's global batch of 512.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vmae.shards.stats import dataset_stats
from readme_workspace import (KINETICS, HMDB, ROOT, SSV2, UCF, Block, Ran, Workspace, command, readme_blocks,
                              run_block)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def ok(ran: list[Ran]) -> list[Ran]:
    for r in ran:
        assert r.code == 0, f"`{command(r.line)}` exited {r.code}:\n{r.output[-3000:]}"
    return ran


def both_folders(lines: list[str], ws: Workspace, extra: str = "") -> list[Ran]:
    """The lines from the temporary folder, then from the repository root: the same outcome from each."""
    elsewhere = run_block(lines, ws.elsewhere, ws.env, extra)
    root = run_block(lines, ws.root, ws.env, extra)
    for a, b in zip(elsewhere, root):
        assert a.code == b.code, f"`{command(a.line)}` exits {a.code} from a folder, {b.code} from the root:\n" \
                                 f"{a.output[-1500:]}\n---\n{b.output[-1500:]}"
    return elsewhere


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def metrics(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


# ------------------------------------------------------------------------------------------------ the blocks

def check_quick_start(block: Block, ws: Workspace) -> None:
    assert [command(line) for line in block.lines] == ["make demo", "make test"]
    # `make test` is the command running this test (CI's .ci/run is it); `make demo` runs here, as written
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    [ran] = ok([ws.demo])  # run as the workspace was made, as written, from the root
    assert ran.line == block.lines[0]
    demo = ws.root / "runs" / "demo"
    for made in ("videos", "shards", "views.png", "pretrain/metrics.jsonl", "pretrain/reconstruction.png",
                 "pretrain/pretrained.pt", "pretrain/checkpoints"):
        assert (demo / made).exists(), made
    assert list((demo / "pretrain" / "tensorboard").rglob("events.out.tfevents.*"))
    records = metrics(demo / "pretrain")
    # README (vmae pretrain): 1.2-1.3 -> about 0.85 after its 360 steps
    assert records[-1]["step"] == 360 and 1.15 <= records[0]["loss"] <= 1.35, records[0]
    assert 0.75 <= records[-1]["loss"] <= 0.95, records[-1]
    assert "clips/s" in ran.output and "waiting for data" in ran.output


def check_synth(block: Block, ws: Workspace) -> None:
    ok(run_block(block.lines, ws.elsewhere, ws.env))
    classes, per_class = (int(re.search(rf"--{key} (\d+)", block.lines[0]).group(1))
                          for key in ("classes", "videos-per-class"))
    folders = sorted(p for p in (ws.elsewhere / "data" / "videos").iterdir())
    assert len(folders) == classes and all(len(list(f.glob("*.mp4"))) == per_class for f in folders)


def check_shards_build(block: Block, ws: Workspace) -> None:
    ok(run_block(block.lines, ws.elsewhere, ws.env))
    data = ws.elsewhere / "data"
    videos = len(list((data / "videos").rglob("*.mp4")))
    kinetics = manifest(data / "shards")
    assert sum(kinetics["class_counts"].values()) == videos
    assert kinetics["build"]["pframe_interval"] == 4  # the kinetics preset's
    vp9 = manifest(data / "shards-cpu")
    assert vp9["build"]["codec"] == "vp9" and sum(vp9["class_counts"].values()) == videos
    assert manifest(data / "shards-gpu")["build"]["frame_size"] == "456x256"
    assert dataset_stats(data / "shards-gpu")["resolutions"] == {"456x256": videos}
    assert manifest(data / "k400")["classes"] == sorted(KINETICS)
    assert manifest(data / "k400-mmaction")["classes"] == list(KINETICS)  # index i is the label map's line i
    assert manifest(data / "ssv2-train")["classes"] == sorted(t.replace("[", "").replace("]", "") for t in SSV2)
    assert manifest(data / "hmdb-train")["class_counts"] == {label: train for label, (train, _) in HMDB.items()}
    assert manifest(data / "ucf-train")["class_counts"] == {label: 2 for label in UCF}
    for name in ("k400", "k400-mmaction", "ssv2-train", "hmdb-train", "ucf-train"):
        assert not (data / name / "rejects.jsonl").read_text().strip(), name


def check_shards_progress(block: Block, ws: Workspace) -> None:
    ran = ok(run_block(block.lines, ws.root, ws.env))
    slurm, one_machine = ws.elsewhere / "data" / "k400-slurm", ws.elsewhere / "data" / "k400"
    # the same bytes as one machine's build of the same list
    shards = sorted(p.name for p in one_machine.glob("shard-*"))
    assert shards and shards == sorted(p.name for p in slurm.glob("shard-*"))
    for name in shards:
        assert (slurm / name).read_bytes() == (one_machine / name).read_bytes(), name
    progress = ran[2].output
    assert f"{sum(KINETICS.values())}/{sum(KINETICS.values())}" in progress, progress


def check_verify_and_inspect(block: Block, ws: Workspace) -> None:
    [ran] = ok(run_block(block.lines, ws.elsewhere, ws.env))
    assert all(f"{i}" in ran.output for i in range(3))
    for name in manifest(ws.elsewhere / "data" / "shards")["classes"]:
        assert name in ran.output
    assert "suits" in ran.output and "dali on a GPU (NVDEC)" in ran.output  # which backends, and why


def check_loader_check(block: Block, ws: Workspace) -> None:
    [ran] = ok(run_block(block.lines, ws.elsewhere, ws.env))
    assert (ws.elsewhere / "views.png").stat().st_size > 10_000
    assert re.search(r"[\d.]+ clips/s", ran.output) and "decoded frames per clip" in ran.output
    assert str(ws.elsewhere / "views.png") in ran.output or "views.png" in ran.output


def check_pretrain(block: Block, ws: Workspace) -> None:
    demo_line, overfit_line = block.lines
    # after `make demo` its run is complete: the same command resumes it and has nothing left to do (from
    # another folder: `vmae config` shows the preset read from both)
    steps_before = metrics(ws.root / "runs" / "demo" / "pretrain")[-1]["step"]
    [again] = run_block([demo_line], ws.elsewhere, ws.env)
    assert again.code == 0 and "nothing to do" in again.output, again.output[-3000:]
    assert metrics(ws.root / "runs" / "demo" / "pretrain")[-1]["step"] == steps_before == 360
    [overfit] = ok([ws.run_once(overfit_line, ws.elsewhere)])
    stop = float(re.search(r"loss below ([\d.]+)", overfit_line).group(1))
    records = metrics(ws.elsewhere / "runs" / "overfit")
    assert records[-1]["loss"] < stop and "sanity check passed" in overfit.output


WORLDS = {"vmae pretrain": 1, "torchrun --nproc_per_node 8": 8, "torchrun --nnodes 2": 16, "deepspeed": 16,
          "sbatch tools/slurm_pretrain.sh": 16 * 8}  # slurm_pretrain.sh: 16 nodes x 8 tasks


def check_gpu_launches(block: Block, ws: Workspace) -> None:
    assert block.dry_run
    ran = run_block(block.lines, ws.root, ws.env, " --dry-run")
    for r in ran:
        world = next(n for start, n in WORLDS.items() if command(r.line).startswith(start))
        assert f"launch, {world} rank(s)" in r.output, r.output[-3000:]
        failed = re.findall(r"^\s+FAIL\s+(.+?)\s{2,}", r.output, flags=re.M)
        # the six-video stand-in for Kinetics is smaller than the recipe's 512-video batch; nothing else fails
        assert failed == ["dataset size"] and r.code == 1, r.output[-3000:]
        assert "train.global_batch=512 is more than the 6 videos" in r.output
        assert "data.batch_size=auto: the micro-batch, a divisor of that, is found at start" in r.output
        assert re.search(r"model: vit-[bl], [\d.]+ M parameters; model states per rank", r.output), r.output


def check_visualize(block: Block, ws: Workspace) -> None:
    [ran] = ok(run_block(block.lines, ws.elsewhere, ws.env))
    written = re.findall(r"(/\S+\.png)", ran.output)
    assert written and all(Path(p).is_file() for p in written), ran.output[-2000:]


def check_export(block: Block, ws: Workspace) -> None:
    ok(run_block(block.lines, ws.elsewhere, ws.env))
    weights = torch.load(ws.elsewhere / "runs" / "demo" / "weights.pt", weights_only=True)
    assert set(weights) == {"model", "config"} and "preset: tiny" in weights["config"]


def check_finetune(block: Block, ws: Workspace) -> None:
    ok(run_block(block.lines, ws.elsewhere, ws.env))
    run = ws.elsewhere / "runs" / "finetune"  # configs/finetune.yaml's train.out
    report = json.loads((run / "eval" / "report.json").read_text())
    assert 0 <= report["top1"] <= 1 and report["evaluation"]["clips_per_video"] == 4  # 2 windows x 2 crops
    saved = yaml.safe_load(sorted((run / "checkpoints").glob("step*"))[-1].joinpath("config.yaml").read_text())
    assert saved["model"]["preset"] == "tiny" and saved["data"]["frames"] == 8  # taken from the pretrained run
    assert saved["finetune"]["layer_decay"] == 0.75 and saved["train"]["betas"] == [0.9, 0.999]  # the recipe
    weights = torch.load(run / "finetuned.pt", weights_only=True)["model"]
    assert weights["head.weight"].shape[0] == len(report["class_names"])


def check_evaluate(block: Block, ws: Workspace) -> None:
    [ran] = ok(run_block(block.lines, ws.elsewhere, ws.env))
    reports = [Path(p) for p in re.findall(r"(/\S+/report\.json)", ran.output)]
    assert reports, ran.output[-2000:]
    report = json.loads(reports[0].read_text())
    assert report["evaluation"]["clips_per_video"] == 21  # 7 windows x 3 crops
    assert report["evaluation"]["windows"] == 7 and report["evaluation"]["crops"] == 3
    videos = sum(manifest(ws.root / "runs" / "demo" / "shards")["class_counts"].values())
    assert report["val_videos"] == videos
    rows = (reports[0].parent / "per_video.csv").read_text().splitlines()
    assert len(rows) == videos + 1 and rows[0].startswith("key,label,label_name,predicted")
    scores = np.load(reports[0].parent / "scores.npz")
    assert scores["view_scores"].shape == (videos, 21, len(report["class_names"]))


def check_linear_probe(block: Block, ws: Workspace) -> None:
    [ran] = ok(run_block(block.lines, ws.elsewhere, ws.env))
    reports = [Path(p) for p in re.findall(r"(/\S+/report\.json)", ran.output)]
    assert reports and "linear-probe" in str(reports[0]) and "checkpoints" in str(reports[0])
    assert json.loads(reports[0].read_text())["evaluation"]["clips_per_video"] == 4  # 2 windows x 2 crops


def check_extract_features(block: Block, ws: Workspace) -> None:
    ok(run_block(block.lines, ws.elsewhere, ws.env))
    features = np.load(ws.elsewhere / "runs" / "demo" / "features.npz")
    videos = sum(manifest(ws.root / "runs" / "demo" / "shards")["class_counts"].values())
    assert features["features"].shape[0] == videos and features["view_features"].shape[1] == 4


def check_profile(block: Block, ws: Workspace) -> None:
    [ran] = ok(run_block(block.lines, ws.elsewhere, ws.env))
    out = ws.elsewhere / "runs" / "profile"
    report = json.loads((out / "profile.json").read_text())
    stages = report["stages"]
    assert set(stages) == {"decode", "load", "model", "train"}  # all stages
    assert set(stages["load"]) == {"K=1", "K=2", "K=4"}
    assert set(stages["decode"]["other_decoders"]) == {"torchcodec"}  # every registered decoder measured
    assert {"sdpa", "math"} <= set(stages["model"]) and 0 < stages["model"]["sdpa"]["mfu"] < 1.5
    assert 0 <= stages["train"]["end_to_end"]["data_wait_pct"] <= 100
    # MFU against the matmul rate the model stage measured in the same run; what limits the step, named
    assert 0 < stages["train"]["end_to_end"]["mfu_vs_measured_matmul"] < 1.5
    assert stages["model"]["breakdown"]["limit"] and report["verdict"]["step_limit"]
    assert report["verdict"]["bottleneck"] in ("load", "model") and report["verdict"]["advice"]
    assert report["machine"]["cores"] >= 1 and report["machine"]["versions"]["torch"]
    medians = [rate["median"] for rate in stages["load"].values()] + [stages["decode"]["ours"]["median"]]
    assert all(math.isfinite(m) and m > 0 for m in medians), medians
    assert (out / "profile.png").stat().st_size > 10_000 and "is the limit" in ran.output


def check_study(block: Block, ws: Workspace) -> None:
    [ran] = ok(run_block(block.lines, ws.elsewhere, ws.env))
    out = ws.elsewhere / "runs" / "study-smoke"
    report = json.loads((out / "report.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert all((out / name).stat().st_size > 0 for name in ("report.md", "accuracy.png", "psnr.png"))
    assert "(b) seconds taken / given" in (out / "report.md").read_text()
    assert report["budget"]["name"] == "smoke" and report["machine"]["versions"]["torch"]
    assert report["data"]["source"] == "Fashion-MNIST" and report["seeds"] == [0, 1]
    # every bar is checked and printed, win or lose
    assert len(report["bars"]) == 6 and all(bar["bar"] in ran.output for bar in report["bars"])
    row = report["finetune"]["1"]
    low, high = row["difference"]["ci95"]
    assert low <= row["difference"]["mean"] <= high and len(row["pretrained"]["per_seed"]) == 2
    for seed in ("0", "1"):
        arms = results["seeds"][seed]["finetune"]["1"]
        scratch, tuned, pre = arms["scratch"], arms["pretrained"], results["seeds"][seed]["pretrain"]
        # (b) is given what (a) spent: pretraining plus its fine-tuning, at (a)'s step time once the fixed seconds
        # of a run are paid
        assert scratch["given_seconds"] == pytest.approx(pre["seconds"] + tuned["seconds"])
        assert tuned["start_seconds"] == pytest.approx(tuned["seconds"] - tuned["steps"] * tuned["step_seconds"],
                                                       abs=1e-6) or tuned["start_seconds"] == 0
        assert scratch["steps"] == max(report["budget"]["curve_points"], round(
            (scratch["given_seconds"] - tuned["start_seconds"]) / tuned["step_seconds"]))
        # the checkpoint tested is the one best on the validation clips
        assert max(p["val_top1"] for p in tuned["curve"]) == tuned["val_top1"]
        assert set(results["seeds"][seed]["features"]) == {"pretrained", "initial weights", "raw pixels (PCA)"}
        assert set(results["seeds"][seed]["reconstruction"]) >= {"random", "tube"}
    # the lr grid is searched on the first seed only; the second reuses the choice
    assert all(v["chosen_on_seed"] == 0 for v in results["lrs"].values())
    assert len(list((out / "seed1" / "1pc" / "scratch").iterdir())) == 1
    assert len(list((out / "seed0" / "1pc" / "scratch").iterdir())) == len(report["budget"]["finetune_lrs"])
    predictors = report["reconstruction"]["random"]
    assert set(predictors) == {"visible mean", "nearest time", "space-time interpolation", "pretrained model",
                               "model at initial weights"}


def check_config(block: Block, ws: Workspace) -> None:
    [ran] = both_folders(block.lines, ws)
    assert ran.code == 0 and "global_batch: 1024" in ran.output and "preset: vit-l" in ran.output


CHECKS = {"Quick start": check_quick_start, "vmae synth": check_synth, "vmae shards build": check_shards_build,
          "vmae shards progress": check_shards_progress,
          "vmae shards verify and inspect": check_verify_and_inspect, "vmae loader-check": check_loader_check,
          "vmae pretrain": check_pretrain, "vmae pretrain (GPUs)": check_gpu_launches,
          "vmae visualize": check_visualize, "vmae export": check_export, "vmae finetune": check_finetune,
          "vmae evaluate": check_evaluate, "vmae linear-probe": check_linear_probe,
          "vmae extract-features": check_extract_features, "vmae profile": check_profile,
          "vmae study": check_study, "vmae config": check_config}


def test_every_bash_block_of_the_readme_is_checked():
    assert sorted(block.id for block in readme_blocks()) == sorted(CHECKS)


@pytest.mark.parametrize("block", readme_blocks(), ids=lambda block: block.id)
def test_the_readme_block_runs_as_written(block, readme_workspace):
    CHECKS[block.id](block, readme_workspace)
