#!/usr/bin/env bash
# Checkpoint conversion on one CPU task: `sbatch slurm/convert.sh import HF_DIR OUT_DIR --tp 4`
# or `sbatch slurm/convert.sh export RUN_OR_CHECKPOINT OUT_HF_DIR`.
#SBATCH --job-name=xr-nemo-convert
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --mem=0
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append

# shellcheck source=slurm/common.sh
source "${XR_NEMO_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh"
GPUS_PER_NODE=1
xr_nemo_launch convert "$@"
