"""Arm (c): frozen features scored without fine-tuning: k-nearest neighbours and a linear probe trained on a
labelled subset and tested on the test clips, for the pretrained encoder, the same encoder at its initial weights,
and raw pixels reduced by PCA. The features are the evaluation views of `vmae extract-features`
(``vmae.pipeline.evaluate.downstream``), pooled per video."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.evaluate.downstream import Features, linear_probe, view_outputs

KNN_K = 20  # neighbours that vote (fewer when the labelled subset is smaller)
PIXEL_POOL = 4  # raw pixels are averaged over POOL x POOL squares before PCA: 48 px clips become 12 x 12
PCA_DIMS = 64  # components kept of the raw pixels


def knn_top1(train: Features, test: Features, k: int = KNN_K) -> float:
    """Top-1 of cosine k-NN on view-averaged features, each neighbour's vote weighted by its similarity."""
    a = F.normalize(train.views.mean(1).float(), dim=-1)
    b = F.normalize(test.views.mean(1).float(), dim=-1)
    k = min(k, len(train.keys))
    similarity, index = (b @ a.T).topk(k, dim=-1)
    classes = int(max(train.labels.max(), test.labels.max())) + 1
    votes = torch.zeros(len(test.keys), classes).scatter_add_(1, train.labels[index], similarity.clamp(min=0))
    return (votes.argmax(-1) == test.labels).float().mean().item()


def probe_top1(train: Features, test: Features, classes: int, seed: int) -> float:
    """Top-1 of the project's linear probe (standardized features, AdamW, full batch)."""
    return linear_probe(train, test, classes, seed=seed)[0]["top1"]


def raw_pixels(dataset: Path, data: DataConfig) -> Features:
    """Every evaluation view's pixels, averaged over ``PIXEL_POOL`` squares and flattened: [N, K, 3·T·(S/POOL)²]."""
    def pooled(clips: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = clips.shape
        return F.avg_pool2d(clips.transpose(1, 2).reshape(b * t, c, h, w), PIXEL_POOL).reshape(b, -1)

    return view_outputs(pooled, dataset, data)


def pca_projection(fit: Features, dims: int = PCA_DIMS, seed: int = 0):
    """The projection onto the first ``dims`` principal components of ``fit``'s views (centred), as a function of
    Features: unlabelled clips can fit it without touching the test set."""
    x = fit.views.reshape(-1, fit.views.shape[-1]).float()
    mean = x.mean(0)
    torch.manual_seed(seed)
    _, _, v = torch.pca_lowrank(x - mean, q=min(dims, *x.shape), center=False)

    def project(features: Features) -> Features:
        return Features((features.views.float() - mean) @ v, features.labels, features.keys)

    return project
