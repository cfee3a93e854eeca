"""What `vmae` says: help that agrees with what each command runs, suggestions for typos, config errors before the
heavy imports, and a training run's output free of third-party chatter."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vmae.tools.cli import EPILOG, build_parser, main, parse_args
from vmae.tools.commands import command_config
from vmae.tools.config import load_config
from vmae.tools.log import library_output, setup_logging

ROOT = Path(__file__).resolve().parent.parent
MAIN = "import sys; from vmae.tools.cli import main; sys.exit(main(sys.argv[1:]))"


def vmae(*args: str, columns: int = 80, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "vmae.tools.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, **kwargs)


def shown_defaults(help_text: str) -> dict[str, str]:
    """``--flag`` or ``section.key=`` → the default its help shows (on its line, or the next for a long name)."""
    found, option = {}, None
    for line in help_text.splitlines():
        start = re.match(r"  (--[\w-]+|[a-z]+\.\w+=)", line)
        option = start[1] if start else option
        default = re.search(r"\(default: (.*)\)$", line)
        if option and default:
            found[option], option = default[1], None
    return found


def as_shown(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def said_in_words(default: str, cfg) -> bool:
    """A default a key's own help states in words ("(default: the list's folder)") rather than as a value."""
    return any(f"(default: {default})" in f.metadata.get("help", "") for section in dataclasses.fields(cfg)
               for f in dataclasses.fields(getattr(cfg, section.name)))


def resolved_value(cfg, option: str, flag_sections: tuple[str, ...]):
    if option.startswith("--"):
        name = option[2:].replace("-", "_")
        section = next(s for s in flag_sections if hasattr(getattr(cfg, s), name))
        return getattr(getattr(cfg, section), name)
    section, name = option.rstrip("=").split(".")
    return getattr(getattr(cfg, section), name)


def finetune_config_of(argv: list[str]):
    from vmae.tools.commands.train import finetune_config  # the command's own layering (imports torch)

    return finetune_config(parse_args(build_parser(), argv))


@pytest.mark.parametrize("command, flag_sections", [(["pretrain"], ("train",)),
                                                    (["finetune"], ("train", "finetune")),
                                                    (["shards", "build"], ("shards",)),
                                                    (["loader-check"], ("data",))])
def test_help_shows_the_defaults_the_command_runs_with(command, flag_sections):
    proc = vmae(*command, "--help", columns=1000)
    assert proc.returncode == 0, proc.stderr
    shown = shown_defaults(proc.stdout)
    argv = [*command, *(["in", "out"] if command == ["shards", "build"] else []),
            *(["dataset"] if command == ["loader-check"] else [])]
    real = finetune_config_of(argv) if command == ["finetune"] else command_config(parse_args(build_parser(), argv))
    assert len(shown) > 20
    wrong = {option: (text, as_shown(resolved_value(real, option, flag_sections))) for option, text in shown.items()
             if text != as_shown(resolved_value(real, option, flag_sections)) and not said_in_words(text, real)}
    assert not wrong, f"help default vs what the command runs with: {wrong}"


def test_finetune_help_shows_the_finetune_recipe_not_pretrainings():
    shown = shown_defaults(vmae("finetune", "--help", columns=1000).stdout)
    assert shown["--out"] == "runs/finetune" and shown["--epochs"] == "50" and shown["--test-views"] == "21"
    assert shown["data.views="] == "2" and shown["model.drop_path="] == "0.2"
    pretrain = shown_defaults(vmae("pretrain", "--help", columns=1000).stdout)
    assert pretrain["--out"] == "runs/pretrain" and pretrain["--epochs"] == "800"


@pytest.mark.parametrize("command", ["pretrain", "finetune", "profile"])
def test_training_help_lists_every_data_and_model_key(command):
    shown = shown_defaults(vmae(command, "--help", columns=1000).stdout)
    cfg = load_config()
    for section in ("data", "model"):
        keys = {f"{section}.{f.name}=" for f in dataclasses.fields(getattr(cfg, section))}
        assert keys <= set(shown), f"missing from {command} --help: {sorted(keys - set(shown))}"


def test_entries_do_not_become_arguments():
    args = parse_args(build_parser(), ["pretrain", "data.frames=8", "--epochs", "3"])
    assert args.overrides == ["data.frames=8"] and not any("." in name for name in vars(args))


@pytest.mark.parametrize("command, takes_config", [
    (["evaluate"], False), (["export"], False), (["visualize"], False), (["linear-probe"], False),
    (["extract-features"], False), (["shards", "inspect"], False), (["shards", "progress"], False),
    (["shards", "build"], True), (["shards", "verify"], True), (["synth"], True), (["loader-check"], True),
    (["pretrain"], True), (["finetune"], True), (["profile"], True), (["config"], True)])
def test_the_config_footer_is_only_on_commands_that_take_a_config(command, takes_config, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert (EPILOG in text) is takes_config
    assert ("--config" in text) is takes_config


def test_config_prints_each_keys_help_and_reads_back(tmp_path, capsys):
    assert main(["config", "--config", "mae-st-vit-l", "train.global_batch=1024"]) == 0
    text = capsys.readouterr().out
    assert "  # passes over the dataset\n  epochs: " in text
    assert "  # resize so the short side is this many pixels (0: keep)\n  short_side: 320" in text
    saved = tmp_path / "resolved.yaml"
    saved.write_text(text)
    assert yaml.safe_load(text)["train"]["global_batch"] == 1024
    assert load_config(str(saved)) == load_config("mae-st-vit-l", ["train.global_batch=1024"])
    assert main(["config", "--config", str(saved)]) == 0
    assert capsys.readouterr().out == text


@pytest.mark.parametrize("argv, said", [
    (["shards", "build", "in", "out", "--shortside", "256"], "did you mean --short-side?"),
    (["pretrain", "--epohcs", "3"], "did you mean --epochs?"),
    (["evaluate", "run", "--dataset", "d", "--veiws", "3"], "did you mean --views?"),
    (["shards", "build", "in", "out", "shortside=256"], "did you mean --short-side 256?"),
])
def test_a_mistyped_flag_names_the_nearest_one(argv, said, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and said in err and "Traceback" not in err


@pytest.mark.parametrize("argv, said", [
    (["config", "shards.shortside=1"], "did you mean 'shards.short_side'?"),
    (["pretrain", "train.lerning_rate=1e-3"], "did you mean 'train.base_lr'?"),
    (["pretrain", "train.batch_size=8"], "did you mean 'data.batch_size'?"),
    (["config", "trian.epochs=1"], "did you mean 'train'?"),
])
def test_a_mistyped_key_names_the_nearest_one(argv, said, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


def test_a_mistyped_key_in_a_config_file_names_the_nearest_one(tmp_path, capsys):
    (tmp_path / "mine.yaml").write_text("model:\n  presett: vit-b\n")
    assert main(["config", "--config", str(tmp_path / "mine.yaml")]) == 2
    err = capsys.readouterr().err
    assert "mine.yaml" in err and "did you mean 'model.preset'?" in err


@pytest.mark.parametrize("argv", [["pretrain", "train.lerning_rate=1"], ["pretrain", "--zero-stage", "5"],
                                  ["finetune", "finetune.mixup=-1"], ["finetune", "data.frmes=8"],
                                  ["loader-check", "d", "data.views=0"]])
def test_a_config_error_comes_before_the_command_imports_torch(argv):
    code = ("import sys; from vmae.tools.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "config:" in proc.stderr and "Traceback" not in proc.stderr


def test_library_output_is_debug_unless_it_reports_a_problem(capsys):
    setup_logging("INFO")
    with library_output("somelib"):
        print("somelib op built successfully")
        print("[WARNING] somelib: unable to find ninja")
    err = capsys.readouterr()
    assert "built successfully" not in err.out + err.err and "unable to find ninja" in err.err
    setup_logging("DEBUG")
    with library_output("somelib"):
        print("somelib op built successfully")
    assert "built successfully" in capsys.readouterr().err
    # torch's CUDA_HOME warning on a machine without a GPU: shown with --log-level DEBUG only
    assert logging.getLogger("torch.utils.cpp_extension").isEnabledFor(logging.WARNING)
    setup_logging("INFO")
    assert not logging.getLogger("torch.utils.cpp_extension").isEnabledFor(logging.WARNING)


def test_library_output_of_a_failing_call_is_kept(capsys):
    setup_logging("INFO")
    with pytest.raises(RuntimeError), library_output("somelib"):
        print("compiling op")
        raise RuntimeError("no compiler")
    assert "compiling op" in capsys.readouterr().err


@pytest.mark.slow
def test_a_cpu_training_run_shows_only_the_projects_messages(tmp_path):
    proc = subprocess.run([sys.executable, "-c", MAIN, "pretrain", "--config", "demo", "--dataset",
                           "tests/data/before-move/dataset", "--out", str(tmp_path / "run"), "train.max_steps=1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = proc.stdout + proc.stderr
    assert "CUDA_HOME" not in said and "built successfully" not in said
    assert not re.search(r"\[INFO\]|INFO\s+DeepSpeed", said), said[-3000:]
    assert "vmae.pipeline.train.loop: pretrain launch" in proc.stderr
