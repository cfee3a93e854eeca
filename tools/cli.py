"""The `vmae` command: one entry point, one config system, one logging set-up for every job."""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import re
import sys
from pathlib import Path
from typing import Callable

from vmae.tools.commands import command_config, command_overrides
from vmae.tools.config import (ConfigError, VmaeConfig, add_section_entries, add_section_flags, all_keys, base_layers,
                               command_defaults, flag_values, load_config, nearest, to_commented_yaml)
from vmae.tools.log import setup_logging
from vmae.pipeline.study.config import BUDGETS
from vmae.tools.profile import STAGES

log = logging.getLogger("vmae")

EPILOG = ("The options and keys listed by section are config keys: --config FILE|PRESET loads YAML, the flags win "
          "over it, and SECTION.KEY=VALUE overrides anywhere on the line win over both. `vmae config` prints the "
          "resolved config with each key's help.")
TOP_EPILOG = "`vmae COMMAND --help` explains a command and lists its options with their defaults."

OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+=")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """argparse, plus SECTION.KEY=VALUE overrides anywhere on the line (argparse alone cannot mix them with flags)."""
    args, extra = parser.parse_known_args(argv)
    command = getattr(args, "command_parser", parser)
    overrides = [e for e in extra if OVERRIDE.match(e)]
    unknown = [e for e in extra if not OVERRIDE.match(e)]
    if unknown:
        command.error(f"unrecognized arguments: {' '.join(unknown)}{did_you_mean(unknown, command)}")
    if overrides and not hasattr(args, "config"):
        command.error(f"this command takes no config overrides: {' '.join(overrides)}")
    args.overrides = overrides
    return args


def did_you_mean(unknown: list[str], command: argparse.ArgumentParser) -> str:
    """The nearest flag of ``command`` to each mistyped flag, and the nearest key to a KEY=VALUE missing its
    section, as "; did you mean ...?" (empty when nothing is close)."""
    flags = [s for action in command._actions for s in action.option_strings if s.startswith("--")]
    guesses = []
    for item in unknown:
        if item.startswith("--"):
            guess = nearest(item.split("=")[0], flags)
        elif "=" in item and any(action.dest == "config" for action in command._actions):
            guess = _nearest_key(*item.split("=", 1), flags)
        else:
            guess = None
        if guess:
            guesses.append((item, guess))
    if len(guesses) == 1:
        return f"; did you mean {guesses[0][1]}?"
    return "; did you mean " + ", ".join(f"{guess} (for {item})" for item, guess in guesses) + "?" if guesses else ""


def _nearest_key(name: str, value: str, flags: list[str]) -> str | None:
    """A KEY=VALUE without its section: the command's nearest flag, else the nearest SECTION.KEY."""
    flag = nearest("--" + name.replace("_", "-"), flags)
    if flag:
        return f"{flag} {value}"
    leaf = nearest(name, sorted({key.split(".")[1] for key in all_keys()}))
    return next(f"{key}={value}" for key in all_keys() if key.endswith("." + leaf)) if leaf else None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    setup_logging(args.log_level)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        check_config(args)
        return run_command(args.run, args) or 0
    except ConfigError as err:
        log.error("config: %s", err)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; a re-run of the same command resumes")
        return 130
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        log.error("%s", err)
        log.debug("where it was raised", exc_info=True)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmae", description="Masked-autoencoder pretraining on video: build shards, load, pretrain, profile.",
        epilog=TOP_EPILOG)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    # the `deepspeed` launcher passes --local_rank=N before the command; the rank is read from LOCAL_RANK
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    shards = commands.add_parser("shards", help="build, verify and inspect WebDataset video shards",
                                 description="Build, verify and inspect WebDataset video shards.")
    shard_commands = shards.add_subparsers(title="shard commands", metavar="COMMAND")
    shards.set_defaults(run=lambda _: shards.print_help() or 2)

    build = _command(shard_commands, "build", "shards:build_command",
                     "turn a folder, CSV or JSONL of videos into tar shards",
                     "Probe, normalize (stream copy or transcode) and pack videos into WebDataset tar shards with "
                     "DALI index files, manifest.json and rejects.jsonl. A killed build resumes when re-run.")
    build.add_argument("input", type=Path, help="a folder (labels = sub-folder names), or a .csv/.jsonl list")
    build.add_argument("out", type=Path, help="dataset folder to write")
    build.add_argument("--part", type=build_part, metavar="I/N", help=(
        "only process (probe, encode) the I-th of N shares of the inputs (0-based), beside the other parts: a "
        "SLURM array task (tools/slurm_shards.sh) or another node; then the same command without --part packs "
        "the shards"))
    _config_args(build, ("shards",))

    verify = _command(shard_commands, "verify", "shards:verify_command", "check every shard against the manifest",
                      "Check sizes, checksums, index files, members, labels, and decode every video to count "
                      "its frames. Exits 1 with a report on any mismatch.")
    verify.add_argument("dataset", type=Path, help="dataset folder written by `vmae shards build`")
    verify.add_argument("--no-decode", action="store_true", help="skip decoding the videos (fast structural check)")
    _config_args(verify, ("shards",), only=("workers",))

    progress = _command(shard_commands, "progress", "shards:progress_command",
                        "one progress bar over every part of a build",
                        "How many inputs the parts of a build (--part, SLURM array tasks, Ray, other nodes) have "
                        "processed so far, with the rejects by reason; with --watch, one bar until all are done.")
    progress.add_argument("out", type=Path, help="the dataset folder being built")
    progress.add_argument("--watch", type=float, metavar="SECONDS", default=0.0,
                          help="refresh every SECONDS until every input is processed (0: print once)")

    inspect = _command(shard_commands, "inspect", "shards:inspect_command", "tabulate a dataset",
                       "Classes, counts, durations, resolutions, codecs and bytes of a built dataset.")
    inspect.add_argument("dataset", type=Path, help="dataset folder written by `vmae shards build`")
    inspect.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")

    synth = _command(commands, "synth", "shards:synth_command", "make a synthetic labelled video set with ffmpeg",
                     "Moving-shape videos whose class is their motion (direction and kind of movement), "
                     "in a Kinetics-style folder OUT/<class>/<video>.mp4.")
    synth.add_argument("out", type=Path, help="folder to write")
    _config_args(synth, ("synth",))

    check = _command(commands, "loader-check", "data:loader_check_command", "look at and time the loader's views",
                     "Decode a few batches of a built dataset: write a PNG contact sheet of the views (first, "
                     "middle and last frame of each, crop drawn) and print the clips/s the loader delivers.")
    check.add_argument("dataset", type=dataset_location, help="dataset folder written by `vmae shards build`, or "
                                                              "the http(s) URL of one")
    check.add_argument("--sheet", type=Path, default=Path("loader_check.png"), help="where to write the PNG")
    check.add_argument("--batches", type=int, default=10, help="batches to time after a warm-up batch")
    _config_args(check, ("data",))

    pretrain = _command(commands, "pretrain", "train:pretrain_command", "pretrain the MAE-ST model with DeepSpeed ZeRO",
                        "Pretrain from one config on one CPU, one GPU, or many nodes: run it plainly for one "
                        "process, or under `deepspeed`, `torchrun` or `srun` (tools/slurm_pretrain.sh). "
                        "--resume auto (the default) continues from the newest complete checkpoint in --out. "
                        "Model and data keys are set as model.KEY=VALUE and data.KEY=VALUE.")
    _config_args(pretrain, ("train",), entries=("data", "model"))
    _overfit_arg(pretrain, "pretrain")
    _dry_run_arg(pretrain)

    finetune = _command(commands, "finetune", "train:finetune_command",
                        "fine-tune a classifier from a pretrained encoder",
                        "The classifier (encoder on all tokens, mean pooling, head) from --pretrained's encoder, or "
                        "from scratch without it, trained like pretraining (DeepSpeed, checkpoints, --resume auto) "
                        "with layer-wise lr decay, drop path, label smoothing, mixup/cutmix and repeated augmentation "
                        "(data.views clips per video). Settings start from configs/finetune.yaml (MAE-ST's recipe), "
                        "then the pretrained run's model and clip shape, then --config and overrides. With "
                        "--val-dataset the multi-view test runs at the end.")
    _config_args(finetune, ("train", "finetune"), entries=("data", "model"), command="finetune")
    _overfit_arg(finetune, "finetune")
    _dry_run_arg(finetune)

    evaluate = _command(commands, "evaluate", "evaluate:evaluate_command", "multi-view test of a fine-tuned classifier",
                        "Temporal windows x spatial crops per video (MAE-ST tests Kinetics with 7 x 3), softmax "
                        "averaged; top-1/top-5, report.json and confusion.png.")
    evaluate.add_argument("checkpoint", type=Path, help="a fine-tuning run folder, checkpoint folder or finetuned.pt")
    evaluate.add_argument("--dataset", type=Path, required=True, help="labelled dataset (`vmae shards build`)")
    evaluate.add_argument("--views", type=int, help="clips per video, windows x crops (default: the run's "
                          "finetune.test_views)")
    evaluate.add_argument("--test-crops", type=int, help="spatial crops per window (default: finetune.test_crops)")
    evaluate.add_argument("--out", type=Path, help="folder to write (default: eval/ beside the weights: in the run "
                          "folder, or in the checkpoint folder given)")

    visualize = _command(commands, "visualize", "evaluate:visualize_command", "reconstruction pictures of a checkpoint",
                         "Original / masked input / reconstruction of a few clips of DATASET, as a PNG grid.")
    visualize.add_argument("checkpoint", type=Path, help="a checkpoint folder (OUT/checkpoints/stepN) or run folder")
    visualize.add_argument("dataset", type=Path, help="dataset folder written by `vmae shards build`")
    visualize.add_argument("--png", type=Path, help="where to write (default: reconstruction.png in the checkpoint "
                           "folder, a run's newest)")
    visualize.add_argument("--clips", type=int, default=4, help="clips to show")
    visualize.add_argument("--oracle", action="store_true", help=(
        "also show the usual picture that gives each hidden patch its own true mean and variance: it leaks the "
        "answer (a model predicting zeros looks good), and is labelled so"))

    export = _command(commands, "export", "evaluate:export_command", "plain fp32 weights of a checkpoint",
                      "Gather a checkpoint's ZeRO partitions into one fp32 state dict (like DeepSpeed's zero_to_fp32) "
                      "for fine-tuning: {'model': state dict, 'config': YAML}, safe to read with weights_only=True.")
    export.add_argument("checkpoint", type=Path, help="a checkpoint folder (OUT/checkpoints/stepN) or run folder")
    export.add_argument("out", type=Path, help="file to write, e.g. vit-l.pt")

    profile = _command(commands, "profile", "profile:profile_command", "where the throughput goes, and what to change",
                       "Measure decode, load, model and train each alone, then together, on your dataset and config; "
                       "name the bottleneck and its headroom, suggest settings; write profile.json and profile.png.")
    profile.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of "
                         f"{','.join(STAGES)} (default: all)")
    profile.add_argument("--seconds", type=float, default=10.0, help="measuring time per stage (after warm-up)")
    profile.add_argument("--out", type=Path, default=Path("profile"), help="folder for profile.json and .png")
    profile.add_argument("--baselines", action="store_true",
                         help="also VideoMAE's per-file decord loader and the dense (all-token) encoder, as ratios")
    profile.add_argument("--sweep", nargs="+", metavar="KEY=V1,V2", default=[],
                         help="loader grid, e.g. data.workers=1,2 data.views=1,2,4 (put overrides before it)")
    profile.add_argument("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"),
                         help="print two profiles side by side with ratios, and exit")
    profile.add_argument("--slow", action="append", default=[], metavar="STAGE=SECONDS", help=argparse.SUPPRESS)
    _config_args(profile, ("train",), only=("dataset",), entries=("data", "model"))

    probe = _command(commands, "linear-probe", "evaluate:linear_probe_command",
                     "how good is a pretrained encoder: a linear probe",
                     "Freeze a checkpoint's encoder, take mean-pooled features of every video (evaluation views: "
                     "windows spread over the video x crops along its long side), train a linear classifier on one "
                     "part and score the other (softmax averaged over views); write report.json and confusion.png.")
    probe.add_argument("checkpoint", type=Path, help="a pretraining checkpoint folder or run folder")
    probe.add_argument("--dataset", type=Path, required=True, help="labelled dataset (`vmae shards build`)")
    probe.add_argument("--val-dataset", type=Path, help="score on this dataset instead of a split of --dataset")
    probe.add_argument("--val-fraction", type=float, default=0.3, help="share of videos held out (by key hash)")
    probe.add_argument("--views", type=int, default=2, help="clips per video (temporal windows x crops)")
    probe.add_argument("--test-crops", type=int, default=1, help="spatial crops per window (3: MAE-ST testing)")
    probe.add_argument("--epochs", type=int, default=300, help="full-batch optimizer steps of the linear head")
    probe.add_argument("--out", type=Path, help="folder to write (default: linear-probe/ in the checkpoint folder, "
                       "a run's newest)")

    features = _command(commands, "extract-features", "evaluate:extract_features_command",
                        "per-video embeddings to a file",
                        "Mean-pooled encoder features of every video of DATASET, averaged over the evaluation views "
                        "(windows spread over the video x crops): a pretraining run's encoder, or a fine-tuned "
                        "classifier's pooled features (what its head reads). Written as .npz (numpy: features, "
                        "view_features, keys, labels, label_names) or .csv (pandas.read_csv).")
    features.add_argument("checkpoint", type=Path, help="a run folder, checkpoint folder or exported .pt")
    features.add_argument("dataset", type=Path, help="dataset folder written by `vmae shards build`")
    features.add_argument("--out", type=Path, default=Path("features.npz"),
                          help="FILE.npz or FILE.csv (default: features.npz in the current folder)")
    features.add_argument("--views", type=int, default=4, help="clips per video (temporal windows x crops)")
    features.add_argument("--test-crops", type=int, default=1, help="spatial crops per window")
    features.add_argument("--frames", type=int, help="frames per clip (default: the checkpoint's; another "
                          "length resizes its learned temporal positions)")

    study = _command(commands, "study", "evaluate:study_command", "does MAE pretraining learn? a controlled study",
                     "Fashion-MNIST items moving over textured backgrounds (class: what the item is), built into "
                     "shards: an unlabelled pool, labelled subsets of 1, 5 and 20 clips per class per seed, "
                     "validation and test clips. Per seed: (a) pretraining then fine-tuning, (b) from scratch for "
                     "the same time, (c) k-NN and linear probes of frozen features against initial weights and raw "
                     "pixels, (d) masked-patch PSNR against trivial predictors; everything fixed before running. "
                     "Writes results.json, report.json, report.md, accuracy.png and psnr.png.")
    study.add_argument("--budget", default="cpu", choices=list(BUDGETS), help="how much of everything "
                       "(cpu: 3 seeds in about 30 min on 2 cores; gpu: longer pretraining on one GPU; smoke: the "
                       "tests' minute)")
    study.add_argument("--out", type=Path, default=Path("runs/study"), help="folder for the runs and the report")
    study.add_argument("--data", type=Path, help="where the clips and shards go (default: OUT/data); reused when "
                       "they exist")

    config = _command(commands, "config", print_config, "print the resolved configuration",
                      "Print the configuration after defaults, --config and overrides, as YAML.")
    _config_args(config, ())
    return parser


def _command(group, name: str, run: str | Callable, help_text: str, description: str) -> argparse.ArgumentParser:
    """A sub-command; ``run`` is its body, or "MODULE:FUNCTION" of vmae.tools.commands, imported when it runs."""
    sub = group.add_parser(name, help=help_text, description=description)
    sub.set_defaults(run=run, command_parser=sub)  # the parser that reports this command's usage errors
    return sub


def _config_args(parser: argparse.ArgumentParser, sections: tuple[str, ...], only: tuple[str, ...] = (),
                 entries: tuple[str, ...] = (), command: str = "") -> None:
    """--config, a flag per key of ``sections`` (or the ``only`` ones), the keys of the ``entries`` sections listed
    as SECTION.KEY=VALUE, each with the default ``command`` starts from (its base presets), and the config footer."""
    parser.add_argument("--config", metavar="FILE|PRESET", help="YAML config file or preset name under configs/")
    parser.set_defaults(config_command=command)
    parser.epilog = EPILOG
    defaults = _command_defaults(command)
    for section in sections:
        add_section_flags(parser, section, only, defaults)
    for section in entries:
        add_section_entries(parser, section, defaults)


@functools.lru_cache
def _command_defaults(command: str) -> VmaeConfig:
    """Read once per process: every parser built shows the same defaults."""
    return command_defaults(command)


def _overfit_arg(parser: argparse.ArgumentParser, command: str) -> None:
    parser.set_defaults(overfit_command=command)
    parser.add_argument("--overfit", type=int, metavar="N", help=(
        "sanity check: train on the first N videos only, the same batch and masks every step, without "
        "augmentation or regularization, until the loss stays below train.stop_loss (pretrain 0.03, finetune 0.01) "
        "or 500 steps; says 'sanity check passed', or FAILED and exits 1; one process, CPU loader"))


def _dry_run_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help=(
        "check the launch (its world size from the launcher), the dataset, the batch split and the run folder, "
        "print the schedule and the model states per rank, train nothing; exits 1 when a check fails"))


def print_config(args: argparse.Namespace) -> int:
    sys.stdout.write(to_commented_yaml(command_config(args)))
    return 0


def check_config(args: argparse.Namespace) -> None:
    """Resolve the config of a command that takes one before its module is imported, so that a config error
    (unknown key, bad value) is reported at once, not after seconds of importing torch and DeepSpeed. The command
    resolves it again with what only it can read (`vmae finetune`: the pretrained run's model and clip shape)."""
    if hasattr(args, "config") and isinstance(args.run, str):
        load_config(args.config, command_overrides(args), flag_values(args), base=base_layers(args.config_command))


def run_command(run: str | Callable, args: argparse.Namespace) -> int | None:
    """Run a command's body; a "MODULE:FUNCTION" body is imported now, so that a command loads only its own
    stage (torch, DeepSpeed and DALI are not imported by `vmae --help`, `vmae config` or a config error)."""
    if callable(run):
        return run(args)
    module, _, function = run.partition(":")
    return getattr(importlib.import_module(f"vmae.tools.commands.{module}"), function)(args)


def build_part(value: str) -> tuple[int, int]:
    """"3/16" → (3, 16)."""
    index, _, count = value.partition("/")
    if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise argparse.ArgumentTypeError(f"{value!r}: a part is I/N with 0 <= I < N, e.g. 3/16")
    return int(index), int(count)


def dataset_location(value: str) -> Path | str:
    """A dataset argument: a URL stays a string (a Path would fold its '//'), anything else is a folder."""
    return value if value.startswith(("http://", "https://")) else Path(value)


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors a user can act on, whose message is enough. Imported only once a command has failed: the modules
    that define them load torch, which a fast `--help` must not pay for."""
    from vmae.pipeline.train.checkpoint import CheckpointError
    from vmae.pipeline.data.remote import RemoteError
    from vmae.pipeline.train.config import TrainError
    from vmae.shards.format import DatasetError
    from vmae.shards.sources import SourceError
    from vmae.shards.state import BuildError

    return (BuildError, SourceError, DatasetError, TrainError, CheckpointError, RemoteError, FileNotFoundError,
            NotADirectoryError, PermissionError, ValueError)


if __name__ == "__main__":
    sys.exit(main())
