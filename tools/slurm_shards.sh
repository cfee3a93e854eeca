#!/bin/bash
# A shard build across a SLURM cluster: array task i of N processes (probes, encodes) the i-th share of the inputs
# into OUT's build state (`vmae shards build --part i/N`); once every task is done, one packing run writes the
# shards: the same bytes as a build on one machine. Submit with:
#   jobid=$(sbatch --parsable --array=0-15 tools/slurm_shards.sh INPUT OUT [options])
#   sbatch --dependency=afterok:$jobid --wrap "vmae shards build INPUT OUT [the same options]"
# A task that failed or was killed: submit it again (--array=I); the inputs it finished are kept. Every node
# needs OUT on a shared filesystem and the same vmae environment (the same ffmpeg gives the same bytes).
#SBATCH --job-name=vmae-shards
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --output=%x-%A_%a.log
set -euo pipefail

INPUT=$1
OUT=$2
shift 2
vmae shards build "$INPUT" "$OUT" --part "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT" \
    --workers "${SLURM_CPUS_PER_TASK:-0}" "$@"
