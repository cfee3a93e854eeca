"""Reconstruction pictures: original, masked input and reconstruction of a few clips, side by side."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from vmae.model.mae import MaskedVideoAutoencoder, patchify, unpatchify  # noqa: E402
from vmae.pipeline.data.config import DataConfig  # noqa: E402
from vmae.pipeline.data.views import denormalize  # noqa: E402


@torch.no_grad()
def reconstruct(model: MaskedVideoAutoencoder, video: torch.Tensor, seed: int = 0,
                oracle: bool = False) -> dict[str, torch.Tensor]:
    """Original, masked input and reconstruction of ``video`` [B, 3, T, S, S] as normalized clips at the
    prediction's frame rate (one frame per temporal patch for MAE-ST's "slice" target), and ``hidden``, the
    masked pixels (bool, same shape).

    With per-patch normalized targets the prediction of a hidden patch has no brightness or contrast of its own.
    The honest reconstruction takes them from the visible patches nearby (``neighbour_statistics``); the usual
    picture takes them from the hidden patch itself, which leaks the answer (a model predicting zeros still
    shows a convincing video): that one is only made with ``oracle``, as "oracle"."""
    cfg = model.cfg
    was_training = model.training
    model.eval()
    _, pred, mask = model(video, torch.Generator().manual_seed(seed))
    model.train(was_training)
    pixels = patchify(video.float(), model.tubelet, model.pred_frames)  # what each token shows
    pred = pred.float()
    hidden = mask.masked.unsqueeze(-1)
    rebuilt = {"reconstruction": pred}
    if cfg.norm_pix_loss:
        mean, var = neighbour_statistics(pixels, mask.masked, model.grid)
        rebuilt["reconstruction"] = pred * (var + 1e-6).sqrt() + mean
        if oracle:
            rebuilt["oracle"] = pred * (pixels.var(-1, keepdim=True) + 1e-6).sqrt() + pixels.mean(-1, keepdim=True)
    tokens = {"original": pixels, "masked": torch.where(hidden, torch.zeros_like(pixels), pixels),  # 0: grey
              **{name: torch.where(hidden, value, pixels) for name, value in rebuilt.items()},
              "hidden": hidden.expand_as(pixels).float()}
    views = {name: unpatchify(value, model.grid, model.tubelet, model.pred_frames) for name, value in tokens.items()}
    views["hidden"] = views["hidden"] > 0.5
    return views


def neighbour_statistics(pixels: torch.Tensor, masked: torch.Tensor, grid: tuple[int, int, int],
                         sigma: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's patch mean and variance [B, N, 1] as a picture may know them: a visible token's own, a hidden
    token's the Gaussian-weighted (``sigma`` tokens, over the T x H x W grid) average of the visible tokens'."""
    t, h, w = grid
    coords = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), -1)
    coords = coords.reshape(-1, 3).float().to(pixels.device)
    closeness = torch.exp(-torch.cdist(coords, coords).square() / (2 * sigma ** 2))  # [N, N]
    visible = (~masked).float()
    # a hidden token far from every visible one falls back on the average of all of them (the 1e-6 floor)
    weights = (closeness.unsqueeze(0) + 1e-6) * visible.unsqueeze(1)  # [B, N, N]: token i from visible j
    weights = weights / weights.sum(-1, keepdim=True)
    own_mean, own_var = pixels.mean(-1, keepdim=True), pixels.var(-1, keepdim=True)
    mean = torch.where(masked.unsqueeze(-1), weights @ own_mean, own_mean)
    var = torch.where(masked.unsqueeze(-1), weights @ own_var, own_var)
    return mean, var


def masked_psnr(views: dict[str, torch.Tensor], name: str, data: DataConfig) -> float:
    """PSNR (dB, pixels in 0-1) of ``views[name]`` against the original over the hidden pixels only."""
    std = torch.tensor(data.std).view(1, 3, 1, 1, 1)
    error = ((views[name].cpu() - views["original"].cpu()) * std.cpu())[views["hidden"].cpu()]
    return float(10 * torch.log10(1 / error.square().mean().clamp(min=1e-12)))


def reconstruction_grid(model: MaskedVideoAutoencoder, video: torch.Tensor, data: DataConfig, path: Path,
                        clips: int = 3, frames: int = 4, title: str = "", oracle: bool = False) -> Path:
    """A PNG: per clip the original, the masked input and the honest reconstruction (with ``oracle``, also the
    leaking one, labelled), ``frames`` frames across; the masked-pixel PSNR of each reconstruction in the title."""
    views = reconstruct(model, video[:clips], oracle=oracle)
    rows = [name for name in ("original", "masked", "reconstruction", "oracle") if name in views]
    labels = {"reconstruction": "reconstruction\n(stats: visible)" if model.cfg.norm_pix_loss else "reconstruction",
              "oracle": "ORACLE: true\npatch stats\n(leaks)"}
    psnr = {name: masked_psnr(views, name, data) for name in rows[2:]}
    n = views["original"].shape[0]
    t = views["original"].shape[2]
    picks = torch.linspace(0, t - 1, min(frames, t)).round().long().tolist()
    per_clip = len(rows)
    fig, axes = plt.subplots(per_clip * n, len(picks), figsize=(1.6 * len(picks), 1.6 * per_clip * n), squeeze=False)
    for c in range(n):
        for r, name in enumerate(rows):
            pictures = denormalize(views[name][c].cpu(), data)  # uint8 [3, T, S, S]
            for j, f in enumerate(picks):
                ax = axes[per_clip * c + r][j]
                ax.imshow(pictures[:, f].permute(1, 2, 0).numpy())
                ax.set_xticks([]), ax.set_yticks([])
                if j == 0:
                    label = labels.get(name, name)
                    ax.set_ylabel(f"clip {c}\n{label}" if r == 0 else label, fontsize=6)
                if c == 0 and r == 0:
                    ax.set_title(f"frame {f * (model.tubelet[0] if model.pred_frames == 1 else 1)}", fontsize=7)
    scores = ", ".join(f"{name} {value:.1f} dB" for name, value in psnr.items())
    fig.suptitle(f"{title}\nmasked-pixel PSNR: {scores}" if title else f"masked-pixel PSNR: {scores}", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
