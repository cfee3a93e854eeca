"""What a checkpoint is, a pretraining run's autoencoder or a fine-tuned classifier, told from what it holds (the
run's final weights file, its run.json, the weights' keys), so that a command given the other kind says which
command fits it instead of listing the keys that do not."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vmae.model.load import read_state_dict, strip_wrappers
from vmae.pipeline.train.checkpoint import MARKER, CheckpointError, latest_checkpoint

PRETRAINING = "a pretraining run"
FINETUNED = "a fine-tuned classifier"

RUN_FILES = {"pretrained.pt": PRETRAINING, "finetuned.pt": FINETUNED}  # what the end of each task writes
TASKS = {"pretrain": PRETRAINING, "finetune": FINETUNED}  # OUT/run.json's "task", written at the start of a run

# the kinds each command takes, and what to do with the other
TAKES = {"evaluate": (FINETUNED,), "linear-probe": (PRETRAINING,), "visualize": (PRETRAINING,),
         "extract-features": (PRETRAINING, FINETUNED)}
ADVICE = {
    "evaluate": "fine-tune it first (`vmae finetune --pretrained {source} --dataset DATASET`), or score its encoder "
                "as it is with `vmae linear-probe {source} --dataset DATASET`",
    "linear-probe": "test this classifier with `vmae evaluate {source} --dataset DATASET` (its features: `vmae "
                    "extract-features {source} DATASET`)",
    "visualize": "a classifier has no decoder to reconstruct with; test it with `vmae evaluate {source} --dataset "
                 "DATASET`",
}


class WrongCheckpoint(ValueError):
    """A checkpoint of the kind another command takes; the message names the command that fits."""


def checkpoint_kind(source: Path) -> tuple[str | None, str]:
    """(PRETRAINING, FINETUNED or None, the evidence in words) for a run folder, checkpoint folder or weights
    file."""
    source = Path(source)
    if not source.exists():
        raise CheckpointError(f"{source} does not exist: pass a run folder, a checkpoint folder "
                              "(OUT/checkpoints/stepN) or a .pt written by `vmae export`")
    if source.is_file():
        return kind_of_weights(source)
    checkpoint = source if (source / MARKER).is_file() else latest_checkpoint(source)
    run = source.parent.parent if checkpoint == source else source  # a checkpoint folder is OUT/checkpoints/stepN
    for name, kind in RUN_FILES.items():
        if (run / name).is_file():
            return kind, f"it holds {name}" if run == source else f"its run {run} holds {name}"
    task = json.loads((run / "run.json").read_text()).get("task") if (run / "run.json").is_file() else None
    if task in TASKS:
        return TASKS[task], f"{run / 'run.json'} says it ran `vmae {task}`"
    if checkpoint is None:
        return None, "it holds neither pretrained.pt, finetuned.pt nor a complete checkpoint (checkpoints/stepN)"
    for weights in (checkpoint / "weights.fp32.pt", *sorted(checkpoint.glob("mp_rank_*_model_states.pt"))):
        if weights.is_file():
            return kind_of_weights(weights)
    return None, f"its checkpoint {checkpoint} holds no model weights"


def kind_of_weights(path: Path) -> tuple[str | None, str]:
    """The kind of a weights file, from its keys: a classifier head, or the autoencoder's decoder."""
    try:
        if path.name.startswith("mp_rank_"):  # DeepSpeed's own file (pickled, not weights-only), read as a map
            keys = torch.load(path, map_location="cpu", weights_only=False, mmap=True)["module"].keys()
        else:
            keys = read_state_dict(path).keys()
    except Exception as err:  # noqa: BLE001 - any unreadable file is "not a checkpoint", said with its reason
        return None, f"{path} is not a weights file torch can read ({type(err).__name__}: {err})"
    keys = strip_wrappers(dict.fromkeys(keys)).keys()
    if "head.weight" in keys:
        return FINETUNED, f"{path} holds a classifier head (head.weight)"
    if any(k.startswith("decoder") or k == "mask_token" for k in keys):
        return PRETRAINING, f"{path} holds the autoencoder's decoder and mask token"
    return None, f"{path} holds {len(keys)} tensors, neither a classifier head (head.*) nor a decoder (decoder*)"


def require_kind(source: Path, command: str) -> str:
    """The kind of ``source`` when ``vmae command`` takes it; otherwise a WrongCheckpoint naming the command that
    does."""
    kind, evidence = checkpoint_kind(source)
    wanted = TAKES[command]
    if kind in wanted:
        return kind
    if kind is None:
        raise WrongCheckpoint(f"{source} is neither a pretraining run nor a fine-tuned classifier ({evidence}): pass "
                              "the folder of a `vmae pretrain` or `vmae finetune` run, one of its checkpoints "
                              "(OUT/checkpoints/stepN) or a .pt written by `vmae export`")
    raise WrongCheckpoint(f"{source} is {kind} ({evidence}), and `vmae {command}` takes {' or '.join(wanted)}: "
                          f"{ADVICE[command].format(source=source)}")

