"""Multi-head attention behind one function, with three backends checked against each other.

- ``xformers``: ``memory_efficient_attention`` (CUDA only; layout [B, N, H, d]).
- ``sdpa``: PyTorch's ``scaled_dot_product_attention`` (CUDA and CPU; layout [B, H, N, d]).
- ``math``: softmax(q kᵀ / √d) v written out, the reference the others are tested against.

``auto`` picks xformers on CUDA when it imports and runs, else SDPA, and logs the choice once.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

BACKENDS = ("auto", "xformers", "sdpa", "math")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """softmax(q kᵀ / √d) v for q, k, v of shape [B, H, N, d]; returns [B, H, N, d]."""
    chosen = resolve_backend(backend, q.device)
    if chosen == "math":
        weights = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
        return weights.softmax(dim=-1) @ v
    if chosen == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    import xformers.ops as xops

    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend ``backend`` stands for on ``device``; refuses one that cannot run there, naming why."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "auto":
        return _auto_backend(device.type)
    if backend == "xformers":
        if device.type != "cuda":
            raise ValueError("the xformers backend has no CPU kernels: use sdpa (or auto) on CPU")
        problem = _xformers_problem()
        if problem:
            raise ValueError(f"the xformers backend does not run here: {problem}")
    return backend


def available_backends(device: torch.device) -> list[str]:
    """The backends that run on ``device``, fastest-expected first."""
    fused = ["xformers"] if device.type == "cuda" and _xformers_problem() is None else []
    return [*fused, "sdpa", "math"]


@lru_cache(maxsize=None)
def _auto_backend(device_type: str) -> str:
    choice, why = "sdpa", "not on CUDA"
    if device_type == "cuda":
        problem = _xformers_problem()
        choice, why = ("sdpa", f"xformers unavailable: {problem}") if problem else ("xformers", "CUDA")
    log.info("attention backend: %s (%s)", choice, why)
    return choice


@lru_cache(maxsize=1)
def _xformers_problem() -> str | None:
    """None when xformers' memory-efficient attention runs on this GPU, else the reason it does not."""
    try:
        import xformers.ops as xops

        x = torch.zeros(1, 8, 1, 64, device="cuda", dtype=torch.bfloat16)
        xops.memory_efficient_attention(x, x, x)
        return None
    except Exception as err:  # noqa: BLE001 - any failure means "use SDPA", with the reason logged
        return f"{type(err).__name__}: {err}"


class Attention(nn.Module):
    """timm-style multi-head self-attention (fused qkv, output projection) over [B, N, D] tokens."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.backend = num_heads, backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, self.backend)  # [B, H, N, d]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))
