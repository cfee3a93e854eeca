"""Checkpoints a killed run can trust: DeepSpeed's files plus our training position, marked complete only after
every rank has written, pruned to the last k, and exported as plain fp32 weights for fine-tuning.

Layout: ``OUT/checkpoints/step000001200/`` holds DeepSpeed's model and optimizer files, ``rank00000.pt`` (each
rank's position and RNG states), ``config.yaml``, and last ``complete.json``. A folder without that marker was
cut short (a kill, a full disk) and is never resumed from.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from vmae.shards.files import atomic_path, write_atomic

log = logging.getLogger(__name__)

MARKER = "complete.json"
PREFIX = "step"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says which and what to do."""


def checkpoint_root(out: Path) -> Path:
    return Path(out) / "checkpoints"


def tag_of(step: int) -> str:
    return f"{PREFIX}{step:09d}"


def complete_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = checkpoint_root(out)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(f"{PREFIX}*") if (p / MARKER).is_file())


def latest_checkpoint(out: Path) -> Path | None:
    done = complete_checkpoints(out)
    return done[-1] if done else None


def save_checkpoint(engine, out: Path, position: dict, config_yaml: str, keep_last: int) -> Path:
    """Write the checkpoint of ``position["step"]`` from every rank; the marker goes last, after a barrier."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    root = checkpoint_root(out)
    tag = tag_of(position["step"])
    target = root / tag
    if not weights_finite(engine.module):
        raise CheckpointError(f"refusing to write {target}: the weights hold NaN or inf values")
    failure = None
    try:
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            if target.exists():  # a save of this step cut short earlier
                shutil.rmtree(target)
            # made here, where a failure raises: DeepSpeed logs its own failure to make it and goes on writing
            target.mkdir()
        _barrier()
        engine.save_checkpoint(str(root), tag=tag, client_state={"position": position}, save_latest=False)
        _atomic_save({"position": position, "rng": rng_states()}, target / f"rank{rank:05d}.pt")
    except (OSError, RuntimeError) as err:  # torch.save raises RuntimeError when it cannot write (see unwritten)
        failure = err
    if _any_rank(failure is not None):
        raise CheckpointError(unwritten(target, out, failure)) from failure
    if rank == 0:
        try:
            (target / "config.yaml").write_text(config_yaml)
            world = dist.get_world_size() if dist.is_initialized() else 1
            write_atomic(target / MARKER, json.dumps({"step": position["step"], "world_size": world,
                                                      "position": position}))
        except OSError as err:
            failure = err
        else:
            prune(out, keep_last)
    if _any_rank(failure is not None):
        raise CheckpointError(unwritten(target, out, failure)) from failure
    return target


def unwritten(target: Path, out: Path, failure: Exception | None) -> str:
    """The message of a checkpoint that could not be written: which, why, the disk's free space, what is intact.

    torch.save says a full disk or a missing folder in RuntimeErrors of many words ("unexpected pos 704 vs 598",
    "basic_ios::clear: iostream error", "Parent directory ... does not exist"): the free space tells them apart."""
    why = f"{type(failure).__name__}: {failure}" if failure is not None else "another rank failed"
    previous = latest_checkpoint(out)
    intact = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint"
    return (f"could not write checkpoint {target} ({why}; {free_space(target)}); {intact}. Free disk space or "
            "fix the permissions of train.out, then re-run with --resume auto")


def free_space(path: Path) -> str:
    """The free space on the disk holding ``path`` (its nearest existing folder), as words."""
    for folder in (path, *path.parents):
        if folder.is_dir():
            try:
                return f"{shutil.disk_usage(folder).free / 2**30:.1f} GiB free on that disk"
            except OSError:
                break
    return "free space unknown"


def prune(out: Path, keep_last: int) -> None:
    """Delete complete checkpoints beyond the newest ``keep_last`` and incomplete ones older than the newest."""
    done = complete_checkpoints(out)
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    if done:
        for partial in checkpoint_root(out).glob(f"{PREFIX}*"):
            if not (partial / MARKER).exists() and partial.name < done[-1].name:
                shutil.rmtree(partial, ignore_errors=True)


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or a run folder meaning its newest complete checkpoint."""
    path = Path(path)
    if (path / MARKER).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path} is neither a complete checkpoint nor a run folder holding one")
    return latest


def saved_config(folder: Path) -> Path:
    path = Path(folder) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.yaml: not a `vmae pretrain` checkpoint")
    return path


def load_checkpoint(engine, folder: Path) -> dict:
    """Restore weights, optimizer and this rank's RNG; returns the training position."""
    folder = Path(folder)
    if not (folder / MARKER).is_file():
        raise CheckpointError(f"{folder} is not a complete checkpoint (no {MARKER}); pass another or --resume auto")
    saved_world = json.loads((folder / MARKER).read_text())["world_size"]
    world = dist.get_world_size()
    if saved_world != world and any(folder.glob("*zero_pp_rank_*")):
        raise CheckpointError(f"{folder} was written by {saved_world} rank(s) and this run has {world}: ZeRO's "
                              f"optimizer partitions do not re-split. Resume with {saved_world} rank(s) (the global "
                              "batch, schedule and data order do not depend on the split)")
    path, client = engine.load_checkpoint(str(folder.parent), tag=folder.name, load_optimizer_states=True,
                                          load_lr_scheduler_states=False)
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load {folder}")
    rank_file = folder / f"rank{dist.get_rank():05d}.pt"
    if saved_world == world and rank_file.is_file():
        set_rng_states(torch.load(rank_file, map_location="cpu", weights_only=False)["rng"])
    return client["position"]


def weights_finite(module: torch.nn.Module) -> bool:
    """True on every rank when every (local part of every) parameter is finite."""
    bad = False
    for p in module.parameters():
        local = getattr(p, "ds_tensor", p)  # ZeRO-3 keeps only this rank's partition
        if local.numel() and not bool(torch.isfinite(local).all()):
            bad = True
            break
    return not _any_rank(bad)


def export_weights(folder: Path, destination: Path) -> Path:
    """Plain fp32 weights of a checkpoint ({"model": state dict, "config": ...}), gathered from the ZeRO
    partitions like DeepSpeed's zero_to_fp32; readable with ``torch.load(..., weights_only=True)``."""
    # DeepSpeed is imported only when ZeRO partitions are gathered: reading a checkpoint's config must stay fast
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = Path(folder)
    if not (folder / MARKER).is_file():
        raise CheckpointError(f"{folder} is not a complete checkpoint (no {MARKER})")
    if any(folder.glob("*optim_states.pt")) and any(folder.glob("*zero_pp_rank_*")):
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
            state = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
    else:  # no ZeRO partitions: the module's own weights
        files = sorted(folder.glob("mp_rank_*_model_states.pt"))
        if not files:
            raise CheckpointError(f"{folder} holds no model states")
        state = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
    state = {k: v.float().contiguous() for k, v in state.items()}
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    config = (folder / "config.yaml").read_text() if (folder / "config.yaml").exists() else ""
    _atomic_save({"model": state, "config": config}, destination)
    return destination


def weights_file(source: Path, run_file: str, rank: int = 0) -> Path:
    """Plain weights for ``source``: the file itself, a run folder's ``run_file`` (pretrained.pt, finetuned.pt), or
    a checkpoint's weights gathered once (by rank 0) into weights.fp32.pt next to it."""
    source = Path(source)
    if source.is_file():
        return source
    if not source.exists():
        raise CheckpointError(f"{source} does not exist: pass a run folder, a checkpoint folder or an exported .pt")
    if (source / run_file).is_file():
        return source / run_file
    folder = resolve_checkpoint(source)
    exported = folder / "weights.fp32.pt"
    if rank == 0 and not exported.exists():
        log.info("wrote %s (the checkpoint's weights, gathered once for reuse)",
                 export_weights(folder, exported).absolute())
    _barrier()
    return exported


def config_text(source: Path) -> str:
    """The config YAML a run, checkpoint folder or exported weights file was trained with."""
    source = Path(source)
    if source.is_file():
        text = torch.load(source, map_location="cpu", weights_only=True).get("config", "")
        if not text:
            raise CheckpointError(f"{source} carries no config: export it with `vmae export` or pass the run folder")
        return text
    for name in ("pretrained.pt", "finetuned.pt"):
        if (source / name).is_file():
            return config_text(source / name)
    return saved_config(resolve_checkpoint(source)).read_text()


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)  # to a path, not a file object: the archive inside is named after the file


def _any_rank(flag: bool) -> bool:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
