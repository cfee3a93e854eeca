"""The shard builder's engines on one input set: local process pool, Ray, and SLURM-style parts.

    python bench/bench_build_engines.py [--videos 48 144] [--seconds 20] [--repeats 3]
                                        [--workdir /tmp/vmae-engines] [--out-json FILE]

Input: synthetic videos (`vmae synth`, 640x360, ``--seconds`` long, 4 classes), built into shards (H.264, short
side 320) by each engine with the whole machine's cores, each time as the CLI in a fresh process into a fresh
folder; once per size in ``--videos`` (the first N of each class, as links to one synthesized set), because Ray's
cost is mostly a fixed start and stop that weighs less the longer the build:

- ``local``: `vmae shards build IN OUT` (a process pool of all cores);
- ``ray``: the same with `--engine ray` (a local Ray started and stopped by the build: its start-up counts);
- ``parts``: as many `--part I/N` processes side by side as cores, one worker each (what SLURM array tasks do),
  then the packing run without `--part`.

Reported per size: the median wall-clock seconds of ``--repeats`` runs of each, the overhead against local (in
seconds and as a share), and whether every engine wrote the local build's bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import write_result  # noqa: E402


def vmae(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vmae.tools.cli", "--log-level", "WARNING", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(*procs: subprocess.Popen) -> None:
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"{proc.args}: {err[-2000:]}")


def build(engine: str, videos: Path, out: Path, cores: int) -> float:
    """One build by ``engine`` into a fresh ``out``; its wall-clock seconds."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    if engine == "parts":
        finish(*[vmae("shards", "build", str(videos), str(out), "--part", f"{i}/{cores}", "--workers", "1")
                 for i in range(cores)])
        finish(vmae("shards", "build", str(videos), str(out)))
    else:
        finish(vmae("shards", "build", str(videos), str(out), "--engine", engine, "--workers", str(cores)))
    return time.perf_counter() - started


def dataset_bytes(dataset: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dataset.iterdir()) if p.suffix in (".tar", ".idx", ".json",
                                                                                        ".jsonl")}


def subset(videos: Path, per_class: int, folder: Path) -> Path:
    """The first ``per_class`` videos of each class of ``videos``, as links in ``folder``."""
    if not folder.is_dir():
        for label in sorted(p for p in videos.iterdir() if p.is_dir()):
            (folder / label.name).mkdir(parents=True)
            for video in sorted(label.iterdir())[:per_class]:
                (folder / label.name / video.name).symlink_to(video)
    return folder


def measure(videos: Path, out: Path, repeats: int, cores: int) -> dict:
    """Each engine ``repeats`` times, interleaved (drift on the machine hits every engine alike)."""
    seconds: dict[str, list[float]] = {"local": [], "ray": [], "parts": []}
    same: dict[str, bool] = {}
    for _ in range(repeats):
        for engine in seconds:
            seconds[engine].append(build(engine, videos, out / engine, cores))
        reference = dataset_bytes(out / "local")
        same.update({e: dataset_bytes(out / e) == reference for e in seconds})
    medians = {e: statistics.median(s) for e, s in seconds.items()}
    return {e: {"seconds": round(medians[e], 2), "runs": [round(x, 2) for x in seconds[e]],
                "extra_seconds": round(medians[e] - medians["local"], 2),
                "overhead_vs_local": round(medians[e] / medians["local"] - 1, 3), "same_bytes": same[e]}
            for e in seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, nargs="+", default=[48, 144], help="build sizes (multiples of 4)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vmae-engines")
    parser.add_argument("--out-json", type=Path)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    videos = args.workdir / "videos"
    if not videos.is_dir():
        finish(vmae("synth", str(videos), "--classes", "4", "--videos-per-class", str(max(args.videos) // 4),
                    "--seconds", str(args.seconds), "--width", "640", "--height", "360"))
    sizes = {}
    for count in args.videos:
        inputs = subset(videos, count // 4, args.workdir / f"videos-{count}")
        sizes[count] = rows = measure(inputs, args.workdir / f"out-{count}", args.repeats, cores)
        for engine, row in rows.items():
            print(f"{count} videos, {engine:6s}: {row['seconds']:6.1f} s (runs {row['runs']}), "
                  f"{row['extra_seconds']:+.1f} s, {row['overhead_vs_local']:+.1%} vs local, "
                  f"same bytes: {row['same_bytes']}", flush=True)
    write_result(args.out_json, {"seconds_each": args.seconds, "cores": cores, "sizes": sizes})
    return 0


if __name__ == "__main__":
    sys.exit(main())
