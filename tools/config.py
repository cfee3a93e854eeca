"""One typed configuration for every vmae command.

Precedence, lowest first: dataclass defaults < a command's own base layers (`vmae finetune`: the
fine-tuning recipe, then the pretrained checkpoint's model) < YAML preset (``--config``) <
flags generated from the dataclass fields (``--short-side 256``) < dotted
overrides (``shards.short_side=256``). Each package owns the dataclass of its
section; this module only composes and parses them.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vmae.model.config import ModelConfig
from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.train.config import FinetuneConfig, TrainConfig
from vmae.shards.config import ShardConfig, SynthConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration the user must fix; the message names the key."""


@dataclass
class VmaeConfig:
    shards: ShardConfig = field(default_factory=ShardConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def preset_layer(name: str) -> tuple[str, dict[str, Any]]:
    """A preset as a base layer for ``load_config``."""
    path = resolve_preset(name)
    return str(path), OmegaConf.to_container(OmegaConf.load(path))


def resolve_preset(name: str) -> Path:
    """A preset is a YAML path, or a name under configs/ (``kinetics`` → configs/kinetics.yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    candidate = CONFIG_DIR / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))) or "none"
    raise ConfigError(f"config '{name}' is neither a file nor a preset in {CONFIG_DIR} (presets: {known})")


def load_config(preset: str | None = None, overrides: list[str] | None = None,
                flag_values: dict[str, Any] | None = None,
                base: list[tuple[str, dict[str, Any]]] | None = None) -> VmaeConfig:
    """Merge defaults, ``base`` layers (origin, nested dict), an optional preset, flag values and dotted overrides
    into a validated config."""
    merged = OmegaConf.structured(VmaeConfig)
    layers = [(origin, lambda layer=layer: OmegaConf.create(layer)) for origin, layer in base or []]
    if preset:
        layers.append(("--config " + preset, lambda: OmegaConf.load(resolve_preset(preset))))
    if flag_values:
        layers.append(("command-line flags", lambda: OmegaConf.create(_nest(flag_values))))
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not of the form section.key=value")
        layers.append(("overrides", lambda: OmegaConf.from_dotlist(list(overrides))))
    for origin, make in layers:
        try:
            merged = OmegaConf.merge(merged, make())
        except OmegaConfBaseException as err:
            raise ConfigError(f"{origin}: {_explain(err)}") from None
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err)) from None
    except ValueError as err:  # raised by a section's __post_init__ check
        raise ConfigError(str(err)) from None
    assert isinstance(cfg, VmaeConfig)
    return cfg


def to_yaml(cfg: VmaeConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _explain(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    first = str(err).splitlines()[0]
    return f"key '{key}': {first}" if key else first


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


# ---------------------------------------------------------------- flags from fields

def add_section_flags(parser: argparse.ArgumentParser, section: str, only: tuple[str, ...] = ()) -> None:
    """Give every field of one config section (or the ``only`` ones) a ``--flag`` whose help is the field's own."""
    cls = _section_class(section)
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{section} options (also settable as {section}.KEY=VALUE)")
    for f in dataclasses.fields(cls):
        if only and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        dest = f"cfg__{section}__{f.name}"
        base, optional = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        kwargs: dict[str, Any] = dict(dest=dest, default=argparse.SUPPRESS, help=help_text)
        if base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(base) is list:
            group.add_argument(flag, type=_comma_list, metavar="A,B,...", **kwargs)
        else:
            metavar = "|".join(f.metadata["choices"]) if "choices" in f.metadata else base.__name__.upper()
            group.add_argument(flag, type=_none_or(base) if optional else base, metavar=metavar, **kwargs)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config values set by generated flags, keyed by dotted name."""
    return {k[len("cfg__"):].replace("__", "."): v for k, v in vars(args).items() if k.startswith("cfg__")}


def _section_class(section: str) -> type:
    for f in dataclasses.fields(VmaeConfig):
        if f.name == section:
            return typing.get_type_hints(VmaeConfig)[f.name]
    raise KeyError(section)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _none_or(base: type):
    def convert(text: str):
        return None if text.lower() in ("none", "null", "") else base(text)
    convert.__name__ = base.__name__
    return convert
