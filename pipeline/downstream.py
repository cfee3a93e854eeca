"""Does the representation help? Multi-view testing of a fine-tuned classifier, and a linear probe on the
features of a frozen encoder.

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
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.mae import VideoClassifier
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


def extract_features(encoder: nn.Module, dataset: Path, data: DataConfig, chunk: int = 16) -> Features:
    """Mean-pooled encoder tokens of every view of every video (all tokens: nothing is masked at test time)."""
    encoder.eval()
    return view_outputs(lambda clips: encoder(clips).mean(dim=1), dataset, data, chunk)


@torch.no_grad()
def view_outputs(fn: Callable[[torch.Tensor], torch.Tensor], dataset: Path, data: DataConfig,
                 chunk: int = 16) -> Features:
    """``fn`` of every view of every video, [N, K, D] (K = data.views), in chunks of ``chunk`` videos on the
    device ``fn``'s model is on. A video the loader cannot read is left out and logged."""
    loader = make_loader(Path(dataset), data, device="cpu")
    loader.set_epoch(0)
    videos, labels, keys, features = [], [], [], []
    failures = 0
    for batch in loader:
        now = sum(loader.stats.failed.values())
        if now != failures:  # the loader put another video in its place: leave it out
            failures = now
            continue
        videos.append(batch["video"]), labels.append(int(batch["label"][0])), keys.append(batch["key"][0])
        if len(videos) == chunk:
            features.append(_per_view(fn, videos, data.views))
            videos = []
    if videos:
        features.append(_per_view(fn, videos, data.views))
    failed = dict(loader.stats.failed)
    if failed:
        log.warning("left out of the features: %s", failed)
    return Features(torch.cat(features), torch.tensor(labels), keys)


def _per_view(fn: Callable[[torch.Tensor], torch.Tensor], videos: list[torch.Tensor], views: int) -> torch.Tensor:
    out = fn(torch.cat(videos))  # [n·K, 3, T, S, S] → [n·K, D]
    return out.float().cpu().view(len(videos), views, -1)


def load_classifier(weights: Path, cfg, classes: int, device: str = "cpu") -> VideoClassifier:
    """A fine-tuned classifier from plain weights (``vmae export`` / finetuned.pt), in eval mode."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = VideoClassifier(cfg.model.model_config(cfg.data), classes)
    try:
        model.load_state_dict(state.get("model", state))
    except RuntimeError as err:
        raise ValueError(f"{weights} does not hold a classifier of {classes} classes for model.preset="
                         f"{cfg.model.preset}: {err}") from None
    return model.to(device).eval()


def evaluate_classifier(weights: Path, cfg, dataset: Path, out: Path, views: int | None = None,
                        test_crops: int | None = None) -> dict:
    """The papers' multi-view test: softmax averaged over temporal windows x spatial crops; top-1/top-5, the
    confusion matrix, report.json and confusion.png in ``out``."""
    from pipeline.shardset import ShardSet

    trained_on = Path(cfg.train.dataset or dataset)
    names = ShardSet(trained_on if (trained_on / "manifest.json").is_file() else dataset).classes
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_classifier(Path(weights), cfg, len(names), device)
    views, test_crops = views or cfg.finetune.test_views, test_crops or cfg.finetune.test_crops
    data = evaluation_data(cfg.data, views, test_crops)
    scores = view_outputs(lambda clips: model(clips.to(device)).softmax(dim=-1), dataset, data)
    labels = remap_labels(scores.labels, ShardSet(dataset).classes, names, dataset)
    report = {"weights": str(weights), "dataset": str(dataset), "val_videos": len(scores.keys),
              "test_crops": test_crops, **scores_report(scores.views, labels, len(names))}
    written = write_report(report, names, out)
    log.info("multi-view test (%d views = %d windows x %d crops) on %d videos: top-1 %.1f%%, top-%d %.1f%%; "
             "wrote %s and %s", views, views // test_crops, test_crops, report["val_videos"], 100 * report["top1"],
             min(5, len(names)), 100 * report[f"top{min(5, len(names))}"], *written)
    return report


def remap_labels(labels: torch.Tensor, dataset_classes: list[str], model_classes: list[str],
                 dataset: Path) -> torch.Tensor:
    """Labels of ``dataset`` as indices of the model's classes, matched by name."""
    if dataset_classes == model_classes:
        return labels
    unknown = sorted(set(dataset_classes) - set(model_classes))
    if unknown:
        raise ValueError(f"{dataset} has classes the model was not trained on: {unknown[:5]}; evaluate on a "
                         "dataset labelled with the fine-tuning classes")
    index = torch.tensor([model_classes.index(name) for name in dataset_classes])
    return index[labels]


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
