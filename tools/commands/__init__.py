"""The bodies of the `vmae` commands, one module per stage of the data flow (shards, data, train, evaluate,
profile). `vmae.tools.cli` builds the parser and imports only the module of the command being run, so `vmae --help`
and config errors answer before torch, DeepSpeed or DALI load. Here: how a command's config is made from its
arguments."""

from __future__ import annotations

import argparse

from vmae.tools.config import VmaeConfig, flag_values, load_config

# The sanity check (--overfit N): fit one fixed batch, its masks included. Its thresholds are the ones README.md
# states: a masked autoencoder fitting a fixed batch gets to a few hundredths of its first loss (about 1.0 with
# per-patch normalized targets), a classifier to near zero.
OVERFIT_STOP_LOSS = {"pretrain": 0.03, "finetune": 0.01}
# Measured on the demo (tiny preset, 2 videos): at lr 3e-3 the loss is below 0.03 after ~160 steps; 1e-3 needs over
# 200, 5e-3 and 1e-2 are unstable. The lr rule would give 2/256 of the recipe's lr: far too small to fit anything.
OVERFIT_LR = 3e-3
OVERFIT_MAX_STEPS = 500


def overfit_overrides(n: int, command: str) -> list[str]:
    """What --overfit N sets, under the command line's own overrides."""
    if n < 1:
        raise ValueError(f"--overfit takes a number of videos >= 1, got {n}")
    items = [f"data.limit={n}", f"data.batch_size={n}", "data.augment=false", "data.backend=cpu",
             f"train.global_batch={n}", "train.reference_batch=0", f"train.epochs={OVERFIT_MAX_STEPS}",
             "train.max_steps=0", "train.warmup_epochs=10", "train.weight_decay=0", "train.checkpoint_every=100000",
             "train.visualize_every=0", "model.drop_path=0", "train.sanity_check=true",
             f"train.stop_loss={OVERFIT_STOP_LOSS[command]}", "train.lr_batch_unit=videos",
             f"train.base_lr={OVERFIT_LR * 256 / n!r}"]  # lr = base_lr x n / 256 = OVERFIT_LR
    if command == "finetune":
        items += ["finetune.mixup=0", "finetune.cutmix=0", "finetune.label_smoothing=0"]
    return items


def command_overrides(args: argparse.Namespace) -> list[str]:
    """What --overfit implies, then the command line's SECTION.KEY=VALUE overrides (which win: a sanity check can
    be tuned, e.g. train.base_lr=...)."""
    if getattr(args, "overfit", None) is None:
        return args.overrides
    return overfit_overrides(args.overfit, args.overfit_command) + args.overrides


def command_config(args: argparse.Namespace) -> VmaeConfig:
    """The config of a command that takes one: its --config, flags, overrides and what --overfit implies."""
    return load_config(args.config, command_overrides(args), flag_values(args))
