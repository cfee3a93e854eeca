"""The work done on one input in a worker process: probe it, stream-copy or transcode it, and keep the result.

An input's result (its samples' files and records, or a reject naming the reason) is written under a temporary
name and renamed into the build's state whole, so a killed worker leaves nothing half-done behind. This module
is what the worker processes import: it pulls in the encoder, never the packer.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import shutil
import signal
import time
from pathlib import Path

from vmae.shards.config import ShardConfig
from vmae.shards.config import set_only
from vmae.shards.encode import Encoded, encode, output_fps, stored_size
from vmae.shards.frames import folder_bytes, probe_frames
from vmae.shards.plan import PlannedItem
from vmae.shards.probe import RejectedInput, VideoInfo, probe
from vmae.shards.state import RESULT, kept_result

log = logging.getLogger(__name__)

# failures another try may not meet: storage that failed a read, ffmpeg killed from outside (OOM killer)
TRANSIENT_REASONS = ("io_error", "missing_file", "ffmpeg_killed")
# FFmpeg's log prefix "[h264 @ 0x55f05ee46240] ": the address of a decoder's context, new in every run
_LOG_ADDRESS = re.compile(r" @ 0x[0-9a-fA-F]+\]")


def process_item(item: PlannedItem, cfg: ShardConfig, items_dir: Path) -> dict:
    """Probe and encode one input into ``items_dir/<key>/``; the result (samples or a reject) is returned and kept.
    A transient failure (a read error on a network path, ffmpeg killed) is tried again after a growing wait."""
    kept = kept_result(items_dir, item.key)
    if kept is not None:
        return kept
    final = items_dir / item.key
    tmp = items_dir / f"{item.key}.tmp{os.getpid()}"
    for attempt in range(cfg.retries + 1):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        result = _attempt(item, cfg, tmp)
        if result.get("reason") not in TRANSIENT_REASONS or attempt == cfg.retries:
            break
        log.warning("%s: %s; trying again in %.0f s", item.source, result["detail"], cfg.retry_seconds * 2 ** attempt)
        time.sleep(cfg.retry_seconds * 2 ** attempt)
    if attempt:
        result["attempts"] = attempt + 1
        if result["status"] == "rejected":
            result["detail"] += f" ({attempt + 1} tries)"
    (tmp / RESULT).write_text(json.dumps(result))
    try:
        os.rename(tmp, final)
    except OSError:  # an earlier, killed run's worker finished the same input first: keep its identical result
        shutil.rmtree(tmp, ignore_errors=True)
    return kept_result(items_dir, item.key)


def without_addresses(message: str) -> str:
    """``message`` with the memory addresses dropped from FFmpeg's log prefixes (``[h264 @ 0x55f0…]`` becomes
    ``[h264]``), so that two builds of the same inputs write the same rejects."""
    return _LOG_ADDRESS.sub("]", message)


def _attempt(item: PlannedItem, cfg: ShardConfig, tmp: Path) -> dict:
    """One try at an input: its samples written into ``tmp``, or a reject (``tmp`` left empty)."""
    path = Path(item.path)
    base = {"key": item.key, "source": item.source, "source_bytes": 0}
    try:
        base["source_bytes"] = folder_bytes(path) if path.is_dir() else path.stat().st_size
        info = probe_frames(path, cfg.frames_fps) if path.is_dir() else probe(path)
        if info.width * info.height > cfg.max_input_pixels:
            raise RejectedInput("too_large", f"{info.width}x{info.height} is over shards.max_input_pixels="
                                             f"{cfg.max_input_pixels}; raise it to accept such videos")
        mode, outputs = encode(path, info, cfg, tmp)
        samples, dropped = _samples(item, info, cfg, mode, outputs)
        return {**base, "status": "ok", "samples": samples, "dropped": dropped}
    except RejectedInput as rej:
        result = _rejected(base, rej.reason, rej.detail)
    except OSError as err:  # the file vanished or its (network) storage failed: worth another try
        reason = "missing_file" if err.errno == errno.ENOENT else "io_error"
        result = _rejected(base, reason, f"reading it failed: {err.strerror or err} (errno {err.errno})")
    except Exception as err:  # noqa: BLE001 - one broken input must not stop a build of thousands
        log.exception("unexpected error on %s", item.source)
        result = _rejected(base, "internal_error", f"{type(err).__name__}: {err}")
    shutil.rmtree(tmp)
    tmp.mkdir()
    return result


def _rejected(base: dict, reason: str, detail: str) -> dict:
    """A reject's result; its detail, often FFmpeg's or PyAV's own words, made the same in every run."""
    return {**base, "status": "rejected", "reason": reason, "detail": without_addresses(detail)}


def _samples(item: PlannedItem, info: VideoInfo, cfg: ShardConfig, mode: str,
             outputs: list[Encoded]) -> tuple[list[dict], list[dict]]:
    """Sample records of the kept outputs, and the trailing segments too short to keep (reported as rejects)."""
    fps = output_fps(info, cfg) if mode == "transcode" else info.fps
    width, height = stored_size(info, cfg) if mode == "transcode" else (info.width, info.height)
    samples = []
    for n, out in enumerate(outputs):
        if out.frames < cfg.min_frames:
            continue
        key = item.key if len(outputs) == 1 else f"{item.key}_s{n:03d}"
        meta = {
            "key": key, "label": item.label, "label_name": item.label_name, "source": item.source,
            "segment": n if len(outputs) > 1 else None, "start_seconds": out.start_seconds,
            "frames": out.frames, "fps": fps, "duration": round(out.frames / fps, 3) if fps else None,
            "width": width, "height": height, "codec": cfg.codec, "mode": mode,
            "padded_frames": out.padded_frames,
            "source_info": {k: v for k, v in info.as_dict().items() if k != "size_bytes"},
            "build": {**{k: getattr(cfg, k) for k in ("short_side", "fps", "frames_fps", "codec", "keyframe_interval",
                                                        "crf", "preset", "bframes", "pframe_interval",
                                                        "segment_seconds")}, **set_only(cfg)},
        }
        samples.append({"key": key, "file": out.path.name, "bytes": out.path.stat().st_size, "meta": meta})
    if not samples:
        total = sum(o.frames for o in outputs)
        raise RejectedInput("too_short", f"{total} frames, fewer than shards.min_frames={cfg.min_frames}; "
                                         "set shards.short_policy=pad to keep it padded")
    dropped = [{"key": f"{item.key}_s{n:03d}", "detail": f"segment {n} has {o.frames} frames, fewer than "
                f"shards.min_frames={cfg.min_frames}"} for n, o in enumerate(outputs) if o.frames < cfg.min_frames]
    return samples, dropped


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies, so a killed build leaves no orphans writing files."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
