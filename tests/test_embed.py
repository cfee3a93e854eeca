"""Tubelet embedding and positions: shapes, the token order shared with the masks, separability."""

import pytest
import torch

from vmae.model.embed import PositionEmbed, TubeletEmbed, sincos_3d
from vmae.model.masking import make_mask


def test_tubelets_of_mae_st_give_1568_tokens_in_grid_order():
    embed = TubeletEmbed(frames=16, size=224, dim=32)
    assert embed.grid == (8, 14, 14) and embed.num_tokens == 1568
    video = torch.zeros(1, 3, 16, 224, 224)
    video[0, :, 4:6, 16:32, 48:64] = 1.0  # tubelet t=2, h=1, w=3
    tokens = embed(video) - embed(torch.zeros_like(video))
    changed = tokens.abs().sum(-1)[0].nonzero().flatten().tolist()
    assert changed == [2 * 196 + 1 * 14 + 3]  # token index t·(H·W) + h·W + w, as the masks number them


def test_clip_shape_mismatch_is_refused_with_both_shapes():
    with pytest.raises(ValueError, match="does not divide"):
        TubeletEmbed(frames=15)
    with pytest.raises(ValueError, match=r"16x224x224.*\(8, 224, 224\)"):
        TubeletEmbed(dim=8)(torch.zeros(1, 3, 8, 224, 224))


def test_separable_positions_are_space_plus_time():
    pos = PositionEmbed((4, 3, 5), 16)
    full = pos.full()[0].view(4, 15, 16)
    assert pos.space.numel() + pos.time.numel() == (15 + 4) * 16  # far fewer than 60 * 16
    torch.testing.assert_close(full[2, 7], pos.space[0, 7] + pos.time[0, 2])


@pytest.mark.parametrize("kind", ["separable", "sincos"])
def test_positions_of_visible_tokens_are_those_tokens_positions(kind):
    pos = PositionEmbed((8, 14, 14), 48, kind)
    mask = make_mask("random", 2, (8, 14, 14), 0.9, torch.Generator().manual_seed(0))
    visible = torch.zeros(2, mask.visible_count, 48)
    out = pos(visible, mask.keep)
    torch.testing.assert_close(out[1], pos.full()[0, mask.keep[1]])


def test_sincos_positions_are_fixed_distinct_and_bounded():
    table = sincos_3d((8, 14, 14), 768)
    assert table.shape == (1568, 768) and table.abs().max() <= 1
    assert torch.unique(table, dim=0).shape[0] == 1568
    assert not any(p.requires_grad for p in PositionEmbed((8, 14, 14), 768, "sincos").parameters())
