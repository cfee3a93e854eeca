"""The study's four arms for one seed, each run through the project's own training and evaluation code
(``vmae.pipeline.train.loop.pretrain`` / ``finetune``, the loader on the study's shards, the multi-view test).

(a) MAE pretraining on the pool, then fine-tuning on each labelled subset; (b) the same classifier from scratch on
each subset for the seconds (a) took there; (c) frozen features (k-NN, linear probe) of the pretrained encoder,
the same encoder at its initial weights and raw pixels through PCA; (d) masked-patch PSNR of the pretrained model,
the model at its initial weights and the trivial predictors, on moving and still patches, random and tube masks.
The rules shared by (a) and (b) are stated in ``vmae.pipeline.study.config``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import torch

from vmae.model.mae import MaskedVideoAutoencoder, patchify
from vmae.model.masking import make_mask
from vmae.pipeline.data.loader import make_loader
from vmae.pipeline.evaluate.downstream import (Features, PooledFeatures, evaluate_classifier, evaluation_data,
                                               load_feature_model, view_outputs)
from vmae.pipeline.evaluate.pretrained import load_pretrained
from vmae.pipeline.study.config import StudyBudget
from vmae.pipeline.study.data import StudyData
from vmae.pipeline.study.features import knn_top1, pca_projection, probe_top1, raw_pixels
from vmae.pipeline.study.reconstruction import moving_patches, psnr_by_kind, trivial_predictions
from vmae.pipeline.train.checkpoint import complete_checkpoints, export_weights
from vmae.tools.config import load_config, to_yaml

log = logging.getLogger(__name__)

EVAL_VIEWS = 2  # evaluation clips per video (temporal windows, one centre crop each)
RECONSTRUCTION_MASKS = ("random", "tube")


def base_config(budget: StudyBudget, dataset: Path, out: Path, seed: int, *overrides: str):
    """The config every run of the study starts from: clip spec, model and engine of ``budget``."""
    t, p, q = budget.tubelet
    return load_config(overrides=[
        f"data.frames={budget.frames}", f"data.stride={budget.stride}", "data.views=2",
        f"data.crop_size={budget.crop_size}", "data.scale=[0.5,1.0]", "data.shuffle_buffer=64", f"data.seed={seed}",
        f"model.preset={budget.preset}", f"model.tubelet=[{t},{p},{q}]", "model.mask_ratio=0.9",
        # raw-pixel targets: arm (d) compares reconstructions in pixels with predictors that know only pixels
        "model.norm_pix_loss=false",
        f"train.dataset={dataset}", f"train.out={out}", "train.resume=never", "train.reference_batch=0",
        "train.log_every=10", "train.visualize_every=0", f"train.seed={seed}", *overrides])


def pretrain_arm(budget: StudyBudget, data: StudyData, out: Path, seed: int) -> dict:
    """MAE pretraining on the pool: the weights, the training seconds and the loss curve's ends."""
    from vmae.pipeline.train.loop import pretrain  # DeepSpeed and the loop: only when a run is made

    steps, videos = budget.pretrain_steps, len_dataset(data.pool)
    batch = min(budget.batch, videos)
    epochs = max(2, math.ceil(steps * batch / videos))
    cfg = base_config(budget, data.pool, out, seed, f"data.batch_size={batch}", f"train.global_batch={batch}",
                      f"train.epochs={epochs}", f"train.max_steps={steps}", f"train.warmup_epochs={epochs / 10:g}",
                      f"train.base_lr={budget.pretrain_lr}", f"train.checkpoint_every={steps}", "train.keep_last=1")
    result = pretrain(cfg, to_yaml(cfg))
    return {"weights": result["weights"], "seconds": result["seconds"], "steps": steps,
            "first_loss": result["first_loss"], "last_loss": result["final_loss"]}


def finetune_arm(budget: StudyBudget, data: StudyData, out: Path, seed: int, subset: Path, lr: float, steps: int,
                 pretrained: str | None) -> dict:
    """Fine-tuning on ``subset`` from ``pretrained`` (None: from scratch) for ``steps`` steps, scored on the
    validation clips at ``budget.curve_points`` points; the best point's checkpoint tested, per video."""
    from vmae.pipeline.train.loop import finetune

    videos = len_dataset(subset)
    batch = min(budget.finetune_batch, videos)
    epochs = max(2, math.ceil(steps * batch / videos))
    every = max(1, steps // budget.curve_points)
    layer_decay = 0.75 if pretrained else 1.0  # MAE's layer decay fits a pretrained encoder; scratch trains all alike
    cfg = base_config(budget, subset, out, seed, f"data.batch_size={batch}", f"train.global_batch={batch}",
                      f"train.epochs={epochs}", f"train.max_steps={steps}", f"train.warmup_epochs={epochs / 10:g}",
                      f"train.base_lr={lr}", f"train.checkpoint_every={every}",
                      f"train.keep_last={budget.curve_points + 1}", "model.drop_path=0.1", "finetune.mixup=0",
                      "finetune.cutmix=0", f"finetune.layer_decay={layer_decay}",
                      f"finetune.pretrained={pretrained or 'null'}", "finetune.val_dataset=null")
    seconds = finetune(cfg, to_yaml(cfg))["seconds"]
    curve = []
    for folder in complete_checkpoints(out):
        weights = export_weights(folder, folder / "finetuned.pt")
        score = evaluate_classifier(weights, cfg, data.val, folder / "val", views=EVAL_VIEWS, test_crops=1)
        curve.append({"step": int(folder.name.removeprefix("step")), "val_top1": score["top1"], "weights": weights})
    best = max(curve, key=lambda point: (point["val_top1"], point["step"]))  # ties: the longer-trained one
    test = evaluate_classifier(best["weights"], cfg, data.test, out / "test", views=EVAL_VIEWS, test_crops=1)
    step_seconds = logged_step_seconds(out / "metrics.jsonl") or seconds / steps
    return {"lr": lr, "steps": steps, "seconds": seconds, "step_seconds": step_seconds,
            "start_seconds": max(0.0, seconds - steps * step_seconds),
            "curve": [{k: v for k, v in point.items() if k != "weights"} for point in curve],
            "best_step": best["step"], "val_top1": best["val_top1"], "test_top1": test["top1"],
            "correct": read_correct(out / "test" / "per_video.csv")}


def logged_step_seconds(metrics: Path) -> float | None:
    """The mean seconds of a training step (data wait and compute) over a run's logged windows; None when the run
    was too short to log one."""
    times = []
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            if "step_time" in record:
                times.append(record["step_time"])
    return sum(times) / len(times) if times else None


def features_arm(budget: StudyBudget, data: StudyData, pretrain_out: Path, seed: int,
                 pixel_projection=None) -> dict:
    """k-NN and linear-probe top-1 on the test clips, trained on each labelled subset, for the pretrained encoder,
    the same encoder at its initial weights and raw pixels (PCA fitted on the pool)."""
    cfg = base_config(budget, data.pool, pretrain_out, seed)
    evaluation = evaluation_data(cfg.data, EVAL_VIEWS, 1)
    models = {"pretrained": load_feature_model(Path(pretrain_out) / "pretrained.pt", cfg),
              "initial weights": PooledFeatures(initial_model(cfg, seed).encoder).eval()}
    classes = len(class_names(data))
    out: dict = {}
    for name, model in models.items():
        test = features_on_device(model, data.test, evaluation)
        out[name] = {size: score_features(features_on_device(model, subset, evaluation), test, classes, seed)
                     for size, subset in data.subsets[seed].items()}
    project = pixel_projection or pixel_pca(data, evaluation)
    test = project(raw_pixels(data.test, evaluation))
    out["raw pixels (PCA)"] = {size: score_features(project(raw_pixels(subset, evaluation)), test, classes, seed)
                               for size, subset in data.subsets[seed].items()}
    return out


def features_on_device(model: torch.nn.Module, dataset: Path, evaluation) -> Features:
    """``extract_features`` with the model on the GPU when there is one (the clips are decoded on the host)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()
    return view_outputs(lambda clips: model(clips.to(device)), dataset, evaluation)


def pixel_pca(data: StudyData, evaluation, fit_videos: int = 1000):
    """The raw-pixel PCA, fitted on the first ``fit_videos`` pool clips (unlabelled: the test set is not seen)."""
    return pca_projection(raw_pixels(data.pool, replace(evaluation, limit=fit_videos)))


def score_features(train, test, classes: int, seed: int) -> dict:
    return {"knn_top1": knn_top1(train, test), "probe_top1": probe_top1(train, test, classes, seed)}


def reconstruction_arm(budget: StudyBudget, data: StudyData, pretrain_out: Path, seed: int,
                       clips: int = 256) -> dict:
    """PSNR of every predictor on the hidden patches of up to ``clips`` test clips (centre crop, one window), per
    mask and per kind of patch (moving, still, all)."""
    cfg = base_config(budget, data.pool, pretrain_out, seed)
    models = {"pretrained model": load_pretrained(Path(pretrain_out), cfg),
              "model at initial weights": initial_model(cfg, seed).eval()}
    video = test_clips(data.test, cfg, clips)  # normalized [B, 3, T, S, S]
    pixels = denormalize(video, cfg.data)
    model = models["pretrained model"]
    target = patchify(pixels, model.tubelet, model.pred_frames)
    moving = moving_patches(pixels, model.tubelet)
    out: dict = {"clips": int(video.shape[0]), "moving_share": float(moving.float().mean())}
    for strategy in RECONSTRUCTION_MASKS:
        mask = make_mask(strategy, video.shape[0], model.grid, cfg.model.mask_ratio,
                         torch.Generator().manual_seed(seed))
        predictions = trivial_predictions(target, mask.masked, model.grid)
        with torch.no_grad():
            for name, net in models.items():
                predicted = net(video, mask=mask)[1]
                predictions[name] = denormalize_patches(predicted, cfg.data)
        out[strategy] = psnr_by_kind(predictions, target, mask.masked, moving)
    return out


def initial_model(cfg, seed: int) -> MaskedVideoAutoencoder:
    """The autoencoder as the seed's pretraining run built it, before its first step (the same seeding)."""
    torch.manual_seed(seed)
    return MaskedVideoAutoencoder(cfg.model, cfg.data.frames, cfg.data.crop_size)


def test_clips(dataset: Path, cfg, clips: int) -> torch.Tensor:
    """Up to ``clips`` evaluation clips of ``dataset`` (one window, centre crop each), normalized float32."""
    data = replace(evaluation_data(cfg.data, 1, 1), batch_size=min(clips, 64, len_dataset(dataset)))
    loader = make_loader(dataset, data, device="cpu")
    loader.set_epoch(0)
    batches, held = [], 0
    for batch in loader:
        batches.append(batch["video"])
        held += batch["video"].shape[0]
        if held >= clips:
            break
    return torch.cat(batches)[:clips]


def denormalize(video: torch.Tensor, data) -> torch.Tensor:
    """Normalized clips [B, 3, T, H, W] back to 0-255 floats."""
    mean = torch.tensor(data.mean).view(3, 1, 1, 1) * 255
    std = torch.tensor(data.std).view(3, 1, 1, 1) * 255
    return video.float() * std + mean


def denormalize_patches(patches: torch.Tensor, data) -> torch.Tensor:
    """Predicted patches [B, N, (…)·3] (channels last, as ``patchify`` lays them out) back to 0-255 floats."""
    b, n, size = patches.shape
    channels = patches.float().view(b, n, size // 3, 3)
    return (channels * torch.tensor(data.std) * 255 + torch.tensor(data.mean) * 255).view(b, n, size)


def read_correct(per_video: Path) -> dict[str, int]:
    with per_video.open() as f:
        return {row["key"]: int(row["correct"]) for row in csv.DictReader(f)}


def len_dataset(dataset: Path) -> int:
    from vmae.pipeline.data.shardset import ShardSet

    return len(ShardSet(dataset))


def class_names(data: StudyData) -> list[str]:
    from vmae.pipeline.data.shardset import ShardSet

    return ShardSet(data.pool).classes
