"""Quick trials for bench/learn.py's recipe: the same models, optimizer rules and clip spec, with clips cut from
videos decoded once into memory (GPU or CPU), so that many settings can be tried side by side on a GPU machine
that lacks the project's loading stack (DALI, DeepSpeed, webdataset: only torch, torchvision, timm and PyAV are
needed).

    python bench/learn_trials.py --data DIR [--trials trials.jsonl --worker I --workers N] [--out results.jsonl]
                                 [--pt-steps 1000 --ft-steps 480 --scratch-steps 480 --labeled 5 --probe ...]

DIR holds `train/` and `val/` shard folders as bench/learn.py builds them. Each line of --trials is a JSON object of
option overrides (names as the flags, with _ for -); "fts" lists fine-tuning variants of one pretrained encoder.
Each trial prints one JSON line: pretraining loss, fine-tuned, from-scratch and linear-probe top-1 (multi-view, as
`vmae evaluate`: 4 windows, one centre crop). A screen, not a result: anything kept goes through bench/learn.py.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tarfile
import time
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torchvision.ops import roi_align

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from vmae.model.config import PRESETS, ModelConfig, preset  # noqa: E402
from vmae.model.mae import MaskedVideoAutoencoder, VideoClassifier  # noqa: E402
from vmae.pipeline.data.config import DataConfig  # noqa: E402

CLIP = DataConfig()  # mean and std
CLASSES = 24
FRAMES, SIZE = 8, 48  # the clips of bench/learn.py


def decode_tar(path: str) -> list[tuple[str, int, np.ndarray]]:
    """(key, label, frames uint8 [F, H, W, 3]) of every sample of one shard."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    out = []
    for key, parts in samples.items():
        with av.open(io.BytesIO(parts["mp4"])) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        out.append((key, int(parts["cls"]), frames))
    return out


def load_set(shards: Path, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """All videos of a shard folder as one array [V, F, H, W, 3] (cut to the shortest) and their labels."""
    if not cache.exists():
        tars = sorted(str(p) for p in shards.glob("*.tar"))
        with Pool(min(len(tars), os.cpu_count() or 1)) as pool:
            items = sorted((x for chunk in pool.map(decode_tar, tars) for x in chunk), key=lambda x: x[0])
        frames = min(x[2].shape[0] for x in items)
        np.savez(cache, videos=np.stack([x[2][:frames] for x in items]), labels=np.array([x[1] for x in items]))
    data = np.load(cache)
    return data["videos"], data["labels"]


class Clips:
    """Training clips (random window, random resized crop) and test clips (even windows, centre square) of videos
    held on the device; 8 frames 4 apart, 48 px, as bench/learn.py."""

    def __init__(self, videos: np.ndarray, labels: np.ndarray, device: torch.device, frames: int = 8,
                 stride: int = 4, size: int = 48, scale: tuple[float, float] = (0.5, 1.0)):
        self.videos = torch.from_numpy(videos).to(device)
        self.labels = torch.from_numpy(labels).to(device)
        self.frames, self.stride, self.size, self.scale, self.device = frames, stride, size, scale, device
        _, self.length, self.height, self.width, _ = self.videos.shape
        self.span = (frames - 1) * stride + 1

    def __len__(self) -> int:
        return self.videos.shape[0]

    def cut(self, index: torch.Tensor, starts: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Normalized clips [N, 3, T, S, S] of videos ``index`` from frame ``starts``, boxes (x0, y0, x1, y1)."""
        rows = starts[:, None] + self.stride * torch.arange(self.frames, device=self.device)
        x = self.videos[index[:, None], rows]  # [N, T, H, W, 3]
        n = x.shape[0]
        x = x.reshape(n * self.frames, self.height, self.width, 3).permute(0, 3, 1, 2).float()
        rois = torch.cat([torch.arange(n * self.frames, device=self.device, dtype=x.dtype)[:, None],
                          boxes.repeat_interleave(self.frames, 0)], 1)
        x = roi_align(x, rois, output_size=self.size, sampling_ratio=2, aligned=True)  # bilinear resize
        mean = torch.tensor(CLIP.mean, device=self.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(CLIP.std, device=self.device).view(1, 3, 1, 1) * 255
        x = (x - mean) / std
        return x.reshape(n, self.frames, 3, self.size, self.size).transpose(1, 2).contiguous()

    def train_batch(self, index: torch.Tensor, views: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = index.repeat_interleave(views)
        n = index.numel()

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(n, generator=g, device=self.device)

        starts = torch.randint(0, self.length - self.span + 1, (n,), generator=g, device=self.device)
        area = self.height * self.width * uniform(*self.scale)
        ratio = uniform(math.log(3 / 4), math.log(4 / 3)).exp()
        w, h = (area * ratio).sqrt().clamp(max=self.width), (area / ratio).sqrt().clamp(max=self.height)
        x0, y0 = (self.width - w) * uniform(0, 1), (self.height - h) * uniform(0, 1)
        return self.cut(index, starts, torch.stack([x0, y0, x0 + w, y0 + h], 1)), self.labels[index]

    def test_batches(self, windows: int = 4, chunk: int = 64):
        """Per chunk of videos: one clip batch per temporal window, and the labels."""
        side = min(self.height, self.width)
        x0, y0 = (self.width - side) / 2, (self.height - side) / 2
        box = torch.tensor([[x0, y0, x0 + side, y0 + side]], device=self.device)
        for first in range(0, len(self), chunk):
            index = torch.arange(first, min(first + chunk, len(self)), device=self.device)
            starts = torch.linspace(0, self.length - self.span, windows).round().long().tolist()
            yield ([self.cut(index, torch.full_like(index, s), box.expand(len(index), 4)) for s in starts],
                   self.labels[index])


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up, then half-cosine to 0 (the engine's schedule)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def batches(n: int, batch: int, g: torch.Generator, device: torch.device):
    """Video indices, a fresh permutation each epoch."""
    while True:
        order = torch.randperm(n, generator=g, device=device)
        for i in range(0, n - batch + 1, batch):
            yield order[i:i + batch]


def model_config(decoder_dim: int | None = None, decoder_depth: int | None = None, **options) -> ModelConfig:
    """The tiny preset in 2 x 8 x 8 tubelets; another decoder size is registered as a preset of its own."""
    tiny = PRESETS["tiny"]
    decoder_dim, decoder_depth = decoder_dim or tiny.decoder_dim, decoder_depth or tiny.decoder_depth
    name = f"tiny-decoder-{decoder_dim}x{decoder_depth}"
    PRESETS.setdefault(name, replace(tiny, decoder_dim=decoder_dim, decoder_depth=decoder_depth))
    return preset(name, tubelet=[2, 8, 8], attention="sdpa", **options)


def pretrain(data: Clips, a: argparse.Namespace, device: torch.device) -> tuple[MaskedVideoAutoencoder, float]:
    torch.manual_seed(a.seed)
    cfg = model_config(mask=a.mask, mask_ratio=a.ratio, norm_pix_loss=bool(a.norm_pix), decoder_dim=a.dec_dim,
                       decoder_depth=a.dec_depth)
    model = MaskedVideoAutoencoder(cfg, FRAMES, SIZE).to(device)
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    opt = torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
    g, masks = torch.Generator(device=device).manual_seed(a.seed), torch.Generator().manual_seed(a.seed + 1000)
    videos = batches(len(data), a.pt_batch, g, device)
    peak, warmup = a.pt_lr * a.pt_batch / 256, max(1, round(a.pt_warmup * a.pt_steps))
    for step in range(a.pt_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, a.pt_steps, warmup, peak)
        loss, _, _ = model(data.train_batch(next(videos), a.pt_views, g)[0], generator=masks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.pt_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.pt_clip)
        opt.step()
    return model, loss.item()


def finetune(train: Clips, val: Clips, a: argparse.Namespace, device: torch.device, encoder: dict | None,
             steps: int) -> float:
    """Multi-view top-1 on ``val`` after ``steps`` of fine-tuning ``encoder`` (None: from scratch)."""
    torch.manual_seed(a.seed + 7)
    model = VideoClassifier(model_config(drop_path=a.drop_path), CLASSES, FRAMES, SIZE).to(device)
    if encoder is not None:
        model.load_pretrained_encoder(encoder)
    groups = param_groups_layer_decay(model, 0.05, no_weight_decay_list=tuple(model.no_weight_decay()),
                                      layer_decay=a.ld)
    opt = torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999), eps=1e-8, fused=device.type == "cuda")
    g = torch.Generator(device=device).manual_seed(a.seed + 3)
    videos = batches(len(train), a.ft_batch, g, device)
    peak = a.ft_lr * a.ft_batch / 256
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, a.ft_warmup, peak) * group.get("lr_scale", 1.0)
        clips, labels = train.train_batch(next(videos), a.ft_views, g)
        loss = F.cross_entropy(model(clips), labels, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return evaluate(model, val)


@torch.no_grad()
def evaluate(model: VideoClassifier, val: Clips) -> float:
    model.eval()
    correct = sum((sum(model(c).softmax(-1) for c in clips).argmax(-1) == y).sum().item()
                  for clips, y in val.test_batches())
    return correct / len(val)


@torch.no_grad()
def features(encoder: torch.nn.Module, data: Clips) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pooled encoder tokens, averaged over the test windows."""
    encoder.eval()
    pooled = [(sum(encoder(c).mean(1) for c in clips) / len(clips), y) for clips, y in data.test_batches()]
    encoder.train()
    return torch.cat([p for p, _ in pooled]), torch.cat([y for _, y in pooled])


def linear_probe(encoder: torch.nn.Module, train: Clips, val: Clips, epochs: int = 300) -> float:
    """Top-1 of a linear classifier on standardized frozen features (full-batch AdamW; the better of two weight
    decays, the same choice for every encoder)."""
    x, y = features(encoder, train)
    xv, yv = features(encoder, val)
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, xv = (x - mean) / std, (xv - mean) / std
    scores = []
    for wd in (1e-4, 1e-2):
        head = torch.nn.Linear(x.shape[1], CLASSES).to(x.device)
        opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=wd)
        for _ in range(epochs):
            loss = F.cross_entropy(head(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            scores.append((head(xv).argmax(-1) == yv).float().mean().item())
    return max(scores)


def labeled_subset(labels: np.ndarray, per_class: int) -> np.ndarray:
    """The first ``per_class`` videos of each class in key order, as bench/learn.py's --labeled-per-class picks them
    (keys start with the file name, <class>_<index>); all of them when ``per_class`` is 0."""
    if not per_class:
        return np.arange(len(labels))
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(CLASSES)])


def run_trial(a: argparse.Namespace, trial: dict, train: Clips, val: Clips, device: torch.device) -> dict:
    sets: dict[int, Clips] = {}

    def labeled(per_class: int) -> Clips:
        if per_class not in sets:
            keep = labeled_subset(train.labels.cpu().numpy(), per_class)
            sets[per_class] = Clips(train.videos[keep].cpu().numpy(), train.labels[keep].cpu().numpy(), device)
        return sets[per_class] if per_class else train

    result: dict = {"trial": trial}
    if a.probe:
        torch.manual_seed(a.seed)
        initial = MaskedVideoAutoencoder(model_config(), FRAMES, SIZE).to(device)
        result["probe_initial"] = linear_probe(initial.encoder, labeled(a.labeled), val)
    if a.pt_steps:
        started = time.perf_counter()
        model, result["pretrain_loss"] = pretrain(train, a, device)
        result["pretrain_seconds"] = time.perf_counter() - started
        if a.probe:
            result["probe"] = linear_probe(model.encoder, labeled(a.labeled), val)
        state = model.state_dict()
        result["finetuned"] = []
        for variant in trial.get("fts", [{}]):
            b = argparse.Namespace(**{**vars(a), **variant})
            top1 = finetune(labeled(b.labeled), val, b, device, state, b.ft_steps)
            result["finetuned"].append({**variant, "top1": top1})
    if a.scratch_steps:
        result["scratch"] = finetune(labeled(a.labeled), val, a, device, None, a.scratch_steps)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with train/ and val/ shards")
    p.add_argument("--cache", type=Path, default=Path("/tmp/learn-trials"), help="decoded videos are kept here")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--trials", type=Path, help="JSON lines of option overrides, one trial each")
    p.add_argument("--worker", type=int, default=0, help="this process runs trials worker, worker + workers, ...")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default="-", help="results, one JSON line per trial, appended (-: stdout)")
    p.add_argument("--prepare", action="store_true", help="only decode the videos into the cache")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labeled", type=int, default=0, help="labelled videos per class to fine-tune on (0: all)")
    p.add_argument("--probe", type=int, default=0, help="1: linear probes of the initial and pretrained encoders")
    # pretraining (bench/learn.py's defaults)
    p.add_argument("--mask", default="random")
    p.add_argument("--ratio", type=float, default=0.9)
    p.add_argument("--norm-pix", type=int, default=0)
    p.add_argument("--dec-dim", type=int, default=128)
    p.add_argument("--dec-depth", type=int, default=2)
    p.add_argument("--pt-steps", type=int, default=1000)
    p.add_argument("--pt-lr", type=float, default=4e-3, help="base lr per 256 videos")
    p.add_argument("--pt-batch", type=int, default=16)
    p.add_argument("--pt-views", type=int, default=2)
    p.add_argument("--pt-warmup", type=float, default=1 / 33, help="share of the steps")
    p.add_argument("--pt-clip", type=float, default=0.02)
    # fine-tuning and the from-scratch arm
    p.add_argument("--ft-steps", type=int, default=480)
    p.add_argument("--ft-lr", type=float, default=1.6e-2, help="base lr per 256 videos")
    p.add_argument("--ft-batch", type=int, default=16)
    p.add_argument("--ft-views", type=int, default=2)
    p.add_argument("--ft-warmup", type=int, default=30, help="steps")
    p.add_argument("--ld", type=float, default=0.9, help="layer-wise lr decay")
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--scratch-steps", type=int, default=0)
    args = p.parse_args()

    device = torch.device(args.device)
    args.cache.mkdir(parents=True, exist_ok=True)
    train = load_set(args.data / "train", args.cache / "train.npz")
    val = load_set(args.data / "val", args.cache / "val.npz")
    if args.prepare:
        print("decoded", train[0].shape, val[0].shape, flush=True)
        return 0
    trials = [{}]
    if args.trials:
        trials = [json.loads(line) for line in args.trials.read_text().splitlines() if line.strip()]
        trials = trials[args.worker::args.workers]
    train_clips, val_clips = Clips(*train, device), Clips(*val, device)
    out = sys.stdout if args.out == "-" else open(args.out, "a")
    for trial in trials:
        a = argparse.Namespace(**{**vars(args), **{k: v for k, v in trial.items() if k not in ("fts", "name")}})
        started = time.perf_counter()
        result = run_trial(a, trial, train_clips, val_clips, device)
        result["seconds"] = time.perf_counter() - started
        print(json.dumps(result), file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
