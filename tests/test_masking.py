"""Each masking strategy: the exact visible count, its structure, and its dependence on the seed."""

import pytest
import torch

from vmae.model.config import STRATEGIES
from vmae.model.masking import make_mask, visible_count

GRID = (8, 14, 14)  # 16 frames / 2, 224 / 16: MAE-ST's 1568 tokens


def seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_every_sample_keeps_the_same_visible_count(strategy, ratio):
    mask = make_mask(strategy, 4, GRID, ratio, seeded(0))
    n = 8 * 14 * 14
    assert mask.masked.shape == (4, n)
    counts = (~mask.masked).sum(dim=1)
    assert (counts == counts[0]).all() and mask.visible_count == counts[0]
    assert mask.keep.shape[1] + mask.hidden.shape[1] == n
    assert (mask.keep.diff(dim=1) > 0).all()  # ascending, no repeats
    assert torch.equal(mask.masked.gather(1, mask.keep), torch.zeros_like(mask.keep, dtype=torch.bool))
    assert mask.masked.gather(1, mask.hidden).all()


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.75, 0.9, 0.95])
@pytest.mark.parametrize("grid", [GRID, (4, 4, 4), (3, 5, 7)])
def test_visible_count_is_what_the_mask_keeps(strategy, ratio, grid):
    assert visible_count(strategy, grid, ratio) == make_mask(strategy, 2, grid, ratio, seeded(0)).visible_count


def test_visible_counts_of_mae_st_grid_at_0_9():
    counts = {strategy: visible_count(strategy, GRID, 0.9) for strategy in STRATEGIES}
    assert counts == {"random": 156, "tube": 19 * 8, "frame": 196, "block": 156}  # frame: at least one frame


def test_random_at_0_9_keeps_156_of_1568_like_mae_st():
    assert make_mask("random", 2, GRID, 0.9, seeded(0)).visible_count == 156


def test_tube_repeats_one_spatial_mask_over_time():
    mask = make_mask("tube", 3, GRID, 0.9, seeded(1)).masked.view(3, 8, 14 * 14)
    assert (mask == mask[:, :1]).all()
    assert (~mask[:, 0]).sum(dim=1).tolist() == [19, 19, 19]


def test_frame_hides_whole_time_slices():
    mask = make_mask("frame", 3, GRID, 0.75, seeded(2)).masked.view(3, 8, 14 * 14)
    per_frame = mask.all(dim=2) | (~mask).all(dim=2)
    assert per_frame.all() and (~mask.all(dim=2)).sum(dim=1).tolist() == [2, 2, 2]


def test_block_hides_contiguous_regions():
    mask = make_mask("block", 2, GRID, 0.5, seeded(3)).masked.view(2, 8, 14, 14).float()
    # hidden tokens cluster: a hidden token's neighbours are hidden far more often than chance (0.5)
    neighbours = (mask[:, :, 1:, :] == mask[:, :, :-1, :]).float().mean()
    assert neighbours > 0.75


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_seeds_give_different_masks_and_the_same_seed_the_same(strategy):
    a = make_mask(strategy, 2, GRID, 0.9, seeded(5)).masked
    assert torch.equal(a, make_mask(strategy, 2, GRID, 0.9, seeded(5)).masked)
    assert not torch.equal(a, make_mask(strategy, 2, GRID, 0.9, seeded(6)).masked)
    assert not torch.equal(a[0], a[1])  # samples of one batch differ too


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="one of"):
        make_mask("checkerboard", 1, GRID, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        make_mask("random", 1, GRID, 1.0)
    with pytest.raises(ValueError, match="one of"):
        visible_count("checkerboard", GRID, 0.5)
