"""The training step on the device, as `vmae pretrain` builds it: micro-batch found, kernels settled, blocks
compiled, AdamW fused, in the DeepSpeed engine; each switch against its alternative, ZeRO-1/2/3, ViT-B/L/H.

    python bench/bench_step.py [--budget 420] [--out bench/results/step.json]
    python bench/bench_step.py --small      # the tiny model on CPU: every line of the script, in seconds

Every case is one process (DeepSpeed's process group and the CUDA allocator's peak are per process), built by
``pretrain_engine`` from a config (16x224 clips, 4 views, 90 % random masking, bf16, global batch 256 videos on
one GPU), fed random clips already on the device, timed over whole optimizer steps with CUDA synchronized at the
ends only. A row holds the micro-batch (found or given), activation checkpointing, the attention kernels, the
compile mode, ms per micro-batch, clips/s, counted TFLOP/s, MFU against the bf16 matmul rate measured in the same
run (and the datasheet), peak memory, and the step's limit (kernel mix, host syncs, memory) from the profiler.
Cases run in the order listed while the budget lasts; the rest are reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmae.model.flops import device_peak_flops, matmul_rate  # noqa: E402

# name, overrides and the seconds it is expected to take (compiling ViT-L and a micro-batch search included);
# "FOUND" stands for the micro-batch the first case found. In order of need: the headline, then each switch.
CASES: list[tuple[str, list[str], float]] = [
    ("vit-l zero-1 (as configured: auto)", ["model.preset=vit-l", "train.zero_stage=1"], 120),
    ("vit-l zero-1 eager", ["model.preset=vit-l", "train.zero_stage=1", "data.batch_size=FOUND",
                            "model.compile=off"], 45),
    ("vit-l zero-1 foreach adamw", ["model.preset=vit-l", "train.zero_stage=1", "data.batch_size=FOUND",
                                    "train.optimizer_kernel=foreach"], 60),
    ("vit-l zero-2", ["model.preset=vit-l", "train.zero_stage=2", "data.batch_size=FOUND"], 60),
    ("vit-l zero-3", ["model.preset=vit-l", "train.zero_stage=3", "data.batch_size=FOUND"], 60),
    ("vit-l visible, 4 videos", ["model.preset=vit-l", "data.batch_size=4"], 50),
    ("vit-l dense, 4 videos", ["model.preset=vit-l", "data.batch_size=4", "model.dense=true"], 60),
    ("vit-l zero-1 cuda graphs", ["model.preset=vit-l", "train.zero_stage=1", "data.batch_size=FOUND",
                                  "model.compile=reduce-overhead"], 90),
    ("vit-b zero-1", ["model.preset=vit-b", "train.zero_stage=1"], 90),
    ("vit-h zero-1", ["model.preset=vit-h", "train.zero_stage=1"], 150),
    ("vit-b zero-2", ["model.preset=vit-b", "train.zero_stage=2"], 90),
    ("vit-h zero-2", ["model.preset=vit-h", "train.zero_stage=2"], 150),
    ("vit-b zero-3", ["model.preset=vit-b", "train.zero_stage=3"], 90),
    ("vit-h zero-3", ["model.preset=vit-h", "train.zero_stage=3"], 150),
]
BASE = ["data.frames=16", "data.stride=4", "data.views=4", "data.crop_size=224", "data.batch_size=auto",
        "data.dtype=bfloat16", "model.mask=random", "model.mask_ratio=0.9", "train.global_batch=256",
        "train.reference_batch=0", "train.precision=bf16", "train.resume=never"]
SMALL = ["model.preset=tiny", "data.frames=8", "data.stride=2", "data.views=2", "data.crop_size=64",
         "data.batch_size=auto", "train.global_batch=8", "train.reference_batch=0", "train.precision=fp32",
         "train.resume=never"]
OPTIMIZER_STEPS = 2  # timed optimizer steps per case (each = accumulation micro-batches), after one untimed


def step_section(budget_s: float, small: bool = False) -> dict:
    """Every case that fits in ``budget_s`` seconds, each in its own process; the matmul rate they are held to."""
    started = time.perf_counter()
    cuda = torch.cuda.is_available() and not small
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    matmul = matmul_rate(8192 if cuda else 1024, 10 if cuda else 3, dtype, str(device))
    datasheet = device_peak_flops(device)[0] if cuda else matmul
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
           "matmul_tflops_measured": round(matmul / 1e12, 1), "datasheet_tflops": round(datasheet / 1e12, 1),
           "cases": {}, "skipped": []}
    cases = [("tiny zero-1 (as configured: auto)", SMALL, 20)] if small else [(n, BASE + o, s) for n, o, s in CASES]
    found = None
    for name, overrides, expected_s in cases:
        left = budget_s - (time.perf_counter() - started)
        if left < expected_s or ("data.batch_size=FOUND" in overrides and found is None):
            out["skipped"].append(name)
            continue
        overrides = [o.replace("FOUND", str(found)) for o in overrides]
        row = run_case(overrides, matmul, datasheet, timeout=left)
        out["cases"][name] = row
        if found is None and "micro_batch" in row:
            found = row["micro_batch"]
        print(f"step {name:36s} " + ("; ".join(f"{k} {v}" for k, v in row.items() if k != "trials")), flush=True)
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["summary"] = summarize(out["cases"])
    return out


def run_case(overrides: list[str], matmul: float, datasheet: float, timeout: float) -> dict:
    """One case in a child process; its row, or the error it ended with."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the child imports what this process imports
    with tempfile.TemporaryDirectory(prefix="vmae-step-") as out:
        spec = json.dumps({"overrides": overrides + [f"train.out={out}"], "matmul": matmul, "datasheet": datasheet})
        try:
            proc = subprocess.run([sys.executable, __file__, "--child", spec], env=env, cwd=ROOT, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"over the {timeout:.0f} s left of the budget"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr or proc.stdout)[-1500:]}
    return json.loads(lines[-1])


def child(spec: dict) -> dict:
    """The engine `vmae pretrain` builds for these overrides, stepped on random clips held on the device."""
    from vmae.pipeline.train.loop import pretrain_engine
    from vmae.tools.config import load_config
    from vmae.tools.log import setup_logging

    setup_logging("WARNING")
    cfg = load_config(overrides=spec["overrides"])
    engine, task, launch, chosen = pretrain_engine(cfg, cfg.train.precision)
    data, device = cfg.data, launch.device
    clips = data.batch_size * data.views
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
    video = torch.randn(clips, 3, data.frames, data.crop_size, data.crop_size, device=device, dtype=dtype)
    accumulation = engine.gradient_accumulation_steps()

    def micro_steps(count: int, first: int) -> None:
        for step in range(first, first + count):
            engine.backward(task.loss(engine, video, {}, step, 0))
            engine.step()

    micro_steps(accumulation, 0)  # compiles, warms the allocator and the optimizer states
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    micro_steps(OPTIMIZER_STEPS * accumulation, accumulation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / (OPTIMIZER_STEPS * accumulation)
    flops = task.flops_per_clip() * clips / seconds
    row = {"micro_batch": data.batch_size, "clips": clips, "accumulation": accumulation,
           "checkpoint": chosen.get("checkpoint"), "attention": chosen.get("attention"),
           "compile": chosen.get("compile"), "optimizer": cfg.train.optimizer_kernel, "zero": cfg.train.zero_stage,
           "ms_per_micro_batch": round(1000 * seconds, 2), "clips_per_s": round(clips / seconds, 1),
           "tflops": round(flops / 1e12, 1), "mfu_vs_matmul": round(flops / spec["matmul"], 3),
           "mfu_vs_datasheet": round(flops / spec["datasheet"], 3),
           "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
           "trials": chosen.get("trials", [])}
    row["limit"] = step_limit(engine, task, video)
    return row


def step_limit(engine, task, video: torch.Tensor) -> str | None:
    """What the profiler says limits the step (kernel mix, host syncs, memory), where it is available."""
    try:
        from vmae.tools.profile.breakdown import step_breakdown
    except ImportError:
        return None

    def step() -> None:
        engine.backward(task.loss(engine, video, {}, 0, 0))
        engine.step()

    return step_breakdown(step, video.device, steps=2).get("limit")


def summarize(cases: dict) -> dict:
    """The issue's figures from the rows: MFU of the headline, visible against dense, ZeRO-2 against ZeRO-1."""
    def rate(name: str) -> float | None:
        return cases.get(name, {}).get("clips_per_s")

    head = cases.get("vit-l zero-1 (as configured: auto)") or next(iter(cases.values()), {})
    out = {"headline_clips_per_s": head.get("clips_per_s"), "headline_mfu_vs_matmul": head.get("mfu_vs_matmul")}
    pairs = {"visible_over_dense": ("vit-l visible, 4 videos", "vit-l dense, 4 videos"),
             "zero2_over_zero1": ("vit-l zero-2", "vit-l zero-1 (as configured: auto)"),
             "compiled_over_eager": ("vit-l zero-1 (as configured: auto)", "vit-l zero-1 eager"),
             "fused_over_foreach": ("vit-l zero-1 (as configured: auto)", "vit-l zero-1 foreach adamw"),
             "cuda_graphs_over_compiled": ("vit-l zero-1 cuda graphs", "vit-l zero-1 (as configured: auto)")}
    for key, (a, b) in pairs.items():
        if rate(a) and rate(b):
            out[key] = round(rate(a) / rate(b), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all cases (the rest are skipped)")
    parser.add_argument("--small", action="store_true", help="the tiny model on CPU: a dry run of every line")
    parser.add_argument("--out", type=Path, default=Path("bench/results/step.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    if not args.small and not torch.cuda.is_available():
        print("no CUDA device: run with --small for the CPU dry run (bench_pretrain.py measures the CPU)")
        return 1
    report = step_section(args.budget, args.small)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"]), f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
