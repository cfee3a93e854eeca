"""The MAE-ST model against the papers' own counts, and its loss, targets and modes on the tiny preset."""

from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from timm.models.vision_transformer import Block

from vmae.model.config import PRESETS
from vmae.model.flops import flop_counter, training_flops
from vmae.model.mae import MaskedVideoAutoencoder, VideoClassifier, masked_loss, patchify, preset, unpatchify
from vmae.model.masking import decoder_subset, make_mask

TINY = dict(frames=8, size=64)


def gmacs(module, *args, **kwargs) -> float:
    """Multiply-accumulates (the papers' "FLOPs") of one forward, counted by torch's FLOP counter."""
    with FlopCounterMode(display=False) as counter:
        module(*args, **kwargs)
    return counter.get_total_flops() / 2e9


@pytest.mark.parametrize("name, params_m, gflops", [("vit-b", 87, 180), ("vit-l", 304, 598), ("vit-h", 632, 1193)])
def test_classifier_backbones_match_pyslowfast(name, params_m, gflops):
    """PySlowFast's MAE-ST model zoo: 16x4 input, one view, 400 classes (counted on the meta device: no memory)."""
    with torch.device("meta"):
        model = VideoClassifier(preset(name), 400)
        count = sum(p.numel() for p in model.parameters()) / 1e6
        flops = gmacs(model, torch.empty(1, 3, 16, 224, 224))
    assert count == pytest.approx(params_m, rel=0.01)
    assert flops == pytest.approx(gflops, rel=0.03)


def test_visible_token_encoder_saves_what_mae_st_table_1_says():
    """ViT-L, 512x4 decoder, 90 % masking: 81.0 GFLOPs visible-only vs 627.5 with mask tokens (7.7x)."""
    mask = make_mask("random", 1, (8, 14, 14), 0.9, torch.Generator().manual_seed(0))
    counts = {}
    for dense in (False, True):
        with torch.device("meta"):
            model = MaskedVideoAutoencoder(preset("vit-l", dense=dense))
            counts[dense] = gmacs(model, torch.empty(1, 3, 16, 224, 224), mask=mask)
    assert counts[False] == pytest.approx(81.0, rel=0.03)
    assert counts[True] == pytest.approx(627.5, rel=0.03)
    assert counts[True] / counts[False] == pytest.approx(7.7, rel=0.05)


def test_a_cpu_step_counts_its_attention_as_the_meta_count_does():
    """torch's FLOP counter does not know SDPA's CPU flash kernels; ours counts them (the benches' FLOP/s used to
    leave out every attention FLOP on CPU)."""
    cfg = preset("tiny", attention="sdpa")
    model = MaskedVideoAutoencoder(cfg, **TINY)
    mask = make_mask(cfg.mask, 2, model.grid, cfg.mask_ratio, torch.Generator().manual_seed(0))
    with flop_counter() as counter:
        model(torch.randn(2, 3, 8, 64, 64), mask=mask)[0].backward()
    counted = counter.get_flop_counts()["Global"]
    assert counted[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] > 0
    assert counted[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward] > 0
    assert counter.get_total_flops() == training_flops(cfg, **TINY, clips=2)


def test_tiny_model_trains_one_step():
    torch.manual_seed(0)
    model = MaskedVideoAutoencoder(preset("tiny"), **TINY)
    video = torch.randn(2, 3, 8, 64, 64)
    loss, pred, mask = model(video, torch.Generator().manual_seed(0))
    assert pred.shape == (2, 64, 16 * 16 * 3) and mask.visible_count == 6 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_loss_sees_only_masked_tokens():
    pred, target = torch.randn(2, 64, 12), torch.randn(2, 64, 12)
    mask = make_mask("random", 2, (4, 4, 4), 0.75, torch.Generator().manual_seed(1))
    changed = pred.clone()
    changed[~mask.masked] += 100.0  # predictions for visible tokens do not matter
    assert masked_loss(changed, target, mask.masked) == masked_loss(pred, target, mask.masked)
    expected = (pred - target).square().mean(-1)[mask.masked].mean()
    torch.testing.assert_close(masked_loss(pred, target, mask.masked), expected)


def test_targets_are_per_patch_normalized_slices_or_tubes():
    video = torch.arange(2 * 3 * 4 * 8 * 8, dtype=torch.float32).view(2, 3, 4, 8, 8)
    tube = patchify(video, (2, 4, 4), 2)
    slice_ = patchify(video, (2, 4, 4), 1)
    assert tube.shape == (2, 2 * 2 * 2, 2 * 4 * 4 * 3) and slice_.shape == (2, 8, 4 * 4 * 3)
    # token 0 is t=0..1, h=0..3, w=0..3; its slice is frame 0 only, channels last
    assert slice_[0, 0, :3].tolist() == [video[0, 0, 0, 0, 0], video[0, 1, 0, 0, 0], video[0, 2, 0, 0, 0]]
    model = MaskedVideoAutoencoder(preset("tiny"), **TINY)
    targets = model.targets(torch.rand(1, 3, 8, 64, 64))
    torch.testing.assert_close(targets.mean(-1), torch.zeros(1, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(targets.var(-1), torch.ones(1, 64), atol=1e-3, rtol=0)


def test_dense_and_visible_encoders_agree_when_nothing_is_masked():
    torch.manual_seed(0)
    sparse = MaskedVideoAutoencoder(preset("tiny", mask_ratio=0.0), **TINY)
    dense = MaskedVideoAutoencoder(preset("tiny", mask_ratio=0.0, dense=True), **TINY)
    dense.load_state_dict(sparse.state_dict(), strict=False)
    video = torch.randn(1, 3, 8, 64, 64)
    mask = make_mask("random", 1, (4, 4, 4), 0.0)
    torch.testing.assert_close(dense.encode(video, mask), sparse.encode(video, mask), atol=1e-5, rtol=1e-5)


def test_attention_backend_does_not_change_the_model():
    torch.manual_seed(0)
    model = MaskedVideoAutoencoder(preset("tiny", attention="math"), **TINY)
    video, mask = torch.randn(1, 3, 8, 64, 64), make_mask("tube", 1, (4, 4, 4), 0.5)
    reference = model(video, mask=mask)[0]
    for block in [*model.encoder.blocks, *model.decoder_blocks]:
        block.attn.backend = "sdpa"
    torch.testing.assert_close(model(video, mask=mask)[0], reference, atol=1e-5, rtol=1e-5)


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="vit-b"):
        preset("vit-z")


def test_unpatchify_inverts_patchify():
    video = torch.randn(2, 3, 8, 32, 48)
    for frames in (1, 2):
        tokens = patchify(video, (2, 16, 16), frames)
        back = unpatchify(tokens, (4, 2, 3), (2, 16, 16), frames)
        expected = video if frames == 2 else video[:, :, ::2]
        assert torch.equal(back, expected)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = MaskedVideoAutoencoder(preset("tiny"), **TINY)
    ckpt = MaskedVideoAutoencoder(preset("tiny", checkpoint=True), **TINY)
    ckpt.load_state_dict(plain.state_dict())
    video, mask = torch.randn(1, 3, 8, 64, 64), make_mask("random", 1, (4, 4, 4), 0.75)
    for model in (plain, ckpt):
        model(video, mask=mask)[0].backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_classifier_takes_every_encoder_tensor_of_a_pretraining_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    mae = MaskedVideoAutoencoder(preset("tiny"), **TINY)
    path = tmp_path / "pretrained.pt"
    torch.save({"model": mae.state_dict()}, path)
    classifier = VideoClassifier(preset("tiny"), num_classes=5, **TINY)
    assert classifier.load_pretrained_encoder(str(path)) == []  # the same clip shape: nothing resized
    for name, tensor in classifier.encoder.state_dict().items():
        if not name.startswith("norm."):
            assert torch.equal(tensor, mae.encoder.state_dict()[name]), name
    monkeypatch.setitem(PRESETS, "tiny-wide", replace(PRESETS["tiny"], dim=96, heads=3))
    with pytest.raises(ValueError, match="does not fit"):
        VideoClassifier(preset("tiny-wide"), 5, **TINY).load_pretrained_encoder(str(path))


def test_dual_masking_reconstructs_a_running_cell_half_of_the_hidden_tokens():
    grid = (8, 14, 14)
    mask = make_mask("random", 3, grid, 0.9, torch.Generator().manual_seed(0))
    chosen = decoder_subset(mask, grid, 0.5, torch.Generator().manual_seed(1))
    assert chosen.shape == (3, int(mask.hidden.shape[1] * 0.5))
    assert mask.masked.gather(1, chosen).all()  # only hidden tokens are reconstructed
    t, h, w = chosen // 196, (chosen % 196) // 14, chosen % 14
    in_cell = (((h % 2) * 2 + (w % 2)) + t) % 4 < 2
    assert in_cell.float().mean() > 0.95  # nearly all from the running cell


def test_dual_masking_cuts_decoder_cost_and_scores_only_what_it_predicts():
    mask = make_mask("random", 1, (8, 14, 14), 0.9, torch.Generator().manual_seed(0))
    counts = {}
    for ratio in (0.0, 0.5):
        with torch.device("meta"):
            model = MaskedVideoAutoencoder(preset("vit-b", decoder_mask_ratio=ratio))
            counts[ratio] = gmacs(model, torch.empty(1, 3, 16, 224, 224), mask=mask)
    assert counts[0.5] < 0.75 * counts[0.0]
    torch.manual_seed(0)
    model = MaskedVideoAutoencoder(preset("tiny", decoder_mask_ratio=0.5), **TINY)
    video = torch.randn(2, 3, 8, 64, 64)
    loss, pred, mask = model(video, torch.Generator().manual_seed(0))
    predicted = pred.abs().sum(-1) > 0
    assert (predicted & ~mask.masked).sum() == 0 and predicted.sum(1).tolist() == [29, 29]
    target = model.targets(video)
    torch.testing.assert_close(loss, (pred - target).square().mean(-1)[predicted].mean())
    loss.backward()


def test_blocks_are_timms_with_this_projects_attention_kernel():
    model = MaskedVideoAutoencoder(preset("tiny", attention="math"), **TINY)
    for block in [*model.encoder.blocks, *model.decoder_blocks]:
        assert isinstance(block, Block) and block.attn.backend == "math"
        assert block.norm1.eps == 1e-6 and block.attn.qkv.bias is not None


def test_a_registered_architecture_builds_by_name(monkeypatch):
    monkeypatch.setitem(PRESETS, "micro", replace(PRESETS["tiny"], dim=32, depth=2, heads=2, decoder_dim=16,
                                                  decoder_depth=1, decoder_heads=2))
    model = MaskedVideoAutoencoder(preset("micro", tubelet=[2, 8, 8]), frames=4, size=32)
    assert model.grid == (2, 4, 4) and len(model.encoder.blocks) == 2 and model.decoder_embed.out_features == 16
