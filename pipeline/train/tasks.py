"""What the training loop trains: MAE pretraining or classification fine-tuning.

``vmae.pipeline.train.loop`` runs either through the same loop (DeepSpeed engine, schedule, checkpoints, resume,
metrics, faults); a task says which model, which parameter groups, the loss of one micro-batch, and what to write
at the end.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup
from timm.optim import param_groups_layer_decay, param_groups_weight_decay

from vmae.model.config import ModelConfig
from vmae.model.flops import classifier_training_flops, training_flops
from vmae.model.mae import MaskedVideoAutoencoder, VideoClassifier, encoder_token_count
from vmae.model.masking import Mask, make_mask
from vmae.pipeline.evaluate.downstream import evaluate_classifier
from vmae.pipeline.evaluate.visualize import reconstruction_grid
from vmae.pipeline.train.checkpoint import export_weights, weights_file
from vmae.pipeline.train.config import TrainError

log = logging.getLogger(__name__)


def seed_of(*numbers: int) -> int:
    """A 63-bit seed from a tuple of integers (seed, step, clip …), independent of the order draws are made."""
    return int(np.random.SeedSequence(numbers).generate_state(1, np.uint64)[0] >> 1)


class PretrainTask:
    """MAE-ST: masked clips in, per-patch normalized pixels of the hidden patches out."""

    name = "pretrain"
    weights_file = "pretrained.pt"

    def __init__(self, cfg):
        self.cfg = cfg
        self.model_cfg: ModelConfig = cfg.model
        self.grid = clip_grid(cfg)

    def build_model(self, launch) -> nn.Module:
        return MaskedVideoAutoencoder(self.model_cfg, self.cfg.data.frames, self.cfg.data.crop_size)

    def param_groups(self, model: nn.Module) -> list[dict]:
        """AdamW decay on weight matrices only (not biases, norms, positions or mask tokens)."""
        return param_groups_weight_decay(model, self.cfg.train.weight_decay,
                                         no_weight_decay_list=model.no_weight_decay())

    def flops_per_clip(self) -> float:
        return training_flops(self.model_cfg, self.cfg.data.frames, self.cfg.data.crop_size)

    @property
    def tokens_per_clip(self) -> int:
        """Tokens the encoder sees per clip: the visible ones."""
        return encoder_token_count(self.model_cfg, self.grid)

    def loss(self, engine, video: torch.Tensor, batch: dict, step: int, first_clip: int) -> torch.Tensor:
        # the sanity check fits one fixed batch: its masks are part of the batch, so they are drawn once
        mask_step = 0 if self.cfg.train.sanity_check else step
        mask = clip_masks(self.model_cfg, engine.module.grid, self.cfg.train.seed, mask_step, first_clip,
                          video.shape[0])
        return engine(video, mask=mask)[0]

    def fits_micro_batch(self, videos: int) -> bool:
        """Any micro-batch size works for pretraining."""
        return True

    def trial_batch(self, clips: int, device: torch.device) -> dict:
        """What ``loss`` reads of a batch besides the clips, for trial steps: nothing."""
        return {}

    def picture(self, engine, batch: dict | None, path: Path, step: int) -> Path | None:
        if batch is None:
            return None
        video = batch["video"][:: self.cfg.data.views][:3]  # the first view of a few videos
        if engine.bfloat16_enabled():
            video = video.to(torch.bfloat16)
        model = self.cfg.model
        written = reconstruction_grid(engine.module, video, self.cfg.data, path,
                                      title=f"step {step}, masked {model.mask_ratio:.0%} ({model.mask})")
        log.info("reconstructions: %s", written)
        return written

    def finish(self, engine, batch: dict | None, folder: Path, out: Path, step: int) -> dict:
        """Rank 0, after the last checkpoint: plain weights for fine-tuning and a last picture."""
        shot = self.picture(engine, batch, out / "reconstruction.png", step)
        return {"weights": str(export_weights(folder, out / self.weights_file)),
                "picture": str(shot) if shot else None}


def clip_grid(cfg) -> tuple[int, int, int]:
    """The token grid of the run's clips (data.frames x data.crop_size² in model tubelets)."""
    return cfg.model.token_grid(cfg.data.frames, cfg.data.crop_size)


def clip_masks(model_cfg: ModelConfig, grid: tuple[int, int, int], seed: int, step: int, first_clip: int,
               count: int) -> Mask:
    """Masks of clips ``first_clip`` … of a global step, each drawn from its own seed (seed, step, clip): the
    same clip gets the same mask whichever rank and micro-batch it lands in."""
    masks = [make_mask(model_cfg.mask, 1, grid, model_cfg.mask_ratio,
                       torch.Generator().manual_seed(seed_of(seed, step, first_clip + i)))
             for i in range(count)]
    return Mask(*(torch.cat([getattr(m, f) for m in masks]) for f in ("keep", "hidden", "masked")))


class FinetuneTask:
    """Classification on all tokens: the pretrained encoder (or a fresh one), mean pooling, a new head; layer-wise
    lr decay, label smoothing, mixup/cutmix; repeated augmentation is the loader's K views of each video."""

    name = "finetune"
    weights_file = "finetuned.pt"

    def __init__(self, cfg, classes: list[str]):
        self.cfg = cfg
        self.classes = classes
        self.model_cfg: ModelConfig = cfg.model
        self.grid = clip_grid(cfg)
        ft = cfg.finetune
        self.mixup = None
        if ft.mixes:
            if cfg.data.batch_size != "auto" and not self.fits_micro_batch(cfg.data.batch_size):
                raise TrainError(f"mixup/cutmix pair each clip with another of its batch: data.batch_size x "
                                 f"data.views = {cfg.data.batch_size * cfg.data.views} must be even (or set "
                                 "finetune.mixup=0 finetune.cutmix=0)")
            self.mixup = Mixup(mixup_alpha=ft.mixup, cutmix_alpha=ft.cutmix, prob=ft.mixup_prob,
                               switch_prob=ft.mixup_switch_prob, mode="batch", label_smoothing=ft.label_smoothing,
                               num_classes=len(classes))

    def build_model(self, launch) -> nn.Module:
        model = VideoClassifier(self.model_cfg, len(self.classes), self.cfg.data.frames, self.cfg.data.crop_size)
        source = self.cfg.finetune.pretrained
        if source:
            weights = weights_file(Path(source), PretrainTask.weights_file, launch.rank)
            resized = model.load_pretrained_encoder(str(weights))
            log.info("encoder from %s (every encoder tensor copied; fc_norm and head new, %d classes)%s", weights,
                     len(self.classes), "".join(f"; {note}" for note in resized))
        else:
            log.info("from scratch: no finetune.pretrained given")
        return model

    def param_groups(self, model: nn.Module) -> list[dict]:
        groups = param_groups_layer_decay(model, self.cfg.train.weight_decay,
                                          no_weight_decay_list=tuple(model.no_weight_decay()),
                                          layer_decay=self.cfg.finetune.layer_decay)
        return sorted(groups, key=lambda g: g["lr_scale"])  # a stable, readable order: embeddings first

    def flops_per_clip(self) -> float:
        return classifier_training_flops(self.model_cfg, len(self.classes), self.cfg.data.frames,
                                         self.cfg.data.crop_size)

    @property
    def tokens_per_clip(self) -> int:
        """Tokens the encoder sees per clip: all of them."""
        return int(np.prod(self.grid))

    def loss(self, engine, video: torch.Tensor, batch: dict, step: int, first_clip: int) -> torch.Tensor:
        labels = batch["label"].to(video.device)
        if self.mixup is None:
            logits = engine(video)
            return F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg.finetune.label_smoothing)
        # timm's mixup draws from numpy's global generator: seed it from this micro-batch's place in the run
        np.random.seed(seed_of(self.cfg.train.seed, step, first_clip) % 2**32)
        b, c, t, h, w = video.shape
        flat = video.contiguous().view(b, c * t, h, w)  # cutmix cuts the same box out of every frame
        flat, soft = self.mixup(flat, labels)
        logits = engine(flat.view(b, c, t, h, w))
        return torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()

    def fits_micro_batch(self, videos: int) -> bool:
        """Mixup and cutmix pair each clip with another of its micro-batch: an even number of clips."""
        return not self.cfg.finetune.mixes or videos * self.cfg.data.views % 2 == 0

    def trial_batch(self, clips: int, device: torch.device) -> dict:
        """Labels for trial steps."""
        return {"label": torch.arange(clips, device=device) % len(self.classes)}

    def picture(self, engine, batch, path: Path, step: int) -> None:
        return None

    def finish(self, engine, batch: dict | None, folder: Path, out: Path, step: int) -> dict:
        """Rank 0, after the last checkpoint: plain weights, and the multi-view test on finetune.val_dataset."""
        weights = export_weights(folder, out / self.weights_file)
        result = {"weights": str(weights)}
        val = self.cfg.finetune.val_dataset
        if val:
            report = evaluate_classifier(weights, self.cfg, Path(val), out / "eval")
            k = min(5, len(self.classes))
            result.update(val_top1=report["top1"], val_k=k, val_topk=report[f"top{k}"],
                          val_videos=report["val_videos"], eval=str(out / "eval"))
        return result
