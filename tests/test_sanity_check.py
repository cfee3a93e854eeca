"""The sanity checks users ask for (`--overfit`), on the demo's data: the README's lines as written, from the
folder `make demo` leaves (the README's workspace, shared with tests/test_readme_commands.py)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vmae.pipeline.train.checkpoint import latest_checkpoint, tag_of
from vmae.pipeline.train.metrics import read_metrics
from vmae.pipeline.train.summary import SETTLE_STEPS
from vmae.tools.commands import OVERFIT_MAX_STEPS, OVERFIT_STOP_LOSS

from test_pretrain import ROOT, clean_env

def pretrain_section() -> str:
    """README.md's "vmae pretrain" section, its whitespace folded (lines wrap anywhere)."""
    text = (ROOT / "README.md").read_text()
    start = text.index("### vmae pretrain\n")
    return text[start:text.index("\n### ", start + 1)]


# the first test to ask builds the demo's folders and runs `make demo` (~2.5 min on 2 cores), then the check
OVERFIT_TIMEOUT = 1200


def vmae_in(folder: Path, *args: str, timeout: int = OVERFIT_TIMEOUT) -> tuple[int, str]:
    """`vmae ARGS` run from ``folder`` in its own process (no process group left in this one)."""
    proc = subprocess.run([sys.executable, "-m", "vmae.tools.cli", *args], cwd=folder, env=clean_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)
    return proc.returncode, proc.stdout


@pytest.fixture(scope="module")
def demo_folder(readme_workspace) -> Path:
    """A folder whose runs/demo/shards (what configs/demo.yaml reads) is the one `make demo` built."""
    return readme_workspace.elsewhere


@pytest.fixture(scope="module")
def overfit_run(readme_workspace) -> tuple[Path, int, str]:
    """The README's `vmae pretrain --config demo --overfit 2 --out runs/overfit`, as written, from the demo's
    folder: (run folder, exit code, output)."""
    from readme_workspace import command, readme_line

    line = readme_line("vmae pretrain", "vmae pretrain --config demo --overfit")
    args = shlex.split(command(line))[1:]
    assert args[:5] == ["pretrain", "--config", "demo", "--overfit", "2"], args
    ran = readme_workspace.run_once(line, readme_workspace.elsewhere)
    return readme_workspace.elsewhere / args[args.index("--out") + 1], ran.code, ran.output


def test_the_readme_states_the_thresholds_the_sanity_check_checks():
    text = " ".join(pretrain_section().split())
    pretrain, finetune = OVERFIT_STOP_LOSS["pretrain"], OVERFIT_STOP_LOSS["finetune"]
    assert (f"until the loss stays below `train.stop_loss` for {SETTLE_STEPS} steps ({pretrain:g} for pretraining, "
            f"{finetune:g} for fine-tuning) or {OVERFIT_MAX_STEPS} steps") in text
    assert f"`--overfit 2`: below {pretrain:g}." in text
    assert f"# sanity check: loss below {pretrain:g} on 2 videos" in text


@pytest.mark.slow
@pytest.mark.timeout(OVERFIT_TIMEOUT)
def test_the_documented_sanity_check_reaches_its_threshold_on_the_demo_data(overfit_run):
    out, code, output = overfit_run
    assert code == 0, output[-3000:]
    assert "sanity check passed" in output and "FAILED" not in output
    records = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert records[0]["loss"] > 0.5 and records[-1]["loss"] < OVERFIT_STOP_LOSS["pretrain"]
    assert records[-1]["step"] < OVERFIT_MAX_STEPS  # stopped once below it (train.stop_loss), not at the step limit
    stated = json.loads((out / "run.json").read_text())["batch"]
    assert stated["global_batch_videos"] == 2 and stated["reference_batch_clips"] is None


@pytest.mark.slow
@pytest.mark.timeout(OVERFIT_TIMEOUT)
def test_the_finetune_sanity_check_reaches_its_threshold(overfit_run, demo_folder):
    out, code, _ = overfit_run
    assert code == 0
    code, output = vmae_in(demo_folder, "finetune", "--overfit", "2", "--pretrained", str(out), "--dataset",
                           "runs/demo/shards", "--out", "runs/finetune-overfit")
    assert code == 0, output[-3000:]
    assert "sanity check passed" in output and "FAILED" not in output
    records = [r for r in read_metrics(demo_folder / "runs/finetune-overfit/metrics.jsonl") if "loss" in r]
    assert records[-1]["loss"] < OVERFIT_STOP_LOSS["finetune"]


@pytest.mark.slow
@pytest.mark.timeout(OVERFIT_TIMEOUT)
@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_a_sanity_check_that_misses_its_threshold_says_failed_and_exits_1(overfit_run, demo_folder, command):
    """An lr too small to learn anything: the summary says FAILED with the loss reached and the threshold, the
    command exits 1, and the run's checkpoint is still written."""
    out, code, _ = overfit_run
    assert code == 0
    where = ["--config", "demo"] if command == "pretrain" else ["--pretrained", str(out), "--dataset",
                                                                 "runs/demo/shards"]
    stuck = f"runs/{command}-stuck"
    code, output = vmae_in(demo_folder, command, *where, "--overfit", "2", "--out", stuck, "train.base_lr=1e-9",
                           "train.epochs=20")
    assert code == 1, output[-3000:]
    folded = " ".join(output.split())
    assert "sanity check FAILED" in folded and "sanity check passed" not in folded and "Traceback" not in output
    assert f"not below {OVERFIT_STOP_LOSS[command]:g} (train.stop_loss)" in folded
    assert "the loss reached" in folded and "by step 20" in folded
    assert latest_checkpoint(demo_folder / stuck).name == tag_of(20)  # nothing the run wrote is lost


@pytest.mark.slow
@pytest.mark.timeout(OVERFIT_TIMEOUT)
def test_honest_reconstructions_tell_a_trained_model_from_one_that_predicts_nothing(overfit_run, demo_folder):
    """With per-patch normalized targets the usual picture takes each hidden patch's mean and variance from the
    original (as VideoMAE's users found): a model predicting zeros then looks fine. Ours takes them from the
    visible neighbours; the leaking one is only drawn on request, labelled."""
    import copy

    from vmae.pipeline.train.checkpoint import resolve_checkpoint, saved_config
    from vmae.pipeline.data.loader import make_loader
    from vmae.pipeline.evaluate.pretrained import load_pretrained
    from vmae.pipeline.evaluate.visualize import masked_psnr, reconstruct, reconstruction_grid
    from vmae.tools.config import load_config

    out, code, _ = overfit_run
    assert code == 0
    folder = resolve_checkpoint(out)
    cfg = load_config(str(saved_config(folder)))
    trained = load_pretrained(folder, cfg)
    dataset = demo_folder / cfg.train.dataset  # relative to the folder the run was made in
    video = next(iter(make_loader(dataset, cfg.data, device="cpu")))["video"]  # the clips it fit
    zeros = copy.deepcopy(trained)
    torch.nn.init.zeros_(zeros.decoder_pred.weight), torch.nn.init.zeros_(zeros.decoder_pred.bias)
    fit = masked_psnr(reconstruct(trained, video), "reconstruction", cfg.data)
    nothing = reconstruct(zeros, video, oracle=True)
    honest, oracle = masked_psnr(nothing, "reconstruction", cfg.data), masked_psnr(nothing, "oracle", cfg.data)
    flattered = masked_psnr(reconstruct(trained, video, oracle=True), "oracle", cfg.data)
    # measured on the demo's 2 videos (masks other than the ones it fit): trained 19.4 dB honest / 24.0 oracle;
    # zeros 15.2 honest / 16.2 oracle
    assert fit > honest + 1.5  # the honest picture shows what the model knows
    assert oracle > honest + 0.5 and flattered > fit + 3  # the leaking one flatters every model
    png = reconstruction_grid(zeros, video, cfg.data, out / "zeros.png", clips=2, oracle=True)
    assert png.stat().st_size > 10_000


