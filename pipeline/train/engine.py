"""DeepSpeed from our config: the process group (set up by itself for a lone process), the generated DeepSpeed
config, the AdamW parameter groups and the engine.

Import order matters: DeepSpeed picks its accelerator when first imported, so ``init_distributed`` sets
``DS_ACCELERATOR=cpu`` on a machine without CUDA before anything imports deepspeed.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from vmae.pipeline.train.config import BatchSplit, TrainConfig
from vmae.tools.log import library_output

log = logging.getLogger(__name__)

RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Launch:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    launcher: str  # what started this process: deepspeed, torchrun, slurm, or single


def init_distributed() -> Launch:
    """Join the process group the launcher described (deepspeed, torchrun or srun), or make a one-process one."""
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    launcher = detect_launcher(os.environ)
    if launcher == "slurm":
        _rendezvous_from_slurm(os.environ)
    elif launcher == "single":
        # without these DeepSpeed looks for MPI; a lone process is rank 0 of 1 on a free local port
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()))
    import deepspeed  # after the variables above; only training pays its seconds of start-up

    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        with library_output("DeepSpeed"):  # its op-builder lines and logger through ours: shown at DEBUG
            deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", auto_mpi_discovery=False,
                                       verbose=False)
        if not cuda:
            _unlink_shm_allreduce_buffer()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Launch(dist.get_rank(), dist.get_world_size(), local_rank, device, launcher)


def _unlink_shm_allreduce_buffer() -> None:
    """DeepSpeed's CPU all-reduce maps one /dev/shm buffer per rank and never removes it: every run of two ranks
    left 138 MB of memory in /dev/shm until reboot. Once every rank has mapped its peers' buffers (the barrier),
    each removes its own name; the mappings stay valid."""
    if dist.get_world_size() > 1:
        dist.barrier()
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR')}_"
            f"{os.environ.get('MASTER_PORT')}_{dist.get_rank()}")
    Path("/dev/shm", name).unlink(missing_ok=True)


def detect_launcher(env) -> str:
    if "RANK" in env and "WORLD_SIZE" in env:
        return "torchrun" if "TORCHELASTIC_RUN_ID" in env else "deepspeed"
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    return "single"


def _rendezvous_from_slurm(env) -> None:
    """srun starts one task per GPU: rank = SLURM_PROCID; the batch script exports MASTER_ADDR/PORT."""
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in env:
            raise RuntimeError(f"{key} is not set: export it in the SLURM batch script (see tools/slurm_pretrain.sh)")
    os.environ.update(RANK=env["SLURM_PROCID"], WORLD_SIZE=env["SLURM_NTASKS"], LOCAL_RANK=env["SLURM_LOCALID"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_precision(train: TrainConfig, device: torch.device) -> str:
    if train.precision != "auto":
        return train.precision
    return "bf16" if device.type == "cuda" else "fp32"


def deepspeed_config(train: TrainConfig, split: BatchSplit, precision: str) -> dict:
    """The DeepSpeed config our config implies; batch sizes count videos (each gives data.views clips)."""
    zero: dict = {"stage": train.zero_stage}
    if train.zero_stage >= 2:  # overlap the gradient reduce-scatter with backward
        zero.update(overlap_comm=True, contiguous_gradients=True, reduce_bucket_size=int(5e8))
    if train.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=False)
    return {
        "train_batch_size": split.global_batch,
        "train_micro_batch_size_per_gpu": split.micro_batch,
        "gradient_accumulation_steps": split.accumulation,
        # explicit: DeepSpeed >= 0.19.3 clips at 1.0 when the key is absent; MAE-ST uses 0.02. Without ZeRO in
        # fp32 our FiniteAdamW clips (it sees the norm first), so DeepSpeed must not
        "gradient_clipping": 0.0 if optimizer_clips(train, precision) else train.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,  # our AdamW with its parameter groups
        "steps_per_print": 2**31 - 1,  # vmae logs its own metrics
        "wall_clock_breakdown": False,
    }


def optimizer_clips(train: TrainConfig, precision: str) -> bool:
    """Without ZeRO in fp32 DeepSpeed steps our optimizer directly: FiniteAdamW then clips and skips itself."""
    return train.zero_stage == 0 and precision == "fp32"


def make_optimizer(groups: list[dict], train: TrainConfig, precision: str,
                   device: torch.device | None = None) -> torch.optim.Optimizer:
    """AdamW over the task's parameter groups (each may carry an ``lr_scale``: layer-wise lr decay), on the kernel
    ``train.optimizer_kernel`` names (DeepSpeed steps it over its fp32 master weights, on the same device)."""
    cuda = device is not None and device.type == "cuda"
    kernel = train.optimizer_kernel if train.optimizer_kernel != "auto" else ("fused" if cuda else None)
    # auto on CPU: torch's own default (the per-tensor loop), which the CPU tests' recorded losses were made with
    options = dict(lr=0.0, betas=tuple(train.betas), eps=1e-8, fused=kernel == "fused" or None,
                   foreach=kernel == "foreach" or None)
    if optimizer_clips(train, precision):
        return FiniteAdamW(groups, max_norm=train.gradient_clipping, **options)
    return torch.optim.AdamW(groups, **options)


class FiniteAdamW(torch.optim.AdamW):
    """AdamW that clips to ``max_norm`` and skips a step whose gradient norm is not finite, saying so in
    ``overflow`` and ``_global_grad_norm`` as DeepSpeed's ZeRO and bf16 optimizers do (the engine reads both)."""

    def __init__(self, params, max_norm: float, **kwargs):
        super().__init__(params, **kwargs)
        self.max_norm = max_norm
        self.overflow = False
        self._global_grad_norm = None

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())
        self._global_grad_norm = float(norm)
        self.overflow = not torch.isfinite(norm).item()
        if self.overflow:
            self.zero_grad(set_to_none=True)
            return None
        if self.max_norm > 0:
            torch._foreach_mul_(grads, torch.clamp(self.max_norm / (norm + 1e-6), max=1.0))
        return super().step(closure)


def make_engine(model: torch.nn.Module, groups: list[dict], train: TrainConfig, split: BatchSplit, precision: str,
                device: torch.device | None = None):
    import deepspeed  # only training pays its seconds of start-up and accelerator probing

    # DeepSpeed drops empty groups, shifting any per-index lr schedule (a known DeepSpeed pitfall): drop them here,
    # and set_lr reads each group's own lr_scale, never its position
    optimizer = make_optimizer([g for g in groups if g["params"]], train, precision, device)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           config=deepspeed_config(train, split, precision))
    return engine


def set_lr(engine, lr: float) -> None:
    """The schedule's lr, times each group's ``lr_scale`` (DeepSpeed's ZeRO optimizers keep the groups' keys)."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
