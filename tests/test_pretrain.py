"""`vmae pretrain` on CPU: one process, two processes, two simulated nodes, kills, SIGTERM, NaNs, full disks.

Every run trains the tiny preset on 4-frame 32-pixel clips (8 tokens) of the shared test dataset (10 videos),
through the real launchers (plain, torchrun) in subprocesses, so that each gets its own process group.
"""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from vmae.pipeline.train.checkpoint import (MARKER, CheckpointError, complete_checkpoints, latest_checkpoint,
                                 save_checkpoint)
from vmae.pipeline.train.engine import deepspeed_config, detect_launcher, free_port, optimizer_clips
from vmae.pipeline.train.metrics import read_metrics
from vmae.pipeline.train.config import (BatchSplit, TrainConfig, batch_split, batch_statement, batch_warning,
                                   describe_batch, lr_at, peak_lr)
from vmae.pipeline.data.config import DataConfig
from vmae.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
STEPS = 8  # 2 steps per epoch of 10 videos at a global batch of 4: four epochs


def run_config(dataset: Path, out: Path, **train) -> dict:
    cfg = {
        "data": {"frames": 4, "stride": 2, "views": 2, "crop_size": 32, "batch_size": 4, "workers": 1,
                 "backend": "cpu", "shuffle_buffer": 4,
                 "streams": 2},  # fixed: 1 and 2 ranks then see the same videos in every global step
        "model": {"preset": "tiny", "mask_ratio": 0.75},
        "train": {"dataset": str(dataset), "out": str(out), "epochs": 20, "max_steps": STEPS, "global_batch": 4,
                  "base_lr": 0.05, "warmup_epochs": 1, "checkpoint_every": 3, "log_every": 1, "zero_stage": 1,
                  "log_samples": True, "peak_tflops": 1.0, "seed": 3},
    }
    for key, value in train.items():
        section, name = key.split("__") if "__" in key else ("train", key)
        cfg[section][name] = value
    return cfg


def clean_env() -> dict:
    """This process's environment without any launcher's rendezvous variables."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def write_config(tmp: Path, cfg: dict) -> Path:
    path = tmp / f"config-{len(list(tmp.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def vmae_pretrain(config: Path, *extra: str, launcher: tuple[str, ...] = (sys.executable, "-m"), wait: bool = True,
                  timeout=300):
    """`vmae pretrain` as a module under ``launcher`` (which ends with its own "run a module" flag)."""
    command = [*launcher, "vmae.tools.cli", "pretrain", "--config", str(config), *extra]
    proc = subprocess.Popen(command, cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    if not wait:
        return proc
    output, _ = proc.communicate(timeout=timeout)
    return proc.returncode, output


def torchrun(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "torch.distributed.run", *args, "-m")


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl")]


def sample_steps(out: Path) -> dict[int, list[str]]:
    """Step → the videos of that global step, over all ranks (sorted: ranks may hold them in any order)."""
    steps: dict[int, list[str]] = {}
    for path in sorted((out / "samples").glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            steps.setdefault(row["step"], []).extend(row["keys"])
    return {step: sorted(keys) for step, keys in steps.items()}


@pytest.fixture(scope="module")
def reference(built, tmp_path_factory) -> Path:
    """One uninterrupted one-process ZeRO-1 fp32 run that the other runs must agree with."""
    tmp = tmp_path_factory.mktemp("reference")
    code, output = vmae_pretrain(write_config(tmp, run_config(built[0], tmp / "run")))
    assert code == 0, output
    return tmp / "run"


# ------------------------------------------------------------------ one process

@pytest.mark.slow
def test_one_process_learns_and_leaves_everything_a_run_promises(reference, built):
    curve = losses(reference)
    assert len(curve) == STEPS
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3  # the loss goes down
    records = read_metrics(reference / "metrics.jsonl")
    for key in ("lr", "grad_norm", "clips_per_s", "videos_per_s", "tokens_per_s", "data_wait_pct", "step_time",
                "peak_memory_gb", "mfu"):
        assert all(r[key] is not None and r[key] >= 0 for r in records), key
    assert records[-1]["samples_seen"] == STEPS * 4
    assert records[0]["clips"] == 8 and records[0]["tokens"] == 8 * 2  # 2 views, 2 of 8 tokens visible
    # every step of an epoch takes new videos; each epoch sees 8 of the 10 (2 steps x 4)
    steps = sample_steps(reference)
    for epoch in range(STEPS // 2):
        seen = steps[2 * epoch] + steps[2 * epoch + 1]
        assert len(set(seen)) == 8
    # checkpoints at steps 3 and 6 and the end, the last k kept, each complete
    assert [p.name for p in complete_checkpoints(reference)] == ["step000000003", "step000000006", "step000000008"]
    assert (reference / "reconstruction.png").stat().st_size > 10_000
    assert list((reference / "tensorboard").glob("events.out.tfevents.*"))
    summary = read_metrics(reference / "metrics.jsonl")[-1]
    assert summary["skipped_steps"] == 0
    stated = json.loads((reference / "run.json").read_text())
    assert stated["batch"]["effective_batch_clips"] == 8 and stated["batch"]["effective_epochs"] == 40
    assert "differs from this recipe's reference 2048" in stated["warning"]


@pytest.mark.slow
def test_exported_weights_load_into_the_classifier_safely(reference):
    from vmae.model.mae import VideoClassifier, preset

    classifier = VideoClassifier(preset("tiny"), num_classes=3, frames=4, size=32)
    fresh = classifier.head.weight.clone()
    resized = classifier.load_pretrained_encoder(str(reference / "pretrained.pt"))  # weights_only=True inside
    assert resized == []  # the same clip shape: no position resized; fc_norm and the head stay new
    assert torch.equal(classifier.head.weight, fresh)
    state = torch.load(reference / "pretrained.pt", weights_only=True)
    assert torch.equal(classifier.encoder.blocks[0].attn.qkv.weight, state["model"]["encoder.blocks.0.attn.qkv.weight"])
    assert "preset: tiny" in state["config"]


@pytest.mark.slow
def test_visualize_and_export_commands(reference, built, tmp_path):
    png = tmp_path / "recon.png"
    assert main(["visualize", str(reference), str(built[0]), "--png", str(png), "--clips", "2"]) == 0
    assert png.stat().st_size > 5_000
    assert main(["export", str(reference / "checkpoints" / "step000000006"), str(tmp_path / "w.pt")]) == 0
    six = torch.load(tmp_path / "w.pt", weights_only=True)["model"]
    eight = torch.load(reference / "pretrained.pt", weights_only=True)["model"]
    assert set(six) == set(eight) and not torch.equal(six["mask_token"], eight["mask_token"])


# ------------------------------------------------------------------ more processes, same global batch

@pytest.mark.slow
def test_two_processes_zero2_give_the_one_process_losses(reference, built, tmp_path):
    cfg = run_config(built[0], tmp_path / "run", zero_stage=2, data__batch_size=2)
    port = free_port()
    code, output = vmae_pretrain(write_config(tmp_path, cfg), launcher=torchrun(
        "--nproc_per_node", "2", "--master_port", str(port)))
    assert code == 0, output
    assert losses(tmp_path / "run") == pytest.approx(losses(reference), rel=1e-4, abs=1e-5)
    assert sample_steps(tmp_path / "run") == sample_steps(reference)  # the same videos in every global step
    # DeepSpeed's CPU all-reduce buffers (69 MB a rank) are not left in /dev/shm
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))


@pytest.mark.slow
def test_two_nodes_with_accumulation_agree_with_one(reference, built, tmp_path):
    """Two launcher invocations, node ranks 0 and 1, over loopback; each node one process of micro-batch 1 with
    two accumulation steps, each reading its own share of the shards."""
    cfg = write_config(tmp_path, run_config(built[0], tmp_path / "run", data__batch_size=1))
    port = str(free_port())
    nodes = [vmae_pretrain(cfg, wait=False, launcher=torchrun(
        "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
        "--master_port", port)) for rank in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert "2 rank(s)" in outputs[0] and "1 x 2 accumulation" in outputs[0]
    assert losses(tmp_path / "run") == pytest.approx(losses(reference), rel=1e-4, abs=1e-5)
    ranks = [[json.loads(line)["keys"] for line in p.read_text().splitlines()]
             for p in sorted((tmp_path / "run" / "samples").glob("rank*.jsonl"))]
    assert len(ranks) == 2
    assert all(len(a) == len(b) == 2 and not set(a) & set(b) for a, b in zip(*ranks, strict=True))
    assert sample_steps(tmp_path / "run") == sample_steps(reference)  # together: the one-node run's videos


@pytest.mark.slow
def test_the_deepspeed_launcher_runs_the_same_job(reference, built, tmp_path):
    cfg = run_config(built[0], tmp_path / "run", data__batch_size=2, max_steps=4)
    env_cpu = ("env", "DS_ACCELERATOR=cpu", sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
               "--master_port", str(free_port()), "--module")
    code, output = vmae_pretrain(write_config(tmp_path, cfg), launcher=env_cpu)
    assert code == 0, output
    assert "launch: deepspeed, 2 rank(s)" in output
    assert losses(tmp_path / "run") == pytest.approx(losses(reference)[:4], rel=1e-4, abs=1e-5)


@pytest.mark.slow
def test_zero3_trains_the_same_model_and_exports_it(reference, built, tmp_path):
    cfg = run_config(built[0], tmp_path / "run", zero_stage=3, max_steps=4)
    code, output = vmae_pretrain(write_config(tmp_path, cfg))
    assert code == 0, output
    assert losses(tmp_path / "run") == pytest.approx(losses(reference)[:4], rel=1e-4, abs=1e-5)
    state = torch.load(tmp_path / "run" / "pretrained.pt", weights_only=True)["model"]
    assert state["encoder.blocks.0.attn.qkv.weight"].shape == (576, 192)


@pytest.mark.gpu
def test_cuda_run_trains_in_bf16_with_the_gpu_loader(built, tmp_path):
    out = tmp_path / "run"
    cfg = run_config(built[0], out, precision="auto", max_steps=4, peak_tflops=0.0, data__backend="auto",
                     data__crop_size=64, data__frames=8, data__stride=4)
    code, output = vmae_pretrain(write_config(tmp_path, cfg))
    assert code == 0, output
    assert "bf16" in output and "cuda" in output
    records = read_metrics(out / "metrics.jsonl")
    assert len(records) == 4 and all(r["mfu"] > 0 and r["peak_memory_gb"] > 0 for r in records)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)


# ------------------------------------------------------------------ faults

@pytest.mark.slow
def test_killed_run_resumes_on_the_same_loss_curve(reference, built, tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path, run_config(built[0], out))
    proc = vmae_pretrain(config, wait=False)
    deadline = time.time() + 240
    while time.time() < deadline and len(losses(out)) < 4 and proc.poll() is None:  # past the step-3 checkpoint
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert len(losses(out)) < STEPS, "the run finished before it could be killed"
    assert latest_checkpoint(out).name == "step000000003"
    (out / "checkpoints" / "step000000006").mkdir(exist_ok=True)  # as if killed while writing this one
    (out / "checkpoints" / "step000000006" / "mp_rank_00_model_states.pt").write_bytes(b"half")
    code, output = vmae_pretrain(config)
    assert code == 0, output
    assert "resumed from" in output and "step000000003" in output
    assert losses(out) == pytest.approx(losses(reference), abs=1e-5)  # step for step
    assert sample_steps(out) == sample_steps(reference)  # none twice, none skipped
    assert (out / "checkpoints" / "step000000006" / MARKER).exists()


@pytest.mark.slow
def test_resuming_zero_partitions_on_another_world_size_is_refused(reference, built, tmp_path):
    import shutil

    shutil.copytree(reference / "checkpoints", tmp_path / "run" / "checkpoints")
    cfg = run_config(built[0], tmp_path / "run", data__batch_size=2, max_steps=10)
    code, output = vmae_pretrain(write_config(tmp_path, cfg), launcher=torchrun(
        "--nproc_per_node", "2", "--master_port", str(free_port())))
    assert code != 0
    assert "written by 1 rank(s) and this run has 2" in output


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_cleanly(built, tmp_path):
    out = tmp_path / "run"
    proc = vmae_pretrain(write_config(tmp_path, run_config(built[0], out, max_steps=500, checkpoint_every=1000)),
                         wait=False)
    deadline = time.time() + 240
    while time.time() < deadline and len(losses(out)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "SIGTERM" in output
    done = len(losses(out))
    assert 2 <= done < 500
    assert latest_checkpoint(out).name == f"step{done:09d}"


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2])
def test_non_finite_steps_are_skipped_then_stop_the_run(built, tmp_path, stage):
    out = tmp_path / "run"
    cfg = run_config(built[0], out, zero_stage=stage, inject_nonfinite=[1, 4, 5], max_nonfinite=2,
                     checkpoint_every=2)
    code, output = vmae_pretrain(write_config(tmp_path, cfg))
    assert code == 1, output
    assert "2 steps in a row had a non-finite loss or gradient" in output
    records = read_metrics(out / "metrics.jsonl")
    assert [r["skipped"] for r in records] == [False, True, False, False, True, True]
    assert records[-1]["skipped_steps"] == 3
    # checkpoints hold finite weights only, and the last one is the last good state
    assert latest_checkpoint(out).name == "step000000004"
    for folder in complete_checkpoints(out):
        for name, tensor in torch.load(folder / "mp_rank_00_model_states.pt", weights_only=False)["module"].items():
            assert torch.isfinite(tensor).all(), (folder, name)


def test_a_full_disk_leaves_the_previous_checkpoint_intact(reference, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", out / "checkpoints")

    class FullDisk:
        module = torch.nn.Linear(2, 2)

        def save_checkpoint(self, save_dir, tag, **kwargs):
            (Path(save_dir) / tag).mkdir(parents=True, exist_ok=True)  # as DeepSpeed makes it
            (Path(save_dir) / tag / "mp_rank_00_model_states.pt").write_bytes(b"par")
            raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="No space left on device.*step000000008 is intact"):
        save_checkpoint(FullDisk(), out, {"step": 9}, "", keep_last=3)
    assert latest_checkpoint(out).name == "step000000008"
    assert not (out / "checkpoints" / "step000000009" / MARKER).exists()


class TorchSaving:
    """DeepSpeed's save as the file system sees it: torch.save of the model states to ``destination(tag folder)``
    (torch raises a RuntimeError, not an OSError, when it cannot write)."""

    module = torch.nn.Linear(2, 2)

    def __init__(self, destination):
        self.destination = destination

    def save_checkpoint(self, save_dir, tag, **kwargs):
        torch.save({"module": self.module.state_dict()}, self.destination(Path(save_dir) / tag))


@pytest.mark.parametrize("destination, reason", [
    (lambda folder: "/dev/full", ""),  # a full disk: torch.save says so in words that vary with the size
    (lambda folder: folder / "gone" / "mp_rank_00_model_states.pt", "Parent directory"),  # a folder not made
])
def test_a_checkpoint_torch_cannot_write_is_named_and_the_previous_one_kept(tmp_path, destination, reason):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    out = tmp_path / "run"
    previous = out / "checkpoints" / "step000000004"
    previous.mkdir(parents=True)
    (previous / MARKER).write_text("{}")
    with pytest.raises(CheckpointError, match=rf"could not write checkpoint {out / 'checkpoints' / 'step000000008'} "
                                              rf"\(RuntimeError: .*{reason}.*GiB free on that disk\); the previous "
                                              r"checkpoint .*step000000004 is intact.*--resume auto"):
        save_checkpoint(TorchSaving(destination), out, {"step": 8}, "", keep_last=3)
    assert latest_checkpoint(out) == previous


# ------------------------------------------------------------------ refused before any work

@pytest.mark.parametrize("override, message", [
    ("train.bogus=1", "bogus"),
    ("train.global_batch=6", "train.global_batch=6 is not a multiple"),
    ("train.precision=fp16", "fp16"),
    ("train.dataset=/nonexistent", "no manifest.json"),
    ("model.preset=vit-z", "model.preset"),
    ("data.crop_size=40", "tubelet"),
    ("train.warmup_epochs=20", "train.warmup_epochs=20.0 must be less than train.epochs=20"),
])
def test_config_errors_are_refused_at_start(built, tmp_path, capfd, override, message):
    config = write_config(tmp_path, run_config(built[0], tmp_path / "run"))
    started = time.perf_counter()
    assert main(["pretrain", "--config", str(config), override]) in (1, 2)
    assert message in capfd.readouterr().err
    assert time.perf_counter() - started < 10 and not (tmp_path / "run" / "checkpoints").exists()


def test_unwritable_output_folder_is_refused_at_start(built, tmp_path, capfd):
    (tmp_path / "file").write_text("not a folder")
    config = write_config(tmp_path, run_config(built[0], tmp_path / "file" / "run"))
    assert main(["pretrain", "--config", str(config)]) == 1
    assert "is not a writable folder" in capfd.readouterr().err


def test_a_file_given_as_the_run_folder_is_refused_by_name(built, tmp_path, capfd):
    (tmp_path / "taken").write_text("mine")
    config = write_config(tmp_path, run_config(built[0], tmp_path / "run"))
    assert main(["pretrain", "--config", str(config), "--out", str(tmp_path / "taken")]) == 1
    err = capfd.readouterr().err
    assert f"train.out={tmp_path / 'taken'} is a file, not a folder" in err and "Traceback" not in err
    assert (tmp_path / "taken").read_text() == "mine"


def test_an_unwritable_checkpoints_folder_is_refused_before_step_0(built, tmp_path, capfd, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").write_text("a file where the checkpoints go")
    config = write_config(tmp_path, run_config(built[0], out))
    started = time.perf_counter()
    assert main(["pretrain", "--config", str(config)]) == 1
    assert f"the checkpoints folder {out / 'checkpoints'} is a file, not a folder" in capfd.readouterr().err
    assert time.perf_counter() - started < 10 and not (out / "metrics.jsonl").exists()

    # a folder this user may not write (root writes anywhere: its write is refused here as the kernel would)
    (out / "checkpoints").unlink()
    (out / "checkpoints").mkdir()
    write_text = Path.write_text

    def read_only(path, *args, **kwargs):
        if path.parent == out / "checkpoints":
            raise PermissionError(13, "Permission denied", str(path))
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only)
    assert main(["pretrain", "--config", str(config)]) == 1
    assert (f"the checkpoints folder {out / 'checkpoints'} is not a writable folder (Permission denied)"
            in capfd.readouterr().err)
    assert not (out / "metrics.jsonl").exists()


# ------------------------------------------------------------------ launch rules

def test_lr_scales_with_the_global_batch_in_videos_or_clips():
    data = DataConfig(batch_size=8, views=4)
    videos = TrainConfig(global_batch=512, base_lr=1.6e-3)
    split = batch_split(videos, data, world_size=16)
    assert (split.accumulation, split.global_batch) == (4, 512)
    assert peak_lr(videos, split) == pytest.approx(3.2e-3)  # MAE-ST: 1.6e-3 x 512 / 256
    assert peak_lr(TrainConfig(global_batch=512, base_lr=1.6e-3, lr_batch_unit="clips"), split) == \
        pytest.approx(12.8e-3)
    with pytest.raises(ValueError, match="data.batch_size=8"):
        batch_split(TrainConfig(global_batch=100), data, world_size=4)


def test_every_run_states_its_effective_batch_lr_and_epochs():
    """VideoMAE V2 counts effective epochs (x views) and the true batch; users lost points to a different one."""
    data = DataConfig(batch_size=8, views=4)
    train = TrainConfig(global_batch=512, base_lr=1.6e-3, epochs=800)
    statement = batch_statement(train, batch_split(train, data, world_size=16))
    assert statement["effective_batch_clips"] == 2048 and statement["effective_epochs"] == 3200
    text = describe_batch(statement)
    assert "2048 clips = 8 videos per device x 16 device(s) x 4 accumulation x 4 views" in text
    assert "lr = base_lr 0.0016 x 512 videos / 256 = 0.0032" in text and "3200 effective epochs" in text
    assert batch_warning(statement) is None  # MAE-ST's own batch
    small = TrainConfig(global_batch=64, base_lr=1.6e-3)
    warning = batch_warning(batch_statement(small, batch_split(small, data, world_size=8)))
    assert "256 clips differs from this recipe's reference 2048" in warning
    assert batch_warning(batch_statement(TrainConfig(global_batch=64, reference_batch=0),
                                         batch_split(small, data, world_size=8))) is None


def test_the_same_global_batch_gives_the_same_schedule_for_any_split():
    splits = [batch_split(TrainConfig(global_batch=16), DataConfig(batch_size=b), w)
              for w, b in ((1, 16), (2, 4), (8, 2), (16, 1))]
    assert {s.global_batch for s in splits} == {16} and [s.accumulation for s in splits] == [1, 2, 1, 1]


def test_warmup_then_half_cosine():
    lrs = [lr_at(s, total_steps=100, warmup_steps=10, peak=1.0, floor=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.55) and lrs[99] > 0.1
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


@pytest.mark.parametrize("stage, precision", [(0, "fp32"), (1, "fp32"), (2, "bf16"), (3, "bf16")])
def test_generated_deepspeed_config(stage, precision):
    train = TrainConfig(zero_stage=stage, global_batch=512, gradient_clipping=0.02)
    ds = deepspeed_config(train, BatchSplit(world_size=32, micro_batch=4, accumulation=4, views=4), precision)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == \
        (512, 4, 4)
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["bf16"]["enabled"] == (precision == "bf16") and ds["fp16"]["enabled"] is False
    # clipping is always explicit: DeepSpeed's when it steps a ZeRO/bf16 optimizer, ours without ZeRO in fp32
    assert ds["gradient_clipping"] == (0.0 if optimizer_clips(train, precision) else 0.02)
    assert optimizer_clips(train, precision) == (stage == 0 and precision == "fp32")


@pytest.mark.parametrize("env, launcher", [
    ({}, "single"),
    ({"RANK": "3", "WORLD_SIZE": "8", "TORCHELASTIC_RUN_ID": "x"}, "torchrun"),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}, "deepspeed"),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1"}, "slurm"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, "single"),
])
def test_launchers_are_told_apart(env, launcher):
    assert detect_launcher(env) == launcher


def test_slurm_template_and_hostfile_launch_the_same_command():
    script = (ROOT / "tools" / "slurm_pretrain.sh").read_text()
    assert "#SBATCH" in script and "MASTER_ADDR" in script and "vmae pretrain" in script and "srun" in script
    hostfile = (ROOT / "tools" / "hostfile.example").read_text()
    assert "slots=" in hostfile


# ------------------------------------------------------------------ --dry-run

def test_a_dry_run_passes_a_launch_that_would_start_and_writes_nothing(built, tmp_path, monkeypatch, capsys):
    """Under a launcher's variables (8 ranks), a fine-tuning launch whose checks all pass: exit 0, the plan
    printed for 8 ranks, no run folder and no classes.json made."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "8")
    out = tmp_path / "run"
    config = write_config(tmp_path, run_config(built[0], out, global_batch=8, data__batch_size=1, data__streams=8))
    assert main(["finetune", "--config", str(config), "--dry-run", "finetune.mixup=0", "finetune.cutmix=0"]) == 0
    printed = capsys.readouterr().out
    assert "deepspeed launch, 8 rank(s)" in printed and "FAIL" not in printed
    assert "global batch 8 videos = 8 rank(s) x 1 (data.batch_size) x 1 accumulation" in printed
    assert re.search(r"model: tiny, [\d.]+ M parameters; model states per rank under ZeRO-1 on 8 rank\(s\)", printed)
    assert re.search(r"schedule +\d+ steps an epoch", printed) and "every check passed" in printed
    assert not out.exists()


def test_a_dry_run_reports_every_failing_check_and_exits_1(tmp_path, monkeypatch, capsys):
    """A missing dataset, a batch that does not split over the ranks and an out path that is a file: each named
    on its own line, not only the first; exit 1."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    (tmp_path / "file").write_text("not a folder")
    config = write_config(tmp_path, run_config(tmp_path / "missing", tmp_path / "file"))
    assert main(["pretrain", "--config", str(config), "--dry-run"]) == 1
    printed = capsys.readouterr().out
    failed = re.findall(r"^\s+FAIL\s+(.+?)\s{2,}", printed, flags=re.M)
    assert failed == ["dataset", "batch split", "run folder"], printed
    assert "not a multiple of 3 rank(s)" in printed and "is a file, not a folder" in printed
    assert "3 check(s) failed" in printed


def test_a_dry_run_names_data_streams_that_do_not_suit_the_world_size(built, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "8")
    config = write_config(tmp_path, run_config(built[0], tmp_path / "run", global_batch=8, data__batch_size=1))
    assert main(["pretrain", "--config", str(config), "--dry-run"]) == 1  # run_config sets data.streams=2
    printed = capsys.readouterr().out
    assert re.findall(r"^\s+FAIL\s+(.+?)\s{2,}", printed, flags=re.M) == ["schedule"], printed
    assert "data.streams=2 must be a multiple of the world size 8" in printed
