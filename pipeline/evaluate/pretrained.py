"""Looking at a finished checkpoint without DeepSpeed: its config, its weights, its reconstructions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from vmae.model.load import load_strict, read_state_dict
from vmae.model.mae import MaskedVideoAutoencoder
from vmae.pipeline.data.loader import make_loader
from vmae.pipeline.evaluate.visualize import reconstruction_grid
from vmae.pipeline.train.checkpoint import weights_file


def load_pretrained(folder: Path, cfg) -> MaskedVideoAutoencoder:
    """The autoencoder of a checkpoint folder (``cfg``: its config.yaml, loaded), on the CPU, in eval mode."""
    weights = weights_file(folder, "pretrained.pt")
    model = MaskedVideoAutoencoder(cfg.model, cfg.data.frames, cfg.data.crop_size)
    load_strict(model, read_state_dict(weights), str(weights))
    return model.eval()


def visualize_checkpoint(folder: Path, cfg, dataset: Path, png: Path, clips: int = 4,
                         oracle: bool = False) -> Path:
    """Reconstructions of the first clips of ``dataset`` (centre crops, one view each) by a checkpoint."""
    model = load_pretrained(folder, cfg)
    data = replace(cfg.data, augment=False, views=1, batch_size=clips, backend="cpu", workers=1,
                   dtype="float32")
    batch = next(iter(make_loader(Path(dataset), data, device="cpu")))
    return reconstruction_grid(model, batch["video"], data, png, clips=clips, oracle=oracle,
                               title=f"{Path(folder).name}: {cfg.model.mask_ratio:.0%} {cfg.model.mask} masking")
