"""The bodies of the `vmae` commands, one module per stage of the data flow (shards, data, train, evaluate,
profile). `vmae.tools.cli` builds the parser and imports only the module of the command being run, so `vmae --help`
and config errors answer before torch, DeepSpeed or DALI load. Here: how a command's config is made from its
arguments."""

from __future__ import annotations

import argparse

from vmae.tools.config import VmaeConfig, flag_values, load_config


def overfit_overrides(n: int, command: str) -> list[str]:
    """What --overfit N sets, on top of everything else."""
    if n < 1:
        raise ValueError(f"--overfit takes a number of videos >= 1, got {n}")
    items = [f"data.limit={n}", f"data.batch_size={n}", "data.augment=false", "data.backend=cpu",
             f"train.global_batch={n}", "train.reference_batch=0", "train.epochs=500", "train.max_steps=0",
             "train.warmup_epochs=10", "train.weight_decay=0", "train.checkpoint_every=100000", "model.drop_path=0"]
    if command == "finetune":
        items += ["train.stop_loss=0.01", "finetune.mixup=0", "finetune.cutmix=0", "finetune.label_smoothing=0"]
    else:  # a masked autoencoder sees new masks every step: near zero is a few hundredths of its first loss
        items += ["train.stop_loss=0.03"]
    return items


def command_overrides(args: argparse.Namespace) -> list[str]:
    """The command line's SECTION.KEY=VALUE overrides, then those --overfit implies."""
    if getattr(args, "overfit", None) is None:
        return args.overrides
    return args.overrides + overfit_overrides(args.overfit, args.overfit_command)


def command_config(args: argparse.Namespace) -> VmaeConfig:
    """The config of a command that takes one: its --config, flags, overrides and what --overfit implies."""
    return load_config(args.config, command_overrides(args), flag_values(args))
