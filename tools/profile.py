"""`vmae profile`: decode, load, model and train measured each alone, then together, on the user's dataset and
model config; the bottleneck named, the headroom given, the settings to try suggested.

Every stage runs for a bounded time (``seconds``) after a warm-up, cut into windows whose rates give a median and
a spread; a spread wider than ``SPREAD_LIMIT`` is flagged as too noisy to trust.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from vmae.tools.gpu_monitor import DeviceUtilization

log = logging.getLogger(__name__)

STAGES = ("decode", "load", "model", "train")
WINDOWS = 5
SPREAD_LIMIT = 0.25


@dataclass
class Rate:
    """A rate measured over consecutive windows: median, spread and the raw window rates."""

    unit: str
    windows: list[float]
    extra: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.windows) if self.windows else 0.0

    @property
    def spread(self) -> float:
        """(max − min) / median of the window rates."""
        if len(self.windows) < 2 or not self.median:
            return 0.0
        return (max(self.windows) - min(self.windows)) / self.median

    def as_dict(self) -> dict:
        return {"median": self.median, "unit": self.unit, "spread": round(self.spread, 3),
                "trusted": self.spread <= SPREAD_LIMIT, "windows": [round(w, 4) for w in self.windows], **self.extra}


def measure(step: Callable[[], float], seconds: float, warmup: int = 1, min_steps: int = WINDOWS) -> list[float]:
    """Call ``step`` (returning the amount it did) ``warmup`` times, then until ``seconds`` pass (at least
    ``min_steps`` calls); the calls are cut into up to WINDOWS consecutive windows, each giving amount / time."""
    for _ in range(warmup):
        step()
    done: list[tuple[float, float]] = []
    started = time.perf_counter()
    while len(done) < min_steps or time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        amount = step()
        done.append((amount, time.perf_counter() - t0))
    windows = np.array_split(np.arange(len(done)), min(WINDOWS, len(done)))
    return [sum(done[i][0] for i in w) / max(sum(done[i][1] for i in w), 1e-9) for w in windows if len(w)]


# ------------------------------------------------------------------ stages

def decode_stage(dataset: Path, data, seconds: float, scratch: Path) -> dict:
    """Raw decoded frames/s of our CPU decoder (whole videos, one core) next to `ffmpeg -threads 1` on the same
    files: the per-core limit."""
    from vmae.pipeline.data.decode import decode_frames

    files = extract_videos(dataset, scratch, limit=4)
    videos = [(f, f.read_bytes(), frame_count(f)) for f in files]

    def ours() -> float:  # one pass over the same videos per call, so that windows compare like with like
        for _, blob, n in videos:
            decode_frames(blob, np.arange(n), data.cpu_decoder)
        return sum(n for *_, n in videos)

    def ffmpeg() -> float:
        for path, _, _ in videos:
            subprocess.run([_ffmpeg(), "-nostdin", "-v", "error", "-threads", "1", "-i", str(path), "-f", "null",
                            "-"], check=True)
        return sum(n for *_, n in videos)

    result = {"ours": Rate("frames/s", measure(ours, seconds / 2, min_steps=3), {"decoder": data.cpu_decoder}),
              "ffmpeg_1_thread": Rate("frames/s", measure(ffmpeg, seconds / 2, min_steps=3))}
    if torch.cuda.is_available() and _dali_available():
        result["nvdec"] = Rate("frames/s", nvdec_rate(dataset, seconds / 2), {"decoder": "DALI mixed (NVDEC)"})
    return result


def nvdec_rate(dataset: Path, seconds: float) -> list[float]:
    """Frames/s of DALI's GPU decoder decoding whole videos straight from the shards."""
    from nvidia.dali import fn, pipeline_def, types

    from vmae.pipeline.data.shardset import ShardSet

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


def _dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401

        return True
    except ImportError:
        return False


def load_stage(dataset: Path, data, seconds: float, views: tuple[int, ...], sleep: float = 0.0) -> dict:
    """Delivered clips/s of the full loader for each K, and the frames decoded per delivered clip."""
    return {f"K={k}": loader_rate(dataset, replace(data, views=k), seconds, sleep) for k in views}


def loader_rate(dataset: Path, data, seconds: float, sleep: float = 0.0) -> Rate:
    from vmae.pipeline.data.loader import make_loader

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
    return Rate("clips/s", windows, extra)


def model_stage(model_options, data, seconds: float, dense: bool = False, sleep: float = 0.0) -> dict:
    """Forward + backward + AdamW step per attention backend: step time, tokens/s, FLOP/s and MFU against a
    matmul measured in the same run."""
    from vmae.model.attention import available_backends
    from vmae.model.flops import matmul_rate

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_rate(8192 if device.type == "cuda" else 2048, 5, dtype, str(device))
    clips = data.batch_size * data.views
    out = {"peak_flops": peak, "peak_source": f"{dtype} matmul measured on {device}"}
    for backend in available_backends(device):
        cfg = replace(model_options.model_config(data), attention=backend, dense=dense)
        out[backend] = model_rate(cfg, clips, device, dtype, seconds / 2, peak, sleep)
    return out


def model_rate(cfg, clips: int, device: torch.device, dtype: torch.dtype, seconds: float, peak: float,
               sleep: float = 0.0) -> Rate:
    from vmae.model.flops import training_flops
    from vmae.model.mae import MaskedVideoAutoencoder

    model = MaskedVideoAutoencoder(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    video = torch.randn(clips, 3, cfg.frames, cfg.size, cfg.size, device=device)
    generator = torch.Generator().manual_seed(0)

    def step() -> float:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(video, generator)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if sleep:  # testing aid: a slow model
            time.sleep(sleep)
        return clips

    windows = measure(step, seconds, warmup=2, min_steps=3)
    flops = training_flops(cfg, clips)
    rate = statistics.median(windows)
    visible = max(1, int(cfg.frames // cfg.tubelet[0] * (cfg.size // cfg.tubelet[1]) ** 2 * (1 - cfg.mask_ratio)))
    tokens = visible if not cfg.dense else cfg.frames // cfg.tubelet[0] * (cfg.size // cfg.tubelet[1]) ** 2
    return Rate("clips/s", windows, {"step_seconds": clips / rate, "tokens_per_s": rate * tokens,
                                     "flops_per_s": flops / clips * rate, "mfu": flops / clips * rate / peak})


def train_stage(cfg, seconds: float, steps_hint: float, scratch: Path) -> dict:
    """`vmae pretrain` for about ``seconds``: end-to-end clips/s and the share of time spent waiting for data."""
    from vmae.pipeline.train.metrics import read_metrics
    from vmae.pipeline.train.loop import pretrain
    from vmae.tools.config import to_yaml

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
    return {"end_to_end": Rate("clips/s", windows, {"data_wait_pct": round(100 * wait, 2), "steps": len(records)})}


# ------------------------------------------------------------------ verdict

def verdict(figures: dict, cfg) -> dict:
    """Which stage limits the run, by how much, what K would give, and what to try."""
    k = cfg.data.views
    loads = {int(name[2:]): r["median"] for name, r in figures.get("load", {}).items()}
    models = {name: r["median"] for name, r in figures.get("model", {}).items() if isinstance(r, dict)}
    out: dict = {"advice": []}
    if not loads or not models:
        return out
    load_rate = loads.get(k, max(loads.values()))
    best_backend = max(models, key=models.get)
    model_rate = models[best_backend]
    limit = "load" if load_rate < model_rate else "model"
    out.update(bottleneck=limit, load_clips_per_s=load_rate, model_clips_per_s=model_rate,
               headroom=max(load_rate, model_rate) / min(load_rate, model_rate), best_attention=best_backend)
    say = out["advice"]
    say.append(f"the loader delivers {load_rate:.1f} clips/s at K={k}, the model consumes {model_rate:.1f} "
               f"({best_backend} attention): {'loading' if limit == 'load' else 'the model'} is the limit, "
               f"{out['headroom']:.2f}x below the other")
    for other, rate in sorted(loads.items()):
        if other != k:
            predicted = min(rate, model_rate)
            say.append(f"K={other}: the loader gives {rate:.1f} clips/s; predicted end to end {predicted:.1f} "
                       f"clips/s ({predicted / min(load_rate, model_rate):.2f}x of now)")
    if limit == "load":
        backend = figures["load"].get(f"K={k}", {}).get("backend")
        if backend == "dali":
            say.append("try data.backend=cpu with data.workers set to the host's cores: on an H100 host with 16 "
                       "cores the CPU path gave ~20x the clips/s of DALI mixed (BENCHMARKS.md, GPU section)")
        if k < max(loads):
            say.append(f"raise data.views to {max(loads)}: each decoded video then gives more clips")
        if not cfg.data.span:
            say.append("try data.span=2: all views from one window, so less of each video is decoded")
        say.append(f"try more decode workers (data.workers, now {cfg.data.worker_count}) or a deeper "
                   f"data.prefetch (now {cfg.data.prefetch})")
        say.append("build shards with --pframe-interval equal to data.stride: clips then need no B-frame")
        decode = figures.get("decode", {})
        if decode and decode["ours"]["median"] < 0.8 * decode["ffmpeg_1_thread"]["median"]:
            say.append(f"the decoder runs at {decode['ours']['median'] / decode['ffmpeg_1_thread']['median']:.2f} of "
                       f"ffmpeg's per-core rate: try data.cpu_decoder="
                       f"{'pyav' if cfg.data.cpu_decoder == 'torchcodec' else 'torchcodec'}")
    else:
        say.append(f"the loader has {out['headroom']:.2f}x headroom: fewer decode workers leave more CPU to the model")
        if best_backend != cfg.model.attention and cfg.model.attention != "auto":
            say.append(f"use model.attention={best_backend} (the fastest here)")
        say.append("raise data.batch_size (the micro-batch) while memory allows; model.checkpoint=true trades "
                   "compute for memory")
    train = figures.get("train", {}).get("end_to_end")
    if train:
        wait = train["data_wait_pct"]
        ratio = train["median"] / min(load_rate, model_rate)
        out.update(end_to_end_clips_per_s=train["median"], end_to_end_over_slower=ratio, data_wait_pct=wait)
        say.append(f"together: {train['median']:.1f} clips/s, {ratio:.2f}x the slower stage, waiting for data "
                   f"{wait:.1f} % of the time")
        if wait > 10 and limit == "model":
            say.append("data wait above 10 % although the loader is faster: raise data.prefetch")
    return out


# ------------------------------------------------------------------ the whole profile

def run_profile(cfg, stages: tuple[str, ...], seconds: float, out: Path, sweep: dict[str, list[str]] | None = None,
                make_cfg: Callable[[list[str]], object] | None = None, baselines: bool = False,
                slow: dict[str, float] | None = None) -> dict:
    """Every requested stage, the verdict, the machine; writes profile.json and profile.png into ``out``."""
    from vmae.tools.config import ConfigError

    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(sorted(unknown))}; stages are {', '.join(STAGES)}")
    if not cfg.train.dataset:
        raise ConfigError("train.dataset is not set: pass --dataset DIR")
    dataset = Path(cfg.train.dataset)
    slow = slow or {}
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    figures: dict = {}
    utilization: dict = {}

    def watched(stage: str, measure_stage: Callable[[], dict]) -> dict:
        """The stage's figures; on a GPU, its SM and NVDEC utilization (NVML) go to ``utilization``."""
        with DeviceUtilization() as device:
            result = measure_stage()
        if device.summary():
            utilization[stage] = device.summary()
        return result

    with tempfile.TemporaryDirectory(prefix="vmae-profile-") as tmp:
        scratch = Path(tmp)
        if "decode" in stages:
            figures["decode"] = watched("decode", lambda: decode_stage(dataset, cfg.data, seconds, scratch))
        if "load" in stages:
            views = tuple(sorted({1, 2, 4, cfg.data.views}))
            figures["load"] = watched("load", lambda: load_stage(dataset, cfg.data, seconds / len(views), views,
                                                                 slow.get("load", 0.0)))
        if "model" in stages:
            figures["model"] = watched("model", lambda: model_stage(cfg.model, cfg.data, seconds,
                                                                    sleep=slow.get("model", 0.0)))
        if "train" in stages:
            # steps that fill about ``seconds``: at the slower of the two halves, when they were measured
            halves = [max((r.median for r in figures.get("model", {}).values() if isinstance(r, Rate)), default=0)]
            load = figures.get("load", {}).get(f"K={cfg.data.views}")
            halves.append(load.median if load else 0)
            rate = min((h for h in halves if h > 0), default=0)
            step = cfg.data.batch_size * cfg.data.views / rate if rate else 1.0
            figures["train"] = watched("train", lambda: train_stage(cfg, seconds, step, scratch))
        if baselines:
            figures["baselines"] = baseline_stage(dataset, cfg, seconds, scratch, figures)
        if sweep:
            figures["sweep"] = sweep_stage(sweep, make_cfg, seconds, dataset)
    report = {"machine": machine(), "config": {"dataset": str(dataset), "data": _plain(cfg.data),
                                               "model": _plain(cfg.model)},
              "seconds_per_stage": seconds, "stages": _plain(figures)}
    report["verdict"] = verdict(report["stages"], cfg)
    if utilization:
        report["gpu_utilization"] = utilization
        report["verdict"]["advice"] += utilization_advice(utilization)
    report["untrusted"] = [name for name, r in _rates(report["stages"]) if not r["trusted"]]
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    (out / "profile.json").write_text(json.dumps(report, indent=1))
    plot_profile(report, out / "profile.png")
    return report


def utilization_advice(utilization: dict) -> list[str]:
    """What SM and NVDEC utilization (NVML) say about the loading and training stages."""
    say = []
    for stage in ("load", "train"):
        figures = utilization.get(stage)
        if not figures:
            continue
        say.append(f"GPU during {stage}: SMs {figures['sm_util_pct']:.0f} %, NVDEC {figures['decoder_util_pct']:.0f} % "
                   f"(peak {figures['decoder_util_max_pct']:.0f} %; nvidia-smi's GPU-Util leaves NVDEC out)")
        if figures["decoder_util_pct"] > 90:
            say.append(f"NVDEC is saturated during {stage}: more views per decoded video (data.views), "
                       "data.span, or a lower shard resolution decode less")
    return say


def baseline_stage(dataset: Path, cfg, seconds: float, scratch: Path, figures: dict) -> dict:
    """VideoMAE's per-file decord loader and the dense (all-token) encoder, on the same videos and clip spec."""
    from vmae.tools.baselines import per_file_loader_rate

    files = extract_videos(dataset, scratch, limit=None)
    result: dict = {"per_file_decord": Rate("clips/s", per_file_loader_rate(files, replace(cfg.data, views=1),
                                                                              seconds))}
    dense = model_stage(cfg.model, cfg.data, seconds, dense=True)
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


def sweep_stage(sweep: dict[str, list[str]], make_cfg, seconds: float, dataset: Path) -> list[dict]:
    """The loader's clips/s over the grid of ``sweep`` values (each a dotted key of the data section)."""
    import itertools

    rows = []
    keys = list(sweep)
    for values in itertools.product(*(sweep[k] for k in keys)):
        overrides = [f"{k}={v}" for k, v in zip(keys, values, strict=True)]
        cfg = make_cfg(overrides)
        rate = loader_rate(dataset, cfg.data, seconds)
        rows.append({"settings": dict(zip(keys, values, strict=True)), **rate.as_dict()})
    return rows


# ------------------------------------------------------------------ output

def plot_profile(report: dict, path: Path) -> Path:
    """Stage rates in clips/s as bars, the decode and compute limits as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = report["stages"]
    bars: list[tuple[str, float]] = []
    for name, r in stages.get("load", {}).items():
        bars.append((f"load {name}", r["median"]))
    for name, r in stages.get("model", {}).items():
        if isinstance(r, dict):
            bars.append((f"model ({name})", r["median"]))
    if "train" in stages:
        bars.append(("end to end", stages["train"]["end_to_end"]["median"]))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(bars)), 4))
    colors = ["tab:blue" if b[0].startswith("load") else "tab:orange" if b[0].startswith("model") else "tab:green"
              for b in bars]
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color=colors)
    limits = profile_limits(report)
    for (label, value), style in zip(limits.items(), ("--", ":"), strict=False):
        ax.axhline(value, color="black", ls=style, lw=1)
        ax.text(len(bars) - 0.5, value, f" {label}: {value:.1f}", va="bottom", ha="right", fontsize=7)
    ax.set_ylabel("clips/s")
    ax.set_title(f"vmae profile: {report['verdict'].get('bottleneck', '?')} is the limit", fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    top = max([b[1] for b in bars] + list(limits.values()) + [0])
    if top > 5 * max([b[1] for b in bars] + [1e-9]):  # a far-off limit: a log axis keeps the bars readable
        ax.set_yscale("log")
        ax.set_ylim(min(b[1] for b in bars) / 2, top * 2)
    else:
        ax.set_ylim(0, top * 1.2 or 1)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def profile_limits(report: dict) -> dict[str, float]:
    """The ceilings in clips/s: ffmpeg's per-core decode rate over all cores at the loader's decode work per
    clip, and the model at the measured matmul peak."""
    stages, limits = report["stages"], {}
    decode, loads = stages.get("decode"), stages.get("load", {})
    views = report["config"]["data"]["views"]
    load = loads.get(f"K={views}")
    if decode and load and load.get("decoded_frames_per_clip"):
        limits["decode limit (ffmpeg x cores)"] = (decode["ffmpeg_1_thread"]["median"] * report["machine"]["cores"]
                                                   / load["decoded_frames_per_clip"])
    model = stages.get("model", {})
    rates = [r for r in model.values() if isinstance(r, dict)]
    if rates:
        best = max(rates, key=lambda r: r["median"])
        limits["model at the matmul peak"] = best["median"] / best["mfu"] if best["mfu"] else 0.0
    return limits


def compare_profiles(a: dict, b: dict) -> list[tuple[str, float, float, float]]:
    """(figure, a, b, b / a) for every median the two profiles share."""
    first, second = dict(_rates(a["stages"])), dict(_rates(b["stages"]))
    return [(name, first[name]["median"], second[name]["median"],
             second[name]["median"] / first[name]["median"] if first[name]["median"] else float("nan"))
            for name in first if name in second]


def machine() -> dict:
    import importlib.metadata as md

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("torch", "deepspeed", "nvidia-dali-cuda130", "xformers", "torchcodec", "av", "timm"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(),
            "versions": versions}


# ------------------------------------------------------------------ helpers

def extract_videos(dataset: Path, scratch: Path, limit: int | None) -> list[Path]:
    """The dataset's encoded videos as one file each (what ffmpeg and a per-file loader read)."""
    from vmae.pipeline.data.shardset import SampleRef, ShardSet
    from vmae.shards.tars import read_member

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
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.frames or sum(1 for _ in container.decode(stream))


def _ffmpeg() -> str:
    from vmae.shards.encode import ffmpeg_exe

    return shutil.which("ffmpeg") or ffmpeg_exe()


def _epochs(loader) -> Iterator[dict]:
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _rates(stages: dict, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """Every measured rate of a profile, named by its path (e.g. "load/K=4")."""
    for name, value in stages.items():
        path = f"{prefix}{name}"
        if isinstance(value, dict) and "median" in value and "windows" in value:
            yield path, value
        elif isinstance(value, dict):
            yield from _rates(value, path + "/")


def _plain(value):
    """Rates and dataclasses as JSON-ready values."""
    import dataclasses

    if isinstance(value, Rate):
        return value.as_dict()
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
