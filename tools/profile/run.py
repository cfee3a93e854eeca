"""The whole profile: the requested stages in order (each watched for GPU utilization), the verdict, the machine;
written as profile.json and profile.png."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from vmae.pipeline.train.engine import pick_precision
from vmae.pipeline.train.tuning import fit_config
from vmae.tools.config import ConfigError
from vmae.tools.gpu_monitor import DeviceUtilization
from vmae.tools.profile import STAGES
from vmae.tools.profile.compare import named_rates
from vmae.tools.profile.plot import plot_profile
from vmae.tools.profile.rates import Rate
from vmae.tools.profile.stages import baseline_stage, decode_stage, load_stage, model_stage, sweep_stage, train_stage
from vmae.tools.profile.verdict import fit_advice, utilization_advice, verdict

# the packages whose versions a profile records, so that two profiles can be told apart
VERSIONED = ("torch", "deepspeed", "nvidia-dali-cuda130", "xformers", "torchcodec", "av", "timm")


def run_profile(cfg, stages: tuple[str, ...], seconds: float, out: Path, sweep: dict[str, list[str]] | None = None,
                make_cfg: Callable[[list[str]], object] | None = None, baselines: bool = False,
                slow: dict[str, float] | None = None) -> dict:
    """Every requested stage, the verdict, the machine; writes profile.json and profile.png into ``out``."""
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

    # data.batch_size=auto and model.checkpoint=auto resolved as the training run would, before anything is measured
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fitted = fit_config(cfg, device, pick_precision(cfg.train, device))
    with tempfile.TemporaryDirectory(prefix="vmae-profile-") as tmp:
        scratch = Path(tmp)
        if "decode" in stages:
            figures["decode"] = watched("decode", lambda: decode_stage(dataset, cfg.data, seconds, scratch))
        if "load" in stages:
            views = tuple(sorted({1, 2, 4, cfg.data.views}))
            figures["load"] = watched("load", lambda: load_stage(dataset, cfg.data, seconds / len(views), views,
                                                                 slow.get("load", 0.0)))
        if "model" in stages:
            figures["model"] = watched("model", lambda: model_stage(cfg.model, cfg.data, seconds, train=cfg.train,
                                                                    sleep=slow.get("model", 0.0)))
        if "train" in stages:
            step = _train_step_hint(cfg, figures)
            peak = figures.get("model", {}).get("peak_flops")  # one matmul rate for every MFU of the profile
            figures["train"] = watched("train", lambda: train_stage(cfg, seconds, step, scratch, peak))
        if baselines:
            figures["baselines"] = baseline_stage(dataset, cfg, seconds, scratch, figures)
        if sweep:
            figures["sweep"] = sweep_stage(sweep, make_cfg, seconds, dataset)
    report = {"machine": machine(), "config": {"dataset": str(dataset), "data": _plain(cfg.data),
                                               "model": _plain(cfg.model)},
              "seconds_per_stage": seconds, "stages": _plain(figures)}
    report["verdict"] = verdict(report["stages"], cfg)
    if fitted:
        report["device_fit"] = fitted
        report["verdict"]["advice"].insert(0, fit_advice(fitted))
    if utilization:
        report["gpu_utilization"] = utilization
        report["verdict"]["advice"] += utilization_advice(utilization)
    report["untrusted"] = [name for name, r in named_rates(report["stages"]) if not r["trusted"]]
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    (out / "profile.json").write_text(json.dumps(report, indent=1))
    plot_profile(report, out / "profile.png")
    return report


def _train_step_hint(cfg, figures: dict) -> float:
    """Seconds per training step, so that the train stage fills about its time: at the slower of the model and
    the loader where they were measured, else 1 s."""
    halves = [max((r.median for r in figures.get("model", {}).values() if isinstance(r, Rate)), default=0)]
    load = figures.get("load", {}).get(f"K={cfg.data.views}")
    halves.append(load.median if load else 0)
    rate = min((h for h in halves if h > 0), default=0)
    return cfg.data.batch_size * cfg.data.views / rate if rate else 1.0


def machine() -> dict:
    """The CPU, core count, GPU, Python and the versions of the packages that set the figures."""
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "usable_cores": _usable_cores(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "versions": {p: _version(p) for p in VERSIONED}}


def _usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform: every core
        return os.cpu_count() or 1


def _cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, or what `platform` knows where that cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _plain(value: Any) -> Any:
    """Rates and dataclasses as JSON-ready values."""
    if isinstance(value, Rate):
        return value.as_dict()
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
