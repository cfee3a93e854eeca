"""Official MAE-ST and VideoMAE checkpoint layouts into our model, and ours out to HuggingFace's VideoMAE."""

from __future__ import annotations

from unittest.mock import patch

import pytest
import torch

from vmae.model.convert import ConversionError, from_mae_st, from_videomae, to_huggingface_videomae
from vmae.model.config import PRESETS, Architecture
from vmae.model.mae import MaskedVideoAutoencoder, preset
from vmae.model.masking import make_mask

D, DEPTH, DD, DDEPTH, FRAMES, SIZE = 48, 2, 32, 1, 4, 32
GRID = (FRAMES // 2, SIZE // 16, SIZE // 16)


SIZES = Architecture(dim=D, depth=DEPTH, heads=3, decoder_dim=DD, decoder_depth=DDEPTH, decoder_heads=4)


def tiny(**options) -> MaskedVideoAutoencoder:
    with patch.dict(PRESETS, {"convert-test": SIZES}):  # registered for the building only
        return MaskedVideoAutoencoder(preset("convert-test", **options), FRAMES, SIZE)


def block_keys(prefix: str, dim: int, attention: dict[str, tuple]) -> dict[str, tuple]:
    keys = {f"{prefix}.norm1.weight": (dim,), f"{prefix}.norm1.bias": (dim,), f"{prefix}.norm2.weight": (dim,),
            f"{prefix}.norm2.bias": (dim,), f"{prefix}.attn.proj.weight": (dim, dim),
            f"{prefix}.attn.proj.bias": (dim,),
            f"{prefix}.mlp.fc1.weight": (4 * dim, dim), f"{prefix}.mlp.fc1.bias": (4 * dim,),
            f"{prefix}.mlp.fc2.weight": (dim, 4 * dim), f"{prefix}.mlp.fc2.bias": (dim,)}
    return {**keys, **{f"{prefix}.attn.{k}": v for k, v in attention.items()}}


def random_state(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(*s, generator=g) for k, s in shapes.items()}


def mae_st_layout() -> dict[str, torch.Tensor]:
    """Key names and shapes of mae_st's MaskedAutoencoderViT(sep_pos_embed=True, cls_embed=True)."""
    n_space, n_time = GRID[1] * GRID[2], GRID[0]
    split = lambda d: {f"{p}.{kind}": (d, d) if kind == "weight" else (d,)  # noqa: E731
                       for p in "qkv" for kind in ("weight", "bias")}
    shapes = {"patch_embed.proj.weight": (D, 3, 2, 16, 16), "patch_embed.proj.bias": (D,),
              "cls_token": (1, 1, D), "decoder_cls_token": (1, 1, DD), "pos_embed_class": (1, 1, D),
              "decoder_pos_embed_class": (1, 1, DD), "pos_embed_spatial": (1, n_space, D),
              "pos_embed_temporal": (1, n_time, D), "norm.weight": (D,), "norm.bias": (D,),
              "decoder_embed.weight": (DD, D), "decoder_embed.bias": (DD,), "mask_token": (1, 1, DD),
              "decoder_pos_embed_spatial": (1, n_space, DD), "decoder_pos_embed_temporal": (1, n_time, DD),
              "decoder_norm.weight": (DD,), "decoder_norm.bias": (DD,), "decoder_pred.weight": (16 * 16 * 3, DD),
              "decoder_pred.bias": (16 * 16 * 3,)}
    for i in range(DEPTH):
        shapes.update(block_keys(f"blocks.{i}", D, split(D)))
    for i in range(DDEPTH):
        shapes.update(block_keys(f"decoder_blocks.{i}", DD, split(DD)))
    return random_state(shapes)


def videomae_layout() -> dict[str, torch.Tensor]:
    """Key names and shapes of VideoMAE's PretrainVisionTransformer (qkv without bias, q_bias and v_bias)."""
    fused = lambda d: {"qkv.weight": (3 * d, d), "q_bias": (d,), "v_bias": (d,)}  # noqa: E731
    shapes = {"encoder.patch_embed.proj.weight": (D, 3, 2, 16, 16), "encoder.patch_embed.proj.bias": (D,),
              "encoder.norm.weight": (D,), "encoder.norm.bias": (D,), "encoder_to_decoder.weight": (DD, D),
              "mask_token": (1, 1, DD), "decoder.norm.weight": (DD,), "decoder.norm.bias": (DD,),
              "decoder.head.weight": (2 * 16 * 16 * 3, DD), "decoder.head.bias": (2 * 16 * 16 * 3,)}
    for i in range(DEPTH):
        shapes.update(block_keys(f"encoder.blocks.{i}", D, fused(D)))
    for i in range(DDEPTH):
        shapes.update(block_keys(f"decoder.blocks.{i}", DD, fused(DD)))
    return random_state(shapes)


def test_mae_st_checkpoint_lands_tensor_for_tensor():
    official = mae_st_layout()
    state, dropped = from_mae_st({"model": official, "epoch": 3})
    assert sorted(dropped) == sorted(["cls_token", "decoder_cls_token", "pos_embed_class", "decoder_pos_embed_class"])
    model = tiny()
    model.load_state_dict(state, strict=True)  # every key of ours filled, nothing left over
    qkv = model.encoder.blocks[1].attn.qkv
    assert torch.equal(qkv.weight[D:2 * D], official["blocks.1.attn.k.weight"])
    assert torch.equal(qkv.bias[2 * D:], official["blocks.1.attn.v.bias"])
    assert torch.equal(model.encoder.pos_embed.time, official["pos_embed_temporal"])
    assert torch.equal(model.decoder_pos.space, official["decoder_pos_embed_spatial"])
    assert torch.equal(model.decoder_blocks[0].mlp.fc2.weight, official["decoder_blocks.0.mlp.fc2.weight"])
    consumed = sum(v.numel() for k, v in official.items() if k not in dropped)
    assert consumed == sum(v.numel() for v in model.state_dict().values())


def test_mae_st_joint_positions_are_refused():
    official = mae_st_layout()
    official["pos_embed"] = official.pop("pos_embed_spatial")
    with pytest.raises(ConversionError, match="sep_pos_embed"):
        from_mae_st(official)


def test_videomae_checkpoint_lands_and_exports_to_huggingface(tmp_path):
    official = videomae_layout()
    torch.save({"model": official}, tmp_path / "videomae.pth")
    state = from_videomae(str(tmp_path / "videomae.pth"))  # read with weights_only=True
    model = tiny(positions="sinusoid", target="tube")
    model.load_state_dict(state, strict=True)
    bias = model.encoder.blocks[0].attn.qkv.bias
    assert torch.equal(bias[:D], official["encoder.blocks.0.attn.q_bias"]) and not bias[D:2 * D].any()
    assert torch.equal(model.decoder_pred.weight, official["decoder.head.weight"])

    transformers = pytest.importorskip("transformers")
    config = transformers.VideoMAEConfig(
        image_size=SIZE, num_frames=FRAMES, tubelet_size=2, hidden_size=D, num_hidden_layers=DEPTH,
        num_attention_heads=3, intermediate_size=4 * D, decoder_hidden_size=DD, decoder_num_hidden_layers=DDEPTH,
        decoder_num_attention_heads=4, decoder_intermediate_size=4 * DD, use_mean_pooling=False,
        layer_norm_eps=1e-6, qkv_bias=True, norm_pix_loss=True)
    hf = transformers.VideoMAEForPreTraining(config).eval()
    hf.load_state_dict(to_huggingface_videomae(model.state_dict()), strict=True)
    model.eval()
    video = torch.randn(2, 3, FRAMES, SIZE, SIZE)
    mask = make_mask("random", 2, model.grid, 0.5, torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.encoder(video, mask.keep)
        theirs = hf.videomae(pixel_values=video.transpose(1, 2), bool_masked_pos=mask.masked).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)  # the same network, not just the same names


def test_export_refuses_what_huggingface_cannot_hold():
    model = tiny()  # learned separable positions and a key bias
    with pytest.raises(ConversionError):
        to_huggingface_videomae(model.state_dict())


def landing(source: torch.Tensor, ours: dict[str, torch.Tensor]) -> list[str]:
    """Where a source tensor sits among ours: keys (with a row range for fused qkv tensors) holding it exactly."""
    found = []
    for key, tensor in ours.items():
        if tensor.shape == source.shape and torch.equal(tensor, source):
            found.append(key)
        elif tensor.dim() == source.dim() and tensor.shape[1:] == source.shape[1:] and \
                tensor.shape[0] % source.shape[0] == 0:
            for i, part in enumerate(tensor.split(source.shape[0])):
                if torch.equal(part, source):
                    found.append(f"{key}[{i}]")
    return found


def test_every_videomae_tensor_lands_once_and_nothing_else_is_zero():
    """VideoMAE keeps q_bias and v_bias and no k_bias (a transformers loader once filled them with zeros): each official
    tensor must land exactly once, and the only zeros of ours are what VideoMAE does not have."""
    official = videomae_layout()
    model = tiny(positions="sinusoid", target="tube")
    model.load_state_dict(from_videomae(official), strict=True)
    ours = model.state_dict()
    for key, tensor in official.items():
        if key in ("encoder.head.weight", "encoder.head.bias"):
            continue
        places = landing(tensor, ours)
        assert len(places) == 1, f"{key} landed at {places}"
        if key.endswith("q_bias"):
            assert places[0].endswith("qkv.bias[0]"), places
        if key.endswith("v_bias"):
            assert places[0].endswith("qkv.bias[2]"), places
    zeros = {k for k, v in ours.items() if v.numel() and not v.any()}
    assert zeros == {"decoder_embed.bias"}  # encoder_to_decoder has no bias in VideoMAE
    for i in range(DEPTH):  # k of the fused qkv bias: zeros, exactly the middle third
        bias = ours[f"encoder.blocks.{i}.attn.qkv.bias"]
        assert not bias[D:2 * D].any() and bias[:D].all() and bias[2 * D:].all()
