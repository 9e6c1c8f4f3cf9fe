#!/usr/bin/env bash
# Stage 2 (GRPO, colocated vLLM rollouts) on several nodes:
# `sbatch slurm/grpo_multinode.sh [recipe=xreasoner_7b] [key=value …]`
#SBATCH --job-name=xr-nemo-grpo
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append

# shellcheck source=slurm/common.sh
source "${XR_NEMO_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh"
xr_nemo_parse_args xreasoner_7b "$@"
xr_nemo_launch grpo --recipe "$RECIPE" "${OVERRIDES[@]}"
