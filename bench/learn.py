"""Does pretraining help? MAE-ST's claim on data that fits two CPU cores, as `make learn`.

    python bench/learn.py [--out runs/learn] [--seeds 0 1 2] [--pretrain-epochs 33] [--finetune-steps 480]
                          [--labeled-per-class 0] [--ablation tube:0.9,frame:0.9,random:0.75] [--movers 4]
                          [--out-json FILE]

1. Data: `vmae synth` motion classes (drift / zigzag / dash, each in 8 directions: the class is the movement, never
   one frame's look), a training and a validation set drawn with different seeds, built into shards. Each video
   has several movers (--movers) so that motion covers much of the frame, as in action videos. With
   --labeled-per-class L, fine-tuning, the from-scratch arm and the probe see only the first L training videos of
   each class; pretraining always reads all of them, without labels.
2. Per seed: `vmae pretrain` (the tiny preset, 90 % random masking, raw-pixel targets) on the training videos
   without their labels, then `vmae finetune` from it; and `vmae finetune` from scratch for the same total time
   (the pretrain + fine-tune seconds measured in that seed's runs, less the fixed start-up and test cost that the
   scratch run pays as well, at the fine-tuning run's median step time). Both are scored with `vmae evaluate`'s
   multi-view test on the validation set; the linear probe of the pretrained encoder comes with them.
3. The masking ablation (first seed): each strategy:ratio pretrained for the same steps, fine-tuned the same way.

Every run is the real command in its own process, on the real loader and shards.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLASSES = 24
TRAIN_PER_CLASS, VAL_PER_CLASS = 20, 6
BATCH = 16  # videos per step
# with one mover on a still background, pretraining left the encoder near chance (seed 0: fine-tuned 6.2 %, linear
# probe 9.0 %); with 4 movers, 38.9 % and 21.5 %
MOVERS = 4
# lr 2.5e-4 at batch 16 rather than 1e-3: the further pretraining moves the encoder from its initial weights, the
# worse it fine-tunes here (seed 0, raw pixels: linear probe 34.7 % vs 28.5 %, fine-tuned 63.2 % vs 51.4 %)
PRETRAIN_BASE_LR = 4e-3
# 990 pretraining and 480 fine-tuning steps: in the sixth round's in-memory trials (BENCHMARKS.md) both longer than
# the fifth round's 450 and 240 raised the pretrained arm (1500 pretraining steps: +11 points at 240 fine-tuning ones)
PRETRAIN_EPOCHS, FINETUNE_STEPS = 33, 480
LABELED_PER_CLASS = 0  # all: 5 per class was tried in the sixth round (pretraining lost there too)


def shared_config(out: Path) -> dict:
    """The clip spec and the model of every run: 8 frames x 48 px, 2 views per video, tiny ViT on 8 x 8 patches."""
    return {
        "data": {"frames": 8, "stride": 4, "views": 2, "crop_size": 48, "batch_size": BATCH, "backend": "cpu",
                 "flip": False,  # a mirrored clip moves the other way: flips would swap east and west labels
                 "scale": [0.5, 1.0]},
        "model": {"preset": "tiny", "tubelet": [2, 8, 8]},
        "train": {"global_batch": BATCH, "warmup_epochs": 1, "zero_stage": 0, "precision": "fp32",
                  "checkpoint_every": 100_000, "log_every": 10, "keep_last": 1},
    }


def vmae(*args: str) -> float:
    """Run a vmae command; its wall-clock seconds."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vmae.tools.cli", *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"vmae {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def build_data(out: Path, movers: int, labeled: int) -> tuple[Path, Path, Path]:
    """Shards of the training videos (pretraining reads them without labels), of the first ``labeled`` videos of
    each class (fine-tuning, the from-scratch arm and the probe; all of them when ``labeled`` is 0) and of the
    validation videos (another synth seed)."""
    sets = []
    for name, seed, per_class in (("train", 0, TRAIN_PER_CLASS), ("val", 1, VAL_PER_CLASS)):
        videos, shards = out / f"{name}_videos", out / name
        if not (shards / "manifest.json").is_file():
            vmae("synth", str(videos), "--classes", str(CLASSES), "--videos-per-class", str(per_class),
                 "--width", "128", "--height", "96", "--seconds", "3", "--seed", str(seed),
                 "--movers", str(movers))
            build_shards(videos, shards)
        sets.append(shards)
    train, val = sets
    if not labeled or labeled >= TRAIN_PER_CLASS:
        return train, train, val
    videos, shards = out / f"labeled{labeled}_videos", out / f"labeled{labeled}"
    if not (shards / "manifest.json").is_file():
        for folder in sorted(p for p in (out / "train_videos").iterdir() if p.is_dir()):
            (videos / folder.name).mkdir(parents=True, exist_ok=True)
            for video in sorted(folder.glob("*.mp4"))[:labeled]:
                link = videos / folder.name / video.name
                if not link.exists():
                    link.symlink_to(video.resolve())
        build_shards(videos, shards)
    return train, shards, val


def build_shards(videos: Path, shards: Path) -> None:
    vmae("shards", "build", str(videos), str(shards), "--short-side", "64", "--samples-per-shard", "64")


def pretrain(config: Path, train: Path, out: Path, seed: int, epochs: int, mask: str, ratio: float) -> dict:
    seconds = vmae("pretrain", "--config", str(config), "--dataset", str(train), "--out", str(out),
                   f"train.epochs={epochs}", f"train.seed={seed}", f"data.seed={seed}", f"model.mask={mask}",
                   f"model.mask_ratio={ratio}", f"train.base_lr={PRETRAIN_BASE_LR}", "model.drop_path=0.0",
                   # raw pixels: per-patch normalized targets keep only the noise textures' detail, which the
                   # model barely predicts (loss ~0.85 of 1), and drop each patch's colour, i.e. which mover covers
                   # it at that moment; seed 0: linear probe 28.5 % vs 21.5 %, fine-tuned 51.4 % vs 38.9 %
                   "model.norm_pix_loss=false")
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"seconds": seconds, "final_loss": losses[-1]}


def finetune(config: Path, train: Path, val: Path, out: Path, seed: int, epochs: int, pretrained: Path | None,
             max_steps: int = 0) -> dict:
    args = ["finetune", "--config", str(config), "--dataset", str(train), "--out", str(out), "--val-dataset",
            str(val), f"train.epochs={epochs}", f"train.max_steps={max_steps}", f"train.seed={seed}",
            f"data.seed={seed}", "train.base_lr=1.6e-2", "model.drop_path=0.1", "finetune.mixup=0",
            "finetune.cutmix=0", "finetune.layer_decay=0.9", "finetune.test_views=4", "finetune.test_crops=1"]
    if pretrained:
        args += ["--pretrained", str(pretrained)]
    seconds = vmae(*args)
    report = json.loads((out / "eval" / "report.json").read_text())
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = lines[-1]["step"]
    step_time = statistics.median(line["step_time"] for line in lines)
    return {"seconds": seconds, "top1": report["top1"], "top5": report["top5"], "steps": steps,
            "step_time": step_time, "overhead_seconds": seconds - steps * step_time}


def linear_probe(run: Path, train: Path, val: Path) -> float:
    vmae("linear-probe", str(run), "--dataset", str(train), "--val-dataset", str(val), "--views", "2",
         "--out", str(run / "linear-probe"))
    return json.loads((run / "linear-probe" / "report.json").read_text())["top1"]


def videos_in(shards: Path) -> int:
    from vmae.pipeline.data.shardset import ShardSet

    return len(ShardSet(shards))


def steps_per_epoch(shards: Path) -> int:
    return max(1, videos_in(shards) // BATCH)


def same_time_steps(pre: dict, tuned: dict) -> int:
    """Steps the from-scratch arm gets: the pretrain + fine-tune seconds, less the fixed cost (start-up, the final
    multi-view test) the scratch run pays too, at the fine-tuning run's median step time."""
    return round((pre["seconds"] + tuned["seconds"] - tuned["overhead_seconds"]) / tuned["step_time"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "learn")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain-epochs", type=int, default=PRETRAIN_EPOCHS,
                        help="passes of pretraining over all the training videos")
    parser.add_argument("--finetune-steps", type=int, default=FINETUNE_STEPS,
                        help="optimizer steps of fine-tuning (rounded to whole passes over the labelled videos)")
    parser.add_argument("--labeled-per-class", type=int, default=LABELED_PER_CLASS,
                        help=f"labelled training videos per class for fine-tuning, scratch and probe (0: all "
                             f"{TRAIN_PER_CLASS}); pretraining always reads all of them, without labels")
    parser.add_argument("--ablation", default="tube:0.9,frame:0.9,random:0.75",
                        help="strategy:ratio pairs pretrained on the first seed besides random:0.9 ('' for none)")
    parser.add_argument("--movers", type=int, default=MOVERS, help="moving objects per synthetic video")
    parser.add_argument("--out-json", type=Path, help="also write the results here")
    args = parser.parse_args()

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    config = args.out / "learn.yaml"
    config.write_text(yaml.safe_dump(shared_config(args.out)))
    train, labeled, val = build_data(args.out, args.movers, args.labeled_per_class)
    per_epoch = steps_per_epoch(labeled)
    ft_epochs = max(1, round(args.finetune_steps / per_epoch))
    results: dict = {"seeds": {}, "ablation": {},
                     "setting": {"pretrain_videos": videos_in(train), "labeled_videos": videos_in(labeled),
                                 "val_videos": videos_in(val), "pretrain_epochs": args.pretrain_epochs,
                                 "finetune_epochs": ft_epochs}}
    for seed in args.seeds:
        folder = args.out / f"seed{seed}"
        pre = pretrain(config, train, folder / "pretrain", seed, args.pretrain_epochs, "random", 0.9)
        tuned = finetune(config, labeled, val, folder / "finetune", seed, ft_epochs, folder / "pretrain")
        steps = same_time_steps(pre, tuned)
        scratch = finetune(config, labeled, val, folder / "scratch", seed, math.ceil(steps / per_epoch),
                           None, max_steps=steps)
        probe = linear_probe(folder / "pretrain", labeled, val)
        results["seeds"][seed] = {"pretrain": pre, "finetune": tuned, "scratch": scratch, "scratch_steps": steps,
                                  "linear_probe_top1": probe}
        print(f"seed {seed}: pretrained + fine-tuned {tuned['top1']:.1%} ({pre['seconds'] + tuned['seconds']:.0f} s) "
              f"vs scratch {scratch['top1']:.1%} ({scratch['seconds']:.0f} s, {steps} steps); linear probe "
              f"{probe:.1%}", flush=True)
    first = args.seeds[0]
    results["ablation"]["random:0.9"] = {"pretrain_loss": results["seeds"][first]["pretrain"]["final_loss"],
                                         "top1": results["seeds"][first]["finetune"]["top1"],
                                         "linear_probe_top1": results["seeds"][first]["linear_probe_top1"]}
    for item in filter(None, args.ablation.split(",")):
        mask, ratio = item.split(":")
        folder = args.out / f"ablation-{mask}-{ratio}"
        pre = pretrain(config, train, folder / "pretrain", first, args.pretrain_epochs, mask, float(ratio))
        tuned = finetune(config, labeled, val, folder / "finetune", first, ft_epochs, folder / "pretrain")
        results["ablation"][item] = {"pretrain_loss": pre["final_loss"], "top1": tuned["top1"],
                                     "linear_probe_top1": linear_probe(folder / "pretrain", labeled, val)}
        print(f"ablation {item}: fine-tuned {tuned['top1']:.1%}", flush=True)
    results["summary"] = summarize(results, len(json.loads((train / "manifest.json").read_text())["classes"]))
    results["machine"] = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    results["seconds"] = time.perf_counter() - started
    text = json.dumps(results, indent=1)
    (args.out / "learn.json").write_text(text)
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(text)
    print_table(results)
    return 0


def summarize(results: dict, classes: int) -> dict:
    pre = [r["finetune"]["top1"] for r in results["seeds"].values()]
    scratch = [r["scratch"]["top1"] for r in results["seeds"].values()]
    margins = [a - b for a, b in zip(pre, scratch, strict=True)]
    return {"chance": 1 / classes, "pretrained_mean": statistics.mean(pre), "scratch_mean": statistics.mean(scratch),
            "pretrained_range": [min(pre), max(pre)], "scratch_range": [min(scratch), max(scratch)],
            "margin_min": min(margins), "margin_mean": statistics.mean(margins),
            "pretraining_wins_every_seed": all(m > 0 for m in margins)}


def print_table(results: dict) -> None:
    s = results["summary"]
    print(f"\nmulti-view top-1 on the validation videos (chance {s['chance']:.1%}), seeds {list(results['seeds'])}:")
    print(f"  pretrained + fine-tuned  {s['pretrained_mean']:.1%}  (range {s['pretrained_range'][0]:.1%}-"
          f"{s['pretrained_range'][1]:.1%})")
    print(f"  from scratch, same time  {s['scratch_mean']:.1%}  (range {s['scratch_range'][0]:.1%}-"
          f"{s['scratch_range'][1]:.1%})")
    print(f"  margin: mean {s['margin_mean']:+.1%}, smallest {s['margin_min']:+.1%}; pretraining wins every seed: "
          f"{s['pretraining_wins_every_seed']}")
    print("\nmasking ablation (first seed): strategy:ratio | pretrain loss | fine-tuned top-1 | linear probe top-1")
    for item, row in results["ablation"].items():
        print(f"  {item:<13} | {row['pretrain_loss']:.3f} | {row['top1']:.1%} | {row['linear_probe_top1']:.1%}")
    print(f"\ntotal {results['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    sys.exit(main())
