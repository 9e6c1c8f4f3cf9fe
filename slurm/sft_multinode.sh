#!/usr/bin/env bash
# Stage 1 (SFT) on several nodes: `sbatch slurm/sft_multinode.sh [recipe=xreasoner_7b] [key=value …]`
#SBATCH --job-name=xr-nemo-sft
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append

# shellcheck source=slurm/common.sh
source "${XR_NEMO_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh"
xr_nemo_parse_args xreasoner_7b "$@"
xr_nemo_launch sft --recipe "$RECIPE" "${OVERRIDES[@]}"
