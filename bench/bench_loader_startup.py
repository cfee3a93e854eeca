"""Loader start-up at scale: from nothing to the first batch for one rank of a large dataset.

    python bench/bench_loader_startup.py [--workdir /tmp/vmae-startup] [--shards 10000] [--per-shard 100]
                                         [--worlds 1 8 64 512] [--out-json FILE]

A simulated dataset of ``--shards`` tars with ``--per-shard`` samples each (one 8-byte member per sample, with
DALI's index files and a vmae manifest): what a reader parses at start-up is the tars and their indexes, not the
video bytes. For each world size, rank 0's start-up is measured in a fresh process, two ways:

- ``vmae``: the manifest's shard table → this epoch's assignment (``ShardSet.rank_part``) → the first batch's
  samples read straight from their shards through their indexes (what the DALI pipelines' external source does
  before the first decode; no reader parses anything else).
- ``dali-all``: DALI's reader given every shard and index, ``shard_id=0, num_shards=world`` (what DALI's own
  options do) → its first batch.

Reported per case: seconds to the first batch (the assignment's share separately), files the reader was given,
and the process's peak resident memory. The other ranks' assignment is the same computation with another rank
number, so it is not run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import write_result  # noqa: E402

BATCH = 8


def make_dataset(folder: Path, shards: int, per_shard: int) -> None:
    """Tars of tiny one-member samples, DALI index files and a manifest, written directly (quick at 1M samples)."""
    from vmae.shards.format import FORMAT
    from vmae.shards.tars import INDEX_VERSION

    if (folder / "manifest.json").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    data = b"\0" * 8
    for n in range(shards):
        chunks, lines, at = [], [f"{INDEX_VERSION} {per_shard}"], 0
        for row in range(per_shard):
            info = tarfile.TarInfo(f"s{n:06d}_{row:04d}.bin")
            info.size = len(data)
            header = info.tobuf(format=tarfile.USTAR_FORMAT)
            chunks += [header, data, b"\0" * (512 - len(data))]
            lines.append(f"bin {at + len(header)} {len(data)} {info.name}")
            at += len(header) + 512
        (folder / f"shard-{n:06d}.tar").write_bytes(b"".join(chunks) + b"\0" * 1024)
        (folder / f"shard-{n:06d}.idx").write_text("\n".join(lines) + "\n")
    manifest = {"format": FORMAT, "video_extension": "bin", "classes": [], "build": {},
                "shards": [{"name": f"shard-{n:06d}.tar", "samples": per_shard} for n in range(shards)]}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def reader_first_batch(files: list[str], indexes: list[str], shard_id: int, num_shards: int) -> None:
    """DALI's webdataset reader as the DALI path configures it, built and run once."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=BATCH, num_threads=2, device_id=None, seed=0)
    def reader():
        return fn.readers.webdataset(paths=files, index_paths=indexes, ext=["bin"], random_shuffle=True,
                                     shuffle_after_epoch=True, initial_fill=256, shard_id=shard_id,
                                     num_shards=num_shards, name="reader")

    pipe = reader()
    pipe.build()
    pipe.run()


def measure(dataset: Path, arm: str, world: int) -> dict:
    """One rank's start-up, in this (fresh) process."""
    from vmae.pipeline.data.shardset import ShardSet
    from vmae.shards.tars import read_member

    started = time.perf_counter()
    shardset = ShardSet(dataset)
    if arm == "vmae":
        part = shardset.rank_part(0, 0, 0, 0, world, BATCH)
        assigned = time.perf_counter() - started
        for ref in part[:BATCH]:
            _, members = shardset.members(ref)
            read_member(shardset.local(ref.shard), *next(iter(members.values())))
        files = sorted({str(shardset.shards[ref.shard]) for ref in part[:BATCH]})
    else:
        files = [str(p) for p in shardset.shards]
        indexes = [str(p.with_suffix(".idx")) for p in shardset.shards]
        assigned = time.perf_counter() - started
        reader_first_batch(files, indexes, 0, world)
    return {"arm": arm, "world": world, "seconds": round(time.perf_counter() - started, 3),
            "assignment_seconds": round(assigned, 3), "files": len(files),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vmae-startup")
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--per-shard", type=int, default=100)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 8, 64, 512])
    parser.add_argument("--arms", nargs="+", default=["vmae", "dali-all"])
    parser.add_argument("--out-json", type=Path)
    parser.add_argument("--measure", nargs=2, metavar=("ARM", "WORLD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    dataset = args.workdir / f"{args.shards}x{args.per_shard}"
    if args.measure:
        print(json.dumps(measure(dataset, args.measure[0], int(args.measure[1]))))
        return 0
    started = time.perf_counter()
    make_dataset(dataset, args.shards, args.per_shard)
    print(f"dataset: {args.shards} shards x {args.per_shard} samples ({time.perf_counter() - started:.0f} s to "
          "make or find)", flush=True)
    rows = []
    for world in args.worlds:
        for arm in args.arms:
            proc = subprocess.run([sys.executable, __file__, "--workdir", str(args.workdir), "--shards",
                                   str(args.shards), "--per-shard", str(args.per_shard), "--measure", arm, str(world)],
                                  capture_output=True, text=True, check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"world {world:4d} {arm:9s}: first batch after {row['seconds']:7.2f} s (assignment "
                  f"{row['assignment_seconds']:.2f} s), {row['files']:6d} files, peak RSS {row['peak_rss_mb']:.0f} MB",
                  flush=True)
    result = {"shards": args.shards, "samples": args.shards * args.per_shard, "rows": rows}
    write_result(args.out_json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
