"""Fine-tuning and multi-view evaluation: layer-wise lr decay through DeepSpeed, mixup on clips, the commands end to
end (from a pretraining run, resumed, scored), and a short fine-tune that learns the motion classes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_pretrain import ROOT, clean_env
from vmae.pipeline.evaluate.downstream import remap_labels
from vmae.pipeline.train.config import TrainError
from vmae.pipeline.train.checks import check_classes
from vmae.pipeline.train.tasks import FinetuneTask
from vmae.shards.build import build_shards
from vmae.shards.config import ShardConfig, SynthConfig
from vmae.shards.synth import make_synthetic_videos
from vmae.tools.cli import main
from vmae.tools.config import load_config, preset_layer


def tiny_cfg(**finetune):
    overrides = ["model.preset=tiny", "data.frames=4", "data.crop_size=32", "data.views=2", "data.batch_size=2",
                 *(f"finetune.{k}={v}" for k, v in finetune.items())]
    return load_config(None, overrides, base=[preset_layer("finetune")])


def test_layer_decay_gives_each_block_its_own_lr_scale():
    task = FinetuneTask(tiny_cfg(layer_decay=0.5), classes=["a", "b", "c"])
    model = task.build_model(launch=None)
    groups = task.param_groups(model)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert len(scale_of) == sum(1 for _ in model.parameters())  # every parameter in exactly one group
    named = dict(model.named_parameters())
    depth = len(model.encoder.blocks)
    assert scale_of[id(named["head.weight"])] == scale_of[id(named["fc_norm.bias"])] == 1.0
    for i in range(depth):
        assert scale_of[id(named[f"encoder.blocks.{i}.attn.qkv.weight"])] == pytest.approx(0.5 ** (depth - i))
    assert scale_of[id(named["encoder.patch_embed.proj.weight"])] == pytest.approx(0.5 ** (depth + 1))
    assert scale_of[id(named["encoder.pos_embed.space"])] == pytest.approx(0.5 ** (depth + 1))
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(named["encoder.pos_embed.space"]) in no_decay and id(named["head.bias"]) in no_decay
    assert id(named["head.weight"]) not in no_decay


def test_mixup_and_cutmix_mix_whole_clips_with_soft_targets():
    cfg = tiny_cfg(mixup=0.8, cutmix=1.0, mixup_switch_prob=1.0, label_smoothing=0.0)  # always cutmix
    task = FinetuneTask(cfg, classes=["a", "b", "c"])

    class Engine:  # records what the model is given
        def __call__(self, video):
            self.video = video.clone()
            return torch.zeros(video.shape[0], 3, requires_grad=True)

    engine = Engine()
    video = torch.stack([torch.full((3, 4, 32, 32), float(i)) for i in range(4)])
    loss = task.loss(engine, video.clone(), {"label": torch.tensor([0, 0, 1, 2])}, step=0, first_clip=0)
    mixed = engine.video
    assert mixed.shape == video.shape and torch.isfinite(loss)
    # cutmix pastes one box of the paired clip through every frame: frames of a clip stay identical
    assert torch.equal(mixed[:, :, 0], mixed[:, :, 3])
    assert not torch.equal(mixed, video) and set(mixed[0].unique().tolist()) <= {0.0, 3.0}
    with pytest.raises(Exception, match="must be even"):
        FinetuneTask(load_config(None, ["data.batch_size=3", "data.views=1"], base=[preset_layer("finetune")]),
                     ["a", "b"])


def test_evaluation_labels_are_matched_by_class_name():
    labels = torch.tensor([0, 1, 1])
    assert remap_labels(labels, ["b", "c"], ["a", "b", "c"], Path("val")).tolist() == [1, 2, 2]
    with pytest.raises(ValueError, match="not trained on"):
        remap_labels(labels, ["b", "z"], ["a", "b", "c"], Path("val"))


LR_CHECK = """
import sys, torch
from vmae.pipeline.train.engine import init_distributed, make_engine, set_lr
from vmae.pipeline.train.tasks import FinetuneTask
from vmae.pipeline.train.config import batch_split
from vmae.tools.cli import main
from vmae.tools.config import load_config, preset_layer
stage = int(sys.argv[1])
cfg = load_config(None, ["model.preset=tiny", "data.frames=4", "data.crop_size=32", "data.views=1",
                         "data.batch_size=2", "train.global_batch=2", "train.weight_decay=0", "train.precision=fp32",
                         f"train.zero_stage={stage}", "finetune.layer_decay=0.5", "finetune.mixup=0",
                         "finetune.cutmix=0"], base=[preset_layer("finetune")])
launch = init_distributed()
task = FinetuneTask(cfg, ["a", "b", "c"])
torch.manual_seed(0)
model = task.build_model(launch)
before = {k: v.detach().clone() for k, v in model.named_parameters()}
engine = make_engine(model, task.param_groups(model), cfg.train, batch_split(cfg.train, cfg.data, 1), "fp32")
set_lr(engine, 1e-3)
loss = task.loss(engine, torch.randn(2, 3, 4, 32, 32), {"label": torch.tensor([0, 2])}, 0, 0)
engine.backward(loss)
engine.step()
# Adam's first update of an element is lr x sign(gradient) whatever the gradient's size
import deepspeed
params = dict(engine.module.named_parameters())
for name in ("head.bias", "encoder.blocks.3.attn.qkv.bias", "encoder.blocks.0.mlp.fc1.bias",
             "encoder.patch_embed.proj.bias"):
    with deepspeed.zero.GatheredParameters([params[name]]):  # ZeRO-3 holds a shard of each tensor per rank
        step = (params[name].detach().clone() - before[name]).abs()
    print(name, step[step > 0].median().item())
"""


@pytest.mark.slow
def test_each_layer_moves_by_its_decayed_lr_under_deepspeed():
    for stage in (0, 1, 2, 3):
        proc = subprocess.run([sys.executable, "-c", LR_CHECK, str(stage)], cwd=ROOT, env=clean_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        moved = dict(line.rsplit(" ", 1) for line in proc.stdout.splitlines() if line.count(" ") == 1)
        expected = {"head.bias": 1.0, "encoder.blocks.3.attn.qkv.bias": 0.5, "encoder.blocks.0.mlp.fc1.bias": 0.5**4,
                    "encoder.patch_embed.proj.bias": 0.5**5}
        for name, scale in expected.items():
            assert float(moved[name]) == pytest.approx(1e-3 * scale, rel=0.02), (stage, name, moved)



@pytest.fixture(scope="module")
def motion(tmp_path_factory) -> tuple[Path, Path]:
    """The first four motion classes (drift east, south-east, south, south-west), a train and a validation set."""
    root = tmp_path_factory.mktemp("motion")
    sets = []
    for name, seed, per_class in (("train", 0, 12), ("val", 1, 6)):
        make_synthetic_videos(root / f"{name}_videos", SynthConfig(classes=4, videos_per_class=per_class, seconds=2.2,
                                                                  width=96, height=64, seed=seed, workers=2))
        build_shards(root / f"{name}_videos", root / name, ShardConfig(short_side=48, min_frames=48,
                                                                       samples_per_shard=16, workers=2),
                     progress=False)
        sets.append(root / name)
    return sets[0], sets[1]


@pytest.mark.slow
def test_a_short_finetune_learns_motion_above_chance(motion, tmp_path):
    train, val = motion
    command = [sys.executable, "-m", "vmae.tools.cli", "finetune", "--dataset", str(train), "--out",
               str(tmp_path / "ft"), "--val-dataset", str(val), "model.preset=tiny", "model.tubelet=[2,8,8]",
               "data.frames=8", "data.stride=4", "data.crop_size=32", "data.views=2", "data.batch_size=8",
               "data.flip=false",
               "data.scale=[0.6,1.0]", "data.backend=cpu", "train.global_batch=8", "train.epochs=40",
               "train.warmup_epochs=2", "train.base_lr=0.05", "train.zero_stage=0", "train.log_every=20",
               "train.peak_tflops=1.0", "finetune.mixup=0", "finetune.cutmix=0", "finetune.test_views=2",
               "finetune.test_crops=1", "model.drop_path=0.0"]
    proc = subprocess.run(command, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "ft" / "eval" / "report.json").read_text())
    assert report["val_videos"] == 24 and report["chance"] == 0.25
    assert report["top1"] >= 0.5, report  # twice chance: it tells directions apart


def test_a_dataset_whose_class_count_differs_from_the_head_is_refused(tmp_path):
    classes = ["drift_east", "drift_north", "spin"]
    cfg = load_config(None, [f"train.out={tmp_path / 'ft'}", "train.dataset=k400", "finetune.num_classes=400"])
    with pytest.raises(TrainError, match="finetune.num_classes=400 classes but k400 has 3"):
        check_classes(classes, cfg)
    cfg = load_config(None, [f"train.out={tmp_path / 'ft'}", "train.dataset=k400"])
    check_classes(classes, cfg)  # first run: recorded
    assert json.loads((tmp_path / "ft" / "classes.json").read_text()) == classes
    check_classes(classes, cfg)  # resuming on the same classes
    with pytest.raises(TrainError, match="fine-tuned on 3 classes and k400 has 4"):
        check_classes(classes + ["zoom"], cfg)
    check_classes(classes + ["zoom"], load_config(None, [f"train.out={tmp_path / 'ft'}", "train.dataset=k400",
                                                         "train.resume=never"]))


def test_a_preset_run_outside_the_repository_says_where_its_dataset_was_looked_for(tmp_path, monkeypatch, capfd):
    """configs/demo.yaml names runs/demo/shards, a path relative to the folder the command runs in."""
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--config", "demo"]) == 1
    err = capfd.readouterr().err
    assert f"train.dataset=runs/demo/shards: no such folder, looked for at {tmp_path / 'runs/demo/shards'}" in err
    assert "presets' included, are read from the folder you run the command in" in err
    assert "run it from the folder that holds runs/demo/shards, or pass its path with --dataset" in err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def test_a_relative_validation_dataset_that_is_not_there_is_named_with_its_full_path(built, tmp_path, monkeypatch,
                                                                                      capfd):
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", "--dataset", str(built[0]), "--val-dataset", "val/shards", "--out", str(tmp_path / "ft"),
                 "model.preset=tiny", "data.frames=4", "data.crop_size=32", "data.batch_size=2", "data.views=2",
                 "train.global_batch=2"]) == 1
    err = capfd.readouterr().err
    assert f"finetune.val_dataset=val/shards: no such folder, looked for at {tmp_path / 'val/shards'}" in err
    assert "or pass its path with --val-dataset" in err and "Traceback" not in err
