"""Does the representation help? Multi-view testing of a fine-tuned classifier, and a linear probe on the
features of a frozen encoder.

Evaluation views follow the papers: ``data.views`` clips per video = temporal windows spread over the video ×
``data.test_crops`` spatial crops along its long side (MAE-ST tests Kinetics with 7 × 3), centre crops, no flips;
a video's prediction averages the softmax of its views.
"""

from __future__ import annotations

import csv
import json
import logging
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vmae.model.load import CheckpointMismatch, encoder_part, load_strict, read_state_dict
from vmae.model.mae import Encoder, VideoClassifier
from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.loader import make_loader
from vmae.pipeline.data.shardset import ShardSet

log = logging.getLogger(__name__)


@dataclass
class Features:
    """Per-view features [N, K, D], labels [N] and keys of every video that loaded."""

    views: torch.Tensor
    labels: torch.Tensor
    keys: list[str]
    identical_windows: int = 0  # videos two of whose temporal windows gave the very same pixels

    def subset(self, rows: list[int]) -> "Features":
        return Features(self.views[rows], self.labels[rows], [self.keys[i] for i in rows])


def evaluation_data(data: DataConfig, views: int, test_crops: int) -> DataConfig:
    """The clip spec of ``data`` with evaluation views: spread windows × crops, no augmentation, one video a batch
    (so that no video is left out of a remainder)."""
    return replace(data, views=views, test_crops=test_crops, augment=False, flip=False, batch_size=1,
                   backend="cpu", dtype="float32", shuffle_buffer=1)


class PooledFeatures(nn.Module):
    """A video's feature: the encoder's tokens, mean-pooled, then ``norm`` (a classifier's fc_norm: what its head
    reads; Identity for a pretrained encoder, whose last LayerNorm is inside it)."""

    def __init__(self, encoder: nn.Module, norm: nn.Module | None = None):
        super().__init__()
        self.encoder, self.norm = encoder, norm or nn.Identity()

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.norm(self.encoder(clips).mean(dim=1))


def load_feature_model(weights: Path, cfg) -> PooledFeatures:
    """The feature model of plain weights: a fine-tuned classifier's (pooled + fc_norm) when they hold a head,
    else a pretrained autoencoder's encoder (pooled), loaded strictly and resized to ``cfg``'s clip shape."""
    state = read_state_dict(weights)
    if "head.weight" in state:
        classifier = classifier_from_state(state, str(weights), cfg, state["head.weight"].shape[0])
        return PooledFeatures(classifier.encoder, classifier.fc_norm).eval()
    encoder = Encoder(cfg.model, cfg.data.frames, cfg.data.crop_size)
    load_strict(encoder, encoder_part(state), f"{weights} (encoder)")
    return PooledFeatures(encoder).eval()


def write_features(features: Features, names: list[str], path: Path) -> Path:
    """Per-video features (views averaged) with keys and labels: ``.npz`` (numpy: features [N, D], view_features
    [N, K, D], keys, labels, label_names) or ``.csv`` (pandas.read_csv: key, label, label_name, f0 … f{D-1})."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mean = features.views.mean(dim=1).numpy().astype(np.float32)
    labels = features.labels.numpy()
    label_names = np.array([names[i] if 0 <= i < len(names) else "" for i in labels])
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["key", "label", "label_name", *(f"f{i}" for i in range(mean.shape[1]))])
            for key, label, name, row in zip(features.keys, labels, label_names, mean, strict=True):
                writer.writerow([key, int(label), name, *(f"{v:.7g}" for v in row)])
    elif path.suffix == ".npz":
        np.savez(path, features=mean, view_features=features.views.numpy().astype(np.float32),
                 keys=np.array(features.keys), labels=labels, label_names=label_names)
    else:
        raise ValueError(f"{path}: features are written as .npz (numpy) or .csv (pandas); pick one of those")
    return path


def extract_features(model: nn.Module, dataset: Path, data: DataConfig, chunk: int = 16) -> Features:
    """``model``'s features ([clips, D], e.g. ``PooledFeatures``) of every view of every video (all tokens:
    nothing is masked at test time)."""
    model.eval()
    return view_outputs(model, dataset, data, chunk)


@torch.no_grad()
def view_outputs(fn: Callable[[torch.Tensor], torch.Tensor], dataset: Path, data: DataConfig,
                 chunk: int = 16) -> Features:
    """``fn`` of every view of every video, [N, K, D] (K = data.views), in chunks of ``chunk`` videos on the
    device ``fn``'s model is on. A video the loader cannot read is left out and logged."""
    loader = make_loader(Path(dataset), data, device="cpu")
    loader.set_epoch(0)
    videos, labels, keys, features = [], [], [], []
    failures = identical = 0
    for batch in loader:
        now = sum(loader.stats.failed.values())
        if now != failures:  # the loader put another video in its place: leave it out
            failures = now
            continue
        videos.append(batch["video"]), labels.append(int(batch["label"][0])), keys.append(batch["key"][0])
        identical += windows_coincide(batch["video"], data.views // data.test_crops)
        if len(videos) == chunk:
            features.append(_per_view(fn, videos, data.views))
            videos = []
    if videos:
        features.append(_per_view(fn, videos, data.views))
    failed = dict(loader.stats.failed)
    if failed:
        log.warning("left out of the features: %s", failed)
    if identical:
        log.warning("%d of %d videos gave identical clips for different temporal windows (videos shorter than a "
                    "clip): their 'multi-view' score is fewer views; data.sampling=segment spreads frames over short "
                    "videos", identical, len(keys))
    return Features(torch.cat(features), torch.tensor(labels), keys, identical)


def windows_coincide(video: torch.Tensor, windows: int) -> bool:
    """Whether two temporal windows of one video's views [W·C, 3, T, S, S] (window-major) hold the same pixels."""
    first_crop = video.view(windows, -1, *video.shape[1:])[:, 0]
    return any(torch.equal(first_crop[i], first_crop[j]) for i in range(windows) for j in range(i + 1, windows))


def sampling_statement(data: DataConfig) -> dict:
    """What an evaluation did, for its report: clips = windows x crops, and how each was placed."""
    windows = data.views // data.test_crops
    if data.sampling == "segment":
        temporal = (f"{data.frames} equal segments of the whole video, window w of {windows} taking the point "
                    "(w + 1/2) / W of each")
    else:
        temporal = (f"{windows} windows of {data.frames} frames {data.stride} apart, starts spread evenly from the "
                    "first to the last possible")
    spatial = ("the centre square" if data.test_crops == 1 else
               f"{data.test_crops} squares spread along the long side")
    return {"clips_per_video": data.views, "windows": windows, "crops": data.test_crops, "sampling": data.sampling,
            "frames": data.frames, "stride": data.stride if data.sampling == "dense" else None,
            "crop_size": data.crop_size, "temporal": temporal, "spatial": f"{spatial}, resized to {data.crop_size}",
            "averaging": "softmax of every clip, averaged per video"}


def write_per_video(scores: torch.Tensor, labels: torch.Tensor, keys: list[str], names: list[str],
                    out: Path) -> tuple[Path, Path]:
    """Every video's scores: scores.npz (view_scores [N, K, C], keys, labels, class_names: for ensembles) and
    per_video.csv (key, true and predicted class, its probability, correct) for error analysis."""
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "scores.npz", view_scores=scores.numpy().astype(np.float32), keys=np.array(keys),
             labels=labels.numpy(), class_names=np.array(names))
    averaged = scores.mean(dim=1)
    confidence, predicted = averaged.max(dim=-1)
    with (out / "per_video.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "label", "label_name", "predicted", "predicted_name", "probability",
                         "true_class_probability", "correct"])
        for i, key in enumerate(keys):
            label, guess = int(labels[i]), int(predicted[i])
            writer.writerow([key, label, names[label], guess, names[guess], f"{confidence[i]:.5f}",
                             f"{averaged[i, label]:.5f}", int(label == guess)])
    return out / "scores.npz", out / "per_video.csv"


def _per_view(fn: Callable[[torch.Tensor], torch.Tensor], videos: list[torch.Tensor], views: int) -> torch.Tensor:
    out = fn(torch.cat(videos))  # [n·K, 3, T, S, S] → [n·K, D]
    return out.float().cpu().view(len(videos), views, -1)


def load_classifier(weights: Path, cfg, classes: int, device: str = "cpu") -> VideoClassifier:
    """A fine-tuned classifier from plain weights (``vmae export`` / finetuned.pt), in eval mode."""
    return classifier_from_state(read_state_dict(weights), str(weights), cfg, classes).to(device)


def classifier_from_state(state: dict[str, torch.Tensor], source: str, cfg, classes: int) -> VideoClassifier:
    """A classifier of ``classes`` classes at ``cfg``'s clip shape, loaded strictly from ``state``, in eval mode."""
    head = state.get("head.weight")
    if head is not None and head.shape[0] != classes:
        raise CheckpointMismatch(f"{source} is a classifier of {head.shape[0]} classes, {classes} expected (the "
                                 "classes of the run's train.dataset): evaluate the weights of that run")
    model = VideoClassifier(cfg.model, classes, cfg.data.frames, cfg.data.crop_size)
    for note in load_strict(model, state, source):
        log.info("%s: %s", source, note)
    return model.eval()


def evaluate_classifier(weights: Path, cfg, dataset: Path, out: Path, views: int | None = None,
                        test_crops: int | None = None) -> dict:
    """The papers' multi-view test: softmax averaged over temporal windows x spatial crops; top-1/top-5, the
    confusion matrix, report.json and confusion.png in ``out``."""
    trained_on = Path(cfg.train.dataset or dataset)
    names = ShardSet(trained_on if (trained_on / "manifest.json").is_file() else dataset).classes
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_classifier(Path(weights), cfg, len(names), device)
    views, test_crops = views or cfg.finetune.test_views, test_crops or cfg.finetune.test_crops
    data = evaluation_data(cfg.data, views, test_crops)
    scores = view_outputs(lambda clips: model(clips.to(device)).softmax(dim=-1), dataset, data)
    labels = remap_labels(scores.labels, ShardSet(dataset).classes, names, dataset)
    report = {"weights": str(weights), "dataset": str(dataset), "val_videos": len(scores.keys),
              "test_crops": test_crops, "evaluation": sampling_statement(data),
              "videos_with_identical_windows": scores.identical_windows,
              **scores_report(scores.views, labels, len(names))}
    written = write_report(report, names, out) + write_per_video(scores.views, labels, scores.keys, names, out)
    log.info("multi-view test (%d clips = %d windows x %d crops, %s sampling) on %d videos: top-1 %.1f%%, "
             "top-%d %.1f%%", views, views // test_crops, test_crops, data.sampling, report["val_videos"],
             100 * report["top1"], min(5, len(names)), 100 * report[f"top{min(5, len(names))}"])
    for path in written:  # with the full path: by default they land in the checkpoint's folder, unasked
        log.info("wrote %s", path.absolute())
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
                 weight_decay: float = 1e-4, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """A linear classifier on standardized, view-averaged features (full batch, AdamW); scored per video on the
    softmax averaged over its views, and on its first view alone. Returns the report and the validation videos'
    view scores [N, K, C]."""
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
    report = {"train_videos": len(train.keys), "val_videos": len(val.keys), "classes": classes,
              "train_top1": train_top1, **scores_report(scores, val.labels, classes)}
    return report, scores


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
    import matplotlib  # heavy: only the commands that write a report pay for it

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
    how = report.get("evaluation")
    clips = (f"{how['clips_per_video']} clips = {how['windows']} windows x {how['crops']} crops, {how['sampling']} "
             "sampling" if how else f"{report['views']} views")
    ax.set_title(f"top-1 {report['top1']:.1%} over {report['val_videos']} videos ({clips})", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.savefig(out / "confusion.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out / "report.json", out / "confusion.png"
