"""Checkpoints that change shape, and strict loading: wrapper prefixes stripped, positions resized to another clip
length or size, impossible tubelets refused with both shapes, every key that does not fit listed."""

from __future__ import annotations

import pytest
import torch

from vmae.model.load import CheckpointMismatch, encoder_part, load_strict, strip_wrappers
from vmae.model.mae import MaskedVideoAutoencoder, VideoClassifier, preset

PRETRAIN = dict(frames=8, size=64)  # tiny preset, 2x16x16 tubelets: a 4 x 4 x 4 token grid


def pretrained(**kw) -> MaskedVideoAutoencoder:
    torch.manual_seed(0)
    return MaskedVideoAutoencoder(preset("tiny", **kw), **PRETRAIN)


def test_wrapper_prefixes_of_ddp_deepspeed_and_torch_compile_are_stripped():
    state = {"module._orig_mod.encoder.blocks.0.attn.qkv.weight": torch.ones(1),
             "encoder._orig_mod.norm.weight": torch.ones(1), "_orig_mod.head.bias": torch.ones(1)}
    assert sorted(strip_wrappers(state)) == ["encoder.blocks.0.attn.qkv.weight", "encoder.norm.weight", "head.bias"]
    compiled = {f"_orig_mod.{k}": v for k, v in pretrained().state_dict().items()}
    classifier = VideoClassifier(preset("tiny"), 3, **PRETRAIN)
    classifier.load_pretrained_encoder({"module": compiled})
    assert torch.equal(classifier.encoder.blocks[3].mlp.fc2.weight, pretrained().encoder.blocks[3].mlp.fc2.weight)
    encoder_only = encoder_part(pretrained().state_dict())  # an encoder saved alone has no encoder. prefix
    classifier.load_pretrained_encoder(encoder_only)


def test_every_missing_unexpected_and_misshapen_key_is_listed():
    state = pretrained().state_dict()
    state.pop("encoder.blocks.1.norm2.bias")
    state["encoder.blocks.1.attn.k_bias"] = torch.zeros(192)
    state["encoder.blocks.2.mlp.fc1.weight"] = torch.zeros(10, 192)
    with pytest.raises(CheckpointMismatch) as err:
        load_strict(MaskedVideoAutoencoder(preset("tiny"), **PRETRAIN), state, "run/pretrained.pt")
    message = str(err.value)
    for expected in ("run/pretrained.pt", "1 missing: encoder.blocks.1.norm2.bias",
                     "1 unexpected: encoder.blocks.1.attn.k_bias", "encoder.blocks.2.mlp.fc1.weight (10, 192) vs "
                     "(768, 192)"):
        assert expected in message
    with pytest.raises(CheckpointMismatch, match="positions differ in kind"):  # separable into sin-cos
        VideoClassifier(preset("tiny", positions="sincos"), 3, **PRETRAIN).load_pretrained_encoder(
            pretrained().state_dict())


def test_learned_positions_are_resized_in_time_and_space_separately():
    """16-frame pretraining fine-tuned at 32 frames (a common VideoMAE request), and at a larger crop."""
    source = pretrained()
    with torch.no_grad():  # a time table that is a straight line in every channel stays one
        ramp = torch.linspace(-1, 1, 4)[None, :, None] * torch.linspace(0.5, 2, 192)[None, None, :]
        source.encoder.pos_embed.time.copy_(ramp)
    classifier = VideoClassifier(preset("tiny"), 3, frames=16, size=96)  # grid 4x4x4 → 8x6x6
    notes = classifier.load_pretrained_encoder(source.state_dict())
    assert notes == ["pos_embed.time: 4 → 8 temporal positions (linear)",
                     "pos_embed.space: 4x4 → 6x6 spatial positions (bicubic)"]
    time = classifier.encoder.pos_embed.time[0]
    assert time.shape == (8, 192)
    steps = time[1:-1].diff(dim=0)  # interior steps of the interpolated ramp are equal (the ends are clamped)
    torch.testing.assert_close(steps, steps[:1].expand_as(steps))
    assert time[:, 0].min() >= -0.5 - 1e-6 and time[:, 0].max() <= 0.5 + 1e-6  # no overshoot beyond the source
    space = classifier.encoder.pos_embed.space[0].reshape(6, 6, 192)
    original = source.encoder.pos_embed.space[0].reshape(4, 4, 192)
    assert space.mean().sub(original.mean()).abs() < 0.01 and (space.std() / original.std() - 1).abs() < 0.3
    assert torch.equal(classifier.encoder.blocks[0].attn.qkv.weight, source.encoder.blocks[0].attn.qkv.weight)
    logits = classifier(torch.randn(1, 3, 16, 96, 96))
    assert logits.shape == (1, 3) and torch.isfinite(logits).all()


def test_sincos_positions_are_made_for_the_new_grid_not_loaded():
    source = pretrained(positions="sincos")
    assert not any("pos_embed" in k for k in source.state_dict())
    classifier = VideoClassifier(preset("tiny", positions="sincos"), 3, frames=16, size=64)
    assert classifier.load_pretrained_encoder(source.state_dict()) == []
    assert classifier.encoder.pos_embed.table.shape == (1, 8 * 4 * 4, 192)


def test_a_tubelet_of_another_size_is_refused_naming_both_shapes():
    with pytest.raises(CheckpointMismatch) as err:
        VideoClassifier(preset("tiny", tubelet=[4, 16, 16]), 3, frames=8, size=64).load_pretrained_encoder(
            pretrained().state_dict())
    message = str(err.value)
    assert "2x16x16" in message and "4x16x16" in message and "model.tubelet" in message
    assert "(192, 3, 2, 16, 16)" in message and "(192, 3, 4, 16, 16)" in message
