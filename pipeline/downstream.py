"""Does the representation help? Multi-view features of a frozen encoder and a linear probe on them.

Evaluation views follow the papers: ``data.views`` clips per video = temporal windows spread over the video ×
``data.test_crops`` spatial crops along its long side (MAE-ST tests Kinetics with 7 × 3), centre crops, no flips;
a video's prediction averages the softmax of its views.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.config import DataConfig
from pipeline.loader import make_loader

log = logging.getLogger(__name__)


@dataclass
class Features:
    """Per-view features [N, K, D], labels [N] and keys of every video that loaded."""

    views: torch.Tensor
    labels: torch.Tensor
    keys: list[str]

    def subset(self, rows: list[int]) -> "Features":
        return Features(self.views[rows], self.labels[rows], [self.keys[i] for i in rows])


def evaluation_data(data: DataConfig, views: int, test_crops: int) -> DataConfig:
    """The clip spec of ``data`` with evaluation views: spread windows × crops, no augmentation, one video a batch
    (so that no video is left out of a remainder)."""
    return replace(data, views=views, test_crops=test_crops, augment=False, flip=False, batch_size=1,
                   backend="cpu", dtype="float32", shuffle_buffer=1)


@torch.no_grad()
def extract_features(encoder: nn.Module, dataset: Path, data: DataConfig, chunk: int = 16) -> Features:
    """Mean-pooled encoder tokens of every view of every video (all tokens: nothing is masked at test time).
    A video the loader cannot read is left out and logged."""
    loader = make_loader(Path(dataset), data, device="cpu")
    loader.set_epoch(0)
    encoder.eval()
    videos, labels, keys, features = [], [], [], []
    failures = 0
    for batch in loader:
        now = sum(loader.stats.failed.values())
        if now != failures:  # the loader put another video in its place: leave it out
            failures = now
            continue
        videos.append(batch["video"]), labels.append(int(batch["label"][0])), keys.append(batch["key"][0])
        if len(videos) == chunk:
            features.append(_encode(encoder, videos, data.views))
            videos = []
    if videos:
        features.append(_encode(encoder, videos, data.views))
    failed = dict(loader.stats.failed)
    if failed:
        log.warning("left out of the features: %s", failed)
    return Features(torch.cat(features), torch.tensor(labels), keys)


def _encode(encoder: nn.Module, videos: list[torch.Tensor], views: int) -> torch.Tensor:
    clips = torch.cat(videos)  # [n·K, 3, T, S, S]
    pooled = encoder(clips).mean(dim=1)  # [n·K, D]
    return pooled.view(len(videos), views, -1)


def split_by_key(features: Features, val_fraction: float) -> tuple[Features, Features]:
    """A fixed split: a video goes to validation when the hash of its key says so, whatever the order."""
    val = [i for i, k in enumerate(features.keys) if zlib.crc32(k.encode()) % 1000 < val_fraction * 1000]
    train = [i for i in range(len(features.keys)) if i not in set(val)]
    if not train or not val:
        raise ValueError(f"a validation fraction of {val_fraction} leaves {len(train)} training and {len(val)} "
                         "validation videos: pass --val-dataset or change --val-fraction")
    return features.subset(train), features.subset(val)


def linear_probe(train: Features, val: Features, classes: int, epochs: int = 300, lr: float = 1e-2,
                 weight_decay: float = 1e-4, seed: int = 0) -> dict:
    """A linear classifier on standardized, view-averaged features (full batch, AdamW); scored per video on the
    softmax averaged over its views, and on its first view alone."""
    torch.manual_seed(seed)
    x = train.views.mean(dim=1)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    head = nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        loss = F.cross_entropy(head((x - mean) / std), train.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scores = head((val.views - mean) / std).softmax(dim=-1)  # [N, K, C]
        train_top1 = (head((x - mean) / std).argmax(-1) == train.labels).float().mean().item()
    return {"train_videos": len(train.keys), "val_videos": len(val.keys), "classes": classes,
            "train_top1": train_top1, **scores_report(scores, val.labels, classes)}


def scores_report(scores: torch.Tensor, labels: torch.Tensor, classes: int) -> dict:
    """Top-1/top-5 of view-averaged scores [N, K, C] and of the first view, and the confusion matrix."""
    averaged = scores.mean(dim=1)
    k = min(5, classes)
    top5 = (averaged.topk(k, dim=-1).indices == labels[:, None]).any(-1).float().mean().item()
    predicted = averaged.argmax(-1)
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    return {"top1": (predicted == labels).float().mean().item(), f"top{k}": top5,
            "top1_single_view": (scores[:, 0].argmax(-1) == labels).float().mean().item(),
            "views": scores.shape[1], "chance": 1 / classes, "confusion": confusion.tolist()}


def write_report(report: dict, names: list[str], out: Path) -> tuple[Path, Path]:
    """report.json and confusion.png in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({**report, "class_names": names}, indent=1))
    confusion = torch.tensor(report["confusion"])
    side = max(4, 0.35 * len(names))
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(confusion.numpy(), cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    ax.set_title(f"top-1 {report['top1']:.1%} over {report['val_videos']} videos ({report['views']} views each)",
                 fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.savefig(out / "confusion.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out / "report.json", out / "confusion.png"
