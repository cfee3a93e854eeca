"""The model's one config, the ``model`` section of every command, and its registries: architecture presets,
masking strategies, attention backends, position embeddings and targets.

It lives apart from the model so that reading a config imports no torch; the modules that implement each registry
(``vmae.model.masking``, ``attention``, ``embed``, ``mae``) read the names from here. The clip shape is not a
model key: frames and size come from the data section (data.frames, data.crop_size) and are passed to the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from vmae.shards.config import field_help

# masking strategies, drawn by vmae.model.masking: spacetime-agnostic, space-only (the same spatial mask at every
# time step), time-only (whole frames) and spacetime cubes
STRATEGIES = ("random", "tube", "frame", "block")
# attention kernels, run by vmae.model.attention: xformers, PyTorch's SDPA left to pick its kernel, SDPA held to
# one of its CUDA kernels (flash, cuDNN, memory-efficient), and the written-out reference; "auto" times those that
# run at the model's own shapes on CUDA and keeps the fastest (SDPA on CPU)
ATTENTION_KERNELS = ("xformers", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa", "math")
ATTENTION_BACKENDS = ("auto", *ATTENTION_KERNELS)
# how the transformer blocks run under torch.compile (one graph per block shape, reused by every block): "off",
# torch.compile's own modes, or auto (its default mode on CUDA, off on CPU, where compiling costs more than it saves)
COMPILE_MODES = ("auto", "off", "default", "max-autotune-no-cudagraphs", "reduce-overhead")
# activation checkpointing: recompute each block in backward; auto turns it on only where memory needs it
CHECKPOINTING = ("auto", True, False)
# position embeddings, made by vmae.model.embed: learned space + time tables, fixed 3-D sin-cos, VideoMAE's 1-D
POSITIONS = ("separable", "sincos", "sinusoid")
# what a token predicts: one frame per temporal patch (MAE-ST) or the whole tubelet (VideoMAE)
TARGETS = ("slice", "tube")


@dataclass(frozen=True)
class Architecture:
    """The sizes of a preset: encoder and decoder width, depth and heads, and the tubelet one token covers."""

    dim: int
    depth: int
    heads: int
    decoder_dim: int = 512
    decoder_depth: int = 4
    decoder_heads: int = 16
    mlp_ratio: float = 4.0
    tubelet: tuple[int, int, int] = (2, 16, 16)  # frames x height x width


PRESETS: dict[str, Architecture] = {
    "tiny": Architecture(dim=192, depth=4, heads=3, decoder_dim=128, decoder_depth=2, decoder_heads=4),
    "vit-s": Architecture(dim=384, depth=12, heads=6),
    "vit-b": Architecture(dim=768, depth=12, heads=12),
    "vit-l": Architecture(dim=1024, depth=24, heads=16),
    "vit-h": Architecture(dim=1280, depth=32, heads=16),
}


@dataclass
class ModelConfig:
    """A preset plus the knobs of MAE-ST's ablations: the ``model`` config section and what the model is built
    from. Clip length and size come from the data section."""

    # choices=PRESETS (the dict itself): --help and validation see presets registered after import too
    preset: str = field(default="vit-l", metadata=field_help("model size", choices=PRESETS))
    tubelet: list[int] | None = field(default=None, metadata=field_help(
        "frames x height x width of a token (unset: the preset's 2 x 16 x 16)"))
    mask: str = field(default="random", metadata=field_help("masking strategy", choices=STRATEGIES))
    mask_ratio: float = field(default=0.9, metadata=field_help("share of spacetime patches hidden from the encoder"))
    decoder_mask_ratio: float = field(default=0.0, metadata=field_help(
        "VideoMAE V2 dual masking: share of the hidden tokens the decoder skips (0: off)"))
    target: str = field(default="slice", metadata=field_help(
        "slice: one frame per temporal patch (MAE-ST); tube: the whole tubelet (VideoMAE)", choices=TARGETS))
    positions: str = field(default="separable", metadata=field_help(
        "position embedding: learned separable space+time (MAE-ST), fixed 3-D sin-cos, or VideoMAE's fixed "
        "1-D sinusoid (to load VideoMAE checkpoints)", choices=POSITIONS))
    norm_pix_loss: bool = field(default=True, metadata=field_help("targets are per-patch normalized pixels"))
    drop_path: float = field(default=0.0, metadata=field_help("stochastic depth rate of the last encoder block"))
    attention: str = field(default="auto", metadata=field_help(
        "attention kernel: auto (on CUDA the fastest measured at the model's shapes, logged with the timings; SDPA on "
        "CPU), or one named", choices=ATTENTION_BACKENDS))
    checkpoint: bool | str = field(default="auto", metadata=field_help(
        "recompute each block's activations in backward, trading compute for memory: true, false, or auto (on CUDA "
        "on only when the micro-batch does not fit without it; off on CPU)", choices=CHECKPOINTING))
    compile: str = field(default="auto", metadata=field_help(
        "torch.compile of the transformer blocks: auto (default on CUDA, off on CPU and under ZeRO-3), off, or a "
        "torch.compile mode (reduce-overhead adds CUDA graphs)", choices=COMPILE_MODES))
    dense: bool = field(default=False, metadata=field_help(
        "ablation: the encoder runs on every token, hidden ones replaced by a learned mask token (MAE-ST Table 1's "
        "'with mask tokens' row, for speed comparisons)"))

    def __post_init__(self) -> None:
        for f in fields(self):
            allowed = f.metadata.get("choices")
            if allowed is not None and getattr(self, f.name) not in allowed:
                raise ValueError(f"model.{f.name} must be one of {', '.join(allowed)}; got {getattr(self, f.name)!r}")
        if self.tubelet is not None and (len(self.tubelet) != 3 or min(self.tubelet) < 1):
            raise ValueError(f"model.tubelet must be three positive sizes (frames, height, width); got {self.tubelet}")
        if not 0 <= self.mask_ratio < 1 or not 0 <= self.decoder_mask_ratio < 1:
            raise ValueError("model.mask_ratio and model.decoder_mask_ratio must be in [0, 1)")

    @property
    def architecture(self) -> Architecture:
        """The preset's sizes, with model.tubelet in place of the preset's when set."""
        sizes = PRESETS[self.preset]
        return replace(sizes, tubelet=tuple(self.tubelet)) if self.tubelet else sizes

    def token_grid(self, frames: int, size: int) -> tuple[int, int, int]:
        """The T x H x W token grid of ``frames`` x ``size`` x ``size`` clips; refuses a clip the tubelet does
        not divide, naming the keys."""
        return token_grid(frames, size, self.architecture.tubelet)


def token_grid(frames: int, size: int, tubelet: tuple[int, int, int]) -> tuple[int, int, int]:
    """The T x H x W grid of ``tubelet``-sized tokens on a ``frames`` x ``size`` x ``size`` clip, or an error naming
    the keys when the tubelet does not divide the clip."""
    t, p, q = tubelet
    if frames % t or size % p or size % q:
        raise ValueError(f"a {frames}x{size}x{size} clip does not divide into {t}x{p}x{q} tubelets: data.frames "
                         f"({frames}) and data.crop_size ({size}) must be multiples of the tubelet {t}x{p}x{q} "
                         "(model.tubelet, or the preset's)")
    return frames // t, size // p, size // q


def preset(name: str, **options) -> ModelConfig:
    """The model config of preset ``name`` with ``options`` (model keys: mask, mask_ratio, attention …)."""
    return ModelConfig(preset=name, **options)
