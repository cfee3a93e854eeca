"""The MAE-ST model: tubelets → mask → ViT encoder on the visible tokens only → light decoder → loss on the
masked patches against per-patch normalized pixels (arXiv 2205.09113), plus the classifier for fine-tuning.

Each model is built from a ``ModelConfig`` (the ``model`` config section: preset and ablation knobs) and the clip
shape (frames, size: data.frames and data.crop_size). ``dense=True`` runs the encoder on every token, masked ones
replaced by a learned mask token (MAE-ST Table 1's "with mask tokens" row), for the speed comparison.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import torch
import torch.nn as nn
import torch.utils.checkpoint
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block

from vmae.model.attention import Attention
# the model's config and registry, re-exported for the short API: MaskedVideoAutoencoder(preset("vit-b"))
from vmae.model.config import PRESETS, Architecture, ModelConfig, preset  # noqa: F401
from vmae.model.embed import PositionEmbed, TubeletEmbed
from vmae.model.load import encoder_part, load_strict, read_state_dict
from vmae.model.masking import (Mask, decoder_subset, decoder_subset_count, make_mask, to_device,
                                visible_count)


def vit_block(dim: int, heads: int, mlp_ratio: float, drop_path: float, backend: str) -> Block:
    """timm's pre-norm transformer block (LayerNorm eps 1e-6, qkv bias) whose attention runs on ``backend``."""
    block = Block(dim, heads, mlp_ratio, qkv_bias=True, drop_path=drop_path,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6), attn_layer=Attention)
    block.attn.backend = backend  # timm's Block passes no extra arguments to its attention layer
    return block


class Encoder(nn.Module):
    """Tubelet embedding, positions and a ViT; runs on whichever tokens it is given."""

    def __init__(self, cfg: ModelConfig, frames: int = 16, size: int = 224):
        super().__init__()
        arch = cfg.architecture
        self.patch_embed = TubeletEmbed(frames, size, arch.tubelet, 3, arch.dim)
        self.pos_embed = PositionEmbed(self.patch_embed.grid, arch.dim, cfg.positions)
        rates = [cfg.drop_path * i / max(arch.depth - 1, 1) for i in range(arch.depth)]  # stochastic depth rule
        self.blocks = nn.ModuleList(vit_block(arch.dim, arch.heads, arch.mlp_ratio, r, cfg.attention) for r in rates)
        self.norm = nn.LayerNorm(arch.dim, eps=1e-6)
        self.checkpoint = cfg.checkpoint is True  # "auto" is settled by the trainer (set_checkpointing)

    def forward(self, video: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.patch_embed(video)
        if keep is not None:  # visible tokens only: gather before the blocks, no mask tokens
            tokens = tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return self.run_blocks(self.pos_embed(tokens, keep))

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(run_blocks(self.blocks, x, self.checkpoint))


class MaskedVideoAutoencoder(nn.Module):
    """The pretraining model of ``cfg`` on clips of ``frames`` x ``size`` x ``size``."""

    def __init__(self, cfg: ModelConfig, frames: int = 16, size: int = 224):
        super().__init__()
        self.cfg = replace(cfg)  # a copy: the model does not change with the config object it came from
        self.frames, self.size = frames, size
        arch = cfg.architecture
        self.tubelet = arch.tubelet
        self.encoder = Encoder(cfg, frames, size)
        self.grid = self.encoder.patch_embed.grid
        t, p, q = arch.tubelet
        self.pred_frames = 1 if cfg.target == "slice" else t
        if cfg.dense:
            self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, arch.dim))
        self.decoder_embed = nn.Linear(arch.dim, arch.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, arch.decoder_dim))
        self.decoder_pos = PositionEmbed(self.grid, arch.decoder_dim, cfg.positions)
        self.decoder_blocks = nn.ModuleList(vit_block(arch.decoder_dim, arch.decoder_heads, arch.mlp_ratio, 0.0,
                                                      cfg.attention) for _ in range(arch.decoder_depth))
        self.decoder_norm = nn.LayerNorm(arch.decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(arch.decoder_dim, self.pred_frames * p * q * 3)
        self.checkpoint = cfg.checkpoint is True
        self.apply(_init_weights)
        trunc_normal_(self.mask_token, std=0.02)
        if cfg.dense:
            trunc_normal_(self.encoder_mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW leaves undecayed besides biases and norms: positions and mask tokens (MAE's rule)."""
        return {name for name, _ in self.named_parameters() if "pos_embed" in name or "mask_token" in name
                or "decoder_pos" in name}

    def forward(self, video: torch.Tensor, generator: torch.Generator | None = None,
                mask: Mask | None = None) -> tuple[torch.Tensor, torch.Tensor, Mask]:
        """Loss, predictions [B, N, pixels per token] and the mask used."""
        if mask is None:
            mask = make_mask(self.cfg.mask, video.shape[0], self.grid, self.cfg.mask_ratio, generator)
        dual = bool(self.cfg.decoder_mask_ratio) and not self.cfg.dense
        # masks are drawn on the host and copied through pinned memory: the GPU never waits on an index draw
        chosen = to_device(decoder_subset(mask.to(torch.device("cpu")), self.grid, self.cfg.decoder_mask_ratio,
                                          generator), video.device) if dual else None
        mask = mask.to(video.device)
        latent = self.encode(video, mask)
        if dual:
            return self._forward_dual(video, latent, mask, chosen)
        pred = self.decode(latent, mask)
        return masked_loss(pred, self.targets(video), mask.masked), pred, mask

    def _forward_dual(self, video: torch.Tensor, latent: torch.Tensor, mask: Mask,
                      chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Mask]:
        """The decoder sees the visible tokens and the ``chosen`` hidden ones; the loss covers only those.
        Predictions come back in the [B, N, pixels] layout, zero where nothing was predicted."""
        x = self.decoder_pos(self.decoder_embed(latent), mask.keep)
        queries = self.mask_token.to(x.dtype).expand(x.shape[0], chosen.shape[1], -1)
        x = run_blocks(self.decoder_blocks, torch.cat([x, self.decoder_pos(queries, chosen)], 1), self.checkpoint)
        pred = self.decoder_pred(self.decoder_norm(x[:, mask.keep.shape[1]:]))  # [B, k, pixels]
        target = self.targets(video)
        index = chosen.unsqueeze(-1).expand(-1, -1, target.shape[-1])
        loss = (pred.float() - target.gather(1, index).float()).square().mean()
        return loss, torch.zeros_like(target, dtype=pred.dtype).scatter(1, index, pred), mask

    def set_checkpointing(self, on: bool) -> None:
        """Recompute every block's activations in backward (encoder and decoder), or not."""
        self.checkpoint = self.encoder.checkpoint = on

    def settle_attention(self, dtype: torch.dtype, device: torch.device) -> dict[str, str]:
        """Each ``auto`` attention replaced by the kernel it stands for at the encoder's and the decoder's token
        counts (measured on CUDA and logged); what each part runs."""
        grid_tokens = math.prod(self.grid)
        encoder_tokens = encoder_token_count(self.cfg, self.grid)
        decoder_tokens = grid_tokens
        if self.cfg.decoder_mask_ratio and not self.cfg.dense:
            decoder_tokens = encoder_tokens + decoder_subset_count(grid_tokens - encoder_tokens,
                                                                   self.cfg.decoder_mask_ratio)
        return {"encoder": settle_attention(self.encoder.blocks, encoder_tokens, dtype, device),
                "decoder": settle_attention(self.decoder_blocks, decoder_tokens, dtype, device)}

    def encode(self, video: torch.Tensor, mask: Mask) -> torch.Tensor:
        if not self.cfg.dense:
            return self.encoder(video, mask.keep)
        enc = self.encoder
        tokens = enc.patch_embed(video)
        tokens = torch.where(mask.masked.unsqueeze(-1), self.encoder_mask_token.to(tokens.dtype), tokens)
        return enc.run_blocks(enc.pos_embed(tokens))

    def decode(self, latent: torch.Tensor, mask: Mask) -> torch.Tensor:
        x = self.decoder_embed(latent)
        if not self.cfg.dense:  # visible tokens back in their places, mask tokens everywhere else
            full = self.mask_token.to(x.dtype).expand(x.shape[0], mask.masked.shape[1], -1).clone()
            x = full.scatter(1, mask.keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)
        x = run_blocks(self.decoder_blocks, self.decoder_pos(x), self.checkpoint)
        return self.decoder_pred(self.decoder_norm(x))

    def targets(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels each token should predict [B, N, pixels], per-patch normalized if ``norm_pix_loss``."""
        target = patchify(video, self.tubelet, self.pred_frames)
        if self.cfg.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target


def encoder_token_count(cfg: ModelConfig, grid: tuple[int, int, int]) -> int:
    """Tokens the encoder runs on per clip: the visible ones, or every token of the grid with ``dense``."""
    return math.prod(grid) if cfg.dense else visible_count(cfg.mask, grid, cfg.mask_ratio)


def settle_attention(blocks: nn.ModuleList, tokens: int, dtype: torch.dtype, device: torch.device) -> str:
    """Settle every block's attention kernel at ``tokens`` tokens; the kernel(s) they run."""
    return ", ".join(sorted({block.attn.settle(tokens, dtype, device) for block in blocks}))


def compile_blocks(model: nn.Module, mode: str, backend: str = "inductor", fullgraph: bool = False) -> int:
    """torch.compile every transformer block of ``model`` in place (``mode``: a torch.compile mode of the inductor
    ``backend``); the number compiled. Parameter names do not change, so checkpoints load either way; identical
    blocks share one graph. Settle the attention kernels first: ``auto`` is not resolved inside a graph."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    options = {"mode": mode} if backend == "inductor" else {}
    for block in blocks:
        block.compile(backend=backend, fullgraph=fullgraph, dynamic=False, **options)
    return len(blocks)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, checkpoint: bool) -> torch.Tensor:
    for block in blocks:
        if checkpoint and x.requires_grad:
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    return x


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int, int], tubelet: tuple[int, int, int],
               frames_per_token: int) -> torch.Tensor:
    """The inverse of ``patchify``: [B, N, frames·p·q·3] → [B, 3, T'·frames, H, W] (pictures of predictions)."""
    b = tokens.shape[0]
    t, h, w = grid
    _, p, q = tubelet
    x = tokens.reshape(b, t, h, w, frames_per_token, p, q, 3).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, 3, t * frames_per_token, h * p, w * q)


def patchify(video: torch.Tensor, tubelet: tuple[int, int, int], frames_per_token: int) -> torch.Tensor:
    """[B, 3, T, H, W] → [B, N, frames_per_token·p·q·3] in token order; with one frame per token, each token's
    first frame (MAE-ST predicts one time slice per temporal patch)."""
    b, c, t, h, w = video.shape
    tt, p, q = tubelet
    x = video.reshape(b, c, t // tt, tt, h // p, p, w // q, q)[:, :, :, :frames_per_token]
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # B, T', H', W', frames, p, q, C
    return x.reshape(b, (t // tt) * (h // p) * (w // q), -1)


def masked_loss(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked tokens only."""
    per_token = (pred.float() - target.float()).square().mean(dim=-1)
    weights = masked.float()
    return (per_token * weights).sum() / weights.sum().clamp(min=1)


class VideoClassifier(nn.Module):
    """The encoder on all tokens, mean-pooled, normalized, and a linear head: the fine-tuning model.

    ``load_pretrained_encoder`` takes the encoder of a pretraining state dict or checkpoint file."""

    def __init__(self, cfg: ModelConfig, num_classes: int, frames: int = 16, size: int = 224):
        super().__init__()
        dim = cfg.architecture.dim
        self.encoder = Encoder(cfg, frames, size)
        self.encoder.norm = nn.Identity()  # pooled features are normalized instead (fc_norm)
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        self.apply(_init_weights)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.encoder(video).mean(dim=1)))

    def set_checkpointing(self, on: bool) -> None:
        self.encoder.checkpoint = on

    def settle_attention(self, dtype: torch.dtype, device: torch.device) -> dict[str, str]:
        """Each ``auto`` attention replaced by the kernel measured fastest at all the clip's tokens."""
        tokens = math.prod(self.encoder.patch_embed.grid)
        return {"encoder": settle_attention(self.encoder.blocks, tokens, dtype, device)}

    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if "pos_embed" in name}

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layers for timm's layer-wise lr decay: the embeddings (0), block i (i + 1), then fc_norm and the head,
        which match nothing and so form the last layer (lr x 1)."""
        return {"stem": r"^encoder\.(?:patch_embed|pos_embed)", "blocks": [(r"^encoder\.blocks\.(\d+)", None)]}

    def load_pretrained_encoder(self, source: dict | str) -> list[str]:
        """Copy the encoder of a pretraining state dict or file (read with ``weights_only=True``: an untrusted
        pickle runs no code), strictly: wrapper prefixes stripped, learned positions resized to this model's clip
        shape; any key that does not fit is listed in the ``CheckpointMismatch``. Returns what was resized."""
        encoder = encoder_part(read_state_dict(source))
        name = source if isinstance(source, str) else "the pretrained state dict"
        # the classifier normalizes pooled features (fc_norm) instead of the encoder's last LayerNorm
        return load_strict(self.encoder, encoder, f"{name} (encoder)", drop=("norm.weight", "norm.bias"))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv3d):
        nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
