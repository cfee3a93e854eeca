"""The model's configuration and presets, apart from the model so that reading a config imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, replace

STRATEGIES = ("random", "tube", "frame", "block")  # masking strategies (vmae.model.masking)


@dataclass(frozen=True)
class ModelConfig:
    dim: int = 768
    depth: int = 12
    heads: int = 12
    decoder_dim: int = 512
    decoder_depth: int = 4
    decoder_heads: int = 16
    mlp_ratio: float = 4.0
    frames: int = 16
    size: int = 224
    tubelet: tuple[int, int, int] = (2, 16, 16)
    positions: str = "separable"  # or "sincos" (VideoMAE)
    mask: str = "random"
    mask_ratio: float = 0.9
    target: str = "slice"  # "slice": one frame per temporal patch (MAE-ST); "tube": the whole tubelet (VideoMAE)
    norm_pix_loss: bool = True
    dense: bool = False
    decoder_mask_ratio: float = 0.0  # VideoMAE V2 dual masking: share of the hidden tokens the decoder skips
    drop_path: float = 0.0
    attention: str = "auto"
    checkpoint: bool = False  # recompute each block's activations in backward (ViT-L/H memory)


PRESETS = {
    "tiny": ModelConfig(dim=192, depth=4, heads=3, decoder_dim=128, decoder_depth=2, decoder_heads=4),
    "vit-s": ModelConfig(dim=384, depth=12, heads=6),
    "vit-b": ModelConfig(dim=768, depth=12, heads=12),
    "vit-l": ModelConfig(dim=1024, depth=24, heads=16),
    "vit-h": ModelConfig(dim=1280, depth=32, heads=16),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"model preset must be one of {', '.join(PRESETS)}; got {name!r}")
    return replace(PRESETS[name], **overrides)
