"""Loading a state dict into a vmae model, strictly: wrapper prefixes stripped, positions resized to the model's
clip shape, and every key that does not fit listed before anything is copied.

A checkpoint of 16-frame 224² clips fine-tunes at 32 frames or 256²: learned separable positions are interpolated
(time linearly, space bicubically, each on its own axis); fixed sin-cos positions are not stored and are made for
the new grid. A tubelet (patch) of another size cannot be resized and is refused with both shapes.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from vmae.model.embed import PositionEmbed, TubeletEmbed

log = logging.getLogger(__name__)

# DDP / DeepSpeed wrap a model as `module`; torch.compile as `_orig_mod` (at the top or around a submodule)
WRAPPER = re.compile(r"(^|\.)(module|_orig_mod)\.")
SHOWN = 12  # keys listed per kind in a mismatch message


class CheckpointMismatch(ValueError):
    """A state dict that does not fit the model; the message lists every key that differs."""


def read_state_dict(source: str | Path | dict) -> dict[str, torch.Tensor]:
    """A state dict from a file (``weights_only=True``: a checkpoint from elsewhere runs no code) or a dict,
    unwrapped from {"model": ...} / {"module": ...} / {"state_dict": ...}."""
    state = torch.load(source, map_location="cpu", weights_only=True) if not isinstance(source, dict) else source
    for wrapper in ("model", "module", "state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return state


def strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without ``module.`` and ``_orig_mod.`` wherever they occur (DDP, DeepSpeed, torch.compile)."""
    out = {}
    for key, value in state.items():
        clean = key
        while WRAPPER.search(clean):
            clean = WRAPPER.sub(r"\1", clean, count=1)
        if clean in out:
            raise CheckpointMismatch(f"{key} and another key both become {clean} without their wrapper prefixes")
        out[clean] = value
    return out


def encoder_part(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's tensors, keyed as in ``Encoder``: those under ``encoder.`` of a whole model, or the whole
    state dict when it holds an encoder alone."""
    state = strip_wrappers(state)
    inner = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if inner:
        return inner
    if any(k.startswith(("patch_embed.", "blocks.")) for k in state):
        return state
    raise CheckpointMismatch(f"no encoder tensors (encoder.*, or patch_embed.* and blocks.*) among "
                             f"{len(state)} keys: {_listing(sorted(state))}")


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str = "the checkpoint",
                drop: tuple[str, ...] = ()) -> list[str]:
    """Copy ``state`` into ``module`` after stripping wrappers and fitting positions to the module's grid; keys in
    ``drop`` are left out on purpose. Raises ``CheckpointMismatch`` listing every missing, unexpected and
    wrongly-shaped key; returns what was adapted (for the log)."""
    state = {k: v for k, v in strip_wrappers(state).items() if k not in drop}
    notes = fit_clip_shape(module, state, source)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(state) & set(expected))
              if state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape (checkpoint vs model)", shapes)):
            if keys:
                parts.append(f"{len(keys)} {label}: {_listing(keys)}")
        if any("pos_embed" in k for k in missing + unexpected):
            parts.append("(positions differ in kind: learned separable vs fixed sin-cos, model.positions)")
        if shapes:
            parts.append("(another preset? the checkpoint's config.yaml names its model.preset)")
        kind = other_kind(missing, unexpected)
        if kind:
            parts.append(kind)
        raise CheckpointMismatch(f"{source} does not fit {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
    return notes


def other_kind(missing: list[str], unexpected: list[str]) -> str:
    """A note when the keys say the checkpoint is the other kind of model: an autoencoder's weights given to a
    classifier (or the reverse), which no key-by-key listing makes plain."""
    decoder = any(k.startswith("decoder") or k == "mask_token" for k in unexpected)
    if decoder and "head.weight" in missing:
        return ("(these are a pretrained autoencoder's weights, not a fine-tuned classifier's: fine-tune them with "
                "`vmae finetune --pretrained`, or load the encoder alone with VideoClassifier.load_pretrained_encoder)")
    if "head.weight" in unexpected and any(k.startswith("decoder") or k == "mask_token" for k in missing):
        return "(these are a fine-tuned classifier's weights, not a pretrained autoencoder's: it has no decoder)"
    return ""


def fit_clip_shape(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Resize, in ``state``, the learned positions of every position table of ``module`` to its token grid;
    refuse a tubelet of another size. Returns one note per resized table."""
    notes = []
    for name, sub in module.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(sub, TubeletEmbed):
            check_tubelet(state.get(f"{prefix}proj.weight"), sub, source)
        elif isinstance(sub, PositionEmbed) and sub.kind == "separable":
            notes += resize_separable(state, prefix, sub.grid)
    return notes


def check_tubelet(weight: torch.Tensor | None, embed: nn.Module, source: str) -> None:
    if weight is None or weight.dim() != 5 or tuple(weight.shape[2:]) == tuple(embed.tubelet):
        return
    theirs, ours = "x".join(map(str, weight.shape[2:])), "x".join(map(str, embed.tubelet))
    raise CheckpointMismatch(
        f"{source} has {theirs} tubelets (patch_embed.proj.weight {tuple(weight.shape)}) and this model {ours} "
        f"({tuple(embed.proj.weight.shape)}): a tubelet cannot be resized; set model.tubelet to "
        f"[{', '.join(map(str, weight.shape[2:]))}] (clip frames and size must divide by it)")


def resize_separable(state: dict[str, torch.Tensor], prefix: str, grid: tuple[int, int, int]) -> list[str]:
    """Time table [1, t, D] → [1, T, D] (linear); space table [1, h·w, D] → [1, H·W, D] (bicubic on h×w)."""
    notes = []
    t, h, w = grid
    time, space = state.get(f"{prefix}time"), state.get(f"{prefix}space")
    if time is not None and time.dim() == 3 and time.shape[1] != t:
        resized = F.interpolate(time.float().transpose(1, 2), size=t, mode="linear", align_corners=False)
        state[f"{prefix}time"] = resized.transpose(1, 2).to(time.dtype)
        notes.append(f"{prefix}time: {time.shape[1]} → {t} temporal positions (linear)")
    if space is not None and space.dim() == 3 and space.shape[1] != h * w:
        side = math.isqrt(space.shape[1])
        if side * side != space.shape[1]:
            raise CheckpointMismatch(f"{prefix}space holds {space.shape[1]} positions, not a square grid: "
                                     f"cannot resize it to {h}x{w}")
        grid_2d = space.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        resized = F.interpolate(grid_2d, size=(h, w), mode="bicubic", align_corners=False)
        state[f"{prefix}space"] = resized.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(space.dtype)
        notes.append(f"{prefix}space: {side}x{side} → {h}x{w} spatial positions (bicubic)")
    return notes


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return shown + (f", … ({len(keys) - SHOWN} more)" if len(keys) > SHOWN else "")
