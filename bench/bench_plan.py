"""Planning a shard build of a million-row list: time and peak memory of reading the list and making the
plan, before any video is touched.

    python bench/bench_plan.py [--workdir /tmp/vmae-plan] [--rows 1000000] [--classes 700] [--out-json FILE]

The list is a CSV of ``path,label`` rows in Kinetics' naming; every listed file exists (empty: planning stats
files, it does not open them). The measurement runs in a fresh process: its peak resident memory is the
planner's, plus the interpreter's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import write_result  # noqa: E402


def make_list(folder: Path, rows: int, classes: int) -> Path:
    """``rows`` empty files under ``folder/videos/<class>/`` and the CSV that lists them (made once)."""
    listing = folder / f"list-{rows}.csv"
    if listing.is_file():
        return listing
    lines = ["path,label"]
    for c in range(classes):
        (folder / "videos" / f"class_{c:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(rows):
        name = f"videos/class_{i % classes:03d}/vid_{i:07d}_000010_000020.mp4"
        (folder / name).touch()
        lines.append(f"{name},class_{i % classes:03d}")
    listing.write_text("\n".join(lines) + "\n")
    return listing


def measure(listing: Path) -> dict:
    from vmae.shards.build import listed_card
    from vmae.shards.plan import make_plan
    from vmae.shards.sources import list_inputs

    started = time.perf_counter()
    inputs = list_inputs(listing)
    listed = time.perf_counter()
    plan = make_plan(inputs, seed=0)
    listed_card(inputs, None)
    planned = time.perf_counter()
    keys_file = listing.with_suffix(".keys.txt")
    plan.write_keys(keys_file)  # what the build stores in its output folder before any work
    return {"rows": len(inputs), "planned": len(plan.items), "rejected": len(plan.rejects),
            "list_seconds": round(listed - started, 2), "plan_seconds": round(planned - listed, 2),
            "store_seconds": round(time.perf_counter() - planned, 2),
            "stored_mb": round(keys_file.stat().st_size / 1e6, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vmae-plan")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=700)
    parser.add_argument("--out-json", type=Path)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    listing = make_list(args.workdir, args.rows, args.classes)
    proc = subprocess.run([sys.executable, __file__, "--measure", str(listing)], capture_output=True, text=True,
                          check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["total_seconds"] = round(result["list_seconds"] + result["plan_seconds"] + result["store_seconds"], 2)
    print(f"{result['rows']} rows: listed in {result['list_seconds']:.1f} s, planned in {result['plan_seconds']:.1f} s "
          f"({result['planned']} planned, {result['rejected']} rejected), stored in {result['store_seconds']:.1f} s "
          f"({result['stored_mb']:.0f} MB); peak RSS {result['peak_rss_mb']:.0f} MB")
    write_result(args.out_json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
