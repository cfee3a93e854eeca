import argparse
import subprocess
import sys

import pytest

from vmae.model.config import ATTENTION_BACKENDS, POSITIONS, PRESETS, STRATEGIES, TARGETS, ModelConfig
from vmae.tools.cli import build_parser, main, parse_args
from vmae.tools.config import ConfigError, add_section_flags, flag_values, load_config, to_yaml


def test_defaults_are_the_papers_preprocessing():
    cfg = load_config()
    assert cfg.shards.short_side == 320 and cfg.shards.codec == "h264" and cfg.shards.min_frames == 16 * 4


def test_preset_then_flags_then_overrides(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("shards:\n  short_side: 256\n  crf: 30\n  fps: 25\n")
    cfg = load_config(str(preset), ["shards.crf=18"], {"shards.fps": 15.0})
    assert (cfg.shards.short_side, cfg.shards.crf, cfg.shards.fps) == (256, 18, 15.0)


def test_shipped_presets_load():
    cfg = load_config("kinetics")
    assert cfg.shards.codec == "h264"
    assert load_config("cpu-vp9").shards.codec == "vp9"


@pytest.mark.parametrize("override, named", [
    ("shards.nope=1", "shards.nope"),
    ("shards.short_side=abc", "shards.short_side"),
    ("shards.codec=av1", "shards.codec"),
    ("shards.short_side=321", "shards.short_side"),
    ("nosuchsection.x=1", "nosuchsection"),
])
def test_bad_values_are_refused_naming_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(overrides=[override])


def test_missing_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="kinetics"):
        load_config("no-such-preset")


def test_flags_are_generated_from_the_dataclass():
    args = parse_args(build_parser(), ["shards", "build", "in", "out", "--short-side", "160", "--no-stream-copy",
                                      "--bframes", "none", "shards.crf=30"])
    assert flag_values(args) == {"shards.short_side": 160, "shards.stream_copy": False, "shards.bframes": None}
    assert args.overrides == ["shards.crf=30"]


def test_config_command_prints_resolved_yaml(capsys):
    assert main(["config", "shards.short_side=128"]) == 0
    assert "short_side: 128" in capsys.readouterr().out
    assert "short_side: 320" in to_yaml(load_config())


def test_config_error_exits_2_with_a_message(capsys, tmp_path):
    assert main(["shards", "build", str(tmp_path), str(tmp_path / "o"), "shards.nope=1"]) == 2


@pytest.mark.parametrize("argv", [["--help"], ["shards", "--help"], ["shards", "build", "--help"],
                                  ["shards", "verify", "--help"], ["shards", "inspect", "--help"],
                                  ["synth", "--help"], ["config", "--help"]])
def test_every_command_explains_itself(argv):
    proc = subprocess.run([sys.executable, "-m", "vmae.tools.cli", *argv], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "usage: vmae" in proc.stdout and len(proc.stdout) > 300


def test_model_flags_offer_the_registries_choices():
    parser = argparse.ArgumentParser()
    add_section_flags(parser, "model")
    text = parser.format_help()
    for registry in (PRESETS, STRATEGIES, ATTENTION_BACKENDS, POSITIONS, TARGETS):
        assert "|".join(registry) in text


@pytest.mark.parametrize("override", ["model.mask=checkerboard", "model.attention=flash9", "model.positions=rope",
                                      "model.target=frame", "model.preset=vit-z", "model.tubelet=[2,16]"])
def test_bad_model_values_are_refused_naming_the_key(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(overrides=[override])


def test_the_model_section_of_an_old_checkpoint_loads():
    old = {"preset": "tiny", "tubelet": None, "mask": "random", "mask_ratio": 0.75, "decoder_mask_ratio": 0.0,
           "target": "slice", "positions": "separable", "norm_pix_loss": True, "drop_path": 0.0, "attention": "auto",
           "checkpoint": False}
    model = load_config(base=[("config.yaml", {"model": old})]).model
    assert model == ModelConfig(preset="tiny", mask_ratio=0.75, checkpoint=False)
    assert model.architecture == PRESETS["tiny"] and model.token_grid(8, 64) == (4, 4, 4)


def test_a_clip_the_tubelet_does_not_divide_is_refused_naming_the_keys():
    with pytest.raises(ValueError, match=r"data\.frames.*data\.crop_size.*model\.tubelet"):
        load_config(overrides=["model.tubelet=[4,16,16]", "data.frames=6"]).model.token_grid(6, 224)


def test_reading_the_model_config_imports_no_torch():
    code = "import vmae.model.config, vmae.tools.config, sys; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
