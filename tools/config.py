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
import difflib
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from vmae.model.config import ModelConfig
from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.train.config import FinetuneConfig, TrainConfig
from vmae.shards.config import ShardConfig, SynthConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

# the presets a command starts from, under its --config: `vmae finetune` starts from MAE-ST's fine-tuning recipe
COMMAND_BASES: dict[str, tuple[str, ...]] = {"finetune": ("finetune",)}

# names other trainers use for a key, so that a near miss of them points at ours
ALIASES = {"train.learning_rate": "train.base_lr", "train.lr": "train.base_lr", "train.batch_size": "data.batch_size",
           "train.max_epochs": "train.epochs", "train.warmup": "train.warmup_epochs"}


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


def base_layers(command: str) -> list[tuple[str, dict[str, Any]]]:
    """The base layers of ``command`` (see COMMAND_BASES), for ``load_config``."""
    return [preset_layer(name) for name in COMMAND_BASES.get(command, ())]


def command_defaults(command: str) -> VmaeConfig:
    """What ``command`` runs with before --config, flags and overrides: the defaults under its base presets."""
    return load_config(base=base_layers(command))


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


def to_commented_yaml(cfg: VmaeConfig, width: int = 100) -> str:
    """``to_yaml`` with each key's help text as a comment above it: still YAML that ``--config`` reads back."""
    lines = []
    for section in (f.name for f in dataclasses.fields(VmaeConfig)):
        helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(_section_class(section))}
        lines.append(f"{section}:")
        for line in OmegaConf.to_yaml(OmegaConf.structured(getattr(cfg, section))).splitlines():
            key = re.match(r"([A-Za-z_]\w*):", line)
            if key and helps.get(key[1]):
                lines += textwrap.wrap(helps[key[1]], width, initial_indent="  # ", subsequent_indent="  # ")
            lines.append("  " + line)
    return "\n".join(lines) + "\n"


def all_keys() -> list[str]:
    """Every dotted key of the configuration, ``section.key``."""
    return [f"{section.name}.{f.name}" for section in dataclasses.fields(VmaeConfig)
            for f in dataclasses.fields(_section_class(section.name))]


def nearest(name: str, candidates: list[str], aliases: dict[str, str] | None = None) -> str | None:
    """The candidate closest to a mistyped ``name`` (difflib), or None when none is close; a near miss of an alias
    gives the name it stands for."""
    aliases = {a: t for a, t in (aliases or {}).items() if t in candidates}
    match = difflib.get_close_matches(name, [*candidates, *aliases], n=1, cutoff=0.6)
    return aliases.get(match[0], match[0]) if match else None


def _explain(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    if isinstance(err, ConfigKeyError) and key:
        return _unknown_key(key)
    first = str(err).splitlines()[0]
    return f"key '{key}': {first}" if key else first


def _unknown_key(key: str) -> str:
    """An unknown section or key, with the nearest known name."""
    section = key.split(".")[0]
    sections = [f.name for f in dataclasses.fields(VmaeConfig)]
    if section not in sections:
        guess = nearest(section, sections)
        return (f"'{key}': there is no section '{section}'" + (f"; did you mean '{guess}'?" if guess else "") +
                f" (sections: {', '.join(sections)})")
    guess = nearest(key, [k for k in all_keys() if k.startswith(section + ".")] + list(ALIASES.values()), ALIASES)
    hint = f"; did you mean '{guess}'?" if guess else "; `vmae config` prints every key with its help"
    return f"'{key}' is not a key of the {section} section{hint}"


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

def add_section_flags(parser: argparse.ArgumentParser, section: str, only: tuple[str, ...] = (),
                      defaults: VmaeConfig | None = None) -> None:
    """Give every field of one config section (or the ``only`` ones) a ``--flag`` whose help is the field's own;
    the default shown is the one in ``defaults``, the config the command starts from (the dataclass's without)."""
    cls = _section_class(section)
    hints = typing.get_type_hints(cls)
    start = getattr(defaults or load_config(), section)
    group = parser.add_argument_group(f"{section} options (also settable as {section}.KEY=VALUE)")
    for f in dataclasses.fields(cls):
        if only and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        dest = f"cfg__{section}__{f.name}"
        base, optional = _unwrap_optional(hints[f.name])
        kwargs: dict[str, Any] = dict(dest=dest, default=argparse.SUPPRESS, help=_help_text(f, start))
        if _number_or_word(hints[f.name]):
            group.add_argument(flag, type=_int_or_word, metavar="N|auto", **kwargs)
        elif base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(base) is list:
            group.add_argument(flag, type=_comma_list, metavar="A,B,...", **kwargs)
        else:
            group.add_argument(flag, type=_none_or(base) if optional else base, metavar=_metavar(f, base), **kwargs)


def add_section_entries(parser: argparse.ArgumentParser, section: str, defaults: VmaeConfig | None = None) -> None:
    """List every key of a section in ``parser``'s help as ``section.KEY=VALUE`` with its help and default, for the
    sections a command reads without flags of their own (flags of two sections would clash: seed, workers...)."""
    cls = _section_class(section)
    hints = typing.get_type_hints(cls)
    start = getattr(defaults or load_config(), section)
    group = parser.add_argument_group(f"{section} keys (set as {section}.KEY=VALUE anywhere on the line)")
    for f in dataclasses.fields(cls):
        base, _ = _unwrap_optional(hints[f.name])
        metavar = f"{section}.{f.name}=" + ("[A,B,...]" if typing.get_origin(base) is list else _metavar(f, base))
        # shown in the help only: these entries are not in the parser's actions, so they take no part in parsing
        group._group_actions.append(argparse.Action([], dest=f"{section}.{f.name}", metavar=metavar,
                                                    help=_help_text(f, start)))


def _help_text(f: dataclasses.Field, start: Any) -> str:
    """A field's help and the default a command starts from, escaped for argparse's %-formatting."""
    text, default = f.metadata.get("help", ""), getattr(start, f.name)
    if "(default:" not in text:  # unless the help says in words what its default means
        text += f" (default: {str(default).lower() if isinstance(default, bool) else default})"
    return text.replace("%", "%%")


def _metavar(f: dataclasses.Field, base: Any) -> str:
    if "choices" in f.metadata:
        return "|".join(str(c).lower() if isinstance(c, bool) else str(c) for c in f.metadata["choices"])
    return "true|false" if base is bool else base.__name__.upper()


def _number_or_word(tp: Any) -> bool:
    """A key that takes a number or a word (``int | str``: data.batch_size=auto)."""
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and set(typing.get_args(tp)) == {int, str}


def _int_or_word(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


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
