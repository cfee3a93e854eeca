"""The profile's measuring stages, each on its own: decode (our decoder next to ffmpeg, and NVDEC), load (the full
loader per K), model (forward + backward + step per attention backend, and what limits the fastest one's step),
train (`vmae pretrain` end to end), and the comparisons: the per-file decord baseline, the dense encoder and the
loader sweep."""

from __future__ import annotations

import itertools
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import av
import numpy as np
import torch
import torch.nn as nn

from vmae.model.attention import available_backends
from vmae.model.flops import matmul_rate, training_flops
from vmae.model.mae import MaskedVideoAutoencoder, compile_blocks, encoder_token_count
from vmae.pipeline.data.backends import CPU_DECODER_NAMES, dali_available
from vmae.pipeline.data.decode import decode_frames
from vmae.pipeline.data.loader import make_loader
from vmae.pipeline.data.shardset import SampleRef, ShardSet
from vmae.pipeline.train.config import TrainConfig
from vmae.pipeline.train.engine import make_optimizer
from vmae.pipeline.train.loop import pretrain
from vmae.pipeline.train.tuning import compile_mode
from vmae.pipeline.train.metrics import read_metrics
from vmae.shards.encode import ffmpeg_exe
from vmae.shards.tars import read_member
from vmae.tools.baselines import per_file_loader
from vmae.tools.config import to_yaml
from vmae.tools.profile.breakdown import step_breakdown
from vmae.tools.profile.rates import WINDOWS, Rate, measure, measure_timed

# ------------------------------------------------------------------ decode


def decode_stage(dataset: Path, data, seconds: float, scratch: Path) -> dict:
    """Raw decoded frames/s of our CPU decoder (whole videos, one core) next to `ffmpeg -threads 1` on the same
    files: the per-core limit, in frames per CPU-second of ffmpeg's own decoding."""
    files = extract_videos(dataset, scratch, limit=4)
    videos = [(f, f.read_bytes(), frame_count(f)) for f in files]

    def decoder(name: str) -> Callable[[], float]:
        def one_pass() -> float:  # the same videos each call, so that windows compare like with like
            for _, blob, n in videos:
                decode_frames(blob, np.arange(n), name)
            return sum(n for *_, n in videos)
        return one_pass

    def ffmpeg() -> tuple[float, float]:
        return sum(n for *_, n in videos), sum(ffmpeg_decode_seconds(path) for path, _, _ in videos)

    others = [name for name in CPU_DECODER_NAMES if name != data.cpu_decoder]
    share = seconds / (2 + len(others))
    result = {"ours": Rate("frames/s", measure(decoder(data.cpu_decoder), share, min_steps=3),
                           {"decoder": data.cpu_decoder}),
              "ffmpeg_1_thread": Rate("frames/s", measure_timed(ffmpeg, share, min_steps=3),
                                      {"timed": "CPU seconds of the decode (ffmpeg -benchmark)"})}
    # every other registered decoder on the same files: advice names one only where it measured faster
    result["other_decoders"] = {name: Rate("frames/s", measure(decoder(name), share, min_steps=3), {"decoder": name})
                                for name in others}
    if torch.cuda.is_available() and dali_available():
        result["nvdec"] = Rate("frames/s", nvdec_rate(dataset, seconds / 2), {"decoder": "DALI mixed (NVDEC)"})
    return result


def ffmpeg_decode_seconds(path: Path) -> float:
    """CPU seconds `ffmpeg -threads 1` spends decoding ``path`` (its -benchmark figures): the process's start-up
    and probing, which cost more than decoding a short clip and which a loader's worker pays once, left out."""
    started = time.perf_counter()
    proc = subprocess.run([_ffmpeg(), "-nostdin", "-hide_banner", "-nostats", "-v", "info", "-benchmark",
                           "-threads", "1", "-i", str(path), "-f", "null", "-"],
                          check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    bench = re.search(r"bench: utime=([\d.]+)s stime=([\d.]+)s", proc.stderr)
    cpu = float(bench[1]) + float(bench[2]) if bench else 0.0
    # an ffmpeg without -benchmark figures (or a clip under its 1 ms resolution): the whole call's wall time,
    # start-up included, which understates the rate
    return cpu or wall


def nvdec_rate(dataset: Path, seconds: float) -> list[float]:
    """Frames/s of DALI's GPU decoder decoding whole videos straight from the shards."""
    # nvidia.dali is optional and heavy: only a GPU profile with DALI installed loads it
    from nvidia.dali import fn, pipeline_def, types

    shardset = ShardSet(dataset)

    @pipeline_def(batch_size=2, num_threads=2, device_id=torch.cuda.current_device())
    def whole_videos():
        video = fn.readers.webdataset(paths=[str(p) for p in shardset.shards],
                                      index_paths=[str(p.with_suffix(".idx")) for p in shardset.shards],
                                      ext=[shardset.video_ext], dtypes=[types.UINT8], name="reader")
        return fn.decoders.video(video, device="mixed")

    pipe = whole_videos()
    pipe.build()

    def step() -> float:
        (frames,) = pipe.run()
        torch.cuda.synchronize()
        return sum(shape[0] for shape in frames.shape())

    return measure(step, seconds, warmup=2, min_steps=3)


# ------------------------------------------------------------------ load


def load_stage(dataset: Path, data, seconds: float, views: tuple[int, ...], sleep: float = 0.0) -> dict:
    """Delivered clips/s of the full loader for each K, and the frames decoded per delivered clip."""
    return {f"K={k}": loader_rate(dataset, replace(data, views=k), seconds, sleep) for k in views}


def loader_rate(dataset: Path, data, seconds: float, sleep: float = 0.0) -> Rate:
    """Delivered clips/s of ``make_loader`` with the data config ``data``, after the prefetched batches."""
    loader = make_loader(dataset, data)
    batches = _epochs(loader)

    def step() -> float:
        batch = next(batches)
        if sleep:  # testing aid: a slow loader
            time.sleep(sleep)
        return batch["video"].shape[0]

    # warm-up: worker start-up and the batches they prefetched before the clock starts
    workers = data.worker_count
    windows = measure(step, seconds, warmup=workers * data.prefetch + 1, min_steps=2 * WINDOWS)
    extra = {"backend": loader.backend, "views": data.views,
             "decoded_frames_per_clip": round(loader.stats.decoded_frames_per_clip, 2)}
    if loader.stats.failed:
        extra["failed"] = dict(loader.stats.failed)
    if loader.stats.made_by:
        extra["made_by"] = dict(loader.stats.made_by)
    loader.close()
    return Rate("clips/s", windows, extra)


# ------------------------------------------------------------------ model


def model_stage(model_options, data, seconds: float, dense: bool = False, sleep: float = 0.0,
                breakdown: bool = True, train: TrainConfig | None = None) -> dict:
    """Forward + backward + AdamW step per attention backend: step time, tokens/s, FLOP/s and MFU against a
    matmul measured in the same run; with ``breakdown``, what limits the fastest backend's step (its kernel mix,
    host syncs and memory, ``breakdown.step_breakdown``) under "breakdown"."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_rate(8192 if device.type == "cuda" else 2048, 5, dtype, str(device))
    clips = data.batch_size * data.views
    out: dict = {"peak_flops": peak, "peak_source": f"{dtype} matmul measured on {device}"}
    configs = {backend: replace(model_options, attention=backend, dense=dense)
               for backend in available_backends(device)}
    for backend, cfg in configs.items():
        out[backend] = model_rate(cfg, clips, device, dtype, seconds / 2, peak, sleep, data.frames, data.crop_size)
    if breakdown:
        fastest = max(configs, key=lambda backend: out[backend].median)
        # built afresh rather than kept from its rate: holding every backend's model and optimizer state until the
        # fastest is known would crowd the device's memory, and the breakdown's peak memory with it
        step, model = training_step(configs[fastest], clips, device, dtype, data.frames, data.crop_size, train,
                                    compiled=True)
        out["breakdown"] = {"attention": fastest, "checkpoint": model.checkpoint,
                            "compile": compile_mode(model_options.compile, device, 0), **step_breakdown(step, device)}
    return out


def training_step(cfg, clips: int, device: torch.device, dtype: torch.dtype, frames: int = 16, size: int = 224,
                  train: TrainConfig | None = None, compiled: bool = False) -> tuple[Callable[[], None], nn.Module]:
    """One training step (forward, backward, AdamW step) of the model config ``cfg`` on ``clips`` random
    ``frames`` x ``size``² clips, as a callable that returns without waiting for the device, and its model. As
    `vmae pretrain` runs it: weights in ``dtype``, attention kernels settled, checkpointing as configured (auto: as
    the device fit left it, off when still auto), AdamW on ``train.optimizer_kernel``'s kernel, and with
    ``compiled`` the blocks under ``model.compile`` (the optimizer here steps the weights themselves, not
    DeepSpeed's fp32 masters)."""
    model = MaskedVideoAutoencoder(cfg, frames, size).to(device=device, dtype=dtype)
    model.settle_attention(dtype, device)
    mode = compile_mode(cfg.compile, device, 0)
    if compiled and mode != "off":
        compile_blocks(model, mode)
    optimizer = make_optimizer([{"params": list(model.parameters())}], train or TrainConfig(), "bf16", device)
    video = torch.randn(clips, 3, frames, size, size, device=device, dtype=dtype)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        loss = model(video, generator)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, model


def model_rate(cfg, clips: int, device: torch.device, dtype: torch.dtype, seconds: float, peak: float,
               sleep: float = 0.0, frames: int = 16, size: int = 224) -> Rate:
    """Clips/s of training steps on random ``frames`` x ``size``² video of the model config ``cfg``, with tokens/s,
    FLOP/s and MFU."""
    train, model = training_step(cfg, clips, device, dtype, frames, size)

    def step() -> float:
        train()
        if device.type == "cuda":  # each window's time is the device's, not the launches'
            torch.cuda.synchronize()
        if sleep:  # testing aid: a slow model
            time.sleep(sleep)
        return clips

    windows = measure(step, seconds, warmup=2, min_steps=3)
    flops = training_flops(cfg, frames, size, clips)
    rate = statistics.median(windows)
    tokens = encoder_token_count(cfg, model.grid)
    return Rate("clips/s", windows, {"step_seconds": clips / rate, "tokens_per_s": rate * tokens,
                                     "flops_per_s": flops / clips * rate, "mfu": flops / clips * rate / peak})


# ------------------------------------------------------------------ train


def train_stage(cfg, seconds: float, steps_hint: float, scratch: Path, peak: float | None = None) -> dict:
    """`vmae pretrain` for about ``seconds``: end-to-end clips/s, the share of time spent waiting for data, and MFU
    against ``peak`` (the matmul rate the model stage measured; measured here when it did not run)."""
    warmup = 2
    steps = int(min(200, max(WINDOWS, seconds / max(steps_hint, 1e-3)))) + warmup
    train = replace(cfg.train, out=str(scratch / "train"), max_steps=steps, resume="never", checkpoint_every=10**9,
                    log_every=1, visualize_every=0, epochs=max(cfg.train.epochs, 2),
                    warmup_epochs=min(cfg.train.warmup_epochs, 1))
    run = replace(cfg, train=train)
    pretrain(run, to_yaml(run))
    records = read_metrics(Path(train.out) / "metrics.jsonl")[warmup:]
    windows = [sum(r["clips"] for r in part) / sum(r["data_wait"] + r["compute"] for r in part)
               for part in np.array_split(np.array(records, dtype=object), min(WINDOWS, len(records))) if len(part)]
    wait = sum(r["data_wait"] for r in records) / sum(r["data_wait"] + r["compute"] for r in records)
    if peak is None:
        cuda = torch.cuda.is_available()
        peak = matmul_rate(8192 if cuda else 2048, 5, torch.bfloat16 if cuda else torch.float32,
                           "cuda" if cuda else "cpu")
    flops = training_flops(run.model, run.data.frames, run.data.crop_size) * float(np.median(windows))
    return {"end_to_end": Rate("clips/s", windows, {"data_wait_pct": round(100 * wait, 2), "steps": len(records),
                                                    "mfu_vs_measured_matmul": round(flops / peak, 4)})}


# ------------------------------------------------------------------ comparisons


def baseline_stage(dataset: Path, cfg, seconds: float, scratch: Path, figures: dict) -> dict:
    """VideoMAE's per-file decord loader and the dense (all-token) encoder, on the same videos and clip spec."""
    files = extract_videos(dataset, scratch, limit=None)
    result: dict = {"per_file_decord": Rate("clips/s", per_file_loader_rate(files, replace(cfg.data, views=1),
                                                                              seconds))}
    dense = model_stage(cfg.model, cfg.data, seconds, dense=True, breakdown=False)
    result["dense_encoder"] = {k: v for k, v in dense.items() if isinstance(v, Rate)}
    ratios = {}
    loads = figures.get("load", {})
    if "K=1" in loads:
        ratios["loader K=1 / per-file decord"] = loads["K=1"].median / result["per_file_decord"].median
    if f"K={cfg.data.views}" in loads:
        ratios[f"loader K={cfg.data.views} / per-file decord"] = (loads[f"K={cfg.data.views}"].median
                                                                  / result["per_file_decord"].median)
    for backend, rate in result["dense_encoder"].items():
        ours = figures.get("model", {}).get(backend)
        if isinstance(ours, Rate):
            ratios[f"visible-token model / dense ({backend})"] = ours.median / rate.median
    result["ratios"] = ratios
    return result


def per_file_loader_rate(files: list[Path], data, seconds: float) -> list[float]:
    """Clips/s windows of the per-file decord loader for about ``seconds`` (after a warm-up batch)."""
    loader = per_file_loader(files, data, data.workers or 1)

    def forever() -> Iterator:
        while True:
            yield from loader

    batches = forever()
    return measure(lambda: next(batches).shape[0], seconds)


def sweep_stage(sweep: dict[str, list[str]], make_cfg: Callable[[list[str]], object], seconds: float,
                dataset: Path) -> list[dict]:
    """The loader's clips/s over the grid of ``sweep`` values (each a dotted key of the data section)."""
    rows = []
    keys = list(sweep)
    for values in itertools.product(*(sweep[k] for k in keys)):
        overrides = [f"{k}={v}" for k, v in zip(keys, values, strict=True)]
        cfg = make_cfg(overrides)
        rate = loader_rate(dataset, cfg.data, seconds)
        rows.append({"settings": dict(zip(keys, values, strict=True)), **rate.as_dict()})
    return rows


# ------------------------------------------------------------------ helpers


def extract_videos(dataset: Path, scratch: Path, limit: int | None) -> list[Path]:
    """The dataset's encoded videos as one file each (what ffmpeg and a per-file loader read)."""
    shardset = ShardSet(dataset)
    folder = scratch / "videos"
    folder.mkdir(exist_ok=True)
    files = []
    for shard, tar in enumerate(shardset.shards):
        for row in range(shardset.counts[shard]):
            key, members = shardset.members(SampleRef(shard, row))
            path = folder / f"{key}.{shardset.video_ext}"
            if not path.exists():
                path.write_bytes(read_member(tar, *members[shardset.video_ext]))
            files.append(path)
            if limit and len(files) == limit:
                return files
    return files


def frame_count(path: Path) -> int:
    """Frames in the video file ``path``: from its header, or counted by decoding where the header has none."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.frames or sum(1 for _ in container.decode(stream))


def _ffmpeg() -> str:
    return shutil.which("ffmpeg") or ffmpeg_exe()


def _epochs(loader) -> Iterator[dict]:
    """The loader's batches, epoch after epoch, without end."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1
