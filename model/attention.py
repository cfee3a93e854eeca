"""Multi-head attention behind one function, with three backends checked against each other.

- ``xformers``: ``memory_efficient_attention`` (CUDA only; layout [B, N, H, d]).
- ``sdpa``: PyTorch's ``scaled_dot_product_attention`` (CUDA and CPU; layout [B, H, N, d]).
- ``math``: softmax(q kᵀ / √d) v written out, the reference the others are tested against.

``auto`` picks xformers on CUDA when it imports and runs, else SDPA, and logs the choice once. The names are
``vmae.model.config.ATTENTION_BACKENDS``; ``Attention`` is timm's attention layer running on the chosen kernel.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention as TimmAttention

from vmae.model.config import ATTENTION_BACKENDS, ATTENTION_KERNELS

log = logging.getLogger(__name__)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """softmax(q kᵀ / √d) v for q, k, v of shape [B, H, N, d]; returns [B, H, N, d]."""
    chosen = resolve_backend(backend, q.device)
    if chosen == "math":
        weights = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
        return weights.softmax(dim=-1) @ v
    if chosen == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    import xformers.ops as xops  # optional dependency (CUDA only): imported once the backend is chosen

    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend ``backend`` stands for on ``device``; refuses one that cannot run there, naming why."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}; got {backend!r}")
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
    """The kernels that run on ``device``, fastest-expected first (the registry's order)."""
    runs_xformers = device.type == "cuda" and _xformers_problem() is None
    return [kernel for kernel in ATTENTION_KERNELS if kernel != "xformers" or runs_xformers]


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
        import xformers.ops as xops  # optional dependency: its absence is one of the reasons reported

        x = torch.zeros(1, 8, 1, 64, device="cuda", dtype=torch.bfloat16)
        xops.memory_efficient_attention(x, x, x)
        return None
    except Exception as err:  # noqa: BLE001 - any failure means "use SDPA", with the reason logged
        return f"{type(err).__name__}: {err}"


class Attention(TimmAttention):
    """timm's multi-head self-attention (fused qkv, output projection; same weights and names) over [B, N, D]
    tokens, its scores computed by this project's kernel ``backend`` (``attention``)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, backend: str = "auto", **timm_options):
        if dim % num_heads:  # timm only asserts this
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, **timm_options)
        self.backend = backend

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("vmae's attention kernels attend to every token: call it without attn_mask or is_causal")
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = attention(self.q_norm(q), self.k_norm(k), v, self.backend)  # [B, H, N, d]
        return self.proj_drop(self.proj(self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))))
