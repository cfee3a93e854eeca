"""`vmae pretrain` and `vmae finetune`: the config layered for each, then the training loop."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable

import yaml

from vmae.pipeline.train.checkpoint import config_text
from vmae.pipeline.train.loop import finetune, pretrain
from vmae.pipeline.train.preflight import dry_run
from vmae.pipeline.train.summary import exit_code
from vmae.tools.commands import command_config, command_overrides
from vmae.tools.config import VmaeConfig, base_layers, flag_values, load_config, to_yaml
from vmae.tools.report import print_train_summary


def pretrain_command(args: argparse.Namespace) -> int:
    if args.dry_run:
        return dry_run(command_config(args), "pretrain")
    return train_and_report(pretrain, command_config(args))


def finetune_command(args: argparse.Namespace) -> int:
    if args.dry_run:
        return dry_run(finetune_config(args), "finetune")
    return train_and_report(finetune, finetune_config(args))


def train_and_report(train: Callable[[VmaeConfig, str], dict | None], cfg: VmaeConfig) -> int:
    """Run ``train`` on ``cfg`` (its YAML is saved with every checkpoint); rank 0 prints the summary."""
    summary = train(cfg, to_yaml(cfg))
    if summary is not None and not is_worker_rank():
        print_train_summary(summary)
    return exit_code(summary) if summary is not None else 0


# what a fine-tuning run takes from its pretrained run unless told otherwise: the encoder's shape and the clips'
INHERITED_FROM_PRETRAINING = {"model": ("preset", "tubelet", "positions", "target"),
                              "data": ("frames", "stride", "crop_size", "mean", "std")}


def finetune_config(args: argparse.Namespace) -> VmaeConfig:
    """Layers: defaults < configs/finetune.yaml < the pretrained run's model and clip shape < --config < flags <
    overrides. The pretrained run is only known once the upper layers are read, hence two passes."""
    base = base_layers("finetune")  # configs/finetune.yaml, as `vmae finetune --help` shows
    cfg = load_config(args.config, command_overrides(args), flag_values(args), base=base)
    if cfg.finetune.pretrained:
        pretrained = yaml.safe_load(config_text(Path(cfg.finetune.pretrained)))
        inherited = {section: {k: pretrained[section][k] for k in keys if k in pretrained[section]}
                     for section, keys in INHERITED_FROM_PRETRAINING.items()}
        base.append((f"the pretrained run {cfg.finetune.pretrained}", inherited))
        cfg = load_config(args.config, command_overrides(args), flag_values(args), base=base)
    return cfg


def is_worker_rank() -> bool:
    return int(os.environ.get("RANK", "0")) != 0  # rank 0 prints the summary
