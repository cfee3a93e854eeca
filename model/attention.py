"""Multi-head attention behind one function, with its kernels checked against each other.

- ``xformers``: ``memory_efficient_attention`` (CUDA only; layout [B, N, H, d]), where a build for this torch loads.
- ``sdpa``: PyTorch's ``scaled_dot_product_attention``, left to pick its kernel (CUDA and CPU).
- ``sdpa-flash``, ``sdpa-cudnn``, ``sdpa-efficient``: SDPA held to one of its CUDA kernels.
- ``math``: softmax(q kᵀ / √d) v written out, the reference the others are tested against.

``auto`` is chosen by measurement: on CUDA every kernel that runs is timed forward and backward at the shape it
will run (tokens, heads, head width, dtype), the fastest kept and the timings logged; on CPU it is SDPA (its flash
kernel; the only other CPU kernel is the reference). The names are ``vmae.model.config.ATTENTION_KERNELS``;
``Attention`` is timm's attention layer running on the chosen kernel.
"""

from __future__ import annotations

import logging
import math
import statistics
from functools import lru_cache

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention as TimmAttention
from torch.nn.attention import SDPBackend, sdpa_kernel

from vmae.model.config import ATTENTION_BACKENDS, ATTENTION_KERNELS

log = logging.getLogger(__name__)

SDPA_KERNELS = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
                "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION}
TIMING_REPEATS = 10  # timed forward + backward calls per kernel when auto chooses (after two warm-up calls)
TIMING_TOKENS = 2**15  # tokens per timed call (clips x tokens per clip): a training micro-batch's worth


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """softmax(q kᵀ / √d) v for q, k, v of shape [B, H, N, d]; returns [B, H, N, d]."""
    chosen = backend if backend in ATTENTION_KERNELS else resolve_backend(backend, q.device, tuple(q.shape), q.dtype)
    if chosen == "math":
        weights = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
        return weights.softmax(dim=-1) @ v
    if chosen == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if chosen in SDPA_KERNELS:
        with sdpa_kernel(SDPA_KERNELS[chosen]):
            return F.scaled_dot_product_attention(q, k, v)
    import xformers.ops as xops  # optional dependency (CUDA only): imported once the backend is chosen

    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def resolve_backend(backend: str, device: torch.device, shape: tuple[int, ...] = (1, 16, 156, 64),
                    dtype: torch.dtype = torch.bfloat16) -> str:
    """The kernel ``backend`` stands for on ``device`` for [B, H, N, d] inputs of ``shape`` and ``dtype``; refuses
    one that cannot run there, naming why."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}; got {backend!r}")
    if backend == "auto":
        return choose_kernel(device, shape, dtype)
    if device.type != "cuda" and (backend == "xformers" or backend in SDPA_KERNELS):
        raise ValueError(f"the {backend} backend has no CPU kernels: use sdpa (or auto) on CPU")
    if backend == "xformers" and _xformers_problem():
        raise ValueError(f"the xformers backend does not run here: {_xformers_problem()}")
    return backend


def available_backends(device: torch.device, shape: tuple[int, ...] = (1, 16, 156, 64),
                       dtype: torch.dtype = torch.bfloat16) -> list[str]:
    """The distinct kernels that run on ``device`` at ``shape`` and ``dtype``, in the registry's order: on CUDA
    SDPA's own kernels one by one (plain ``sdpa`` is one of them), on CPU ``sdpa`` and the reference."""
    if device.type != "cuda":
        return ["sdpa", "math"]
    return [kernel for kernel in ATTENTION_KERNELS if kernel != "sdpa" and kernel_problem(kernel, shape, dtype) is None]


def choose_kernel(device: torch.device, shape: tuple[int, ...], dtype: torch.dtype) -> str:
    """``auto``: SDPA on CPU; on CUDA the kernel measured fastest at [·, H, N, d] = ``shape`` in ``dtype``."""
    if torch.compiler.is_compiling():  # no timing or logging inside a traced graph: models settle their kernels first
        return "sdpa"
    if device.type != "cuda":
        _say_cpu_choice()
        return "sdpa"
    return _measured_choice(device.index or 0, tuple(shape[1:]), dtype)


@lru_cache(maxsize=None)
def _measured_choice(device_index: int, head_shape: tuple[int, int, int], dtype: torch.dtype) -> str:
    heads, tokens, width = head_shape
    timings = {kernel: kernel_problem(kernel, (1, *head_shape), dtype) or time_kernel(kernel, head_shape, dtype)
               for kernel in ATTENTION_KERNELS if kernel != "sdpa"}
    choice = fastest(timings)
    table = ", ".join(f"{k} {v:.3f} ms" if isinstance(v, float) else f"{k}: {v}" for k, v in timings.items())
    log.info("attention at %d tokens x %d heads x %d (%s): %s -> %s", tokens, heads, width,
             str(dtype).removeprefix("torch."), table, choice)
    return choice


def fastest(timings: dict[str, float | str]) -> str:
    """The kernel with the least milliseconds; entries holding a reason (str) did not run. SDPA when none ran."""
    measured = {kernel: ms for kernel, ms in timings.items() if isinstance(ms, float)}
    return min(measured, key=measured.get) if measured else "sdpa"


def time_kernel(kernel: str, head_shape: tuple[int, int, int], dtype: torch.dtype) -> float:
    """Median milliseconds of one forward and backward of ``kernel`` on [B, H, N, d] CUDA inputs, CUDA events."""
    heads, tokens, width = head_shape
    batch = max(1, TIMING_TOKENS // tokens)
    q, k, v = (torch.randn(batch, heads, tokens, width, device="cuda", dtype=dtype, requires_grad=True)
               for _ in range(3))
    times = []
    for repeat in range(TIMING_REPEATS + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        attention(q, k, v, kernel).sum().backward()
        end.record()
        end.synchronize()
        if repeat >= 2:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_problem(kernel: str, shape: tuple[int, ...], dtype: torch.dtype) -> str | None:
    """None when ``kernel`` runs forward and backward on CUDA inputs of [·, H, N, d] = ``shape``, else why not."""
    if kernel == "xformers":
        return _xformers_problem()
    return _trial(kernel, tuple(shape[1:]), dtype)


@lru_cache(maxsize=None)
def _trial(kernel: str, head_shape: tuple[int, int, int], dtype: torch.dtype) -> str | None:
    try:
        q = torch.zeros(1, *head_shape, device="cuda", dtype=dtype, requires_grad=True)
        attention(q, q, q, kernel).sum().backward()
        return None
    except Exception as err:  # noqa: BLE001 - SDPA raises RuntimeError with its reasons; any failure means "skip"
        return f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"


@lru_cache(maxsize=1)
def _xformers_problem() -> str | None:
    """None when xformers' memory-efficient attention runs on this GPU, else the reason it does not."""
    try:
        import xformers.ops as xops  # optional dependency: its absence is one of the reasons reported

        x = torch.zeros(1, 8, 1, 64, device="cuda", dtype=torch.bfloat16)
        xops.memory_efficient_attention(x, x, x)
        return None
    except Exception as err:  # noqa: BLE001 - any failure means "use SDPA", with the reason logged
        return f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"


@lru_cache(maxsize=1)
def _say_cpu_choice() -> None:
    """Said once per process, however many layers resolve ``auto``."""
    log.info("attention: sdpa (on CPU SDPA runs its flash kernel; math is the reference)")


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

    def settle(self, tokens: int, dtype: torch.dtype, device: torch.device) -> str:
        """Replace ``auto`` by the kernel it stands for at ``tokens`` tokens (before torch.compile traces it)."""
        self.backend = resolve_backend(self.backend, device, (1, self.num_heads, tokens, self.head_dim), dtype)
        return self.backend
