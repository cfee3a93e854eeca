"""Other codebases' checkpoints in and out: MAE-ST (facebookresearch/mae_st) and VideoMAE (MCG-NJU) pretraining
layouts into ``MaskedVideoAutoencoder``, and ours out to HuggingFace transformers' ``VideoMAEForPreTraining``.

Only the key names and the fused/split attention projections differ; a tensor that has no counterpart (MAE-ST's
class token, a key bias VideoMAE does not have) is reported, never silently invented or dropped. Files are read
with ``weights_only=True``: a checkpoint from elsewhere runs no code.
"""

from __future__ import annotations

import re

import torch

from vmae.model.load import read_state_dict

__all__ = ["ConversionError", "from_mae_st", "from_videomae", "read_state_dict", "to_huggingface_videomae"]

# MAE-ST keys with no place in vmae's model (it has no class token); dropped and reported
MAE_ST_CLS = ("cls_token", "decoder_cls_token", "pos_embed_class", "decoder_pos_embed_class")


class ConversionError(ValueError):
    """A state dict that does not map; the message names the keys."""


def from_mae_st(source) -> tuple[dict[str, torch.Tensor], list[str]]:
    """MAE-ST's MaskedAutoencoderViT (``sep_pos_embed``) → vmae keys (positions="separable", target="slice");
    returns the state dict and the keys dropped (the class token's)."""
    state = read_state_dict(source)
    if "pos_embed" in state or "decoder_pos_embed" in state:
        raise ConversionError("this MAE-ST checkpoint has joint positions (pos_embed): vmae's learned positions are "
                              "separable (pretrained with --sep_pos_embed)")
    renames = [(r"^patch_embed\.", "encoder.patch_embed."), (r"^pos_embed_spatial$", "encoder.pos_embed.space"),
               (r"^pos_embed_temporal$", "encoder.pos_embed.time"), (r"^blocks\.", "encoder.blocks."),
               (r"^norm\.", "encoder.norm."), (r"^decoder_pos_embed_spatial$", "decoder_pos.space"),
               (r"^decoder_pos_embed_temporal$", "decoder_pos.time")]
    dropped = [k for k in state if k in MAE_ST_CLS]
    out = _fuse_qkv({k: v for k, v in state.items() if k not in MAE_ST_CLS},
                    r"^(?P<block>(decoder_)?blocks\.\d+\.attn)\.(?P<part>[qkv])\.(?P<kind>weight|bias)$",
                    lambda block: f"{block}.qkv")
    return _rename(out, renames), dropped


def from_videomae(source) -> dict[str, torch.Tensor]:
    """VideoMAE's PretrainVisionTransformer → vmae keys (positions="sinusoid", target="tube"). VideoMAE has no bias
    on the key projection nor on encoder_to_decoder: those become zeros."""
    state = dict(read_state_dict(source))
    for name in [k for k in state if k.endswith(".attn.q_bias")]:
        block = name[: -len(".q_bias")]
        q_bias, v_bias = state.pop(name), state.pop(f"{block}.v_bias")
        state[f"{block}.qkv.bias"] = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
    if "encoder_to_decoder.weight" in state:
        state["encoder_to_decoder.bias"] = torch.zeros(state["encoder_to_decoder.weight"].shape[0])
    state.pop("encoder.head.weight", None), state.pop("encoder.head.bias", None)  # Identity in pretraining
    renames = [(r"^encoder_to_decoder\.", "decoder_embed."), (r"^decoder\.blocks\.", "decoder_blocks."),
               (r"^decoder\.norm\.", "decoder_norm."), (r"^decoder\.head\.", "decoder_pred.")]
    return _rename(state, renames)


def to_huggingface_videomae(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """vmae (positions="sinusoid", target="tube") → transformers' VideoMAEForPreTraining (use_mean_pooling=False).
    Refuses a model whose key or decoder-embedding biases are not zero: HuggingFace's layout has no place for them."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = re.match(r"^(encoder\.blocks|decoder_blocks)\.(\d+)\.(.+)$", key)
        if match:
            prefix = ("videomae.encoder.layer" if match.group(1) == "encoder.blocks" else "decoder.decoder_layers")
            out.update(_hf_block(f"{prefix}.{match.group(2)}", match.group(3), value, key))
            continue
        if key == "decoder_embed.bias":
            if value.abs().max() > 0:
                raise ConversionError("decoder_embed.bias is not zero: HuggingFace's encoder_to_decoder has no bias")
            continue
        if key.startswith(("encoder.pos_embed.", "decoder_pos.")):
            raise ConversionError(f"{key}: learned positions; HuggingFace's VideoMAE uses model.positions=sinusoid")
        names = {"encoder.patch_embed.proj.weight": "videomae.embeddings.patch_embeddings.projection.weight",
                 "encoder.patch_embed.proj.bias": "videomae.embeddings.patch_embeddings.projection.bias",
                 "encoder.norm.weight": "videomae.layernorm.weight", "encoder.norm.bias": "videomae.layernorm.bias",
                 "decoder_embed.weight": "encoder_to_decoder.weight", "mask_token": "mask_token",
                 "decoder_norm.weight": "decoder.norm.weight", "decoder_norm.bias": "decoder.norm.bias",
                 "decoder_pred.weight": "decoder.head.weight", "decoder_pred.bias": "decoder.head.bias"}
        if key not in names:
            raise ConversionError(f"{key} has no counterpart in HuggingFace's VideoMAEForPreTraining")
        out[names[key]] = value
    return out


def _hf_block(prefix: str, rest: str, value: torch.Tensor, key: str) -> dict[str, torch.Tensor]:
    if rest in ("attn.qkv.weight", "attn.qkv.bias"):
        q, k, v = value.chunk(3)
        if rest.endswith("weight"):
            return {f"{prefix}.attention.attention.query.weight": q, f"{prefix}.attention.attention.key.weight": k,
                    f"{prefix}.attention.attention.value.weight": v}
        if k.abs().max() > 0:
            raise ConversionError(f"{key}: the key projection has a bias; HuggingFace's VideoMAE has none")
        return {f"{prefix}.attention.attention.query.bias": q, f"{prefix}.attention.attention.value.bias": v}
    names = {"attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
             "norm1": "layernorm_before", "norm2": "layernorm_after"}
    module, _, kind = rest.rpartition(".")
    if module not in names:
        raise ConversionError(f"{key} has no counterpart in HuggingFace's VideoMAE")
    return {f"{prefix}.{names[module]}.{kind}": value}


def _fuse_qkv(state: dict[str, torch.Tensor], pattern: str, fused) -> dict[str, torch.Tensor]:
    """Separate q, k and v projections → one qkv projection (q first, as timm's fused layer)."""
    out, parts = {}, {}
    for key, value in state.items():
        match = re.match(pattern, key)
        if match:
            parts.setdefault((match.group("block"), match.group("kind")), {})[match.group("part")] = value
        else:
            out[key] = value
    for (block, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise ConversionError(f"{block}: only {sorted(qkv)} of the q, k, v {kind}s are present")
        out[f"{fused(block)}.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    return out


def _rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out
