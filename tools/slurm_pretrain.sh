#!/bin/bash
# vmae pretraining under SLURM: srun starts one task per GPU and `vmae pretrain` reads its rank from
# SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID. Submit with:  sbatch tools/slurm_pretrain.sh [KEY=VALUE ...]
# Preemption: SLURM sends SIGTERM 5 minutes ahead (--signal), vmae writes a checkpoint and exits 0, and the
# requeued job continues from it (train.resume=auto).
#SBATCH --job-name=vmae-pretrain
#SBATCH --nodes=16
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --output=%x-%j.log
set -euo pipefail

CONFIG=${CONFIG:-configs/mae-st-vit-l.yaml}
# the first node hosts the rendezvous; read the whole list (`| head -n 1` would cut scontrol's pipe, and with
# pipefail a long node list then fails the job)
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
export MASTER_ADDR=${NODES[0]}
export MASTER_PORT=${MASTER_PORT:-29500}

srun --kill-on-bad-exit=1 vmae pretrain --config "$CONFIG" train.resume=auto "$@"
