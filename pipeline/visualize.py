"""Reconstruction pictures: original, masked input and reconstruction of a few clips, side by side."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from model.mae import MaskedVideoAutoencoder, patchify, unpatchify  # noqa: E402
from pipeline.config import DataConfig  # noqa: E402
from pipeline.views import denormalize  # noqa: E402


@torch.no_grad()
def reconstruct(model: MaskedVideoAutoencoder, video: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Original, masked input and reconstruction of ``video`` [B, 3, T, S, S] as normalized clips at the
    prediction's frame rate (one frame per temporal patch for MAE-ST's "slice" target)."""
    cfg = model.cfg
    was_training = model.training
    model.eval()
    _, pred, mask = model(video, torch.Generator().manual_seed(seed))
    model.train(was_training)
    pixels = patchify(video.float(), cfg.tubelet, model.pred_frames)  # what each token shows
    pred = pred.float()
    if cfg.norm_pix_loss:  # predictions are per-patch normalized: give them each patch's own mean and spread
        mean, var = pixels.mean(-1, keepdim=True), pixels.var(-1, keepdim=True)
        pred = pred * (var + 1e-6).sqrt() + mean
    hidden = mask.masked.unsqueeze(-1)
    shown = torch.where(hidden, torch.zeros_like(pixels), pixels)  # 0 is the dataset mean: grey
    rebuilt = torch.where(hidden, pred, pixels)
    grid = model.grid
    return {name: unpatchify(tokens, grid, cfg.tubelet, model.pred_frames)
            for name, tokens in (("original", pixels), ("masked", shown), ("reconstruction", rebuilt))}


def reconstruction_grid(model: MaskedVideoAutoencoder, video: torch.Tensor, data: DataConfig, path: Path,
                        clips: int = 3, frames: int = 4, title: str = "") -> Path:
    """A PNG: per clip three rows (original / masked input / reconstruction), ``frames`` frames across."""
    views = reconstruct(model, video[:clips])
    n = views["original"].shape[0]
    t = views["original"].shape[2]
    picks = torch.linspace(0, t - 1, min(frames, t)).round().long().tolist()
    fig, axes = plt.subplots(3 * n, len(picks), figsize=(1.6 * len(picks), 1.6 * 3 * n), squeeze=False)
    for c in range(n):
        for r, name in enumerate(("original", "masked", "reconstruction")):
            pictures = denormalize(views[name][c].cpu(), data)  # uint8 [3, T, S, S]
            for j, f in enumerate(picks):
                ax = axes[3 * c + r][j]
                ax.imshow(pictures[:, f].permute(1, 2, 0).numpy())
                ax.set_xticks([]), ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(f"clip {c}\n{name}" if r == 0 else name, fontsize=7)
                if c == 0 and r == 0:
                    ax.set_title(f"frame {f * (model.cfg.tubelet[0] if model.pred_frames == 1 else 1)}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
