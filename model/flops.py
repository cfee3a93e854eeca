"""Counted FLOPs of a training step and the device's peak: the two halves of MFU."""

from __future__ import annotations

import math
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from vmae.model.config import ModelConfig
from vmae.model.mae import MaskedVideoAutoencoder, VideoClassifier
from vmae.model.masking import make_mask

# Dense bf16 tensor-core peaks (vendor datasheets, SXM parts); matched against torch.cuda.get_device_name().
GPU_PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "GH200": 989e12, "B200": 2250e12,
                 "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "A10": 125e12}


def _attention_flops(query, key, value) -> int:
    """Two matmuls per head, q kᵀ and p v, on shapes [..., N, d]."""
    *batch, n_q, d = query
    n_k, d_v = key[-2], value[-1]
    heads = math.prod(batch)
    return 2 * heads * n_q * n_k * (d + d_v)


def _cpu_flash_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return _attention_flops(query, key, value)


def _cpu_flash_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return 2 * _attention_flops(query, key, value)  # four matmuls: grads of p, v, q and k


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, taught SDPA's CPU flash kernels, which it does not know and would count as zero."""
    aten = torch.ops.aten
    return FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward})


def training_flops(cfg: ModelConfig, frames: int, size: int, clips: int = 1) -> float:
    """FLOPs of one forward and backward over ``clips`` clips of ``frames`` x ``size`` x ``size``, counted on the
    meta device (no memory, no time)."""
    with torch.device("meta"):
        model = MaskedVideoAutoencoder(cfg, frames, size)
        video = torch.empty(clips, 3, frames, size, size)
    mask = make_mask(cfg.mask, clips, model.grid, cfg.mask_ratio, torch.Generator().manual_seed(0))
    with flop_counter() as counter:
        model(video, torch.Generator().manual_seed(0), mask=mask)[0].backward()
    return float(counter.get_total_flops())


def classifier_training_flops(cfg: ModelConfig, classes: int, frames: int, size: int, clips: int = 1) -> float:
    """FLOPs of one fine-tuning forward and backward (all tokens) over ``clips`` clips of ``frames`` x ``size`` x
    ``size``, counted on the meta device."""
    with torch.device("meta"):
        model = VideoClassifier(cfg, classes, frames, size)
        video = torch.empty(clips, 3, frames, size, size)
    with flop_counter() as counter:
        model(video).sum().backward()
    return float(counter.get_total_flops())


def matmul_rate(size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32,
                device: str = "cpu") -> float:
    """FLOP/s of a square matmul (median of ``repeats``): the machine's practical peak."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times)


def device_peak_flops(device: torch.device, override_tflops: float = 0.0) -> tuple[float, str]:
    """The peak MFU is measured against, and where it came from."""
    if override_tflops:
        return override_tflops * 1e12, "train.peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_BF16.items():
            if key in name:
                return peak, f"{name} bf16 datasheet"
        return matmul_rate(8192, 5, torch.bfloat16, str(device)), f"{name}: bf16 matmul measured"
    return matmul_rate(), "CPU fp32 matmul measured"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
