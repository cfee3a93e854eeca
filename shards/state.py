"""The state of an unfinished build, kept in ``OUT/.build`` so that a killed build, or one split into parts run
side by side, carries on where it stopped; removed once ``manifest.json`` is written.

- ``plan-keys.txt``: the planned keys, one a line in write order; ``plan.json``: what the plan was made from.
- ``items/<key>/``: each processed input's video files and ``result.json`` (its samples, or why it was rejected),
  renamed into place whole by the worker that made them.
- ``shards/NNNNNN.json``: a record of each sealed shard: its manifest entry, where the next shard starts, the
  rejects and totals of the inputs it consumed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from vmae.shards.files import write_atomic
from vmae.shards.plan import Plan

STATE = ".build"
PLAN_KEYS = "plan-keys.txt"  # in STATE: the planned keys in write order
PLAN = "plan.json"
RESULT = "result.json"  # in an input's folder under items/


class BuildError(RuntimeError):
    """The build cannot start or finish; the message says what to do."""


def state_dir(out_dir: Path) -> Path:
    return out_dir / STATE


def items_dir(out_dir: Path) -> Path:
    """Where the workers leave each input's result, a folder per key."""
    return out_dir / STATE / "items"


def records_dir(out_dir: Path) -> Path:
    """Where the record of each sealed shard is kept."""
    return out_dir / STATE / "shards"


def kept_result(items: Path, key: str) -> dict | None:
    """The result an input was given when it was processed (by this run, a killed one, or a --part), or None."""
    path = items / key / RESULT
    return json.loads(path.read_text()) if path.exists() else None


def check_out_dir(out_dir: Path) -> None:
    """Refuse, before any work, an output path that is a file or lies below one."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BuildError(f"{out_dir} is a file, not a folder: the shards go into a dataset folder; give the path of "
                         "a new folder (or of this build's folder)")
    existing = next((parent for parent in out_dir.parents if parent.exists()), None)
    if existing is not None and not existing.is_dir():
        raise BuildError(f"{out_dir} cannot be made: {existing} is a file, not a folder; give another output folder")


def make_out_dir(out_dir: Path) -> None:
    """The output folder, made with its parents; a message naming it when it cannot be."""
    check_out_dir(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BuildError(f"{out_dir} cannot be made ({err.strerror or err}): give a folder you can write to") \
            from None


def _open_lock(out_dir: Path) -> IO[str]:
    """The lock file, opened for writing: the first write into ``out_dir``, so the place to say it is read-only."""
    try:
        return (out_dir / ".lock").open("a")
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise BuildError(f"{out_dir} is not writable ({err.strerror}): make it writable (e.g. chmod u+w "
                         f"{out_dir}) or give another output folder; nothing in it was changed") from None


@contextlib.contextmanager
def exclusive(out_dir: Path, shared: bool = False) -> Iterator[None]:
    """The build's lock on ``out_dir``: parts share it, the packing run holds it alone."""
    with _open_lock(out_dir) as fh:
        try:
            fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            what = "the packing run" if shared else "another build or part"
            raise BuildError(f"{what} is writing to {out_dir}; wait for it or choose another folder") from None
        yield


def check_plan(out_dir: Path, plan: Plan, params: dict) -> None:
    """Make the state folders and store the plan; refuse a state left by a build of other inputs or options."""
    state = state_dir(out_dir)
    items_dir(out_dir).mkdir(parents=True, exist_ok=True)
    records_dir(out_dir).mkdir(parents=True, exist_ok=True)
    plan_file = state / PLAN
    # the plan is stored beside the work: its keys in write order (a line each), and what they were made from
    plan_id = {"build": params, "inputs_digest": plan.inputs_digest, "inputs": len(plan.items),
               "keys_sha256": plan.write_keys(state / PLAN_KEYS)}
    stored = json.loads(plan_file.read_text()) if plan_file.exists() else None
    if stored is not None and "keys" in stored:  # a state written when plan.json held the keys themselves
        keys = stored.pop("keys")
        stored.update(inputs=len(keys), keys_sha256=hashlib.sha256("".join(k + "\n" for k in keys).encode()
                                                                     ).hexdigest())
    if stored is not None and stored != plan_id:
        raise BuildError(f"{out_dir} holds an unfinished build with other inputs or options; re-run it "
                         f"with those, or delete {out_dir} to start over")
    write_atomic(plan_file, json.dumps(plan_id))
