"""Step time of the MAE-ST model on this machine's CPU, visible-token encoder against the dense one.

    python bench/bench_model.py [--preset vit-b] [--batch 2] [--steps 3] [--out bench/results/model.json]

One step = forward + backward, fp32, 16x224x224 clips, mask ratio 0.9. Reported: median step time of each mode
after one warm-up step, their ratio (MAE-ST measured 5.8x for ViT-L on A100s; the FLOP ratio is the ceiling),
FLOPs counted by torch's FLOP counter for the same step (SDPA's CPU kernels included), and the achieved FLOP/s as a
fraction of this machine's fp32 matmul rate (the faster of two measurements in the same run, before and after).
With transformers installed, HuggingFace's VideoMAEForPreTraining of the same sizes (randomly initialized, no
download) runs the same step, counted the same way, against ours in VideoMAE's setting (tube targets, sin-cos
positions) without and with decoder masking.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmae.model.flops import flop_counter, matmul_rate  # noqa: E402
from vmae.model.config import PRESETS  # noqa: E402
from vmae.model.mae import MaskedVideoAutoencoder, preset  # noqa: E402

FRAMES, SIZE = 16, 224  # MAE-ST's clips: the models' default


def step_flops(model: MaskedVideoAutoencoder, video: torch.Tensor) -> float:
    with flop_counter() as counter:
        loss = model(video, torch.Generator().manual_seed(0))[0]
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def step_seconds(model: MaskedVideoAutoencoder, video: torch.Tensor, steps: int) -> list[float]:
    times = []
    for i in range(steps + 1):
        started = time.perf_counter()
        loss = model(video, torch.Generator().manual_seed(i))[0]
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i:  # the first step is a warm-up
            times.append(time.perf_counter() - started)
    return times


def hf_videomae(name: str):
    """HuggingFace transformers' VideoMAEForPreTraining with our preset's sizes, randomly initialized (no download)."""
    from transformers import VideoMAEConfig, VideoMAEForPreTraining  # optional: main() skips it when missing

    arch = PRESETS[name]
    return VideoMAEForPreTraining(VideoMAEConfig(
        image_size=SIZE, patch_size=arch.tubelet[1], num_frames=FRAMES, tubelet_size=arch.tubelet[0],
        hidden_size=arch.dim, num_hidden_layers=arch.depth, num_attention_heads=arch.heads,
        intermediate_size=int(arch.dim * arch.mlp_ratio), decoder_hidden_size=arch.decoder_dim,
        decoder_num_hidden_layers=arch.decoder_depth, decoder_num_attention_heads=arch.decoder_heads,
        decoder_intermediate_size=int(arch.decoder_dim * arch.mlp_ratio), norm_pix_loss=True,
        attn_implementation="sdpa"))


def hf_inputs(video: torch.Tensor, ratio: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HuggingFace's [B, T, C, H, W] frames and a random boolean mask with the same hidden count in each clip."""
    b, n = video.shape[0], 8 * 14 * 14
    g = torch.Generator().manual_seed(seed)
    masked = torch.zeros(b, n, dtype=torch.bool)
    for row in range(b):
        masked[row, torch.randperm(n, generator=g)[: n - int(n * (1 - ratio))]] = True
    return video.transpose(1, 2).contiguous(), masked


def hf_step(model, frames: torch.Tensor, masked: torch.Tensor) -> None:
    model(pixel_values=frames, bool_masked_pos=masked).loss.backward()
    model.zero_grad(set_to_none=True)


def hf_step_flops(model, video: torch.Tensor, ratio: float) -> float:
    with flop_counter() as counter:
        hf_step(model, *hf_inputs(video, ratio, 0))
    return counter.get_total_flops()


def hf_step_seconds(model, video: torch.Tensor, ratio: float, steps: int) -> list[float]:
    times = []
    for i in range(steps + 1):
        frames, masked = hf_inputs(video, ratio, i)
        started = time.perf_counter()
        hf_step(model, frames, masked)
        if i:
            times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="vit-b")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/model.json"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    video = torch.randn(args.batch, 3, FRAMES, SIZE, SIZE)
    peak = matmul_rate()
    rows = {}
    for dense in (False, True):
        model = MaskedVideoAutoencoder(preset(args.preset, dense=dense, attention="sdpa"))
        flops = step_flops(model, video)
        times = step_seconds(model, video, args.steps)
        seconds = statistics.median(times)
        rows["dense" if dense else "visible"] = {
            "step_seconds": round(seconds, 3), "runs": [round(t, 3) for t in times],
            "gflops_per_step": round(flops / 1e9, 1), "achieved_gflops_per_s": round(flops / seconds / 1e9, 1)}
        del model
    try:  # the same sizes in HuggingFace's VideoMAE (tube targets, sin-cos positions, as VideoMAE does)
        hf = hf_videomae(args.preset)
        flops, seconds = hf_step_flops(hf, video, 0.9), statistics.median(hf_step_seconds(hf, video, 0.9, args.steps))
        rows["huggingface VideoMAEForPreTraining"] = {
            "step_seconds": round(seconds, 3), "gflops_per_step": round(flops / 1e9, 1),
            "achieved_gflops_per_s": round(flops / seconds / 1e9, 1)}
        del hf
        for name, extra in (("ours, VideoMAE's setting", {}), ("ours, VideoMAE's setting + decoder masking 0.5",
                                                              {"decoder_mask_ratio": 0.5})):
            model = MaskedVideoAutoencoder(preset(args.preset, target="tube", positions="sincos",
                                                  attention="sdpa", **extra))
            rows[name] = {"step_seconds": round(statistics.median(step_seconds(model, video, args.steps)), 3)}
            del model
    except ImportError:
        print("transformers is not installed: the HuggingFace comparison is skipped")
    peak_after = matmul_rate()
    for row in rows.values():  # against the faster of the two matmul measurements: no flattery
        if "achieved_gflops_per_s" not in row:
            continue
        row["fraction_of_matmul_rate"] = round(row["achieved_gflops_per_s"] * 1e9 / max(peak, peak_after), 3)
    result = {"preset": args.preset, "batch": args.batch, "threads": torch.get_num_threads(),
              "matmul_gflops_per_s": [round(peak / 1e9, 1), round(peak_after / 1e9, 1)], "rows": rows,
              "speedup_visible_vs_dense": round(rows["dense"]["step_seconds"] / rows["visible"]["step_seconds"], 2),
              "flop_ratio": round(rows["dense"]["gflops_per_step"] / rows["visible"]["gflops_per_step"], 2)}
    hf_row = rows.get("huggingface VideoMAEForPreTraining")
    if hf_row:
        for name in ("ours, VideoMAE's setting", "ours, VideoMAE's setting + decoder masking 0.5"):
            result[f"{name} vs huggingface"] = round(rows[name]["step_seconds"] / hf_row["step_seconds"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
