"""Fine-tuning step time with layer-wise lr decay against without, under DeepSpeed ZeRO 0-3.

    python bench/bench_layer_decay.py [--preset vit-s] [--stages 0,1,2,3] [--steps 8] [--out FILE]

DeepSpeed has been reported to slow down with many parameter groups (DeepSpeed's issue tracker). Layer decay gives the
classifier 2 x (depth + 2) groups (decayed / not, per layer) where plain AdamW has 2. Each case runs in its own
process (a fresh process group and ZeRO state): the engine's forward + backward + step on one batch held in
memory, fp32 on the CPU (bf16 on CUDA); median of the steps after 2 warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WARMUP = 2


def child(preset_name: str, stage: int, layer_decay: bool, steps: int) -> dict:
    """One case, in this process: step times of the fine-tuning engine."""
    import torch
    from timm.optim import param_groups_weight_decay

    from vmae.pipeline.train.engine import init_distributed, pick_precision
    from vmae.pipeline.train.tasks import FinetuneTask
    from vmae.pipeline.train.loop import build_engine
    from vmae.pipeline.train.config import batch_split
    from vmae.tools.config import load_config, preset_layer
    from vmae.tools.log import setup_logging

    setup_logging("WARNING")
    cfg = load_config(None, [f"model.preset={preset_name}", "data.frames=8", "data.crop_size=64", "data.views=1",
                             "data.batch_size=4", "train.global_batch=4", f"train.zero_stage={stage}",
                             "finetune.mixup=0", "finetune.cutmix=0", "model.drop_path=0"],
                      base=[preset_layer("finetune")])
    launch = init_distributed()
    task = FinetuneTask(cfg, [f"class{i}" for i in range(10)])
    if not layer_decay:  # plain AdamW: decayed and undecayed parameters, two groups
        task.param_groups = lambda model: param_groups_weight_decay(model, cfg.train.weight_decay,
                                                                    tuple(model.no_weight_decay()))
    precision = pick_precision(cfg.train, launch.device)
    engine = build_engine(task, launch, cfg.train, batch_split(cfg.train, cfg.data, 1), precision)
    video = torch.randn(4, 3, 8, 64, 64, device=launch.device)
    labels = torch.arange(4, device=launch.device)
    sync = torch.cuda.synchronize if launch.device.type == "cuda" else (lambda: None)
    times = []
    for step in range(steps + WARMUP):
        sync()
        started = time.perf_counter()
        engine.backward(task.loss(engine, video, {"label": labels}, step, 0))
        engine.step()
        sync()
        times.append(time.perf_counter() - started)
    return {"groups": len(engine.optimizer.param_groups), "step_ms": 1000 * statistics.median(times[WARMUP:]),
            "precision": precision}


def run_case(preset_name: str, stage: int, layer_decay: bool, steps: int) -> dict:
    command = [sys.executable, __file__, "--child", f"{preset_name},{stage},{int(layer_decay)},{steps}"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"ZeRO-{stage} layer_decay={layer_decay} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="vit-s")
    parser.add_argument("--stages", default="0,1,2,3")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench/results/layer-decay.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, stage, decay, steps = args.child.split(",")
        print(json.dumps(child(name, int(stage), bool(int(decay)), int(steps))))
        return 0
    rows = []
    for stage in (int(s) for s in args.stages.split(",")):
        plain, decayed = run_case(args.preset, stage, False, args.steps), run_case(args.preset, stage, True, args.steps)
        rows.append({"zero_stage": stage, "plain": plain, "layer_decay": decayed,
                     "ratio": decayed["step_ms"] / plain["step_ms"]})
        print(f"ZeRO-{stage}: {plain['groups']} groups {plain['step_ms']:.0f} ms, layer decay {decayed['groups']} "
              f"groups {decayed['step_ms']:.0f} ms: {rows[-1]['ratio']:.3f}x", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"preset": args.preset, "clip": "4 x 8x64x64", "machine": platform.processor()
                                    or platform.machine(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
